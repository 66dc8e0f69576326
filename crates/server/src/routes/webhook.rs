//! The hot path: the voice platform's conversation-initiation webhook.
//!
//! Resolves the organization by the number called, the lead by the caller's number, then
//! the lead's context and voice greeting: all from L1 when warm, else one Redis round trip
//! for what L1 lacks, else one batched query (see `Repository::call`). It answers within
//! the webhook budget: past it, it answers with what it has (the organization's default
//! greeting, marked `deadline_default`) rather than letting the platform time out.
//!
//! The contract is the platform's (ElevenLabs' conversation initiation client data): fields
//! the request carries that this service does not know are ignored (and counted), and the
//! answer is exactly `{type, dynamic_variables, conversation_config_override}`, with every
//! dynamic variable present and a scalar of one type in every answer, never `null`.
//!
//! Every call answered with its organization resolved publishes `call_started` to the call
//! log (`crate::calls`): a push onto an in-process queue, never a wait.

use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderName, HeaderValue};
use chrono::Utc;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use tiercache::Slot;
use tiercache::log_throttle::{LOG_INTERVAL, LogThrottle};
use tiercache_calls::CallEvent;
use tiercache_repository::Phone;
use tiercache_repository::greeting::new_caller_greeting;
use tiercache_repository::model::{Context, Greeting, Lead, Org};

use crate::error::ApiError;
use crate::routes::domain::phone;
use crate::state::AppState;

/// The response header naming where the first message came from (a [`GreetingSource`]), for
/// logs and load generators that do not parse the body; the body says it too, in the
/// `greeting_source` dynamic variable.
pub const GREETING_SOURCE_HEADER: &str = "tiercache-greeting-source";

/// What the platform sends when a call starts. Fields it adds that this service does not
/// know are ignored and counted ([`unknown_fields`](Self::unknown_fields)), so the platform
/// adding one is not a 400; a known field of the wrong type still is, naming the field.
#[derive(Debug)]
pub struct WebhookRequest {
    /// The caller's number.
    pub caller_id: String,
    /// The number called (the organization's).
    pub called_number: String,
    /// The platform's id for the call: 1 to [`MAX_CALL_SID_LEN`] visible ASCII characters.
    pub call_sid: String,
    /// The platform's agent, when it sends one.
    pub agent_id: Option<String>,
    /// How many top-level fields the body held that this service does not know.
    pub unknown_fields: u64,
}

/// What the agent starts the conversation with: the platform's conversation initiation
/// client data, exactly (it defines no other top-level field).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookResponse {
    /// Always `conversation_initiation_client_data`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The agent's dynamic variables.
    pub dynamic_variables: DynamicVariables,
    /// The first message the agent says.
    pub conversation_config_override: ConfigOverride,
}

/// The agent's dynamic variables. The platform takes strings, numbers and booleans, and
/// expects every variable the agent defines in every call: each is present in every answer,
/// with one type, never `null`. What is not known for this call (a new caller's lead, an
/// organization not resolved before the deadline) is the empty string, `0` or `false`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicVariables {
    /// The platform's id for the call.
    pub call_sid: String,
    /// The organization called; `0` when not resolved (past the deadline).
    pub org_id: i64,
    /// Its name; empty when not resolved.
    pub org_name: String,
    /// The agent's name; empty when the organization sets none.
    pub agent_name: String,
    /// The lead; `0` unless the caller is known.
    pub lead_id: i64,
    /// Whether the answer is about a known lead (`false` for a new caller, and past the
    /// deadline, when the lead was not read).
    pub is_known_caller: bool,
    /// The lead's name; empty unless the caller is known.
    pub lead_name: String,
    /// The lead's status; empty unless the caller is known.
    pub lead_status: String,
    /// Messages exchanged so far; `0` unless the caller is known.
    pub message_count: i64,
    /// What the lead talked about last; empty when nothing (or the caller is not known).
    pub last_topic: String,
    /// Where the first message came from.
    pub greeting_source: GreetingSource,
}

