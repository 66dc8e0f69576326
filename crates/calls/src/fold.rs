//! The fold: a call's events, in any order, into its session. Pure, so the store can re-fold
//! from every event it holds and get the same session whatever order they came in.

use serde_json::Value;

use crate::event::{CallEvent, EventKind};
use crate::session::{CallSession, Cursor, SessionStatus};

/// Longest text kept from an event's data (intent, greeting source, caller). It bounds the
/// session's JSON, which travels as a `NOTIFY` payload (at most 8000 bytes).
pub(crate) const MAX_TEXT_CHARS: usize = 128;

/// The session `events` (one call's, any order, duplicates allowed) fold into, numbered
/// `cursor`; `None` without events.
///
/// Events are taken in `(at, id)` order, so ties between equal times are broken the same
/// way every time. `started_at` is `call_started`'s time, else the earliest event's; the
/// caller, lead and greeting come from `call_started`; the intent is the latest
/// `intent_detected`'s; the status is the furthest stage reached (ended, transferred,
/// transferring, in progress), whatever order the stages arrived in.
pub(crate) fn fold(events: &[CallEvent], cursor: Cursor) -> Option<CallSession> {
    let mut sorted: Vec<&CallEvent> = events.iter().collect();
    sorted.sort_by_key(|e| (e.at, e.id));
    sorted.dedup_by_key(|e| e.id);
    let first = *sorted.first()?;
    let last = *sorted.last()?;
    let find = |kind: EventKind| sorted.iter().copied().find(|e| e.kind == kind);
    let find_last = |kind: EventKind| sorted.iter().rev().copied().find(|e| e.kind == kind);

    let started = find(EventKind::CallStarted);
    let ended = find(EventKind::CallEnded);
    let transferred = find(EventKind::TransferCompleted);
    let transfer_initiated = find(EventKind::TransferInitiated);
    let status = if ended.is_some() {
        SessionStatus::Ended
    } else if transferred.is_some() {
        SessionStatus::Transferred
    } else if transfer_initiated.is_some() {
        SessionStatus::Transferring
    } else {
        SessionStatus::InProgress
    };
    let started_data = started.map(|e| &e.data);
    Some(CallSession {
        call_sid: first.call_sid.clone(),
        org_id: started.unwrap_or(first).org_id,
        lead_id: started_data.and_then(|d| d.get("lead_id")?.as_i64()),
        caller: started_data.and_then(|d| text(d.get("caller")?)),
        greeting_source: started_data.and_then(|d| text(d.get("greeting_source")?)),
        status,
        in_progress: status != SessionStatus::Ended,
        started_at: started.unwrap_or(first).at,
        authenticated_at: find(EventKind::CallAuthenticated).map(|e| e.at),
        authentication_failed_at: find_last(EventKind::AuthenticationFailed).map(|e| e.at),
        intent: find_last(EventKind::IntentDetected).and_then(|e| text(e.data.get("intent")?)),
        transfer_initiated_at: transfer_initiated.map(|e| e.at),
        transferred_at: transferred.map(|e| e.at),
        ended_at: ended.map(|e| e.at),
        duration_seconds: ended.and_then(|e| e.data.get("duration_seconds")?.as_f64()),
        last_event: last.kind.as_str().to_owned(),
        last_event_at: last.at,
        events: i32::try_from(sorted.len()).unwrap_or(i32::MAX),
        cursor,
    })
}

