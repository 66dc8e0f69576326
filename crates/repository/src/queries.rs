//! Plain queries, one function each, on any executor (pool or transaction). Every query
//! runs in the HTTP suites (`tests/suites/api.rs`); `tests/suites/queries.rs` covers their
//! edge cases and checks with `EXPLAIN` that each uses an index at the demo data's size.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};

use crate::model::{Context, HistoryPage, Lead, LeadPatch, Message, NewMessage, Org, Summary};

/// How many characters of a message a topic or preview keeps.
const PREVIEW_CHARS: i32 = 80;

/// The statements, public so that tests can `EXPLAIN` exactly what runs.
pub mod sql {
    /// The `org_by_phone` statement.
    pub const ORG_BY_PHONE: &str = "SELECT id, phone, name, settings, created_at, updated_at
         FROM organizations WHERE phone = $1";

    /// The `org_lead_ids` statement.
    pub const ORG_LEAD_IDS: &str = "SELECT id FROM leads WHERE org_id = $1";

    /// The `org_by_id` statement.
    pub const ORG_BY_ID: &str = "SELECT id, phone, name, settings, created_at, updated_at
         FROM organizations WHERE id = $1";

    /// The `lead_by_phone` statement.
    pub const LEAD_BY_PHONE: &str =
        "SELECT id, org_id, phone, name, status, notes, created_at, updated_at
         FROM leads WHERE org_id = $1 AND phone = $2";

    /// The `lead_by_id` statement.
    pub const LEAD_BY_ID: &str =
        "SELECT id, org_id, phone, name, status, notes, created_at, updated_at
         FROM leads WHERE id = $1";

    /// The `context` statement.
    pub const CONTEXT: &str = "SELECT l.id AS lead_id, l.org_id, o.name AS org_name,
                o.settings ->> 'agent_name' AS agent_name,
                l.name, l.status, l.notes,
                (SELECT count(*) FROM messages m WHERE m.lead_id = l.id) AS message_count,
                (SELECT max(m.created_at) FROM messages m WHERE m.lead_id = l.id) AS last_contact_at,
                ARRAY(SELECT left(m.body, $2) FROM messages m
                      WHERE m.lead_id = l.id AND m.direction = 'inbound'
                      ORDER BY m.created_at DESC, m.id DESC LIMIT 3) AS last_topics
         FROM leads l JOIN organizations o ON o.id = l.org_id
         WHERE l.id = $1";

    /// The `summary` statement.
    pub const SUMMARY: &str = "SELECT l.id AS lead_id,
                count(m.id) AS message_count,
                count(m.id) FILTER (WHERE m.direction = 'inbound') AS inbound_count,
                count(m.id) FILTER (WHERE m.direction = 'outbound') AS outbound_count,
                ARRAY(SELECT DISTINCT c.channel FROM messages c WHERE c.lead_id = l.id
                      ORDER BY c.channel) AS channels,
                min(m.created_at) AS first_contact_at,
                max(m.created_at) AS last_contact_at,
                (SELECT left(z.body, $2) FROM messages z WHERE z.lead_id = l.id
                 ORDER BY z.created_at DESC, z.id DESC LIMIT 1) AS last_message
         FROM leads l LEFT JOIN messages m ON m.lead_id = l.id
         WHERE l.id = $1
         GROUP BY l.id";

