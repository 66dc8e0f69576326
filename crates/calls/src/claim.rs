//! Claiming: entries left pending longer than the claim timeout (on a consumer that died
//! mid-batch, or on this one after a failed apply) are taken over with `XAUTOCLAIM` and
//! settled again, with their delivery counts (`XPENDING`), which decide the dead letter.

use std::collections::HashMap;
use std::time::Duration;

use redis::RedisError;
use redis::streams::{StreamAutoClaimReply, StreamPendingCountReply};

use crate::conn::Conn;
use crate::settle::{Entry, Settler};

/// Most `XAUTOCLAIM` pages taken from one stream per pass, so one pass stays bounded; the
/// rest waits for the next pass.
const MAX_PAGES: usize = 16;

/// Claims and settles what `consumer` may take over on each of `streams`.
pub(crate) async fn claim(
    conn: &Conn,
    settler: &Settler,
    streams: &[String],
    consumer: &str,
    idle: Duration,
    count: usize,
) -> Result<(), RedisError> {
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    for stream in streams {
        let mut start = "0-0".to_owned();
        for _ in 0..MAX_PAGES {
            let reply: StreamAutoClaimReply = conn
                .query(
                    redis::cmd("XAUTOCLAIM")
                        .arg(stream)
                        .arg(&settler.group)
                        .arg(consumer)
                        .arg(idle_ms)
                        .arg(&start)
                        .arg("COUNT")
                        .arg(count.max(1)),
                )
                .await?;
            if !reply.claimed.is_empty() {
                let deliveries = deliveries(conn, stream, &settler.group, consumer, &reply).await?;
                settler.stats.claimed(reply.claimed.len() as u64);
                let entries = reply
                    .claimed
                    .into_iter()
                    .map(|entry| Entry {
                        deliveries: deliveries.get(&entry.id).copied().unwrap_or(1),
                        stream: stream.clone(),
                        id: entry.id,
                        fields: entry.map,
                    })
                    .collect();
                settler.settle(conn, entries).await?;
            }
            if reply.next_stream_id == "0-0" {
                break;
            }
            start = reply.next_stream_id;
        }
    }
    Ok(())
}

/// How many times each claimed entry has been delivered (the claim included).
async fn deliveries(
    conn: &Conn,
    stream: &str,
    group: &str,
    consumer: &str,
    reply: &StreamAutoClaimReply,
) -> Result<HashMap<String, u64>, RedisError> {
    let (Some(first), Some(last)) = (reply.claimed.first(), reply.claimed.last()) else {
        return Ok(HashMap::new());
    };
    let pending: StreamPendingCountReply = conn
        .query(
            redis::cmd("XPENDING")
                .arg(stream)
                .arg(group)
                .arg(&first.id)
                .arg(&last.id)
                .arg(reply.claimed.len())
                .arg(consumer),
        )
        .await?;
    Ok(pending
        .ids
        .into_iter()
        .map(|p| (p.id, p.times_delivered as u64))
        .collect())
}
