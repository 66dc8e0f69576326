//! A throwaway `redis-server` on a free loopback port, for tests that stop, pause or restart it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

/// How long a freshly spawned server gets to answer PING before the fixture gives up.
const READY_DEADLINE: Duration = Duration::from_secs(5);

/// Gap between readiness probes; a process becoming ready emits no event we could await.
const READY_POLL: Duration = Duration::from_millis(20);

/// How many fresh ports `start` tries when another process grabs the one it picked.
const START_ATTEMPTS: u32 = 5;

/// A `redis-server` child owned by one test, killed, reaped and its directory removed on drop.
///
/// It never touches the shared Redis: it listens on its own port chosen at `start`, which it
/// keeps across `stop` and `restart` so clients built from `url()` reconnect to the same place.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Process>,
}

/// The spawned process; dropping it kills and reaps it, so no early return or panic leaks one.
#[derive(Debug)]
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        // SIGKILL also ends a paused (SIGSTOPped) server. `kill` fails only if the child was
        // already reaped, and then `wait` returns at once. Reaping here rather than in the
        // background leaves no zombie when the test process exits right after; a SIGKILLed
        // process exits within milliseconds, so the block is short.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Why a spawned server did not become ready.
enum NotReady {
    /// The process exited, most likely because the port was taken after we picked it.
    Exited(String),
    /// The process stayed up but never answered PING as itself within the deadline.
    TimedOut,
}

impl RedisServer {
    /// Starts an empty, non-persistent server on a free loopback port and waits for PING.
    pub async fn start() -> RedisServer {
        let dir = crate::fresh_dir("redis");
        for _ in 0..START_ATTEMPTS {
            let port = crate::free_port();
            let mut child = spawn(port, &dir);
            match wait_ready(&mut child, port).await {
                Ok(()) => {
                    return RedisServer {
                        port,
                        dir,
                        child: Some(child),
                    };
                }
                // Picking a port and binding it is racy across test processes; try another.
                Err(NotReady::Exited(_)) => continue,
                Err(NotReady::TimedOut) => {
                    // Killed before the panic, as the directory goes with it.
                    drop(child);
                    let _ = std::fs::remove_dir_all(&dir);
                    panic!(
                        "redis-server on port {port} did not answer PING within {READY_DEADLINE:?}"
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("redis-server exited at startup on {START_ATTEMPTS} different ports");
    }

    /// The loopback port this server listens on, kept across `stop` and `restart`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connection URL, `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A fresh multiplexed connection with the client's default timeouts.
    pub async fn client(&self) -> MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("the fixture URL is valid")
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| {
                panic!("cannot connect to test redis-server at {}: {e}", self.url())
            })
    }

    /// Kills the server and waits until it has exited, so its port refuses connections.
    pub async fn stop(&mut self) {
        if let Some(process) = self.child.take() {
            // Dropping blocks until the exit, which belongs off the runtime's worker threads.
            tokio::task::spawn_blocking(move || drop(process))
                .await
                .expect("reap test redis-server");
        }
    }

    /// Stops the server if it runs, then starts it again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut child = spawn(self.port, &self.dir);
        match wait_ready(&mut child, self.port).await {
            Ok(()) => self.child = Some(child),
            Err(NotReady::Exited(status)) => panic!(
                "redis-server could not restart on port {} ({status}); another process took it",
                self.port
            ),
            Err(NotReady::TimedOut) => panic!(
                "restarted redis-server on port {} did not answer PING within {READY_DEADLINE:?}",
                self.port
            ),
        }
    }

    /// Freezes the server with SIGSTOP: connections stay open but nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a server frozen by `pause` with SIGCONT; queued commands are then answered.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Drops every client of `client_type` (`normal`, `pubsub`, …) with `CLIENT KILL TYPE`,
    /// from an admin connection that survives (`SKIPME` defaults to yes); how many it dropped.
    pub async fn client_kill(&self, client_type: &str) -> u64 {
        let mut admin = self.client().await;
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg(client_type)
            .query_async(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("CLIENT KILL TYPE {client_type}: {e}"))
    }

    /// How many clients of `client_type` are connected (`CLIENT LIST TYPE`), this call's
    /// own connection included when it is of that type.
    pub async fn client_count(&self, client_type: &str) -> usize {
        let mut admin = self.client().await;
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg(client_type)
            .query_async(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("CLIENT LIST TYPE {client_type}: {e}"));
        list.lines().filter(|line| !line.trim().is_empty()).count()
    }

    /// Blocks the server for `duration` with `DEBUG SLEEP` (it answers nobody meanwhile), and
    /// returns once it answers again.
    pub async fn debug_sleep(&self, duration: Duration) {
        // The client's default response timeout (500 ms) would give up on the sleep itself.
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(duration + Duration::from_secs(5)));
        let mut admin = redis::Client::open(self.url())
            .expect("the fixture URL is valid")
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap_or_else(|e| panic!("connect to test redis-server at {}: {e}", self.url()));
        let () = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(duration.as_secs_f64())
            .query_async(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("DEBUG SLEEP {duration:?}: {e}"));
    }

    /// Sends a signal through `kill(1)`, which spares the crate `libc` and `unsafe`.
    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .map(|process| process.0.id())
            .unwrap_or_else(|| panic!("redis-server on port {} is not running", self.port));
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill {signal} {pid} failed: {status}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // The process goes first: it runs in the directory removed next.
        self.child.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Spawns `redis-server` with persistence off, so a restart always comes back empty.
fn spawn(port: u16, dir: &Path) -> Process {
    let child = Command::new("redis-server")
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--daemonize", "no"])
        // Redis 7 refuses DEBUG unless enabled; `local` allows it from loopback only, for
        // `debug_sleep`.
        .args(["--enable-debug-command", "local"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn redis-server (is it on PATH?): {e}"));
    Process(child)
}

/// Polls until the server on `port` answers as `process`, or it exits, or the deadline passes.
async fn wait_ready(process: &mut Process, port: u16) -> Result<(), NotReady> {
    let pid = Some(u64::from(process.0.id()));
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("valid URL");
    // Short timeouts keep one stuck probe from eating the whole deadline.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(250)))
        .set_response_timeout(Some(Duration::from_millis(250)));
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        if let Some(status) = process.0.try_wait().expect("poll redis-server") {
            return Err(NotReady::Exited(status.to_string()));
        }
        if let Ok(mut conn) = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            // Another test's server may hold the port we picked; only our own pid counts.
            let info: redis::RedisResult<String> = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut conn)
                .await;
            if let Ok(info) = info
                && crate::info_field(&info, "process_id").and_then(|p| p.parse().ok()) == pid
            {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(NotReady::TimedOut);
        }
        tokio::time::sleep(READY_POLL).await;
    }
}
