//! The real server on a loopback port, for the HTTP suites.
//!
//! Each server started on a database gets an operator API key of its own, which its
//! `client` sends by default, so suites about other things need not think of keys;
//! [`TestServer::client_with`] sends another key, or none.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tiercache::{CacheConfig, CacheObserver, Fanout, TwoTierCache};
use tiercache_monitoring::{Metrics, MonitorTask};
use tiercache_repository::api_key::{self, Scope};
use tiercache_repository::{DbListener, Repository};
use tiercache_server::auth::{ApiKeys, KeyRefreshTask};
use tiercache_server::calls::CallsTasks;
use tiercache_server::config::HttpConfig;
use tiercache_server::{AppState, Config, router};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cache::TEST_SECRET;
use crate::db::TestDb;

/// A running server and a client for it; stops when dropped.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client.
    pub client: reqwest::Client,
    /// The handler state (its repository and cache).
    pub state: AppState,
    /// The database change listener, when [`Options::db_notify`] asked for one.
    pub db_listener: Option<DbListener>,
    /// The API key `client` sends (an operator's), if any.
    pub api_key: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    _monitor: MonitorTask,
    key_refresh: Option<KeyRefreshTask>,
    keys_db: Option<TestDb>,
    calls: Option<CallsTasks>,
}

/// How often a test server's monitor samples and evaluates alerts.
pub const MONITOR_TICK: Duration = Duration::from_millis(100);

