//! The built binary's command line, run as a new user would: `--help` and `--version`
//! answer and exit without serving, and a mistake exits 2 with the usage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::time::Duration;

/// Runs the binary with `args`, killed if it has not exited within 10 s (a binary that
/// starts serving instead of answering would never exit).
fn run(args: &[&str]) -> Output {
    run_with(args, &[])
}

/// [`run`] with these environment variables besides.
fn run_with(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tiercache-server"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("LOG_FORMAT")
        .envs(vars.iter().copied())
        // Nowhere to serve from, so a binary that tried would fail rather than hang.
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env("BIND_ADDR", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("tiercache-server {args:?} did not exit within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_prints_usage_and_exits() {
    for flag in ["--help", "-h", "help", "serve --help"] {
        let args: Vec<&str> = flag.split(' ').collect();
        let out = run(&args);
        assert!(out.status.success(), "{flag}: {:?}", out.status);
        let stdout = text(&out.stdout);
        assert!(stdout.starts_with("usage:"), "{flag}: {stdout}");
        assert!(stdout.contains("api-key create"), "{flag}: {stdout}");
        assert!(out.stderr.is_empty(), "{flag}: {}", text(&out.stderr));
    }
}

#[test]
fn version_prints_the_version_and_exits() {
    for flag in ["--version", "-V", "version"] {
        let out = run(&[flag]);
        assert!(out.status.success(), "{flag}: {:?}", out.status);
        assert_eq!(
            text(&out.stdout),
            format!("tiercache-server {}\n", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
}

#[test]
fn a_mistake_exits_2_with_the_usage() {
    let out = run(&["--serve"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("unknown command \"--serve\""),
        "{stderr}"
    );
    assert!(stderr.contains("usage:"), "{stderr}");
}

#[test]
fn an_invalid_rust_log_is_named_at_start_up() {
    let out = run_with(
        &[],
        &[("RUST_LOG", "info,tiercache=loud"), ("LOG_FORMAT", "yaml")],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("invalid configuration: RUST_LOG: "),
        "{stderr}"
    );
    assert!(stderr.contains("tiercache=loud"), "{stderr}");
    assert!(
        stderr.contains(r#"LOG_FORMAT: expected text or json, got "yaml""#),
        "{stderr}"
    );
}

/// Start-up's lines, up to its failure to reach PostgreSQL (nothing listens on port 1).
fn start_up_lines(vars: &[(&str, &str)]) -> Vec<String> {
    let out = run_with(&[], vars);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("starting"), "{stdout}");
    stdout.lines().map(str::to_owned).collect()
}

#[test]
fn logs_into_a_pipe_are_plain_text_or_json() {
    for line in start_up_lines(&[]) {
        assert!(!line.contains('\x1b'), "a colour code in a pipe: {line:?}");
    }
    let lines = start_up_lines(&[("LOG_FORMAT", "json")]);
    for line in &lines {
        let object: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(object.get(field).is_some(), "no {field}: {line}");
        }
    }
    // The configuration says whose each TTL policy is.
    assert!(
        lines
            .iter()
            .any(|line| line.contains(r#"\"history\": EntityPolicy"#)),
        "{lines:#?}"
    );
}

/// A database of this test's own on the shared PostgreSQL, dropped (connections and all)
/// when the test ends, passed or failed.
struct ScratchDatabase {
    url: String,
}

impl ScratchDatabase {
    fn new(tag: &str) -> ScratchDatabase {
        let url = format!(
            "postgres://postgres@127.0.0.1:5432/tiercache_{tag}_{}",
            std::process::id()
        );
        drop_database(&url);
        ScratchDatabase { url }
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        drop_database(&self.url);
    }
}

fn drop_database(url: &str) {
    use sqlx::migrate::MigrateDatabase as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Err(e) = runtime.block_on(sqlx::Postgres::force_drop_database(url)) {
        eprintln!("could not drop {url}: {e}");
    }
}

/// A first start on an empty database with Redis unreachable, as a new user's might be:
/// the start-up warns that Redis does not answer and the banner says so, and loading the
/// demo data logs no "slow statement" with its SQL.
#[test]
fn a_first_start_warns_of_an_unreachable_redis_and_loads_quietly() {
    use std::io::BufRead as _;
    let database = ScratchDatabase::new("cli_first_start");
    let free_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tiercache-server"))
        .env_remove("RUST_LOG")
        .env_remove("LOG_FORMAT")
        .env("DATABASE_URL", &database.url)
        .env("REDIS_URL", format!("redis://127.0.0.1:{free_port}/"))
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("DB_NOTIFY_ENABLED", "false")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !lines.iter().any(|line: &String| line.contains("Admin:")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "no banner within 120 s:\n{}\nstderr:\n{}",
                    lines.join("\n"),
                    text(&out.stderr)
                );
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let all = lines.join("\n");
    assert!(all.contains("loaded demo data"), "{all}");
    assert!(
        lines
            .iter()
            .any(|line| line.contains("WARN") && line.contains("Redis does not answer")),
        "{all}"
    );
    assert!(
        all.contains("Redis tier on, but Redis DOES NOT ANSWER"),
        "{all}"
    );
    assert!(!all.contains("slow statement"), "{all}");
}
