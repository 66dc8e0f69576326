//! Call sessions in PostgreSQL: events applied idempotently, sessions folded whatever order
//! events arrive in, each change numbered per organization and announced (`NOTIFY`).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgPool, Row};

use crate::error::StoreError;
use crate::event::{CallEvent, EventKind};
use crate::fold::fold;
use crate::session::{CallSession, Cursor, SessionStatus};

/// The channel every session change is announced on (payload: the session as JSON).
pub const NOTIFY_CHANNEL: &str = "tiercache_calls";

/// What applying one event did.
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    /// It was new: its session changed to this.
    New(Box<CallSession>),
    /// It had been applied before: nothing changed.
    Duplicate,
}

/// The call sessions' table; cheap to clone.
///
/// # Concurrency
/// Applying takes a transaction-scoped advisory lock on each of its calls, so two instances
/// applying events of one call at once fold one after the other (the second sees the
/// first's events), and then the organizations' cursor rows, whose locks make an
/// organization's changes commit in cursor order. Every apply takes the calls' locks in one
/// statement in hash order, then the rows in organization order, so applies cannot
/// deadlock.
#[derive(Clone)]
pub struct SessionStore {
    pool: PgPool,
}

/// The session's columns, in the order [`session_from_row`] reads them.
const SESSION_COLUMNS: &str = "call_sid, org_id, lead_id, caller, greeting_source, status, \
     started_at, authenticated_at, authentication_failed_at, intent, transfer_initiated_at, \
     transferred_at, ended_at, duration_seconds, last_event, last_event_at, events, change_seq";

/// Locks many calls, in one order whoever asks (no two batches can wait on each other).
const LOCK_CALLS: &str = "SELECT pg_advisory_xact_lock(h) FROM \
     (SELECT DISTINCT hashtextextended(s, 0) AS h FROM unnest($1::text[]) AS s ORDER BY h) AS c";

const INSERT_EVENTS: &str = "INSERT INTO call_events (event_id, call_sid, org_id, kind, at, data) \
     SELECT id::uuid, sid, org, kind, at, data::jsonb FROM unnest($1::text[], $2::text[], \
     $3::bigint[], $4::text[], $5::timestamptz[], $6::text[]) AS e(id, sid, org, kind, at, data) \
     ON CONFLICT (event_id) DO NOTHING RETURNING event_id::text";

const CALLS_EVENTS: &str = "SELECT event_id::text, call_sid, org_id, kind, at, data \
     FROM call_events WHERE call_sid = ANY($1) \
     ORDER BY call_events.call_sid, call_events.at, call_events.event_id";

/// Moves each organization's cursor by its count of changes, in organization order (the
/// rows' locks are taken in that order), returning the last number each took.
const BUMP_CURSORS: &str = "INSERT INTO call_feed_cursors (org_id, seq) \
     SELECT org, n FROM unnest($1::bigint[], $2::bigint[]) AS c(org, n) ORDER BY org \
     ON CONFLICT (org_id) DO UPDATE SET seq = call_feed_cursors.seq + EXCLUDED.seq \
     RETURNING org_id, seq";

/// Writes many sessions from one JSON array of rows named as the columns.
const UPSERT_SESSIONS: &str = "INSERT INTO call_sessions (call_sid, org_id, lead_id, caller, \
     greeting_source, status, started_at, authenticated_at, authentication_failed_at, intent, \
     transfer_initiated_at, transferred_at, ended_at, duration_seconds, last_event, \
     last_event_at, events, change_seq) \
     SELECT call_sid, org_id, lead_id, caller, greeting_source, status, started_at, \
     authenticated_at, authentication_failed_at, intent, transfer_initiated_at, transferred_at, \
     ended_at, duration_seconds, last_event, last_event_at, events, change_seq \
     FROM jsonb_populate_recordset(NULL::call_sessions, $1::jsonb) \
     ON CONFLICT (call_sid) DO UPDATE SET org_id = EXCLUDED.org_id, \
     lead_id = EXCLUDED.lead_id, caller = EXCLUDED.caller, \
     greeting_source = EXCLUDED.greeting_source, status = EXCLUDED.status, \
     started_at = EXCLUDED.started_at, authenticated_at = EXCLUDED.authenticated_at, \
     authentication_failed_at = EXCLUDED.authentication_failed_at, intent = EXCLUDED.intent, \
     transfer_initiated_at = EXCLUDED.transfer_initiated_at, \
     transferred_at = EXCLUDED.transferred_at, ended_at = EXCLUDED.ended_at, \
     duration_seconds = EXCLUDED.duration_seconds, last_event = EXCLUDED.last_event, \
     last_event_at = EXCLUDED.last_event_at, events = EXCLUDED.events, \
     change_seq = EXCLUDED.change_seq";

