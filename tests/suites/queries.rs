//! The plain queries: edge cases, and `EXPLAIN` at the demo data's size to show each one
//! is served by an index rather than a scan.

use chrono::Utc;
use tiercache_repository::model::{LeadPatch, NewMessage};
use tiercache_repository::queries::{self, sql};
use tiercache_tests::db::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_uses_an_index_at_demo_size() {
    let db = TestDb::migrated("explain").await;
    let pool = db.pool().await;
    tiercache_repository::seed::seed_if_empty(&pool)
        .await
        .unwrap();
    let (org, lead) = ("+18005550042", "+16462000041");
    let plans: Vec<(&str, String)> = vec![
        (
            "org_by_phone",
            explain(&pool, sql::ORG_BY_PHONE, |q| q.bind(org)).await,
        ),
        (
            "lead_by_phone",
            explain(&pool, sql::LEAD_BY_PHONE, |q| q.bind(42i64).bind(lead)).await,
        ),
        (
            "lead_by_id",
            explain(&pool, sql::LEAD_BY_ID, |q| q.bind(42i64)).await,
        ),
        (
            "context",
            explain(&pool, sql::CONTEXT, |q| q.bind(42i64).bind(80i32)).await,
        ),
        (
            "summary",
            explain(&pool, sql::SUMMARY, |q| q.bind(42i64).bind(80i32)).await,
        ),
        (
            "call",
            explain(&pool, sql::CALL, |q| q.bind(org).bind(lead).bind(80i32)).await,
        ),
        (
            "history_total",
            explain(&pool, sql::HISTORY_TOTAL, |q| q.bind(42i64)).await,
        ),
        (
            "history_page",
            explain(&pool, sql::HISTORY_PAGE, |q| {
                q.bind(42i64).bind(20i64).bind(40i64)
            })
            .await,
        ),
        (
            "update_lead",
            explain(&pool, sql::UPDATE_LEAD, |q| {
                q.bind(42i64)
                    .bind(Some("X"))
                    .bind(None::<String>)
                    .bind(false)
                    .bind(None::<String>)
                    .bind(Utc::now())
            })
            .await,
        ),
        (
            "upsert_conversation",
            explain(&pool, sql::UPSERT_CONVERSATION, |q| {
                q.bind(42i64).bind("web").bind(Utc::now())
            })
            .await,
        ),
    ];
    for (name, plan) in &plans {
        let plan: serde_json::Value = serde_json::from_str(plan).unwrap();
        let mut scans = Vec::new();
        seq_scans(&plan, &mut scans);
        // 100 organizations fit in two pages: scanning them is the planner's right call.
        scans.retain(|relation| relation != "organizations");
        assert!(scans.is_empty(), "{name} scans {scans:?}:\n{plan:#}");
        assert!(
            plan.to_string().contains("Index") || *name == "org_by_phone",
            "{name} uses no index:\n{plan:#}"
        );
    }
    // The organization lookup still has its index, for when there are many.
    let indexed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE tablename = 'organizations' AND indexdef LIKE '%(phone)%')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(indexed);
}

/// The relations that plan nodes scan sequentially.
fn seq_scans(node: &serde_json::Value, out: &mut Vec<String>) {
    match node {
        serde_json::Value::Object(map) => {
            if map.get("Node Type").and_then(|t| t.as_str()) == Some("Seq Scan") {
                out.push(
                    map.get("Relation Name")
                        .and_then(|r| r.as_str())
                        .unwrap_or("?")
                        .to_owned(),
                );
            }
            map.values().for_each(|v| seq_scans(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| seq_scans(v, out)),
        _ => {}
    }
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

async fn explain(
    pool: &sqlx::PgPool,
    statement: &str,
    bind: impl for<'q> FnOnce(Query<'q>) -> Query<'q>,
) -> String {
    let text = format!("EXPLAIN (FORMAT JSON) {statement}");
    let row = bind(sqlx::query(&text)).fetch_one(pool).await.unwrap();
    let plan: serde_json::Value = sqlx::Row::get(&row, 0);
    plan.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_leads_empty_pages_and_unknown_callers() {
    let db = TestDb::seeded("edges", 2, 4).await;
    let pool = db.pool().await;
    let quiet: i64 = sqlx::query_scalar("INSERT INTO leads (org_id, phone, name) VALUES (1, '+16465550123', 'Quiet Lead') RETURNING id")
        .fetch_one(&pool)
        .await
        .unwrap();

    let context = queries::context(&pool, quiet).await.unwrap().unwrap();
    assert_eq!(
        (
            context.message_count,
            context.last_topics.len(),
            context.last_contact_at
        ),
        (0, 0, None)
    );
    assert_eq!(context.org_name, "Globex Realty 1");
    let summary = queries::summary(&pool, quiet).await.unwrap().unwrap();
    assert_eq!(
        (
            summary.message_count,
            summary.inbound_count,
            summary.channels.len()
        ),
        (0, 0, 0)
    );
    assert_eq!(summary.last_message, None);
    assert!(queries::context(&pool, 9999).await.unwrap().is_none());
    assert!(queries::summary(&pool, 9999).await.unwrap().is_none());

    let mut conn = pool.acquire().await.unwrap();
    let page = queries::history(&mut conn, 1, 10, 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((page.total, page.messages.len()), (3, 0));
    assert!(
        queries::history(&mut conn, 9999, 10, 0)
            .await
            .unwrap()
            .is_none()
    );

    // A message on a channel the lead never used opens a conversation for it.
    let web = NewMessage {
        channel: "web".to_owned(),
        direction: "inbound".to_owned(),
        body: "Hi from the site".to_owned(),
    };
    let (message, phone) = queries::insert_message(&mut conn, quiet, &web, Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (message.channel.as_str(), phone.as_str()),
        ("web", "+16465550123")
    );
    assert!(
        queries::insert_message(&mut conn, 9999, &web, Utc::now())
            .await
            .unwrap()
            .is_none()
    );
    let conversations: i64 =
        sqlx::query_scalar("SELECT count(*) FROM conversations WHERE lead_id = $1")
            .bind(quiet)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(conversations, 1);

    // Notes: absent leaves them, null clears them.
    let keep = LeadPatch {
        name: Some("Renamed".to_owned()),
        ..LeadPatch::default()
    };
    let lead = queries::update_lead(&pool, 1, &keep, Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (lead.name.as_str(), lead.notes.as_deref()),
        ("Renamed", Some("Prefers calls after 5pm"))
    );
    let clear: LeadPatch = serde_json::from_str(r#"{"notes": null}"#).unwrap();
    let lead = queries::update_lead(&pool, 1, &clear, Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lead.notes, None);

    // The batched call query: known caller, new caller, unknown number.
    let known = queries::call(&pool, "+18005550001", "+16462000000")
        .await
        .unwrap();
    assert_eq!(known.lead.as_ref().map(|l| l.id), Some(1));
    assert_eq!(known.context.as_ref().map(|c| c.lead_id), Some(1));
    assert_eq!(
        known.context,
        queries::context(&pool, 1).await.unwrap(),
        "the same context either way"
    );
    assert_eq!(
        known.org,
        queries::org_by_phone(&pool, "+18005550001").await.unwrap()
    );
    let new_caller = queries::call(&pool, "+18005550001", "+16465550999")
        .await
        .unwrap();
    assert!(new_caller.org.is_some() && new_caller.lead.is_none() && new_caller.context.is_none());
    let nobody = queries::call(&pool, "+18005550099", "+16462000000")
        .await
        .unwrap();
    assert!(nobody.org.is_none() && nobody.lead.is_none());
}
