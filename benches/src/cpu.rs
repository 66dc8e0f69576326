//! Where the CPU went: this process's, PostgreSQL's and Redis's time from `/proc`, so a
//! load generator can report the machine's split and the work each operation cost, a
//! figure that holds up better than throughput on a shared, noisy host.

/// Clock ticks a second in `/proc` (`USER_HZ`, fixed at 100 in Linux's ABI).
const USER_HZ: f64 = 100.0;

/// CPU time from /proc, in clock ticks: the whole machine's, this process's (the server
/// and the load generator), PostgreSQL's and Redis's, so a report shows where the cores
/// went and whether anything else competed for them.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTicks {
    /// Every core's time.
    pub total: u64,
    /// Of which idle (and waiting for I/O).
    pub idle: u64,
    /// Of which stolen: the hypervisor ran something else on this machine's cores.
    pub steal: u64,
    /// This process's user and system time.
    pub process: u64,
    /// Every `postgres` process's.
    pub postgres: u64,
    /// Every `redis-server`'s.
    pub redis: u64,
}

/// Shares of the machine's CPU time over a phase (1.0 is every core for the whole phase).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuShares {
    /// Not idle.
    pub busy: f64,
    /// Stolen by the hypervisor (part of `busy`): on a shared host, the share of the phase
    /// the machine was not running at all; a phase with much of it measured the neighbours.
    pub steal: f64,
    /// This process.
    pub process: f64,
    /// PostgreSQL.
    pub postgres: f64,
    /// Redis.
    pub redis: f64,
}

impl CpuShares {
    /// Busy time that was neither this process, PostgreSQL nor Redis: other processes, and
    /// time the hypervisor stole for other tenants.
    pub fn other(&self) -> f64 {
        (self.busy - self.process - self.postgres - self.redis).max(0.0)
    }
}

impl CpuTicks {
    /// Now, or `None` where /proc cannot be read (the report then shows no CPU split).
    pub fn now() -> Option<CpuTicks> {
        Self::now_with_process("/proc/self/stat")
    }

    /// Now, with process `pid` (a child) as "this process".
    pub fn now_of(pid: u32) -> Option<CpuTicks> {
        Self::now_with_process(format!("/proc/{pid}/stat"))
    }

    fn now_with_process(process_stat: impl AsRef<std::path::Path>) -> Option<CpuTicks> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        // "cpu  user nice system idle iowait irq softirq steal guest guest_nice"; guest
        // time is already counted in user and nice.
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|t| t.parse().ok())
            .collect::<Option<_>>()?;
        let mut now = CpuTicks {
            total: ticks.iter().sum(),
            idle: ticks.get(3)? + ticks.get(4)?,
            steal: *ticks.get(7)?,
            process: process_ticks(process_stat)?.1,
            postgres: 0,
            redis: 0,
        };
        // Every process is looked at, a few hundred files: cheap next to a phase of seconds.
        // A process that exits within the phase takes its time with it; the ones that
        // matter here (Redis, the pool's Postgres backends) live through it.
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let path = entry.path().join("stat");
            match process_ticks(&path) {
                Some((name, ticks)) if name == "postgres" => now.postgres += ticks,
                Some((name, ticks)) if name.starts_with("redis-server") => now.redis += ticks,
                _ => {}
            }
        }
        Some(now)
    }

    /// Seconds of CPU this process, PostgreSQL and Redis each took between `before` and
    /// `self`, in that order.
    pub fn work_split_since(self, before: CpuTicks) -> [f64; 3] {
        let secs = |now: u64, then: u64| now.saturating_sub(then) as f64 / USER_HZ;
        [
            secs(self.process, before.process),
            secs(self.postgres, before.postgres),
            secs(self.redis, before.redis),
        ]
    }

    /// The shares of the machine's CPU time between `before` and `self`.
    pub fn shares_since(self, before: CpuTicks) -> Option<CpuShares> {
        let total = self.total.checked_sub(before.total).filter(|t| *t > 0)? as f64;
        let share = |now: u64, then: u64| now.saturating_sub(then) as f64 / total;
        Some(CpuShares {
            busy: 1.0 - share(self.idle, before.idle),
            steal: share(self.steal, before.steal),
            process: share(self.process, before.process),
            postgres: share(self.postgres, before.postgres),
            redis: share(self.redis, before.redis),
        })
    }
}

/// A process's command name and its user + system time, from its `/proc/PID/stat`.
fn process_ticks(path: impl AsRef<std::path::Path>) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // "pid (comm) state ppid …": the name may hold spaces and parentheses, so it ends at
    // the last ')'; utime and stime are the 12th and 13th fields after it.
    let (start, end) = (stat.find('(')?, stat.rfind(')')?);
    let name = stat.get(start + 1..end)?.to_owned();
    let fields: Vec<&str> = stat.get(end + 1..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}