const NOTIFY_ALL: &str = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p";

const CURSOR_NOW: &str = "SELECT seq FROM call_feed_cursors WHERE org_id = $1";

impl SessionStore {
    /// The store on `pool` (its migrations run).
    pub fn new(pool: PgPool) -> Self {
        SessionStore { pool }
    }

    /// Applies events, announcing each changed session at commit; one outcome per event,
    /// in order (a failed one changed nothing).
    ///
    /// The whole batch goes in one transaction of a fixed number of statements (one commit,
    /// one WAL flush, however many events); should a batch of several fail, each event is
    /// applied as a batch of its own, so one that cannot be applied fails alone.
    ///
    /// # Cancel safety
    /// Dropped mid-way, the transaction being run rolls back and the later events are not
    /// applied; applying them again is safe.
    pub async fn apply(&self, events: &[CallEvent]) -> Vec<Result<Applied, StoreError>> {
        if events.len() > 1 {
            match self.apply_batch(events).await {
                Ok(outcomes) => return outcomes.into_iter().map(Ok).collect(),
                Err(e) => {
                    tracing::debug!(error = %e, "call events: a batch failed; applying one by one")
                }
            }
        }
        let mut outcomes = Vec::with_capacity(events.len());
        for event in events {
            let outcome = self.apply_batch(std::slice::from_ref(event)).await;
            outcomes.push(outcome.map(|mut one| one.pop().unwrap_or(Applied::Duplicate)));
        }
        outcomes
    }