/// Where the first message came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GreetingSource {
    /// The lead's own greeting: a known caller.
    Lead,
    /// The organization's greeting for a caller who is not one of its leads.
    NewCaller,
    /// The organization's greeting, answered past the budget with what was resolved.
    DeadlineDefault,
}

impl GreetingSource {
    /// The name, as in the body and the header.
    pub const fn as_str(self) -> &'static str {
        match self {
            GreetingSource::Lead => "lead",
            GreetingSource::NewCaller => "new_caller",
            GreetingSource::DeadlineDefault => "deadline_default",
        }
    }
}

/// The platform's override block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigOverride {
    /// Agent settings.
    pub agent: AgentOverride,
}

/// The agent's first message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentOverride {
    /// What the agent says first.
    pub first_message: String,
}

/// What was resolved before the budget ran out.
#[derive(Default)]
struct Partial {
    org: Option<Arc<Org>>,
}

/// `POST /api/webhooks/conversation-initiation`
pub async fn conversation_initiation(
    State(state): State<AppState>,
    body: Result<Json<WebhookRequest>, JsonRejection>,
) -> Result<([(HeaderName, HeaderValue); 1], Json<WebhookResponse>), ApiError> {
    let Json(request) = body?;
    if request.unknown_fields > 0 {
        state.metrics.webhook_unknown_fields(request.unknown_fields);
    }
    let called = phone("called_number", &request.called_number)?;
    let caller = phone("caller_id", &request.caller_id)?;
    check_call_sid(&request.call_sid)?;
    let mut partial = Partial::default();
    let resolved = {
        let lookup = async {
            // From L1, else one Redis round trip; what is known so far is kept for the
            // deadline's answer.
            let slots = state.repo.call_cached(&called, &caller).await;
            if let Slot::Found(org) = slots.org() {
                partial.org = Some(org);
            }
            // Else one batched query for whatever the tiers lacked.
            let view = state.repo.call_complete(&called, &caller, slots).await?;
            let org = view.org.ok_or(ApiError::NotFound("organization"))?;
            partial.org = Some(Arc::clone(&org));
            Ok::<_, ApiError>(match view.lead {
                Some(lead) => (org, Some((lead, view.context, view.greeting))),
                None => (org, None),
            })
        };
        tokio::select! {
            resolved = lookup => Some(resolved),
            () = tokio::time::sleep(state.webhook_budget) => None,
        }
    };
    let response = match resolved {
        Some(Ok((org, Some((lead, Some(context), Some(greeting)))))) => {
            known_caller(request.call_sid, &org, &lead, &context, &greeting)
        }
        // The lead vanished between reads (deleted meanwhile): greet as a new caller.
        Some(Ok((org, _))) => new_caller(request.call_sid, Some(&org), GreetingSource::NewCaller),
        Some(Err(e)) => return Err(e),
        None => {
            state.metrics.webhook_fallback();
            // Every call while the database is slow or down: one line per interval (the
            // metric counts each).
            static PAST_BUDGET: LogThrottle = LogThrottle::new(LOG_INTERVAL);
            if let Some(suppressed) = PAST_BUDGET.admit() {
                tracing::warn!(
                    budget = ?state.webhook_budget,
                    suppressed,
                    "webhook past its budget; answering with the default greeting"
                );
            }
            new_caller(
                request.call_sid,
                partial.org.as_deref(),
                GreetingSource::DeadlineDefault,
            )
        }
    };
    let source = response.dynamic_variables.greeting_source.as_str();
    publish_started(&state, &response, &caller);
    Ok((
        [(
            HeaderName::from_static(GREETING_SOURCE_HEADER),
            HeaderValue::from_static(source),
        )],
        Json(response),
    ))
}