    /// The `call` statement.
    pub const CALL: &str = "WITH o AS (
             SELECT id, phone, name, settings, created_at, updated_at
             FROM organizations WHERE phone = $1
         ), l AS (
             SELECT l.id, l.org_id, l.phone, l.name, l.status, l.notes, l.created_at, l.updated_at
             FROM leads l JOIN o ON l.org_id = o.id WHERE l.phone = $2
         )
         SELECT
             (SELECT to_jsonb(o) FROM o) AS org,
             (SELECT to_jsonb(l) FROM l) AS lead,
             (SELECT jsonb_build_object(
                 'lead_id', l.id, 'org_id', l.org_id, 'org_name', o.name,
                 'agent_name', o.settings ->> 'agent_name',
                 'name', l.name, 'status', l.status, 'notes', l.notes,
                 'message_count', (SELECT count(*) FROM messages m WHERE m.lead_id = l.id),
                 'last_contact_at', (SELECT max(m.created_at) FROM messages m WHERE m.lead_id = l.id),
                 'last_topics', to_jsonb(ARRAY(
                     SELECT left(m.body, $3) FROM messages m
                     WHERE m.lead_id = l.id AND m.direction = 'inbound'
                     ORDER BY m.created_at DESC, m.id DESC LIMIT 3)))
              FROM l, o) AS context";

    /// The `history_total` statement.
    pub const HISTORY_TOTAL: &str =
        "SELECT (SELECT count(*) FROM messages m WHERE m.lead_id = l.id)
         FROM leads l WHERE l.id = $1";

    /// The `history_page` statement.
    pub const HISTORY_PAGE: &str = "SELECT id, lead_id, channel, direction, body, created_at
         FROM messages WHERE lead_id = $1
         ORDER BY created_at DESC, id DESC
         LIMIT $2 OFFSET $3";

    /// The `mark_service_origin` statement.
    pub const MARK_SERVICE_ORIGIN: &str = "SELECT set_config('tiercache.origin', 'service', true)";

    /// The `update_lead` statement.
    /// It marks its own transaction as the service's (see [`MARK_SERVICE_ORIGIN`]), so it
    /// runs on its own, in one round trip.
    pub const UPDATE_LEAD: &str = "UPDATE leads SET
            name = COALESCE($2, name),
            status = COALESCE($3, status),
            notes = CASE WHEN $4 THEN $5 ELSE notes END,
            updated_at = $6
         FROM (SELECT set_config('tiercache.origin', 'service', true)) AS origin
         WHERE leads.id = $1
         RETURNING leads.id, leads.org_id, leads.phone, leads.name, leads.status,
                   leads.notes, leads.created_at, leads.updated_at";

    /// The `upsert_conversation` statement.
    pub const UPSERT_CONVERSATION: &str = "INSERT INTO conversations (lead_id, channel, started_at)
         SELECT id, $2, $3 FROM leads WHERE id = $1
         ON CONFLICT (lead_id, channel) DO UPDATE SET channel = EXCLUDED.channel
         RETURNING id, (SELECT phone FROM leads WHERE id = $1)";

    /// The `insert_message` statement.
    pub const INSERT_MESSAGE: &str =
        "INSERT INTO messages (conversation_id, lead_id, channel, direction, body, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, lead_id, channel, direction, body, created_at";
}

/// Marks the current transaction as Tiercache's own, so the change triggers send no
/// notification for it (the service invalidates its writes itself and tells the other
/// instances over Redis). Transaction-local: run it inside the transaction that writes.
pub async fn mark_service_origin(db: impl PgExecutor<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(sql::MARK_SERVICE_ORIGIN)
        .execute(db)
        .await
        .map(|_| ())
}

/// The organization reached on `phone` (E.164).
pub async fn org_by_phone(
    db: impl PgExecutor<'_>,
    phone: &str,
) -> Result<Option<Org>, sqlx::Error> {
    sqlx::query_as(sql::ORG_BY_PHONE)
        .bind(phone)
        .fetch_optional(db)
        .await
}

