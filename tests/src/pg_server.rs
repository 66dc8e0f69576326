//! A throwaway PostgreSQL server on a free loopback port, for tests that stop, kill or restart it,
//! or that reach it over TLS only ([`PgServer::start_tls`]).
//!
//! # Running as root
//!
//! `initdb` and `postgres` refuse to run as root, and the suites may run as root (they do in
//! the development container). Then the fixture chowns its directory to the `postgres` OS user
//! and has the child processes switch to that user with `CommandExt::uid`/`gid`: the child
//! calls `setgid`, drops supplementary groups and calls `setuid` between fork and exec, so the
//! process the fixture owns is the postmaster itself. `runuser -u postgres --` would not do:
//! it forks and stays as the parent, so a SIGKILL (from `kill` or from `Drop`) would hit
//! `runuser` and orphan a running postmaster. `setpriv` execs and would work, but adds a tool
//! for what the standard library already does. The directory must be reachable by that user,
//! which the default temporary directory (`/tmp`, mode 1777) is.

use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::time::Instant;

use crate::tls::TestCa;

/// Where Debian-style packages install one `bin` directory per major version.
const INSTALL_ROOT: &str = "/usr/lib/postgresql";

/// The superuser `initdb` creates; `trust` authentication lets it in without a password.
const SUPERUSER: &str = "postgres";

/// How long a spawned postmaster gets to accept connections, crash recovery included.
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// Gap between readiness probes; a process becoming ready emits no event we could await.
const READY_POLL: Duration = Duration::from_millis(20);

/// Bound on one readiness probe, so a stuck connect does not eat the whole deadline.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a fast shutdown (`stop`) may take before the fixture gives up on the server.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// How long an immediate shutdown on drop may take before the postmaster is SIGKILLed.
const QUIT_DEADLINE: Duration = Duration::from_secs(5);

/// How long a SIGKILLed postmaster, then each of its orphaned backends, gets to be gone.
const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// Gap between checks that a process has exited; an exit is not something we can await.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// How many fresh ports `start` tries when another process grabs the one it picked.
const START_ATTEMPTS: u32 = 5;

/// Lines of the server log quoted when the server fails to start.
const LOG_TAIL_LINES: usize = 30;

/// A PostgreSQL server owned by one test: its own `initdb` cluster, port and directory.
///
/// The fixture owns the postmaster as a child process (not through `pg_ctl`), so it can signal
/// it and reap it. It never touches the shared server: it listens on a port chosen at `start`
/// and kept across `stop`/`kill` and `start_again`, so pools built from `url()` reconnect to
/// the same place, and the data directory survives them.
///
/// The server trades durability against an OS crash for speed (`fsync`, full page writes off)
/// but keeps every commit across a process crash, which is what `kill` simulates: see
/// [`PgServer::kill`]. On drop the server is shut down, reaped and its directory removed.
#[derive(Debug)]
pub struct PgServer {
    port: u16,
    /// Holds `data/`, the Unix socket and `postgres.log`; removed on drop.
    dir: PathBuf,
    bin: PgBin,
    run_as: Option<OsUser>,
    postmaster: Option<Postmaster>,
    /// Whether the server runs with `ssl=on` and takes only TLS connections over TCP.
    tls: bool,
}

/// `pg_hba.conf` of a TLS server: over TCP only `hostssl` lines, so a connection without
/// TLS finds none and is refused ("no encryption"); the superuser is trusted (the fixture's
/// own probes and admin connections), every other user gives its password.
const TLS_PG_HBA: &str = "\
local   all  all                 trust
hostssl all  postgres  127.0.0.1/32  trust
hostssl all  all       127.0.0.1/32  scram-sha-256
";

/// The PostgreSQL binaries of one installed major version.
#[derive(Debug, Clone)]
struct PgBin {
    dir: PathBuf,
    major: u32,
}

/// The OS user the server runs as when the tests run as root.
#[derive(Debug, Clone, Copy)]
struct OsUser {
    uid: u32,
    gid: u32,
}

/// The spawned postmaster; dropping it shuts it down and reaps it, so no panic leaks one.
#[derive(Debug)]
struct Postmaster(Child);

