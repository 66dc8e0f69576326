//! A PostgreSQL database per test on the shared server, migrated, dropped afterwards.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// The shared PostgreSQL server, as an admin connection URL.
pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh database, dropped (with any connections left) when this is dropped.
pub struct TestDb {
    /// Its connection URL.
    pub url: String,
    name: String,
}

impl TestDb {
    /// A database name that does not exist yet (dropped afterwards if something created it).
    pub async fn absent(tag: &str) -> TestDb {
        let db = Self::empty(tag).await;
        let mut admin = PgConnection::connect(ADMIN_URL).await.unwrap();
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", db.name))
            .execute(&mut admin)
            .await
            .unwrap();
        db
    }

    /// An empty database (no migrations).
    pub async fn empty(tag: &str) -> TestDb {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "tc_{}_{}_{}",
            tag.chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = PgConnection::connect(ADMIN_URL)
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {ADMIN_URL}: {e}"));
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        TestDb {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }

    /// A migrated database.
    pub async fn migrated(tag: &str) -> TestDb {
        let db = Self::empty(tag).await;
        tiercache_repository::MIGRATOR
            .run(&db.pool().await)
            .await
            .unwrap();
        db
    }

    /// A migrated database holding the first `orgs` organizations and `leads` leads of the
    /// demo data set (same ids, phones and messages as the full set).
    pub async fn seeded(tag: &str, orgs: i64, leads: i64) -> TestDb {
        let db = Self::migrated(tag).await;
        tiercache_repository::seed::seed_sized(&db.pool().await, orgs, leads)
            .await
            .unwrap();
        db
    }

    /// A small pool on it.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(5)
            .connect(&self.url)
            .await
            .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async; a short-lived runtime on its own thread does the DROP.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(ADMIN_URL).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("note: test database {} was not dropped", self.name);
        }
    }
}
