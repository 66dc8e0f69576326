//! A throwaway `redis-server` on a free loopback port, for tests that stop, pause or restart it,
//! or that reach it over TLS with a password ([`RedisServer::start_tls`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, TlsCertificates};
use tokio::time::Instant;

use crate::tls::{ServerCert, TestCa};

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
    tls: Option<Tls>,
}

/// How a TLS server is set up: its certificate, the CA its clients trust, its password.
#[derive(Clone, Debug)]
struct Tls {
    cert: ServerCert,
    ca_path: PathBuf,
    ca_pem: Vec<u8>,
    password: String,
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
        Self::start_with(None).await
    }

    /// Starts a server that takes only TLS connections (`--port 0 --tls-port P`), with a
    /// certificate for 127.0.0.1 and localhost signed by `ca`, and `requirepass password`.
    /// Clients are not asked for certificates (`--tls-auth-clients no`).
    pub async fn start_tls(ca: &TestCa, password: &str) -> RedisServer {
        Self::start_with(Some(Tls {
            cert: ca.server_cert(),
            ca_path: ca.ca_path().to_owned(),
            ca_pem: ca.ca_pem(),
            password: password.to_owned(),
        }))
        .await
    }

    async fn start_with(tls: Option<Tls>) -> RedisServer {
        let dir = crate::fresh_dir("redis");
        for _ in 0..START_ATTEMPTS {
            let port = crate::free_port();
            let mut child = spawn(port, &dir, tls.as_ref());
            match wait_ready(&mut child, &client(port, tls.as_ref())).await {
                Ok(()) => {
                    return RedisServer {
                        port,
                        dir,
                        child: Some(child),
                        tls,
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

    /// The connection URL: `redis://127.0.0.1:PORT/`, or for a TLS server
    /// `rediss://:PASSWORD@127.0.0.1:PORT/` (its CA at [`ca_path`](Self::ca_path)).
    pub fn url(&self) -> String {
        url(self.port, self.tls.as_ref())
    }

    /// The CA a TLS server's certificate chains to; `None` for a plain server.
    pub fn ca_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|tls| tls.ca_path.as_path())
    }

    /// A fresh multiplexed connection with the client's default timeouts (over TLS,
    /// trusting the server's CA, for a TLS server).
    pub async fn client(&self) -> MultiplexedConnection {
        client(self.port, self.tls.as_ref())
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
        let mut child = spawn(self.port, &self.dir, self.tls.as_ref());
        match wait_ready(&mut child, &client(self.port, self.tls.as_ref())).await {
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
        let mut admin = client(self.port, self.tls.as_ref())
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

/// The URL of the server on `port`, with its password when it speaks TLS.
fn url(port: u16, tls: Option<&Tls>) -> String {
    match tls {
        None => format!("redis://127.0.0.1:{port}/"),
        Some(tls) => format!("rediss://:{}@127.0.0.1:{port}/", tls.password),
    }
}

/// A client for the server on `port`, trusting its CA when it speaks TLS.
fn client(port: u16, tls: Option<&Tls>) -> redis::Client {
    match tls {
        None => redis::Client::open(url(port, None)),
        Some(tls) => redis::Client::build_with_tls(
            url(port, Some(tls)),
            TlsCertificates {
                client_tls: None,
                root_cert: Some(tls.ca_pem.clone()),
            },
        ),
    }
    .expect("the fixture URL and CA are valid")
}

/// Spawns `redis-server` with persistence off, so a restart always comes back empty; with
/// `tls`, on a TLS port only, with a password.
fn spawn(port: u16, dir: &Path, tls: Option<&Tls>) -> Process {
    let mut command = Command::new("redis-server");
    match tls {
        None => {
            command.arg("--port").arg(port.to_string());
        }
        Some(tls) => {
            command
                .args(["--port", "0", "--tls-port"])
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert.cert_path)
                .arg("--tls-key-file")
                .arg(&tls.cert.key_path)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca_path)
                .args(["--tls-auth-clients", "no", "--requirepass", &tls.password]);
        }
    }
    let child = command
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

/// Polls until the server `client` reaches answers as `process`, or it exits, or the
/// deadline passes.
async fn wait_ready(process: &mut Process, client: &redis::Client) -> Result<(), NotReady> {
    let pid = Some(u64::from(process.0.id()));
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