/// A string value, cut to [`MAX_TEXT_CHARS`]; anything else is no text.
fn text(value: &Value) -> Option<String> {
    value
        .as_str()
        .map(|s| s.chars().take(MAX_TEXT_CHARS).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::{DateTime, Duration, TimeZone, Utc};
    use serde_json::{Map, json};
    use uuid::Uuid;

    use super::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap()
    }

    fn event(kind: EventKind, secs: i64, data: Value) -> CallEvent {
        let data: Map<String, Value> = match data {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        CallEvent {
            id: Uuid::now_v7(),
            call_sid: "CA1".into(),
            org_id: 7,
            kind,
            at: t0() + Duration::seconds(secs),
            data,
        }
    }

    /// A whole call: a new caller, authenticated, an intent, a transfer, the end.
    fn lifecycle() -> Vec<CallEvent> {
        vec![
            CallEvent::started("CA1".into(), 7, None, "+14155550123", "new_caller", t0()),
            event(EventKind::CallAuthenticated, 5, json!({})),
            event(EventKind::IntentDetected, 8, json!({"intent": "billing"})),
            event(EventKind::IntentDetected, 9, json!({"intent": "cancel"})),
            event(EventKind::TransferInitiated, 10, json!({})),
            event(EventKind::TransferCompleted, 12, json!({})),
            event(EventKind::CallEnded, 60, json!({"duration_seconds": 60.5})),
        ]
    }

    #[test]
    fn a_whole_call_folds_into_its_session() {
        let s = fold(&lifecycle(), Cursor(3)).unwrap();
        assert_eq!(s.call_sid, "CA1");
        assert_eq!(s.org_id, 7);
        assert_eq!(s.caller.as_deref(), Some("•••0123"));
        assert_eq!(s.lead_id, None);
        assert_eq!(s.greeting_source.as_deref(), Some("new_caller"));
        assert_eq!(s.status, SessionStatus::Ended);
        assert!(!s.in_progress);
        assert_eq!(s.started_at, t0());
        assert_eq!(s.authenticated_at, Some(t0() + Duration::seconds(5)));
        assert_eq!(s.intent.as_deref(), Some("cancel"));
        assert_eq!(s.transfer_initiated_at, Some(t0() + Duration::seconds(10)));
        assert_eq!(s.transferred_at, Some(t0() + Duration::seconds(12)));
        assert_eq!(s.ended_at, Some(t0() + Duration::seconds(60)));
        assert_eq!(s.duration_seconds, Some(60.5));
        assert_eq!(s.last_event, "call_ended");
        assert_eq!(s.last_event_at, t0() + Duration::seconds(60));
        assert_eq!(s.events, 7);
        assert_eq!(s.cursor, Cursor(3));
    }

    #[test]
    fn any_order_gives_the_same_session() {
        let events = lifecycle();
        let expected = fold(&events, Cursor(1)).unwrap();
        let mut reversed = events.clone();
        reversed.reverse();
        assert_eq!(fold(&reversed, Cursor(1)).unwrap(), expected);
        // Every rotation, too: the end first, the start last, and in between.
        for k in 1..events.len() {
            let mut rotated = events.clone();
            rotated.rotate_left(k);
            assert_eq!(fold(&rotated, Cursor(1)).unwrap(), expected, "rotation {k}");
        }
    }

    #[test]
    fn duplicates_are_ignored() {
        let events = lifecycle();
        let mut doubled = events.clone();
        doubled.extend(events.iter().cloned());
        doubled.push(events[3].clone());
        assert_eq!(fold(&doubled, Cursor(1)), fold(&events, Cursor(1)));
        assert_eq!(fold(&doubled, Cursor(1)).unwrap().events, 7);
    }

    #[test]
    fn status_is_the_furthest_stage_reached() {
        let all = lifecycle();
        let status = |kinds: &[EventKind]| {
            let events: Vec<CallEvent> = all
                .iter()
                .filter(|e| kinds.contains(&e.kind))
                .cloned()
                .collect();
            fold(&events, Cursor(1)).unwrap().status
        };
        use EventKind::*;
        assert_eq!(status(&[CallStarted]), SessionStatus::InProgress);
        assert_eq!(
            status(&[CallStarted, TransferInitiated]),
            SessionStatus::Transferring
        );
        assert_eq!(status(&[TransferCompleted]), SessionStatus::Transferred);
        assert_eq!(
            status(&[TransferInitiated, TransferCompleted]),
            SessionStatus::Transferred
        );
        assert_eq!(
            status(&[CallEnded, TransferInitiated]),
            SessionStatus::Ended
        );
        assert_eq!(status(&[CallEnded]), SessionStatus::Ended);
    }

    #[test]
    fn without_call_started_the_earliest_event_starts_the_call() {
        let events = vec![
            event(EventKind::CallEnded, 30, json!({"duration_seconds": 30})),
            event(EventKind::CallAuthenticated, 4, json!({})),
        ];
        let s = fold(&events, Cursor(1)).unwrap();
        assert_eq!(s.started_at, t0() + Duration::seconds(4));
        assert_eq!(s.caller, None);
        assert_eq!(s.greeting_source, None);
        assert_eq!(s.duration_seconds, Some(30.0));
        // call_started arriving later moves the start to its own time, even a later one.
        let mut with_start = events.clone();
        with_start.push(CallEvent::started(
            "CA1".into(),
            7,
            Some(42),
            "+1",
            "lead",
            t0() + Duration::seconds(10),
        ));
        let s = fold(&with_start, Cursor(2)).unwrap();
        assert_eq!(s.started_at, t0() + Duration::seconds(10));
        assert_eq!(s.lead_id, Some(42));
        assert_eq!(s.caller, None);
        assert_eq!(s.greeting_source.as_deref(), Some("lead"));
    }

    #[test]
    fn the_latest_intent_wins_by_time_not_arrival() {
        let late = event(EventKind::IntentDetected, 20, json!({"intent": "late"}));
        let early = event(EventKind::IntentDetected, 10, json!({"intent": "early"}));
        let s = fold(&[late.clone(), early.clone()], Cursor(1)).unwrap();
        assert_eq!(s.intent.as_deref(), Some("late"));
        assert_eq!(s.last_event_at, late.at);
    }

    #[test]
    fn long_texts_are_cut() {
        let long = "x".repeat(5000);
        let s = fold(
            &[event(
                EventKind::IntentDetected,
                1,
                json!({ "intent": long }),
            )],
            Cursor(1),
        )
        .unwrap();
        assert_eq!(s.intent.unwrap().chars().count(), MAX_TEXT_CHARS);
    }

    #[test]
    fn no_events_no_session() {
        assert_eq!(fold(&[], Cursor(1)), None);
    }
}