/// A clock for reproducible writes: 2026-06-01, one second further at each call.
pub fn stepping_clock() -> tiercache_repository::Clock {
    let tick = Arc::new(AtomicI64::new(0));
    let start: DateTime<Utc> = Utc
        .with_ymd_and_hms(2026, 6, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    Arc::new(move || start + chrono::Duration::seconds(tick.fetch_add(1, Ordering::SeqCst)))
}

/// Server settings for tests.
pub struct Options<'a> {
    /// L2 on this Redis, or L1 only.
    pub redis_url: Option<&'a str>,
    /// Key namespace prefix.
    pub prefix: &'a str,
    /// Webhook budget.
    pub webhook_budget: Duration,
    /// Receives the cache's events (besides the metrics).
    pub observer: Option<Arc<dyn CacheObserver>>,
    /// Turns the admin API on.
    pub admin_token: Option<&'a str>,
    /// Runs the database change listener (`DB_NOTIFY_ENABLED`); off unless a test needs it.
    pub db_notify: bool,
    /// More environment variables, set after the ones above.
    pub vars: Vec<(&'a str, String)>,
    /// Re-reads the API keys in the background, as the service does. Off only where a
    /// test counts SQL statements, which the re-reads would add to.
    pub refresh_api_keys: bool,
    /// Runs the live call log, as the service does (its tasks live as long as the server).
    /// Off unless a test needs it: suites that count Redis commands or SQL statements
    /// around a webhook call would count the `call_started` it appends and applies.
    pub calls: bool,
}

impl<'a> Options<'a> {
    /// L2 on `redis_url` (or none), a 2 s webhook budget, no observer.
    pub fn new(prefix: &'a str, redis_url: Option<&'a str>) -> Self {
        Options {
            redis_url,
            prefix,
            webhook_budget: Duration::from_secs(2),
            observer: None,
            admin_token: None,
            db_notify: false,
            vars: Vec::new(),
            refresh_api_keys: true,
            calls: false,
        }
    }
}

impl TestServer {
    /// Serves `db` with the configuration the environment variables would give, plus `opts`.
    pub async fn start(db: &TestDb, opts: Options<'_>) -> TestServer {
        Self::start_url(&db.url, opts).await
    }

    /// [`start`](Self::start) on the database at `url`.
    pub async fn start_url(url: &str, opts: Options<'_>) -> TestServer {
        let mut vars = vec![
            ("DATABASE_URL".to_owned(), url.to_owned()),
            ("DATABASE_POOL_SIZE".to_owned(), "5".to_owned()),
            ("CACHE_PREFIX".to_owned(), opts.prefix.to_owned()),
            ("APP_ENV".to_owned(), "test".to_owned()),
            (
                "CACHE_KEY_SECRET".to_owned(),
                String::from_utf8_lossy(TEST_SECRET).into_owned(),
            ),
            (
                "REDIS_ENABLED".to_owned(),
                opts.redis_url.is_some().to_string(),
            ),
            (
                "WEBHOOK_BUDGET_MS".to_owned(),
                opts.webhook_budget.as_millis().to_string(),
            ),
            ("DB_NOTIFY_ENABLED".to_owned(), opts.db_notify.to_string()),
        ];
        if let Some(url) = opts.redis_url {
            vars.push(("REDIS_URL".to_owned(), url.to_owned()));
        }
        vars.extend(opts.vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let config = Config::from_vars(vars).unwrap();
        let pool = tiercache_server::startup::connect(&config.database)
            .await
            .unwrap();
        let metrics = Arc::new(Metrics::new(
            tiercache_repository::schema().schema.entities(),
        ));
        let mut observers: Vec<Arc<dyn CacheObserver>> = vec![metrics.clone()];
        observers.extend(opts.observer);
        let cache =
            TwoTierCache::with_observer(config.cache.clone(), Arc::new(Fanout(observers))).unwrap();
        let db_listener =
            tiercache_server::startup::spawn_db_listener(&config.database, &cache).unwrap();
        let (info, key) = api_key::create(pool.pool(), Scope::Operator, "test-fixture")
            .await
            .unwrap();
        assert_eq!(info.scope, Scope::Operator);
        let api_keys = ApiKeys::new(
            pool.pool().clone(),
            config.cache.staleness_bound(),
            config.production,
        );
        api_keys.refresh().await.unwrap();
        let key_refresh = opts.refresh_api_keys.then(|| api_keys.spawn_refresh());
        // Started as start-up starts it, on the service's pool and the cache's Redis.
        let calls = opts.calls.then(|| {
            tiercache_server::calls::start(&config, &cache, pool.pool().clone(), metrics.clone())
                .unwrap()
        });
        let repo = Repository::new(pool, cache).with_clock(stepping_clock());
        let mut state = AppState::new(repo, metrics, config.webhook_budget)
            .with_admin_token(opts.admin_token.map(str::to_owned))
            .with_api_keys(api_keys)
            .with_webhook_secret(config.webhook_secret.clone());
        let calls_tasks = calls.map(|(calls, tasks)| {
            state = state.clone().with_calls(calls);
            tasks
        });
        let mut server = Self::serve_as(state, config.http, Some(key.expose().to_owned())).await;
        server.db_listener = db_listener;
        server.key_refresh = key_refresh;
        server.calls = calls_tasks;
        server
    }

    /// Waits (up to 10 s) until the database change listener listens; panics without one.
    pub async fn db_listening(&self) {
        let mut status = self
            .db_listener
            .as_ref()
            .expect("a server started with db_notify")
            .subscribe();
        tokio::time::timeout(
            Duration::from_secs(10),
            status.wait_for(|s| s.listening_since.is_some()),
        )
        .await
        .expect("the change listener listens within 10 s")
        .expect("the change listener is running");
    }

    /// A server whose PostgreSQL pool points at a port where nothing listens (L1 only).
    pub async fn with_unreachable_database() -> TestServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(300))
            .connect_lazy(&format!("postgres://postgres@127.0.0.1:{port}/none"))
            .unwrap();
        let metrics = Arc::new(Metrics::new(
            tiercache_repository::schema().schema.entities(),
        ));
        let cache = TwoTierCache::with_observer(
            tiercache::CacheConfig::builder().build().unwrap(),
            metrics.clone(),
        )
        .unwrap();
        let repo = Repository::new(pool, cache);
        Self::serve_with_keys_apart(AppState::new(repo, metrics, Duration::from_secs(2))).await
    }

    /// Serves `state` with its API keys read once from a database of their own (holding an
    /// operator key, which the client sends), whatever `state`'s repository reaches: an
    /// instance whose PostgreSQL went down after it read its keys, which it then uses
    /// through their grace.
    pub async fn serve_with_keys_apart(state: AppState) -> TestServer {
        let db = TestDb::migrated("keys").await;
        let pool = db.pool().await;
        let (_, key) = api_key::create(&pool, Scope::Operator, "test-fixture")
            .await
            .unwrap();
        let keys = ApiKeys::new(pool, CacheConfig::DEFAULT_STALENESS_BOUND, false);
        keys.refresh().await.unwrap();
        let state = state.with_api_keys(keys);
        let key = Some(key.expose().to_owned());
        let mut server = Self::serve_as(state, HttpConfig::default(), key).await;
        server.keys_db = Some(db);
        server
    }

    /// Serves `state` on a free loopback port, its monitor ticking every 100 ms.
    pub async fn serve(state: AppState) -> TestServer {
        Self::serve_with(state, HttpConfig::default()).await
    }

    /// [`serve`](Self::serve) with these read bounds.
    pub async fn serve_with(state: AppState, http: HttpConfig) -> TestServer {
        Self::serve_as(state, http, None).await
    }

    /// [`serve_with`](Self::serve_with), its client sending `api_key`.
    async fn serve_as(state: AppState, http: HttpConfig, api_key: Option<String>) -> TestServer {
        let monitor = state.spawn_monitor(MONITOR_TICK);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            tiercache_server::http::serve(listener, app, http, shutdown)
                .await
                .unwrap();
        });
        TestServer {
            base,
            client: client_with(api_key.as_deref()),
            state,
            db_listener: None,
            api_key,
            stop: Some(stop),
            task: Some(task),
            _monitor: monitor,
            key_refresh: None,
            keys_db: None,
            calls: None,
        }
    }

    /// A client sending `api_key` (`None`: no `Authorization` header at all).
    pub fn client_with(&self, api_key: Option<&str>) -> reqwest::Client {
        client_with(api_key)
    }

    /// `GET path`: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Every sample of a scrape of `/api/monitoring/metrics`, by its full name with labels.
    pub async fn scrape(&self) -> std::collections::HashMap<String, f64> {
        let (status, text) = self.get("/api/monitoring/metrics").await;
        assert_eq!(status, 200);
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// `method path` with a raw body: (status, body).
    pub async fn send(&self, method: reqwest::Method, path: &str, body: &str) -> (u16, String) {
        let response = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the server to end.
    pub async fn shutdown(mut self) {
        // As the service does: live feeds end, or the graceful shutdown would wait on them.
        if let Some(calls) = &self.state.calls {
            calls.close_feeds();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

fn client_with(api_key: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = api_key {
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).unwrap();
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
