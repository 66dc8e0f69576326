//! The voice platform's contract for the conversation-initiation webhook, over HTTP against
//! the real server and PostgreSQL: the answer is exactly the platform's conversation
//! initiation client data, with one set of dynamic variables, each a scalar of one type,
//! whoever calls and however late; a request may carry fields the service does not know.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tiercache_repository::seed::{demo_lead_phone, demo_org_phone};
use tiercache_tests::db::TestDb;
use tiercache_tests::server::{Options, TestServer};
use tiercache_tests::unique_namespace;

const HOOK: &str = "/api/webhooks/conversation-initiation";

/// The response header that says where the first message came from.
const SOURCE_HEADER: &str = "tiercache-greeting-source";

/// The one type a dynamic variable may have, besides its name: the platform takes strings,
/// numbers and booleans, never `null`, objects or arrays.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scalar {
    String,
    Integer,
    Boolean,
}

/// The schema every answer follows: the top-level keys, and each dynamic variable's name and
/// type. Known caller, new caller and deadline default alike.
const TOP_LEVEL: [&str; 3] = ["conversation_config_override", "dynamic_variables", "type"];
const VARIABLES: &[(&str, Scalar)] = &[
    ("call_sid", Scalar::String),
    ("org_id", Scalar::Integer),
    ("org_name", Scalar::String),
    ("agent_name", Scalar::String),
    ("lead_id", Scalar::Integer),
    ("is_known_caller", Scalar::Boolean),
    ("lead_name", Scalar::String),
    ("lead_status", Scalar::String),
    ("message_count", Scalar::Integer),
    ("last_topic", Scalar::String),
    ("greeting_source", Scalar::String),
];

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:.300}"))
}

fn webhook(caller: &str, called: &str) -> String {
    serde_json::json!({"caller_id": caller, "called_number": called, "call_sid": "CA1"}).to_string()
}