/// The organization with id `id`.
pub async fn org_by_id(db: impl PgExecutor<'_>, id: i64) -> Result<Option<Org>, sqlx::Error> {
    sqlx::query_as(sql::ORG_BY_ID)
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The ids of organization `org_id`'s leads.
pub async fn org_lead_ids(db: impl PgExecutor<'_>, org_id: i64) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(sql::ORG_LEAD_IDS)
        .bind(org_id)
        .fetch_all(db)
        .await
}

/// What a change to organization `org_id` (reached on `phone`) invalidates: its phone key
/// and its leads' views that show its name ([`Keys::org_changed`](crate::Keys::org_changed)).
/// The one meaning of "an organization changed", for the database listener and the admin
/// API alike.
pub async fn org_invalidation(
    db: impl PgExecutor<'_>,
    keys: crate::Keys<'_>,
    org_id: i64,
    phone: &str,
) -> Result<tiercache::Invalidation, sqlx::Error> {
    let leads = org_lead_ids(db, org_id).await?;
    Ok(keys.org_changed(phone, &leads))
}

/// The lead with `phone` (E.164) in organization `org_id`.
pub async fn lead_by_phone(
    db: impl PgExecutor<'_>,
    phone: &str,
    org_id: i64,
) -> Result<Option<Lead>, sqlx::Error> {
    sqlx::query_as(sql::LEAD_BY_PHONE)
        .bind(org_id)
        .bind(phone)
        .fetch_optional(db)
        .await
}

/// The lead with id `id`.
pub async fn lead_by_id(db: impl PgExecutor<'_>, id: i64) -> Result<Option<Lead>, sqlx::Error> {
    sqlx::query_as(sql::LEAD_BY_ID)
        .bind(id)
        .fetch_optional(db)
        .await
}

/// A lead's conversation context, in one round trip.
pub async fn context(
    db: impl PgExecutor<'_>,
    lead_id: i64,
) -> Result<Option<Context>, sqlx::Error> {
    sqlx::query_as(sql::CONTEXT)
        .bind(lead_id)
        .bind(PREVIEW_CHARS)
        .fetch_optional(db)
        .await
}

/// Counts over a lead's conversation, in one round trip.
pub async fn summary(
    db: impl PgExecutor<'_>,
    lead_id: i64,
) -> Result<Option<Summary>, sqlx::Error> {
    sqlx::query_as(sql::SUMMARY)
        .bind(lead_id)
        .bind(PREVIEW_CHARS)
        .fetch_optional(db)
        .await
}

/// Everything a call needs, in one round trip: the organization reached on `called`, the
/// lead with phone `caller` in it, and that lead's context (each `None` when absent).
pub async fn call(
    db: impl PgExecutor<'_>,
    called: &str,
    caller: &str,
) -> Result<CallRows, sqlx::Error> {
    let (org, lead, context): CallColumns = sqlx::query_as(sql::CALL)
        .bind(called)
        .bind(caller)
        .bind(PREVIEW_CHARS)
        .fetch_one(db)
        .await?;
    Ok(CallRows {
        org: org.map(|j| j.0),
        lead: lead.map(|j| j.0),
        context: context.map(|j| j.0),
    })
}

/// The call query's three JSON columns.
type CallColumns = (Option<Json<Org>>, Option<Json<Lead>>, Option<Json<Context>>);

/// What [`call`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRows {
    /// The organization reached on the number called.
    pub org: Option<Org>,
    /// The caller as a lead of it.
    pub lead: Option<Lead>,
    /// The lead's context.
    pub context: Option<Context>,
}

/// A page of a lead's messages, newest first; `None` when the lead does not exist.
pub async fn history(
    conn: &mut PgConnection,
    lead_id: i64,
    limit: u32,
    offset: u32,
) -> Result<Option<HistoryPage>, sqlx::Error> {
    let total: Option<i64> = sqlx::query_scalar(sql::HISTORY_TOTAL)
        .bind(lead_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(total) = total else {
        return Ok(None);
    };
    let messages: Vec<Message> = sqlx::query_as(sql::HISTORY_PAGE)
        .bind(lead_id)
        .bind(i64::from(limit))
        .bind(i64::from(offset))
        .fetch_all(&mut *conn)
        .await?;
    Ok(Some(HistoryPage {
        lead_id,
        limit,
        offset,
        total,
        messages,
    }))
}

/// Applies `patch` to lead `id` and returns the lead as it now is.
pub async fn update_lead(
    db: impl PgExecutor<'_>,
    id: i64,
    patch: &LeadPatch,
    now: DateTime<Utc>,
) -> Result<Option<Lead>, sqlx::Error> {
    let (set_notes, notes) = match &patch.notes {
        Some(notes) => (true, notes.clone()),
        None => (false, None),
    };
    sqlx::query_as(sql::UPDATE_LEAD)
        .bind(id)
        .bind(&patch.name)
        .bind(&patch.status)
        .bind(set_notes)
        .bind(notes)
        .bind(now)
        .fetch_optional(db)
        .await
}

/// Adds a message to lead `lead_id`'s conversation on its channel (created if need be);
/// returns it with the lead's phone (which keys the lead's cache invalidation).
pub async fn insert_message(
    conn: &mut PgConnection,
    lead_id: i64,
    message: &NewMessage,
    now: DateTime<Utc>,
) -> Result<Option<(Message, String)>, sqlx::Error> {
    let conversation: Option<(i64, String)> = sqlx::query_as(sql::UPSERT_CONVERSATION)
        .bind(lead_id)
        .bind(&message.channel)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
    let Some((conversation, lead_phone)) = conversation else {
        return Ok(None);
    };
    let inserted = sqlx::query_as(sql::INSERT_MESSAGE)
        .bind(conversation)
        .bind(lead_id)
        .bind(&message.channel)
        .bind(&message.direction)
        .bind(&message.body)
        .bind(now)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Some((inserted, lead_phone)))
}