/// Publishes `call_started` for a call answered with a resolved organization (`org_id` 0:
/// none, past the deadline). A queue push: it never waits and never fails.
fn publish_started(state: &AppState, response: &WebhookResponse, caller: &Phone) {
    let Some(calls) = &state.calls else {
        return;
    };
    let vars = &response.dynamic_variables;
    if vars.org_id == 0 {
        return;
    }
    calls.log.publish(CallEvent::started(
        vars.call_sid.clone(),
        vars.org_id,
        vars.is_known_caller.then_some(vars.lead_id),
        // Masked inside: only its last digits reach the stream.
        caller.as_str(),
        vars.greeting_source.as_str(),
        Utc::now(),
    ));
}

/// Longest `call_sid` accepted: the platforms' ids are far shorter (Twilio's have 34
/// characters), and the answer echoes it.
pub const MAX_CALL_SID_LEN: usize = 128;

/// A call id is 1 to [`MAX_CALL_SID_LEN`] visible ASCII characters (no spaces, no control
/// characters). The message never quotes it.
fn check_call_sid(sid: &str) -> Result<(), ApiError> {
    if sid.is_empty() || sid.len() > MAX_CALL_SID_LEN || !sid.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::bad(
            "call_sid",
            format!("must be 1 to {MAX_CALL_SID_LEN} visible ASCII characters, without spaces"),
        ));
    }
    Ok(())
}

fn known_caller(
    call_sid: String,
    org: &Org,
    lead: &Lead,
    context: &Context,
    greeting: &Greeting,
) -> WebhookResponse {
    WebhookResponse {
        kind: KIND.to_owned(),
        dynamic_variables: DynamicVariables {
            call_sid,
            org_id: org.id,
            org_name: org.name.clone(),
            agent_name: context.agent_name.clone().unwrap_or_default(),
            lead_id: lead.id,
            is_known_caller: true,
            lead_name: lead.name.clone(),
            lead_status: lead.status.clone(),
            message_count: context.message_count,
            last_topic: context.last_topics.first().cloned().unwrap_or_default(),
            greeting_source: GreetingSource::Lead,
        },
        conversation_config_override: ConfigOverride {
            agent: AgentOverride {
                first_message: greeting.text.clone(),
            },
        },
    }
}

/// The answer without a lead: a new caller's, or the deadline's with whatever organization
/// was resolved (none: `org_id` 0, `org_name` empty, greeted on behalf of "us").
fn new_caller(call_sid: String, org: Option<&Org>, source: GreetingSource) -> WebhookResponse {
    let agent_name = org.and_then(|o| o.settings.agent_name.clone());
    let first_message = new_caller_greeting(
        org.map_or("us", |o| o.name.as_str()),
        agent_name.as_deref(),
        org.and_then(|o| o.settings.new_caller_greeting.as_deref()),
    );
    WebhookResponse {
        kind: KIND.to_owned(),
        dynamic_variables: DynamicVariables {
            call_sid,
            org_id: org.map_or(0, |o| o.id),
            org_name: org.map(|o| o.name.clone()).unwrap_or_default(),
            agent_name: agent_name.unwrap_or_default(),
            lead_id: 0,
            is_known_caller: false,
            lead_name: String::new(),
            lead_status: String::new(),
            message_count: 0,
            last_topic: String::new(),
            greeting_source: source,
        },
        conversation_config_override: ConfigOverride {
            agent: AgentOverride { first_message },
        },
    }
}

const KIND: &str = "conversation_initiation_client_data";

/// The request's fields; any other name is `Unknown` (its value skipped, not kept).
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    CallerId,
    CalledNumber,
    CallSid,
    AgentId,
    #[serde(other)]
    Unknown,
}

const FIELDS: &[&str] = &["caller_id", "called_number", "call_sid", "agent_id"];

/// By hand rather than derived, to count the fields it ignores. Errors read as the derived
/// ones did (serde's own `missing field`, `duplicate field`), and axum's path tracking
/// still names the field a bad value sits in.
impl<'de> Deserialize<'de> for WebhookRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct("WebhookRequest", FIELDS, RequestVisitor)
    }
}

