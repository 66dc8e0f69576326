//! How the call log runs.

use std::time::Duration;

/// The call log's settings; [`Default`] gives the service's defaults.
#[derive(Clone, Debug)]
pub struct CallLogConfig {
    /// Events held in process while Redis is slow or down; past it, new ones are dropped.
    pub queue_capacity: usize,
    /// Most events appended (or applied, without Redis) in one batch.
    pub batch_max: usize,
    /// `MAXLEN ~` of each organization's daily stream.
    pub stream_maxlen: u64,
    /// How long a stream is kept after its last event.
    pub stream_ttl: Duration,
    /// The consumer group's name.
    pub group: String,
    /// Whether this instance consumes (with Redis): off, it only appends, and consumers
    /// elsewhere apply its events.
    pub consume: bool,
    /// This instance's consumer name in the group (unique per instance).
    pub consumer: String,
    /// How long one `XREADGROUP` blocks for new entries.
    pub block: Duration,
    /// How long an entry stays pending on a consumer before another claims it.
    pub claim_idle: Duration,
    /// How often pending entries are looked for.
    pub claim_every: Duration,
    /// Deliveries after which an entry that keeps failing goes to the dead-letter stream.
    pub max_deliveries: u32,
    /// How long a batch may gather after its first event, in the drain and in the consumer:
    /// fewer, larger appends and transactions (benches/README.md), for this much latency
    /// on each hop. Zero sends each batch as soon as it can.
    pub linger: Duration,
    /// Timeout of one Redis command (a blocking read gets its block on top).
    pub command_timeout: Duration,
}

impl Default for CallLogConfig {
    fn default() -> Self {
        CallLogConfig {
            queue_capacity: 10_000,
            batch_max: 256,
            stream_maxlen: 100_000,
            stream_ttl: Duration::from_secs(25 * 3600),
            group: "calls".to_owned(),
            consume: true,
            consumer: format!("consumer-{}", std::process::id()),
            block: Duration::from_millis(500),
            claim_idle: Duration::from_secs(30),
            claim_every: Duration::from_secs(5),
            max_deliveries: 5,
            linger: Duration::from_millis(10),
            command_timeout: Duration::from_millis(500),
        }
    }
}