impl Postmaster {
    /// Whether the process has not exited yet; a failed poll counts as exited.
    fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// Polls until the process exits or `bound` passes; returns whether it exited.
    async fn exited_within(&mut self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while self.running() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
        true
    }
}

impl Drop for Postmaster {
    fn drop(&mut self) {
        // SIGQUIT is PostgreSQL's immediate shutdown: the postmaster ends its backends, reaps
        // them and removes its shared memory, all within tens of milliseconds. A bare SIGKILL
        // would leave the backends orphaned and the System V segment behind, so it is only the
        // fallback. This blocks the calling thread, briefly, so that no server outlives the
        // test process.
        if self.running() && signal(self.0.id(), "-QUIT") {
            let deadline = std::time::Instant::now() + QUIT_DEADLINE;
            while self.running() && std::time::Instant::now() < deadline {
                std::thread::sleep(EXIT_POLL);
            }
        }
        // Both fail harmlessly once the child has been reaped.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Why a spawned postmaster did not become ready.
enum NotReady {
    /// The process exited, most likely because the port was taken after we picked it.
    Exited(String),
    /// The process stayed up but did not accept connections as itself within the deadline.
    TimedOut,
}

impl PgServer {
    /// Runs `initdb` into a fresh directory, starts the server on a free port and waits for it.
    ///
    /// Panics, with the end of the server log, if the server does not come up.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future kills `initdb` or the postmaster and removes the directory.
    pub async fn start() -> PgServer {
        Self::start_with(None).await
    }

    /// As [`start`](Self::start), with `ssl=on`, a server certificate for 127.0.0.1 and
    /// localhost signed by `ca`, and a `pg_hba.conf` that takes TCP connections over TLS
    /// only ([`TLS_PG_HBA`]: the superuser trusted, other users by password; see
    /// [`create_user`](Self::create_user)).
    pub async fn start_tls(ca: &TestCa) -> PgServer {
        Self::start_with(Some(ca)).await
    }

    async fn start_with(ca: Option<&TestCa>) -> PgServer {
        let bin = PgBin::newest();
        let run_as = OsUser::for_server();
        let dir = crate::fresh_dir("pg");
        // Built before anything can fail, so its drop cleans up after a panic or a cancel.
        let mut server = PgServer {
            port: 0,
            dir,
            bin,
            run_as,
            postmaster: None,
            tls: ca.is_some(),
        };
        if let Some(user) = run_as {
            std::os::unix::fs::chown(&server.dir, Some(user.uid), Some(user.gid)).unwrap_or_else(
                |e| panic!("chown {} to the postgres user: {e}", server.dir.display()),
            );
        }
        server.initdb().await;
        if let Some(ca) = ca {
            server.set_up_tls(ca);
        }
        for _ in 0..START_ATTEMPTS {
            server.port = crate::free_port();
            let log_from = server.log_len();
            let mut postmaster = server.spawn();
            match wait_ready(&mut postmaster, server.port, &server.data_dir()).await {
                Ok(()) => {
                    server.postmaster = Some(postmaster);
                    return server;
                }
                // Picking a port and binding it is racy across test processes; try another.
                Err(NotReady::Exited(_)) => continue,
                Err(NotReady::TimedOut) => {
                    drop(postmaster);
                    panic!(
                        "postgres on port {} did not accept connections within {READY_DEADLINE:?}:\n{}",
                        server.port,
                        server.log_tail(log_from)
                    );
                }
            }
        }
        panic!(
            "postgres exited at startup on {START_ATTEMPTS} different ports; last log:\n{}",
            server.log_tail(0)
        );
    }

    /// The loopback port this server listens on, kept across `stop`, `kill` and `start_again`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the data directory, the Unix socket and `postgres.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The connection URL of database `db` as the superuser, over TCP on loopback.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The URL of the `postgres` maintenance database, for administration.
    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }

    /// Creates an empty database `name` and returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        let mut admin = PgConnection::connect(&self.admin_url())
            .await
            .unwrap_or_else(|e| panic!("connect to test postgres at {}: {e}", self.admin_url()));
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("create database {name} on test postgres: {e}"));
        let _ = admin.close().await;
        self.url(name)
    }

    /// Creates a login role `name` with `password`, allowed to create databases; on a TLS
    /// server it connects with its password, over TLS.
    pub async fn create_user(&self, name: &str, password: &str) {
        let mut admin = PgConnection::connect(&self.admin_url())
            .await
            .unwrap_or_else(|e| panic!("connect to test postgres at {}: {e}", self.admin_url()));
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let literal = format!("'{}'", password.replace('\'', "''"));
        sqlx::query(&format!(
            "CREATE ROLE {quoted} LOGIN CREATEDB PASSWORD {literal}"
        ))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("create role {name} on test postgres: {e}"));
        let _ = admin.close().await;
    }

    /// Everything the server has logged so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Shuts the server down fast (SIGINT) and waits until it has exited.
    ///
    /// The server closes every client connection, so queries on them fail, and the port
    /// refuses new ones. Data is kept for `start_again`. Does nothing if the server is down.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the server down: the postmaster is then shut down
    /// immediately and reaped.
    pub async fn stop(&mut self) {
        let Some(mut postmaster) = self.postmaster.take() else {
            return;
        };
        // SIGINT is PostgreSQL's fast shutdown: abort transactions, disconnect clients,
        // checkpoint, exit. The postmaster reaps its backends before exiting, so nothing lingers.
        signal(postmaster.0.id(), "-INT");
        if !postmaster.exited_within(STOP_DEADLINE).await {
            // Dropping the postmaster escalates to an immediate shutdown, then SIGKILL.
            panic!(
                "postgres on port {} did not shut down within {STOP_DEADLINE:?}",
                self.port
            );
        }
    }

    /// Kills the postmaster with SIGKILL, as a crash would, and waits until no backend is left.
    ///
    /// The next `start_again` then runs crash recovery. Committed data survives: commits are
    /// written to the WAL before they return (`synchronous_commit` stays on), and only the
    /// postmaster is killed, so no write is cut in half and full page writes are not needed.
    /// Does nothing if the server is down.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the server down, but a backend may still be exiting, which
    /// would make a `start_again` right after it fail.
    pub async fn kill(&mut self) {
        let Some(mut postmaster) = self.postmaster.take() else {
            return;
        };
        let _ = postmaster.0.kill();
        if !postmaster.exited_within(KILL_DEADLINE).await {
            panic!("postgres on port {} survived SIGKILL", self.port);
        }
        // The backends outlive the postmaster until they notice its death. A new postmaster
        // refuses to start while any of them is still attached to the old shared memory, so
        // wait for exactly that.
        let Some(segment) = self.leftover_segment() else {
            return;
        };
        let deadline = Instant::now() + KILL_DEADLINE;
        while segment.attached().is_some_and(|n| n > 0) {
            assert!(
                Instant::now() < deadline,
                "backends of the killed postgres on port {} did not exit within {KILL_DEADLINE:?}",
                self.port
            );
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// Starts the stopped or killed server again on the same port and data directory.
    ///
    /// Panics if the server is running, or if it does not come back (say, the port was taken
    /// meanwhile), with the end of the server log.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the server down: the new postmaster is shut down and reaped.
    pub async fn start_again(&mut self) {
        assert!(
            self.postmaster.is_none(),
            "start_again on a running postgres (port {}): stop or kill it first",
            self.port
        );
        let log_from = self.log_len();
        let mut postmaster = self.spawn();
        match wait_ready(&mut postmaster, self.port, &self.data_dir()).await {
            Ok(()) => self.postmaster = Some(postmaster),
            Err(NotReady::Exited(status)) => panic!(
                "postgres could not start again on port {} ({status}):\n{}",
                self.port,
                self.log_tail(log_from)
            ),
            Err(NotReady::TimedOut) => panic!(
                "postgres restarted on port {} did not accept connections within {READY_DEADLINE:?}:\n{}",
                self.port,
                self.log_tail(log_from)
            ),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(self.log_path()).map_or(0, |m| m.len())
    }

    /// The last lines the server logged from byte `from` on.
    fn log_tail(&self, from: u64) -> String {
        let log = self.log();
        let since = log
            .get(usize::try_from(from).unwrap_or(0)..)
            .unwrap_or(&log);
        let lines: Vec<&str> = since.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Creates the cluster: trust authentication, C locale, no fsync (the directory is thrown
    /// away, so an OS crash cannot lose anything we keep).
    async fn initdb(&self) {
        let mut initdb = tokio::process::Command::new(self.bin.dir.join("initdb"));
        initdb
            .arg("-D")
            .arg(self.data_dir())
            .args(["--auth=trust", "--username", SUPERUSER])
            .args(["--no-sync", "--locale=C", "--encoding=UTF8"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if self.bin.major >= 13 {
            initdb.arg("--no-instructions");
        }
        if let Some(user) = self.run_as {
            initdb.uid(user.uid).gid(user.gid);
        }
        let out = initdb
            .output()
            .await
            .unwrap_or_else(|e| panic!("spawn {}/initdb: {e}", self.bin.dir.display()));
        assert!(
            out.status.success(),
            "initdb into {} failed ({}):\n{}{}",
            self.data_dir().display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes a server certificate signed by `ca` and its key into the server's directory
    /// (the key readable by the server's user alone, as PostgreSQL demands) and replaces
    /// `pg_hba.conf` with [`TLS_PG_HBA`].
    fn set_up_tls(&self, ca: &TestCa) {
        let cert = ca.server_cert();
        for (name, pem) in [
            ("server.crt", &cert.cert_pem),
            ("server.key", &cert.key_pem),
        ] {
            let path = self.dir.join(name);
            std::fs::write(&path, pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
            if let Some(user) = self.run_as {
                std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid))
                    .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
            }
        }
        let hba = self.data_dir().join("pg_hba.conf");
        std::fs::write(&hba, TLS_PG_HBA).unwrap_or_else(|e| panic!("write {}: {e}", hba.display()));
    }

    /// Spawns the postmaster on `self.port`, appending its output to `postgres.log`.
    fn spawn(&self) -> Postmaster {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path().display()));
        let log_err = log.try_clone().expect("duplicate the log file handle");
        let mut postgres = Command::new(self.bin.dir.join("postgres"));
        postgres
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            // The socket goes to our directory: the default one may not exist or be writable.
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Safe for a process crash: the kernel still holds every write.
            .args(["-c", "fsync=off"])
            // Safe because `kill` only kills the postmaster, which writes no data pages.
            .args(["-c", "full_page_writes=off"])
            // Shared memory segments as files in the data directory, removed with it even
            // after a SIGKILL, instead of in /dev/shm where they would leak.
            .args(["-c", "dynamic_shared_memory_type=mmap"])
            // `synchronous_commit=off` is deliberately absent: with it, a commit returns before
            // its WAL reaches the kernel, and a row committed just before `kill` was lost after
            // crash recovery in every try.
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        if self.tls {
            postgres
                .args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!(
                    "ssl_cert_file={}",
                    self.dir.join("server.crt").display()
                ))
                .arg("-c")
                .arg(format!(
                    "ssl_key_file={}",
                    self.dir.join("server.key").display()
                ));
        }
        if let Some(user) = self.run_as {
            postgres.uid(user.uid).gid(user.gid);
        }
        let child = postgres
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}/postgres: {e}", self.bin.dir.display()));
        Postmaster(child)
    }

    /// The System V segment a postmaster that did not exit cleanly left behind, if any.
    ///
    /// Its lock file names the segment; a clean exit removes both, and a new postmaster on the
    /// same directory replaces both, so a lock file on a stopped server names only ours.
    fn leftover_segment(&self) -> Option<Segment> {
        let lock = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        // Line 7 holds "key shmid".
        let mut fields = lock.lines().nth(6)?.split_whitespace();
        let key = ipc_key(fields.next()?)?;
        let id = fields.next()?.parse().ok()?;
        Some(Segment { key, id })
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // The process goes first: it runs in the directory removed next.
        self.postmaster.take();
        // After `kill` without `start_again` the segment outlives everything; it is ours only
        // while the key still matches and nobody is attached.
        if let Some(segment) = self.leftover_segment()
            && segment.attached() == Some(0)
        {
            let _ = Command::new("ipcrm")
                .args(["-m", &segment.id.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A System V shared memory segment, as named in a postmaster's lock file.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// The IPC key as 32 bits: the lock file prints it unsigned, `/proc` signed.
    key: i64,
    id: i64,
}

impl Segment {
    /// How many processes are attached, or `None` once the segment is gone (or was reused).
    fn attached(self) -> Option<u64> {
        let table = std::fs::read_to_string("/proc/sysvipc/shm").ok()?;
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next()?.split_whitespace().collect();
        let column = |name: &str| header.iter().position(|h| *h == name);
        let (key, id, nattch) = (column("key")?, column("shmid")?, column("nattch")?);
        lines.find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let matches = ipc_key(fields.get(key)?) == Some(self.key)
                && fields.get(id)?.parse() == Ok(self.id);
            if matches {
                fields.get(nattch)?.parse().ok()
            } else {
                None
            }
        })
    }
}

/// Parses an IPC key printed signed or unsigned into the same 32-bit value.
fn ipc_key(text: &str) -> Option<i64> {
    text.parse::<i64>().ok().map(|key| key.rem_euclid(1 << 32))
}

impl PgBin {
    /// The binaries of the newest version under [`INSTALL_ROOT`].
    fn newest() -> PgBin {
        let entries = std::fs::read_dir(INSTALL_ROOT)
            .unwrap_or_else(|e| panic!("read {INSTALL_ROOT} (is PostgreSQL installed?): {e}"));
        entries
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version = entry.file_name().into_string().ok()?;
                // Major versions before 10 are named like 9.6.
                let parts: Vec<u32> = version
                    .split('.')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?;
                let dir = entry.path().join("bin");
                let complete = dir.join("initdb").is_file() && dir.join("postgres").is_file();
                complete.then_some((parts, dir))
            })
            .max_by(|(a, _), (b, _)| a.cmp(b))
            .map(|(parts, dir)| PgBin {
                dir,
                major: parts[0],
            })
            .unwrap_or_else(|| panic!("no initdb and postgres under {INSTALL_ROOT}/*/bin"))
    }
}

impl OsUser {
    /// `None` to run the server as ourselves, or the `postgres` user when we are root.
    fn for_server() -> Option<OsUser> {
        if id(&["-u"]) != 0 {
            return None;
        }
        Some(OsUser {
            uid: id(&["-u", "postgres"]),
            gid: id(&["-g", "postgres"]),
        })
    }
}

/// Runs `id(1)` with `args` and parses the number it prints.
fn id(args: &[&str]) -> u32 {
    let out = Command::new("id")
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run id(1)");
    assert!(
        out.status.success(),
        "id {} failed: running as root needs a postgres OS user to run the server",
        args.join(" ")
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("id {} printed no number: {e}", args.join(" ")))
}

/// Sends a signal through `kill(1)`, which spares the crate `libc` and `unsafe`; returns
/// whether it was delivered.
fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Polls until the server on `port` accepts connections as the server of `data_dir`, or it
/// exits, or the deadline passes.
async fn wait_ready(
    postmaster: &mut Postmaster,
    port: u16,
    data_dir: &Path,
) -> Result<(), NotReady> {
    let options = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username(SUPERUSER)
        .database("postgres");
    let expected = data_dir.to_string_lossy();
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        if let Some(status) = postmaster.0.try_wait().expect("poll postgres") {
            return Err(NotReady::Exited(status.to_string()));
        }
        // Another test's server may hold the port we picked; only our own data directory counts.
        if probe(&options).await.as_deref() == Some(expected.as_ref()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(NotReady::TimedOut);
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// The data directory of the server at `options`, if it accepts a connection and a query.
async fn probe(options: &PgConnectOptions) -> Option<String> {
    let probe = async {
        let mut conn = PgConnection::connect_with(options).await.ok()?;
        let dir: String = sqlx::query_scalar("SELECT current_setting('data_directory')")
            .fetch_one(&mut conn)
            .await
            .ok()?;
        let _ = conn.close().await;
        Some(dir)
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .ok()
        .flatten()
}
