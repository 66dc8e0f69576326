//! The hot path: the voice platform's conversation-initiation webhook.
//!
//! Resolves the organization by the number called, the lead by the caller's number, then
//! the lead's context and voice greeting: all from L1 when warm, else one Redis round trip
//! for what L1 lacks, else one batched query (see `Repository::call`). It answers within
//! the webhook budget: past it, it answers with what it has (the organization's default
//! greeting, marked `deadline_default`) rather than letting the platform time out.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use serde::{Deserialize, Serialize};
use tiercache::Slot;
use tiercache::log_throttle::{LOG_INTERVAL, LogThrottle};
use tiercache_repository::greeting::new_caller_greeting;
use tiercache_repository::model::{Context, Greeting, Lead, Org};

use crate::error::ApiError;
use crate::routes::domain::phone;
use crate::state::AppState;

/// What the platform sends when a call starts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// The caller's number.
    pub caller_id: String,
    /// The number called (the organization's).
    pub called_number: String,
    /// The platform's id for the call: 1 to [`MAX_CALL_SID_LEN`] visible ASCII characters.
    pub call_sid: String,
    /// The platform's agent, when it sends one.
    #[serde(default)]
    pub agent_id: Option<String>,
}

/// What the agent starts the conversation with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookResponse {
    /// Always `conversation_initiation_client_data`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The agent's dynamic variables (scalars only, as the platform requires).
    pub dynamic_variables: DynamicVariables,
    /// The first message the agent says.
    pub conversation_config_override: ConfigOverride,
    /// Where the greeting came from: `lead`, `new_caller` or `deadline_default`.
    pub greeting_source: String,
}

/// The agent's dynamic variables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DynamicVariables {
    /// The platform's id for the call.
    pub call_sid: String,
    /// The organization called, when resolved.
    pub org_id: Option<i64>,
    /// Its name.
    pub org_name: Option<String>,
    /// The agent's name.
    pub agent_name: Option<String>,
    /// The lead, when the caller is known.
    pub lead_id: Option<i64>,
    /// Whether the caller is not (yet) a lead of the organization.
    pub is_new_lead: bool,
    /// The lead's name.
    pub lead_name: Option<String>,
    /// The lead's status.
    pub lead_status: Option<String>,
    /// Messages exchanged so far.
    pub message_count: i64,
    /// What the lead talked about last.
    pub last_topic: Option<String>,
}

/// The platform's override block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigOverride {
    /// Agent settings.
    pub agent: AgentOverride,
}

/// The agent's first message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
) -> Result<Json<WebhookResponse>, ApiError> {
    let Json(request) = body?;
    let called = phone("called_number", &request.called_number)?;
    let caller = phone("caller_id", &request.caller_id)?;
    check_call_sid(&request.call_sid)?;
    let mut partial = Partial::default();
    let resolved = {
        let lookup = async {
            // From L1, else one Redis round trip; what is known so far is kept for the
            // deadline's answer.
            let slots = state.repo.call_cached(&called, &caller).await;
            if let Slot::Found(org) = &slots.org {
                partial.org = Some(Arc::clone(org));
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
            known_caller(&request.call_sid, &org, &lead, &context, &greeting)
        }
        // The lead vanished between reads (deleted meanwhile): greet as a new caller.
        Some(Ok((org, _))) => new_caller(&request.call_sid, Some(&org), "new_caller"),
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
                &request.call_sid,
                partial.org.as_deref(),
                "deadline_default",
            )
        }
    };
    Ok(Json(response))
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
    call_sid: &str,
    org: &Org,
    lead: &Lead,
    context: &Context,
    greeting: &Greeting,
) -> WebhookResponse {
    WebhookResponse {
        kind: KIND.to_owned(),
        dynamic_variables: DynamicVariables {
            call_sid: call_sid.to_owned(),
            org_id: Some(org.id),
            org_name: Some(org.name.clone()),
            agent_name: context.agent_name.clone(),
            lead_id: Some(lead.id),
            is_new_lead: false,
            lead_name: Some(lead.name.clone()),
            lead_status: Some(lead.status.clone()),
            message_count: context.message_count,
            last_topic: context.last_topics.first().cloned(),
        },
        conversation_config_override: ConfigOverride {
            agent: AgentOverride {
                first_message: greeting.text.clone(),
            },
        },
        greeting_source: "lead".to_owned(),
    }
}

fn new_caller(call_sid: &str, org: Option<&Org>, source: &str) -> WebhookResponse {
    let agent_name = org.and_then(|o| o.settings.agent_name.clone());
    let first_message = new_caller_greeting(
        org.map_or("us", |o| o.name.as_str()),
        agent_name.as_deref(),
        org.and_then(|o| o.settings.new_caller_greeting.as_deref()),
    );
    WebhookResponse {
        kind: KIND.to_owned(),
        dynamic_variables: DynamicVariables {
            call_sid: call_sid.to_owned(),
            org_id: org.map(|o| o.id),
            org_name: org.map(|o| o.name.clone()),
            agent_name,
            lead_id: None,
            is_new_lead: source == "new_caller",
            lead_name: None,
            lead_status: None,
            message_count: 0,
            last_topic: None,
        },
        conversation_config_override: ConfigOverride {
            agent: AgentOverride { first_message },
        },
        greeting_source: source.to_owned(),
    }
}

const KIND: &str = "conversation_initiation_client_data";