    /// Applies every event in one transaction: the calls locked (in one order, so two
    /// instances cannot deadlock), the events inserted, each touched call re-folded from
    /// all its events, the organizations' cursors bumped by as many changes, the sessions
    /// written and announced.
    async fn apply_batch(&self, events: &[CallEvent]) -> Result<Vec<Applied>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("beginning an apply"))?;
        let mut sids: Vec<&str> = events.iter().map(|e| e.call_sid.as_str()).collect();
        sids.sort_unstable();
        sids.dedup();
        sqlx::query(LOCK_CALLS)
            .bind(&sids)
            .execute(&mut *tx)
            .await
            .map_err(db("locking calls"))?;
        let inserted: Vec<String> = sqlx::query_scalar(INSERT_EVENTS)
            .bind(events.iter().map(|e| e.id.to_string()).collect::<Vec<_>>())
            .bind(
                events
                    .iter()
                    .map(|e| e.call_sid.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(events.iter().map(|e| e.org_id).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.at).collect::<Vec<_>>())
            .bind(
                events
                    .iter()
                    .map(|e| Value::Object(e.data.clone()).to_string())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(db("inserting call events"))?;
        if inserted.is_empty() {
            // Every one was applied before: roll back (drop), nothing changed.
            return Ok(vec![Applied::Duplicate; events.len()]);
        }
        let mut new_ids: HashSet<String> = inserted.into_iter().collect();
        let mut touched: Vec<&str> = events
            .iter()
            .filter(|e| new_ids.contains(&e.id.to_string()))
            .map(|e| e.call_sid.as_str())
            .collect();
        touched.sort_unstable();
        touched.dedup();
        let rows = sqlx::query(CALLS_EVENTS)
            .bind(&touched)
            .fetch_all(&mut *tx)
            .await
            .map_err(db("reading calls' events"))?;
        let mut by_call: BTreeMap<String, Vec<CallEvent>> = BTreeMap::new();
        for event in rows.iter().filter_map(event_from_row) {
            by_call
                .entry(event.call_sid.clone())
                .or_default()
                .push(event);
        }
        let mut sessions: Vec<CallSession> = by_call
            .values()
            .filter_map(|events| fold(events, Cursor(0)))
            .collect();
        // Number the changes: an organization's cursor moves by as many sessions as changed.
        let mut per_org: BTreeMap<i64, i64> = BTreeMap::new();
        for session in &sessions {
            *per_org.entry(session.org_id).or_default() += 1;
        }
        let bumped: Vec<(i64, i64)> = sqlx::query_as(BUMP_CURSORS)
            .bind(per_org.keys().copied().collect::<Vec<_>>())
            .bind(per_org.values().copied().collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await
            .map_err(db("numbering session changes"))?;
        let mut next: BTreeMap<i64, i64> = bumped
            .into_iter()
            .map(|(org, last)| (org, last - per_org.get(&org).copied().unwrap_or(0) + 1))
            .collect();
        for session in &mut sessions {
            let seq = next.entry(session.org_id).or_insert(1);
            session.cursor = Cursor(*seq);
            *seq += 1;
        }
        let rows: Vec<Value> = sessions.iter().map(session_row).collect();
        sqlx::query(UPSERT_SESSIONS)
            .bind(Value::Array(rows).to_string())
            .execute(&mut *tx)
            .await
            .map_err(db("writing call sessions"))?;
        let payloads: Vec<String> = sessions
            .iter()
            .map(|s| serde_json::to_string(s).unwrap_or_default())
            .collect();
        sqlx::query(NOTIFY_ALL)
            .bind(NOTIFY_CHANNEL)
            .bind(&payloads)
            .execute(&mut *tx)
            .await
            .map_err(db("announcing session changes"))?;
        tx.commit().await.map_err(db("committing an apply"))?;
        let by_sid: HashMap<&str, &CallSession> =
            sessions.iter().map(|s| (s.call_sid.as_str(), s)).collect();
        Ok(events
            .iter()
            .map(|e| {
                // The first of an id given twice in one batch is the one applied.
                match (
                    new_ids.remove(&e.id.to_string()),
                    by_sid.get(e.call_sid.as_str()),
                ) {
                    (true, Some(session)) => Applied::New(Box::new((*session).clone())),
                    _ => Applied::Duplicate,
                }
            })
            .collect())
    }

    /// An organization's sessions that started at or after `since`, and those still in
    /// progress that started within the last day, newest first (at most `limit`), with the
    /// organization's cursor now (for a live feed to go on from).
    pub async fn sessions(
        &self,
        org_id: i64,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<(Vec<CallSession>, Cursor), StoreError> {
        // The cursor is read first: the sessions read next hold every change up to it
        // (perhaps more, which a feed going on from it shows again, harmlessly).
        let cursor = self.cursor(org_id).await?;
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM call_sessions WHERE org_id = $1 \
             AND (started_at >= $2 OR (ended_at IS NULL AND started_at >= now() - interval '1 day')) \
             ORDER BY started_at DESC, call_sid LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(org_id)
            .bind(since)
            .bind(limit.max(0))
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing call sessions"))?;
        let sessions = rows
            .iter()
            .map(session_from_row)
            .collect::<Result<_, _>>()?;
        Ok((sessions, cursor))
    }

    /// An organization's sessions changed after `after`, oldest change first (at most
    /// `limit`), and the cursor to ask from next.
    pub async fn changes(
        &self,
        org_id: i64,
        after: Cursor,
        limit: i64,
    ) -> Result<(Vec<CallSession>, Cursor), StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM call_sessions WHERE org_id = $1 AND change_seq > $2 \
             ORDER BY change_seq LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(org_id)
            .bind(after.0)
            .bind(limit.max(0))
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing session changes"))?;
        let sessions: Vec<CallSession> = rows
            .iter()
            .map(session_from_row)
            .collect::<Result<_, _>>()?;
        let next = sessions.last().map_or(after, |s| s.cursor);
        Ok((sessions, next))
    }

    /// The organization of a call with a session, if any.
    pub async fn org_of(&self, call_sid: &str) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar("SELECT org_id FROM call_sessions WHERE call_sid = $1")
            .bind(call_sid)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("finding a call's organization"))
    }

    /// Whether PostgreSQL answers: tells a failing database from a failing event.
    pub(crate) async fn reachable(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    async fn cursor(&self, org_id: i64) -> Result<Cursor, StoreError> {
        let seq: Option<i64> = sqlx::query_scalar(CURSOR_NOW)
            .bind(org_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a feed cursor"))?;
        Ok(Cursor(seq.unwrap_or(0)))
    }
}

/// A stored event; `None` for a kind this build does not know (written by a newer one).
fn event_from_row(row: &PgRow) -> Option<CallEvent> {
    let id: String = row.try_get(0).ok()?;
    let kind: String = row.try_get(3).ok()?;
    let data: Json<Map<String, Value>> = row.try_get(5).ok()?;
    Some(CallEvent {
        id: id.parse().ok()?,
        call_sid: row.try_get(1).ok()?,
        org_id: row.try_get(2).ok()?,
        kind: EventKind::parse(&kind)?,
        at: row.try_get(4).ok()?,
        data: data.0,
    })
}

fn session_from_row(row: &PgRow) -> Result<CallSession, StoreError> {
    let read = |source| StoreError::Database {
        context: "reading a call session",
        source,
    };
    let status: String = row.try_get("status").map_err(read)?;
    let status = match status.as_str() {
        "ended" => SessionStatus::Ended,
        "transferred" => SessionStatus::Transferred,
        "transferring" => SessionStatus::Transferring,
        _ => SessionStatus::InProgress,
    };
    Ok(CallSession {
        call_sid: row.try_get("call_sid").map_err(read)?,
        org_id: row.try_get("org_id").map_err(read)?,
        lead_id: row.try_get("lead_id").map_err(read)?,
        caller: row.try_get("caller").map_err(read)?,
        greeting_source: row.try_get("greeting_source").map_err(read)?,
        status,
        in_progress: status != SessionStatus::Ended,
        started_at: row.try_get("started_at").map_err(read)?,
        authenticated_at: row.try_get("authenticated_at").map_err(read)?,
        authentication_failed_at: row.try_get("authentication_failed_at").map_err(read)?,
        intent: row.try_get("intent").map_err(read)?,
        transfer_initiated_at: row.try_get("transfer_initiated_at").map_err(read)?,
        transferred_at: row.try_get("transferred_at").map_err(read)?,
        ended_at: row.try_get("ended_at").map_err(read)?,
        duration_seconds: row.try_get("duration_seconds").map_err(read)?,
        last_event: row.try_get("last_event").map_err(read)?,
        last_event_at: row.try_get("last_event_at").map_err(read)?,
        events: row.try_get("events").map_err(read)?,
        cursor: Cursor(row.try_get("change_seq").map_err(read)?),
    })
}

/// A session as a row of [`UPSERT_SESSIONS`]: its JSON with the column names.
fn session_row(session: &CallSession) -> Value {
    let mut row = serde_json::to_value(session).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut row {
        map.remove("cursor");
        map.remove("in_progress");
        map.insert("status".into(), Value::from(status_name(session.status)));
        map.insert("change_seq".into(), Value::from(session.cursor.0));
    }
    row
}

/// The status as the table's CHECK constraint spells it (the JSON names).
const fn status_name(status: SessionStatus) -> &'static str {
    match status {
        SessionStatus::InProgress => "in_progress",
        SessionStatus::Transferring => "transferring",
        SessionStatus::Transferred => "transferred",
        SessionStatus::Ended => "ended",
    }
}

/// Wraps a driver error with what was being done.
fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { context, source }
}
