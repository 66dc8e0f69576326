//! Greetings: what the agent says or sends first, per channel, from a lead's context.

use crate::cache_keys::Channel;

use crate::model::Context;

/// The greeting for `context`'s lead on `channel`. Deterministic: the same context gives
/// the same text (no time of day), so cached and fresh answers agree.
pub fn greeting_text(context: &Context, channel: Channel) -> String {
    let first_name = context
        .name
        .split_whitespace()
        .next()
        .unwrap_or(&context.name);
    let agent = context.agent_name.as_deref().unwrap_or("your assistant");
    let follow_up = match context.last_topics.first() {
        Some(topic) => format!(" Last time you mentioned: \"{topic}\"."),
        None => String::new(),
    };
    match channel {
        Channel::Voice => format!(
            "Hi {first_name}, this is {agent} from {org}. Thanks for calling back!{follow_up} How can I help today?",
            org = context.org_name
        ),
        Channel::Sms => format!(
            "Hi {first_name}, it's {agent} at {org}.{follow_up} Reply here any time.",
            org = context.org_name
        ),
        Channel::Web => format!(
            "Welcome back, {first_name}! {agent} from {org} is here to help.{follow_up}",
            org = context.org_name
        ),
    }
}

/// The greeting for a caller the organization does not know yet.
pub fn new_caller_greeting(
    org_name: &str,
    agent_name: Option<&str>,
    configured: Option<&str>,
) -> String {
    match configured {
        Some(text) => text.to_owned(),
        None => format!(
            "Hi, this is {} from {org_name}. Who do I have the pleasure of speaking with?",
            agent_name.unwrap_or("your assistant")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(topics: &[&str]) -> Context {
        Context {
            lead_id: 1,
            org_id: 2,
            org_name: "Acme Dental 2".to_owned(),
            agent_name: Some("Ava".to_owned()),
            name: "Maria Garcia".to_owned(),
            status: "new".to_owned(),
            notes: None,
            message_count: topics.len() as i64,
            last_contact_at: None,
            last_topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    #[test]
    fn greetings_name_the_lead_the_agent_and_the_last_topic() {
        let text = greeting_text(&context(&["Asked about pricing"]), Channel::Voice);
        assert_eq!(
            text,
            "Hi Maria, this is Ava from Acme Dental 2. Thanks for calling back! Last time you mentioned: \"Asked about pricing\". How can I help today?"
        );
        let sms = greeting_text(&context(&[]), Channel::Sms);
        assert_eq!(
            sms,
            "Hi Maria, it's Ava at Acme Dental 2. Reply here any time."
        );
        assert!(greeting_text(&context(&[]), Channel::Web).starts_with("Welcome back, Maria!"));
    }

    #[test]
    fn new_callers_get_the_configured_greeting_or_a_default() {
        assert_eq!(new_caller_greeting("Org", None, Some("Hello!")), "Hello!");
        assert_eq!(
            new_caller_greeting("Org", Some("Leo"), None),
            "Hi, this is Leo from Org. Who do I have the pleasure of speaking with?"
        );
    }
}
