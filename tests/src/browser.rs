//! A real headless Chromium driven over WebDriver: a `chromedriver` child on a free loopback
//! port, a throwaway profile, and a [`fantoccini`] session on it. For the suites that test
//! the service's pages (`/calls`) as a browser runs them.
//!
//! Needs Debian's `chromium` and `chromium-driver` packages (`.ci/run` installs them); when
//! `chromedriver` is missing the fixture fails, saying so, rather than skipping the test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::wd::{Capabilities, TimeoutConfiguration};
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::time::Instant;

/// Where Debian's `chromium-driver` puts the driver.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Where Debian's `chromium` puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";

/// How long `chromedriver` gets to answer `/status` as ready.
const DRIVER_READY_DEADLINE: Duration = Duration::from_secs(10);

/// Gap between readiness probes; a process becoming ready emits no event we could await.
const DRIVER_READY_POLL: Duration = Duration::from_millis(50);

/// How many fresh ports `start` tries when another process grabs the one it picked.
const START_ATTEMPTS: u32 = 3;

/// How long ending a session left open may take when the fixture drops.
const END_SESSION_DEADLINE: Duration = Duration::from_secs(5);

/// The longest a script run through [`Browser::wait_until`] may take, over its own bound.
const SCRIPT_SLACK: Duration = Duration::from_secs(5);

/// A headless Chromium session, its driver and profile removed on drop.
///
/// Call [`close`](Self::close) at the end of a test so the browser quits cleanly; when a
/// test panics first, dropping kills the driver's whole process group (the browser with it).
pub struct Browser {
    client: Option<Client>,
    driver: Driver,
}

/// The `chromedriver` child, leader of its own process group (Chromium and its helpers join
/// it), killed as a group and reaped on drop, its profile directory removed.
struct Driver {
    child: Child,
    port: u16,
    profile: PathBuf,
    /// The session still open (a test that panicked before `close`).
    session: Option<String>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // A session still open is ended first, so chromedriver quits the browser and reaps
        // it: browser processes orphaned by the kill below would stay zombies where the
        // container's init does not reap them.
        if let Some(session) = self.session.take() {
            end_session(self.port, &session);
        }
        // The negative id names the group, so the browser processes go too; `kill` fails only
        // when they are gone already. Reaping here leaves no zombie behind.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    /// Starts `chromedriver` on a free port and opens a headless Chromium session on it.
    ///
    /// Panics, naming the package to install, when `chromedriver` or `chromium` is missing.
    pub async fn start() -> Browser {
        for path in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the browser tests need Debian's chromium and chromium-driver \
                 (apt-get install -y chromium chromium-driver; .ci/run installs them)"
            );
        }
        let profile = crate::fresh_dir("chromium");
        for _ in 0..START_ATTEMPTS {
            let port = crate::free_port();
            let mut child = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {CHROMEDRIVER}: {e}"));
            let url = format!("http://127.0.0.1:{port}");
            if !driver_ready(&mut child, &url).await {
                let _ = child.kill();
                let _ = child.wait();
                continue;
            }
            let mut driver = Driver {
                child,
                port,
                profile: profile.clone(),
                session: None,
            };
            let client = ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities(&profile))
                .connect(&url)
                .await
                .unwrap_or_else(|e| panic!("chromedriver could not start {CHROMIUM}: {e}"));
            driver.session = client.session_id().await.ok().flatten();
            return Browser {
                client: Some(client),
                driver,
            };
        }
        let _ = std::fs::remove_dir_all(&profile);
        panic!("chromedriver did not come up on {START_ATTEMPTS} different ports");
    }

    fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("the session is open until close")
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.client()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The address bar's URL.
    pub async fn url(&self) -> String {
        self.client().current_url().await.unwrap().to_string()
    }

    /// Runs `script` (a function body; `return` gives its value) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.client()
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until the JavaScript expression `condition` is truthy in the page, re-checking
    /// at each change of the document (a `MutationObserver`), for at most `within`. Panics
    /// with `what` and the expression `describe` (evaluated in the page) when it never is.
    pub async fn wait_until(&self, what: &str, condition: &str, describe: &str, within: Duration) {
        let script = format!(
            r#"
            const done = arguments[arguments.length - 1];
            const holds = () => {{ try {{ return Boolean({condition}); }} catch (_) {{ return false; }} }};
            const describe = () => {{ try {{ return String({describe}); }} catch (e) {{ return String(e); }} }};
            if (holds()) {{ done({{ ok: true }}); return; }}
            const observer = new MutationObserver(() => {{
              if (holds()) {{ observer.disconnect(); clearTimeout(timer); done({{ ok: true }}); }}
            }});
            observer.observe(document, {{ subtree: true, childList: true, attributes: true, characterData: true }});
            const timer = setTimeout(() => {{
              observer.disconnect();
              done({{ ok: holds(), state: describe() }});
            }}, {ms});
            "#,
            ms = within.as_millis()
        );
        self.client()
            .update_timeouts(TimeoutConfiguration::new(
                None,
                None,
                Some(within + SCRIPT_SLACK),
            ))
            .await
            .unwrap();
        let started = Instant::now();
        let outcome = self
            .client()
            .execute_async(&script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
        assert!(
            outcome["ok"] == Value::Bool(true),
            "{what}: not within {within:?} (waited {:?}); the page shows: {}",
            started.elapsed(),
            outcome["state"].as_str().unwrap_or("?")
        );
    }

    /// Ends the session (the browser quits) and stops the driver.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take()
            && client.close().await.is_ok()
        {
            self.driver.session = None;
        }
    }
}

/// Headless Chromium on a throwaway profile, in a container-friendly configuration.
fn capabilities(profile: &Path) -> Capabilities {
    let value = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless=new",
                // Containers running as root have no user namespaces for the sandbox.
                "--no-sandbox",
                "--disable-gpu",
                // /dev/shm is small in containers; Chromium crashes tabs when it fills.
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    match value {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// `DELETE /session/{id}` on the driver at `port`, blocking (it runs in `Drop`), bounded by a
/// few seconds; failures are ignored, as the process group is killed next anyway.
fn end_session(port: u16, session: &str) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(END_SESSION_DEADLINE));
    let _ = stream.set_write_timeout(Some(END_SESSION_DEADLINE));
    let request = format!(
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        // The answer comes once the browser has quit; its content does not matter.
        let _ = stream.read_to_end(&mut Vec::new());
    }
}

/// Polls `chromedriver`'s `/status` until it says ready (true), or it exits or the deadline
/// passes (false).
async fn driver_ready(child: &mut Child, url: &str) -> bool {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let deadline = Instant::now() + DRIVER_READY_DEADLINE;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        if let Ok(response) = http.get(format!("{url}/status")).send().await
            && let Ok(status) = response.json::<Value>().await
            && status["value"]["ready"] == Value::Bool(true)
        {
            return true;
        }
        tokio::time::sleep(DRIVER_READY_POLL).await;
    }
    false
}