/// POSTs `body` to the webhook: (status, the greeting-source header, the body).
async fn call(server: &TestServer, body: &str) -> (u16, Option<String>, String) {
    let response = server
        .client
        .post(format!("{}{HOOK}", server.base))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let source = response
        .headers()
        .get(SOURCE_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    (status, source, response.text().await.unwrap())
}

/// Every way `answer` strays from the schema, described; empty when it follows it.
fn violations(answer: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let Some(top) = answer.as_object() else {
        return vec![format!("not an object: {answer}")];
    };
    let keys: BTreeSet<&str> = top.keys().map(String::as_str).collect();
    if keys != TOP_LEVEL.into_iter().collect() {
        found.push(format!("top-level keys {keys:?}, not {TOP_LEVEL:?}"));
    }
    if answer["type"] != "conversation_initiation_client_data" {
        found.push(format!("type {}", answer["type"]));
    }
    match answer["dynamic_variables"].as_object() {
        None => found.push("dynamic_variables is not an object".to_owned()),
        Some(variables) => {
            let names: BTreeSet<&str> = variables.keys().map(String::as_str).collect();
            let want: BTreeSet<&str> = VARIABLES.iter().map(|(name, _)| *name).collect();
            if names != want {
                found.push(format!(
                    "variables: missing {:?}, unexpected {:?}",
                    want.difference(&names).collect::<Vec<_>>(),
                    names.difference(&want).collect::<Vec<_>>()
                ));
            }
            for (name, scalar) in VARIABLES {
                let value = &variables.get(*name).unwrap_or(&Value::Null);
                let fits = match scalar {
                    Scalar::String => value.is_string(),
                    Scalar::Integer => value.is_i64(),
                    Scalar::Boolean => value.is_boolean(),
                };
                if !fits {
                    found.push(format!("{name} = {value}, not a {scalar:?}"));
                }
            }
        }
    }
    // The override block: the agent's first message, and nothing else.
    let agent = &answer["conversation_config_override"]["agent"];
    let override_keys = answer["conversation_config_override"]
        .as_object()
        .map(|o| o.keys().cloned().collect::<Vec<_>>());
    let agent_keys = agent
        .as_object()
        .map(|o| o.keys().cloned().collect::<Vec<_>>());
    if override_keys != Some(vec!["agent".to_owned()])
        || agent_keys != Some(vec!["first_message".to_owned()])
        || agent["first_message"].as_str().is_none_or(str::is_empty)
    {
        found.push(format!(
            "conversation_config_override {}",
            answer["conversation_config_override"]
        ));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_new_and_deadline_answers_follow_one_schema_of_scalar_variables() {
    let db = TestDb::seeded("contract", 2, 10).await;
    let ns = unique_namespace("contract");
    // Lead j has id j + 1 and belongs to organization (j % 2) + 1.
    let (known, org) = (demo_lead_phone(0), demo_org_phone(1));
    let server = TestServer::start(&db, Options::new(&ns, None)).await;

    let mut answers = Vec::new();
    let (status, source, body) = call(&server, &webhook(&known, &org)).await;
    assert_eq!(status, 200, "{body}");
    answers.push(("known caller", source, json(&body)));
    let (status, source, body) = call(&server, &webhook("+16465550199", &org)).await;
    assert_eq!(status, 200, "{body}");
    answers.push(("new caller", source, json(&body)));

    // Past the budget: a server with a short one, the leads table locked. With the
    // organization cached (its name in the answer), then without (nothing resolved).
    let hurried = TestServer::start(
        &db,
        Options {
            webhook_budget: Duration::from_millis(200),
            ..Options::new(&unique_namespace("contractdl"), None)
        },
    )
    .await;
    assert_eq!(
        hurried.get("/api/orgs/by-phone/%2B18005550001").await.0,
        200
    );
    let pool = db.pool().await;
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE leads IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let (status, source, body) = call(&hurried, &webhook(&demo_lead_phone(2), &org)).await;
    assert_eq!(status, 200, "{body}");
    answers.push(("deadline, organization cached", source, json(&body)));
    let (status, source, body) =
        call(&hurried, &webhook(&demo_lead_phone(1), &demo_org_phone(2))).await;
    assert_eq!(status, 200, "{body}");
    answers.push(("deadline, nothing cached", source, json(&body)));
    blocker.rollback().await.unwrap();
    assert_eq!(hurried.state.metrics.webhook_fallbacks(), 2);

    let strays: Vec<_> = answers
        .iter()
        .map(|(case, _, answer)| (case, violations(answer)))
        .filter(|(_, found)| !found.is_empty())
        .collect();
    assert!(strays.is_empty(), "{strays:#?}\n{answers:#?}");

    // Where each greeting came from, in the variable and the header alike.
    let sources: Vec<_> = answers
        .iter()
        .map(|(_, header, answer)| {
            let variable = answer["dynamic_variables"]["greeting_source"].clone();
            (variable, header.clone())
        })
        .collect();
    let want = ["lead", "new_caller", "deadline_default", "deadline_default"];
    for ((variable, header), want) in sources.iter().zip(want) {
        assert_eq!(
            (variable.as_str(), header.as_deref()),
            (Some(want), Some(want))
        );
    }

    // What each kind of answer says in its variables.
    let vars = |i: usize| answers[i].2["dynamic_variables"].clone();
    let (k, n, d, none) = (vars(0), vars(1), vars(2), vars(3));
    assert_eq!(
        (k["lead_id"].clone(), k["is_known_caller"].clone()),
        (1.into(), true.into())
    );
    assert_eq!(k["org_id"], 1);
    assert_ne!(k["lead_name"], "");
    assert_ne!(k["lead_status"], "");
    assert!(k["message_count"].as_i64().unwrap() > 0);
    for (case, v) in [("new caller", &n), ("deadline", &d), ("nothing", &none)] {
        assert_eq!(v["is_known_caller"], false, "{case}");
        assert_eq!(v["lead_id"], 0, "{case}");
        assert_eq!(v["lead_name"], "", "{case}");
        assert_eq!(v["lead_status"], "", "{case}");
        assert_eq!(v["message_count"], 0, "{case}");
        assert_eq!(v["last_topic"], "", "{case}");
        assert_eq!(v["call_sid"], "CA1", "{case}");
    }
    assert_eq!(
        (n["org_id"].clone(), d["org_id"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(n["org_name"], k["org_name"]);
    assert_eq!(d["org_name"], k["org_name"]);
    assert_eq!(
        (none["org_id"].clone(), none["org_name"].clone()),
        (0.into(), "".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_request_fields_are_ignored_and_counted_without_their_names() {
    let db = TestDb::seeded("unknownf", 2, 10).await;
    let ns = unique_namespace("unknownf");
    let server = TestServer::start(&db, Options::new(&ns, None)).await;
    let (caller, called) = (demo_lead_phone(0), demo_org_phone(1));
    let unknown_total = |scrape: &std::collections::HashMap<String, f64>| {
        scrape
            .get("tiercache_webhook_unknown_fields_total")
            .copied()
    };
    let plain = call(&server, &webhook(&caller, &called)).await;
    assert_eq!(plain.0, 200, "{}", plain.2);
    // The platform's own fields (agent_id is known), plus five this service does not know:
    // a string, an object nesting every JSON type, an array, one with an odd name, and one
    // with a 20 kB name.
    let odd_name = "x-unknown-field-Zq7";
    let long_name = "q".repeat(20_000);
    let extended = serde_json::json!({
        "conversation_id": "conv_1",
        "caller_id": caller,
        "caller_metadata": {"nested": [1, 2.5, {"deep": null}], "flag": true},
        "called_number": called,
        "agent_id": "agent_1",
        "tags": ["a", "b"],
        "call_sid": "CA1",
        odd_name: "value",
        long_name.clone(): 1,
    })
    .to_string();
    let before = unknown_total(&server.scrape().await);
    let answer = call(&server, &extended).await;
    assert_eq!(
        answer, plain,
        "the same answer as without the unknown fields"
    );
    let scrape = server.scrape().await;
    assert_eq!((before, unknown_total(&scrape)), (Some(0.0), Some(5.0)));
    // No field's name reached a metric.
    let leaked: Vec<_> = scrape
        .keys()
        .filter(|k| {
            [
                "conversation_id",
                "caller_metadata",
                "tags",
                odd_name,
                "Zq7",
                "qqqq",
            ]
            .iter()
            .any(|name| k.contains(name))
        })
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");

    // Unknown fields mask nothing: bad input among them is still a 400 naming its field.
    for (body, field) in [
        (
            format!(
                r#"{{"extra":1,"caller_id":"hello","called_number":"{called}","call_sid":"CA1"}}"#
            ),
            "caller_id",
        ),
        (
            format!(
                r#"{{"extra":1,"caller_id":"{caller}","called_number":"{called}","call_sid":5}}"#
            ),
            "call_sid",
        ),
        (
            format!(r#"{{"extra":1,"caller_id":"{caller}","called_number":"{called}"}}"#),
            "call_sid",
        ),
        (
            format!(
                r#"{{"caller_id":"{caller}","called_number":"{called}","call_sid":"CA1","extra":{{"a":"#
            ),
            "extra",
        ),
        (format!(r#"{{"extra":1,"caller_id":"{caller}""#), "body"),
    ] {
        let (status, text) = server.send(Method::POST, HOOK, &body).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert_eq!(json(&text)["error"]["field"], field, "{body}: {text}");
    }
}