struct RequestVisitor;

impl<'de> Visitor<'de> for RequestVisitor {
    type Value = WebhookRequest;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with caller_id, called_number and call_sid")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WebhookRequest, A::Error> {
        fn once<T, E: de::Error>(slot: &mut Option<T>, name: &'static str, v: T) -> Result<(), E> {
            if slot.replace(v).is_some() {
                return Err(E::duplicate_field(name));
            }
            Ok(())
        }
        let (mut caller_id, mut called_number, mut call_sid) = (None, None, None);
        let mut agent_id: Option<Option<String>> = None;
        let mut unknown_fields = 0u64;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::CallerId => once(&mut caller_id, "caller_id", map.next_value()?)?,
                Field::CalledNumber => {
                    once(&mut called_number, "called_number", map.next_value()?)?;
                }
                Field::CallSid => once(&mut call_sid, "call_sid", map.next_value()?)?,
                Field::AgentId => once(&mut agent_id, "agent_id", map.next_value()?)?,
                Field::Unknown => {
                    map.next_value::<IgnoredAny>()?;
                    unknown_fields += 1;
                }
            }
        }
        Ok(WebhookRequest {
            caller_id: caller_id.ok_or_else(|| de::Error::missing_field("caller_id"))?,
            called_number: called_number
                .ok_or_else(|| de::Error::missing_field("called_number"))?,
            call_sid: call_sid.ok_or_else(|| de::Error::missing_field("call_sid"))?,
            agent_id: agent_id.flatten(),
            unknown_fields,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<WebhookRequest, serde_json::Error> {
        serde_json::from_str(body)
    }

    #[test]
    fn unknown_fields_are_skipped_whatever_their_value_and_counted() {
        let request = parse(
            r#"{"conversation_id":"c","caller_id":"+1","called_number":"+2",
                "meta":{"a":[1,{"b":null}]},"call_sid":"CA1","agent_id":"ag","list":[true]}"#,
        )
        .unwrap();
        assert_eq!(
            (
                request.caller_id.as_str(),
                request.called_number.as_str(),
                request.call_sid.as_str(),
                request.agent_id.as_deref(),
                request.unknown_fields,
            ),
            ("+1", "+2", "CA1", Some("ag"), 3)
        );
        let request =
            parse(r#"{"caller_id":"+1","called_number":"+2","call_sid":"C","agent_id":null}"#)
                .unwrap();
        assert_eq!((request.agent_id, request.unknown_fields), (None, 0));
    }

    #[test]
    fn known_fields_are_still_checked() {
        let missing = parse(r#"{"caller_id":"+1","called_number":"+2","x":1}"#).unwrap_err();
        assert!(
            missing.to_string().contains("missing field `call_sid`"),
            "{missing}"
        );
        let twice =
            parse(r#"{"caller_id":"+1","caller_id":"+3","called_number":"+2","call_sid":"C"}"#)
                .unwrap_err();
        assert!(
            twice.to_string().contains("duplicate field `caller_id`"),
            "{twice}"
        );
        let typed = parse(r#"{"caller_id":1,"called_number":"+2","call_sid":"C"}"#).unwrap_err();
        assert!(typed.to_string().contains("invalid type"), "{typed}");
        for not_an_object in ["[]", "null", "\"s\""] {
            assert!(parse(not_an_object).is_err(), "{not_an_object}");
        }
    }

    #[test]
    fn an_answer_with_nothing_resolved_has_no_null() {
        let answer = new_caller("CA1".to_owned(), None, GreetingSource::DeadlineDefault);
        let value = serde_json::to_value(&answer).unwrap();
        let variables = value["dynamic_variables"].as_object().unwrap();
        assert!(variables.values().all(|v| !v.is_null()), "{value}");
        assert_eq!(variables["greeting_source"], "deadline_default");
        assert_eq!(
            (variables["org_id"].as_i64(), variables["org_name"].as_str()),
            (Some(0), Some(""))
        );
    }
}
