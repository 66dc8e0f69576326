//! The demo data set: deterministic, so docs and tests can name real numbers.
//!
//! - organization `i` (1..=100) has id `i` and is reached on `+1800555` + `i` in 4 digits
//!   (`+18005550001`);
//! - lead `j` (0-based, 100,000 of them) has id `j + 1`, belongs to organization
//!   `(j % 100) + 1` and has phone `+16462` + `j` in 6 digits (`+16462000042`);
//! - each lead has a voice and an sms conversation with three messages in all;
//! - in development, one operator API key, [`DEMO_API_KEY`] ([`ensure_demo_api_key`]).
//!
//! Generated inside PostgreSQL (`generate_series`), in one transaction: seconds, not minutes.

use sqlx::PgPool;

use crate::api_key::{self, ApiKeySecret, Scope};

/// Organizations in the demo data.
pub const DEMO_ORGS: i64 = 100;
/// Leads in the demo data.
pub const DEMO_LEADS: i64 = 100_000;

/// The demo API key: an operator key named `demo`, public (the README quotes it), so it
/// is loaded in development only and refused when `APP_ENV` is production.
pub const DEMO_API_KEY: &str = "tck_demo_development_only";

/// The demo API key's name.
pub const DEMO_API_KEY_NAME: &str = "demo";

/// Stores [`DEMO_API_KEY`] unless a key with its digest exists (a revoked one stays
/// revoked); whether it was added.
pub async fn ensure_demo_api_key(pool: &PgPool) -> Result<bool, crate::Error> {
    let secret = ApiKeySecret::from_text(DEMO_API_KEY);
    Ok(
        api_key::insert(pool, Scope::Operator, DEMO_API_KEY_NAME, &secret)
            .await?
            .is_some(),
    )
}

/// Whether [`DEMO_API_KEY`] is stored and not revoked.
pub async fn demo_api_key_active(pool: &PgPool) -> Result<bool, crate::Error> {
    api_key::is_active(pool, &ApiKeySecret::from_text(DEMO_API_KEY)).await
}

/// The phone number of demo organization `i` (1-based).
pub fn demo_org_phone(i: i64) -> String {
    format!("+1800555{i:04}")
}

/// The phone number of demo lead `j` (0-based; its id is `j + 1`).
pub fn demo_lead_phone(j: i64) -> String {
    format!("+16462{j:06}")
}

/// What [`seed_if_empty`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seeded {
    /// The database already had organizations; nothing was written.
    AlreadyPopulated,
    /// The demo data was loaded.
    Loaded {
        /// Organizations written.
        orgs: i64,
        /// Leads written.
        leads: i64,
        /// Messages written.
        messages: i64,
    },
}

/// Loads the demo data when the database has no organization yet.
pub async fn seed_if_empty(pool: &PgPool) -> Result<Seeded, sqlx::Error> {
    seed_sized(pool, DEMO_ORGS, DEMO_LEADS).await
}

/// [`seed_if_empty`] with fewer organizations and leads (for tests); the same formulas, so
/// lead `j` and organization `i` are the same rows as in the full set.
pub async fn seed_sized(pool: &PgPool, orgs: i64, leads: i64) -> Result<Seeded, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Seeding is the one long statement this service runs; the pool's request-sized
    // statement timeout does not apply to it.
    sqlx::query("SET LOCAL statement_timeout = '10min'")
        .execute(&mut *tx)
        .await?;
    // 400k rows of demo data are not news to any cache: the change triggers skip them.
    crate::queries::mark_service_origin(&mut *tx).await?;
    // Two instances starting together must not both seed.
    sqlx::query("LOCK TABLE organizations IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM organizations)")
        .fetch_one(&mut *tx)
        .await?;
    if any {
        return Ok(Seeded::AlreadyPopulated);
    }
    let org_rows = sqlx::query(
        "INSERT INTO organizations (id, phone, name, settings, created_at, updated_at)
         SELECT i, '+1800555' || lpad(i::text, 4, '0'),
                (ARRAY['Acme', 'Globex', 'Initech', 'Umbrella', 'Hooli'])[i % 5 + 1]
                    || ' ' || (ARRAY['Dental', 'Realty', 'Insurance', 'Solar'])[i % 4 + 1]
                    || ' ' || i,
                jsonb_build_object('agent_name',
                    (ARRAY['Ava', 'Leo', 'Mia', 'Sam'])[i % 4 + 1]),
                timestamptz '2026-01-01 00:00:00+00',
                timestamptz '2026-01-01 00:00:00+00'
         FROM generate_series(1, $1) AS i",
    )
    .bind(orgs)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let lead_rows = sqlx::query(
        "INSERT INTO leads (id, org_id, phone, name, status, notes, created_at, updated_at)
         SELECT j + 1, (j % $2) + 1, '+16462' || lpad(j::text, 6, '0'),
                (ARRAY['Maria', 'James', 'Aisha', 'Wei', 'Olga', 'Carlos', 'Priya', 'Tom'])[j % 8 + 1]
                    || ' ' ||
                (ARRAY['Garcia', 'Smith', 'Khan', 'Chen', 'Ivanova', 'Lopez', 'Patel', 'Brown'])[(j / 8) % 8 + 1],
                (ARRAY['new', 'contacted', 'qualified', 'customer', 'lost'])[j % 5 + 1],
                CASE WHEN j % 3 = 0 THEN 'Prefers calls after 5pm' END,
                timestamptz '2026-01-02 00:00:00+00' + j * interval '1 second',
                timestamptz '2026-01-02 00:00:00+00' + j * interval '1 second'
         FROM generate_series(0, $1 - 1) AS j
         ORDER BY j",
    )
    .bind(leads)
    .bind(orgs)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query(
        "INSERT INTO conversations (lead_id, channel, started_at)
         SELECT l.id, c.channel, l.created_at + interval '1 day'
         FROM leads l CROSS JOIN (VALUES ('voice'), ('sms')) AS c(channel)
         ORDER BY l.id, c.channel DESC",
    )
    .execute(&mut *tx)
    .await?;
    let messages = sqlx::query(
        "INSERT INTO messages (conversation_id, lead_id, channel, direction, body, created_at)
         SELECT c.id, c.lead_id, c.channel, m.direction,
                replace(m.body, '{topic}',
                    (ARRAY['pricing', 'the premium plan', 'a demo', 'billing', 'onboarding'])[c.lead_id % 5 + 1]),
                c.started_at + m.after
         FROM conversations c
         JOIN (VALUES
                 ('voice', 1, 'inbound', 'Asked about {topic}', interval '0 minutes'),
                 ('voice', 2, 'outbound', 'Explained {topic} and offered a follow-up call', interval '5 minutes'),
                 ('sms', 3, 'inbound', 'Can you text me the details on {topic}?', interval '2 hours')
              ) AS m(channel, n, direction, body, after) ON m.channel = c.channel
         ORDER BY c.lead_id, m.n",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // Explicit ids leave the identity sequences behind; new rows must not collide.
    for table in ["organizations", "leads"] {
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
        ))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("ANALYZE organizations, leads, conversations, messages")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    Ok(Seeded::Loaded {
        orgs: count(org_rows),
        leads: count(lead_rows),
        messages: count(messages),
    })
}
