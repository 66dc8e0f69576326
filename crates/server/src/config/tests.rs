//! The configuration read end to end: from variables to a [`Config`] or every problem.

use std::time::Duration;

use tiercache::EntityPolicy;

use super::validate::cache_field_var;
use super::vars::{declared_entities, names};
use super::*;

mod tls;

fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_vars(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    )
}

fn problem_vars(err: &ConfigError) -> Vec<&str> {
    err.problems.iter().map(|p| p.var.as_str()).collect()
}

#[test]
fn defaults_build_a_valid_config_with_redis() {
    let config = load(&[]).unwrap();
    assert!(config.redis_enabled);
    assert!(config.key_secret_is_default);
    assert_eq!(config.admin_token, None);
    assert_eq!(config.bind_addr, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.webhook_budget, Duration::from_millis(90));
    assert_eq!(
        config.http,
        HttpConfig {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
        }
    );
    let DatabaseConfig {
        url,
        pool_size,
        acquire_timeout,
        statement_timeout,
        notify_enabled,
    } = &config.database;
    assert_eq!(url, "postgres://postgres@127.0.0.1:5432/tiercache");
    assert_eq!(*pool_size, 16);
    assert_eq!(*acquire_timeout, Duration::from_millis(500));
    assert_eq!(*statement_timeout, Duration::from_secs(2));
    assert!(*notify_enabled);
    let redis = config.cache.redis().unwrap();
    assert_eq!(redis.url, "redis://127.0.0.1:6379/");
    assert_eq!(redis.pool_size, 1);
    assert_eq!(redis.command_timeout, Duration::from_millis(50));
    assert_eq!(redis.connect_timeout, Duration::from_millis(250));
    assert!(config.cache.l1_enabled());
    for (entity, policy) in declared_entities() {
        assert_eq!(*config.cache.policy(entity), policy);
    }
}

#[test]
fn http_read_bounds_are_read_and_must_be_positive() {
    let config = load(&[
        ("HTTP_HEADER_TIMEOUT_MS", "300"),
        ("HTTP_BODY_TIMEOUT_MS", "400"),
    ])
    .unwrap();
    assert_eq!(config.http.header_read_timeout, Duration::from_millis(300));
    assert_eq!(config.http.body_read_timeout, Duration::from_millis(400));
    let err = load(&[
        ("HTTP_HEADER_TIMEOUT_MS", "0"),
        ("HTTP_BODY_TIMEOUT_MS", "0"),
    ])
    .unwrap_err();
    assert_eq!(
        problem_vars(&err),
        ["HTTP_HEADER_TIMEOUT_MS", "HTTP_BODY_TIMEOUT_MS"]
    );
}

#[test]
fn the_change_listener_can_be_turned_off() {
    let config = load(&[("DB_NOTIFY_ENABLED", "false")]).unwrap();
    assert!(!config.database.notify_enabled);
    let err = load(&[("DB_NOTIFY_ENABLED", "sometimes")]).unwrap_err();
    assert_eq!(problem_vars(&err), ["DB_NOTIFY_ENABLED"]);
}

#[test]
fn redis_disabled_gives_an_l1_only_cache() {
    let config = load(&[("REDIS_ENABLED", "false")]).unwrap();
    assert!(!config.redis_enabled);
    assert!(!config.cache.redis_enabled());
    assert!(config.cache.l1_enabled());
}

#[test]
fn bool_variants_are_accepted_and_others_named() {
    for (value, expected) in [
        ("true", true),
        ("TRUE", true),
        ("1", true),
        ("yes", true),
        ("Yes", true),
        ("false", false),
        ("False", false),
        ("0", false),
        ("no", false),
        ("NO", false),
    ] {
        let config = load(&[("REDIS_ENABLED", value)]).unwrap();
        assert_eq!(config.redis_enabled, expected, "{value}");
    }
    for value in ["maybe", "", "on", " true"] {
        let err = load(&[("REDIS_ENABLED", value)]).unwrap_err();
        assert_eq!(problem_vars(&err), ["REDIS_ENABLED"], "{value:?}");
        assert_eq!(
            err.problems[0].message,
            format!("expected true/false/1/0/yes/no, got {value:?}")
        );
    }
}

#[test]
fn every_bad_variable_is_reported_at_once_in_order() {
    // Given out of order on purpose: the report follows `variables()`.
    let err = load(&[
        ("WEBHOOK_BUDGET_MS", "10000"),
        ("REDIS_COMMAND_TIMEOUT_MS", "fast"),
        ("BIND_ADDR", "localhost"),
        ("DATABASE_POOL_SIZE", "0"),
    ])
    .unwrap_err();
    assert_eq!(
        problem_vars(&err),
        [
            "DATABASE_POOL_SIZE",
            "REDIS_COMMAND_TIMEOUT_MS",
            "BIND_ADDR",
            "WEBHOOK_BUDGET_MS"
        ]
    );
    let text = err.to_string();
    assert!(
        text.contains(r#"REDIS_COMMAND_TIMEOUT_MS: expected milliseconds, got "fast""#),
        "{text}"
    );
    // Ranges in words, not Rust's `1..=1000`.
    assert!(
        text.starts_with(
            "invalid configuration: DATABASE_POOL_SIZE: must be between 1 and 1000, got 0"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "WEBHOOK_BUDGET_MS: must be at least 1 and less than 10000 milliseconds, got 10000"
        ),
        "{text}"
    );
    let err = load(&[("CACHE_TTL_JITTER", "0.9")]).unwrap_err();
    assert!(
        err.to_string()
            .contains("CACHE_TTL_JITTER: must be between 0.0 and 0.5, got 0.9"),
        "{err}"
    );
}

#[test]
fn sizes_take_binary_suffixes() {
    // The README writes the default as 64 MiB; every spelling of it is taken.
    for value in [
        "67108864",
        "64MiB",
        "64 MiB",
        "64mib",
        "65536KiB",
        "65536 kib",
    ] {
        let config = load(&[("L1_MAX_BYTES", value)]).unwrap();
        let text = format!("{:?}", config.cache);
        assert!(text.contains("l1_max_bytes: 67108864,"), "{value}: {text}");
    }
    // The spellings refused: `parse::tests`.
    let err = load(&[("L1_MAX_BYTES", "64MB")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: L1_MAX_BYTES: expected a number of bytes, or one with KiB, \
         MiB or GiB (such as 64MiB), got \"64MB\""
    );
}

#[test]
fn every_variable_is_read_and_named_once() {
    // "!!" is wrong for every variable, so each must be reported, by its own name, once;
    // a misspelt name where a variable is read would show up here.
    let names = names();
    let pairs: Vec<(&str, &str)> = names.iter().map(|v| (v.as_str(), "!!")).collect();
    let err = load(&pairs).unwrap_err();
    assert_eq!(problem_vars(&err), names, "{err}");
}

#[test]
fn the_call_log_takes_its_variables_and_checks_them() {
    let config = load(&[]).unwrap();
    assert_eq!(
        config.calls.queue_capacity,
        CallsConfig::DEFAULT_QUEUE_CAPACITY
    );
    assert_eq!(config.calls.instance_name, None);
    let config = load(&[
        ("CALL_EVENTS_QUEUE", "50"),
        ("CALL_EVENTS_STREAM_MAXLEN", "1000"),
        ("CALL_EVENTS_CLAIM_IDLE_MS", "2000"),
        ("CALL_EVENTS_MAX_DELIVERIES", "3"),
        ("CALL_FEED_HEARTBEAT_MS", "250"),
        ("INSTANCE_NAME", "api-1.eu"),
        ("CALL_EVENTS_CONSUMER", "false"),
    ])
    .unwrap();
    let calls = &config.calls;
    assert!(!calls.consume);
    assert!(!calls.log_config().consume);
    assert_eq!(
        (
            calls.queue_capacity,
            calls.stream_maxlen,
            calls.claim_idle,
            calls.max_deliveries,
            calls.heartbeat,
        ),
        (
            50,
            1000,
            Duration::from_secs(2),
            3,
            Duration::from_millis(250)
        )
    );
    let log = calls.log_config();
    assert_eq!(
        (log.consumer.as_str(), log.claim_every),
        ("api-1.eu", Duration::from_millis(500))
    );
    let err = load(&[
        ("CALL_EVENTS_QUEUE", "0"),
        ("CALL_EVENTS_STREAM_MAXLEN", "0"),
        ("CALL_EVENTS_CLAIM_IDLE_MS", "0"),
        ("CALL_EVENTS_MAX_DELIVERIES", "0"),
        ("CALL_FEED_HEARTBEAT_MS", "0"),
        ("INSTANCE_NAME", "two words"),
    ])
    .unwrap_err();
    assert_eq!(
        problem_vars(&err),
        [
            "CALL_EVENTS_QUEUE",
            "CALL_EVENTS_STREAM_MAXLEN",
            "CALL_EVENTS_CLAIM_IDLE_MS",
            "CALL_EVENTS_MAX_DELIVERIES",
            "CALL_FEED_HEARTBEAT_MS",
            "INSTANCE_NAME",
        ],
        "{err}"
    );
    // The default consumer name tells the process apart on its host.
    let name = CallsConfig::new(b"0123456789abcdef").consumer_name();
    assert!(
        name.ends_with(&format!("-{}", std::process::id())),
        "{name}"
    );
}

#[test]
fn ttl_overrides_are_applied() {
    let config = load(&[
        ("CACHE_TTL_GREETING_L2_SECS", "120"),
        ("CACHE_TTL_GREETING_L1_SECS", "30"),
        ("CACHE_TTL_GREETING_NEGATIVE_SECS", "5"),
        ("CACHE_TTL_JITTER", "0.2"),
    ])
    .unwrap();
    assert_eq!(
        *config.cache.policy(tiercache_repository::schema().greeting),
        EntityPolicy {
            l2_ttl: Duration::from_secs(120),
            l1_ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            jitter: 0.2,
            grace: EntityPolicy::DEFAULT_GRACE,
        }
    );
    assert_eq!(
        *config.cache.policy(tiercache_repository::schema().lead),
        EntityPolicy {
            jitter: 0.2,
            ..*tiercache_repository::schema()
                .schema
                .policy(tiercache_repository::schema().lead)
                .unwrap()
        }
    );
}

#[test]
fn an_l1_ttl_over_l2_is_reported_by_variable() {
    let err = load(&[("CACHE_TTL_LEAD_L1_SECS", "1000")]).unwrap_err();
    assert_eq!(problem_vars(&err), ["CACHE_TTL_LEAD_L1_SECS"]);
    assert!(err.problems[0].message.contains("must not exceed"), "{err}");
}

#[test]
fn an_unreadable_ttl_keeps_the_entity_on_its_seed() {
    // Against the seed L2 TTL (900 s) this L1 TTL would conflict; only the typo is reported.
    let err = load(&[
        ("CACHE_TTL_LEAD_L2_SECS", "2h"),
        ("CACHE_TTL_LEAD_L1_SECS", "1000"),
    ])
    .unwrap_err();
    assert_eq!(problem_vars(&err), ["CACHE_TTL_LEAD_L2_SECS"]);
    assert_eq!(err.problems[0].message, r#"expected seconds, got "2h""#);
}

#[test]
fn a_bad_jitter_is_reported_once() {
    let err = load(&[("CACHE_TTL_JITTER", "0.9")]).unwrap_err();
    assert_eq!(problem_vars(&err), ["CACHE_TTL_JITTER"]);
}

#[test]
fn huge_durations_are_refused() {
    let err = load(&[
        ("BREAKER_OPEN_MS", &u64::MAX.to_string()),
        ("CACHE_TTL_ORG_L2_SECS", "31536001"),
    ])
    .unwrap_err();
    assert_eq!(
        problem_vars(&err),
        ["BREAKER_OPEN_MS", "CACHE_TTL_ORG_L2_SECS"]
    );
}

#[test]
fn cache_fields_map_to_their_variables() {
    for (field, var) in [
        ("prefix", "CACHE_PREFIX"),
        ("env", "APP_ENV"),
        ("schema", "CACHE_SCHEMA_VERSION"),
        ("key_secret", "CACHE_KEY_SECRET"),
        ("l1_max_bytes", "L1_MAX_BYTES"),
        ("load_timeout", "LOAD_TIMEOUT_MS"),
        ("breaker.failure_threshold", "BREAKER_FAILURE_THRESHOLD"),
        ("breaker.open_for", "BREAKER_OPEN_MS"),
        ("redis_url", "REDIS_URL"),
        ("redis_ca_cert", "REDIS_CA_CERT"),
        ("pool_size", "REDIS_POOL_SIZE"),
        ("l2_timeout", "REDIS_COMMAND_TIMEOUT_MS"),
        ("connect_timeout", "REDIS_CONNECT_TIMEOUT_MS"),
        ("policy.lead.l1_ttl", "CACHE_TTL_LEAD_L1_SECS"),
        ("policy.greeting.l2_ttl", "CACHE_TTL_GREETING_L2_SECS"),
        (
            "policy.history.negative_ttl",
            "CACHE_TTL_HISTORY_NEGATIVE_SECS",
        ),
        ("policy.org.jitter", "CACHE_TTL_JITTER"),
    ] {
        assert_eq!(cache_field_var(field).as_deref(), Some(var), "{field}");
    }
    assert_eq!(cache_field_var("l1_enabled").as_deref(), Some("L1_ENABLED"));
    for field in ["policy.nope.l1_ttl", "policy.lead.nope", "nope"] {
        assert_eq!(cache_field_var(field), None, "{field}");
    }
    // Every policy field of every entity maps to a variable that is read.
    let names = names();
    for (entity, _) in declared_entities() {
        for field in ["l2_ttl", "l1_ttl", "negative_ttl", "jitter"] {
            let var = cache_field_var(&format!("policy.{entity}.{field}")).unwrap();
            assert!(names.contains(&var), "{var}");
        }
    }
}

#[test]
fn ttl_variables_follow_the_entity_names_in_their_place() {
    // Entity by entity, between the breaker's variables and the jitter, as before they were
    // derived from the entities.
    let mut expected = vec!["BREAKER_OPEN_MS".to_owned()];
    for (entity, _) in declared_entities() {
        let upper = entity.as_str().to_ascii_uppercase();
        expected.extend([
            format!("CACHE_TTL_{upper}_L2_SECS"),
            format!("CACHE_TTL_{upper}_L1_SECS"),
            format!("CACHE_TTL_{upper}_NEGATIVE_SECS"),
        ]);
    }
    expected.push("CACHE_TTL_JITTER".to_owned());
    let names = names();
    let start = names.iter().position(|n| n == "BREAKER_OPEN_MS").unwrap();
    assert_eq!(names[start..start + expected.len()], expected);
}

#[test]
fn each_shown_default_is_the_default() {
    // Setting a variable to the default its declaration shows (and the README with it)
    // changes nothing, so the two cannot drift apart; with a webhook secret set, so that
    // the header's name shows.
    let base = [WEBHOOK_SECRET];
    let unset = format!("{:?}", load(&base).unwrap());
    let mut checked = 0;
    for var in variables() {
        if let VarDefault::Value(value) = &var.default {
            let set = load(&[WEBHOOK_SECRET, (var.name.as_str(), value.as_str())]);
            let set = set.unwrap_or_else(|e| panic!("{}={value:?}: {e}", var.name));
            assert_eq!(format!("{set:?}"), unset, "{}={value:?}", var.name);
            checked += 1;
        }
    }
    assert!(checked > 30, "{checked}");
}

#[test]
fn debug_hides_secrets() {
    let config = load(&[
        (
            "DATABASE_URL",
            "postgres://app:hunter2@db.internal:5432/tiercache",
        ),
        ("REDIS_URL", "redis://:redispass@cache.internal:6379/"),
        ("CACHE_KEY_SECRET", "a very secret key secret"),
        ("ADMIN_TOKEN", "an admin token, long enough"),
    ])
    .unwrap();
    let text = format!("{config:?}");
    for secret in ["hunter2", "redispass", "very secret", "admin token"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(
        text.contains("postgres://app:***@db.internal:5432/tiercache"),
        "{text}"
    );
    assert!(text.contains(r#"admin_token: "set""#), "{text}");
    assert!(!config.key_secret_is_default);
    let text = format!("{:?}", load(&[]).unwrap());
    assert!(text.contains(r#"admin_token: "not set""#), "{text}");
}

#[test]
fn problems_never_quote_secrets() {
    let err = load(&[
        ("DATABASE_URL", "mysql://u:hunter2@h/db"),
        ("CACHE_KEY_SECRET", "short-sekrit"),
        ("ADMIN_TOKEN", "tiny-tok"),
        ("REDIS_URL", "http://:redispass@h/"),
    ])
    .unwrap_err();
    assert_eq!(
        problem_vars(&err),
        [
            "DATABASE_URL",
            "REDIS_URL",
            "CACHE_KEY_SECRET",
            "ADMIN_TOKEN"
        ]
    );
    let text = err.to_string();
    for secret in ["hunter2", "sekrit", "tiny-tok", "redispass"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

#[test]
fn production_refuses_the_default_secret() {
    for app_env in ["prod", "production", "PROD"] {
        let err = load(&[("APP_ENV", app_env), WEBHOOK_SECRET]).unwrap_err();
        assert_eq!(problem_vars(&err), ["CACHE_KEY_SECRET"], "{app_env}");
        // Setting the public secret by hand is refused too.
        let err = load(&[
            ("APP_ENV", app_env),
            ("CACHE_KEY_SECRET", Config::DEV_KEY_SECRET),
            WEBHOOK_SECRET,
        ])
        .unwrap_err();
        assert_eq!(problem_vars(&err), ["CACHE_KEY_SECRET"], "{app_env}");
    }
    let config = load(&[
        ("APP_ENV", "prod"),
        ("CACHE_KEY_SECRET", "0123456789abcdef"),
        WEBHOOK_SECRET,
    ])
    .unwrap();
    assert!(!config.key_secret_is_default);
    assert!(
        load(&[("APP_ENV", "staging")])
            .unwrap()
            .key_secret_is_default
    );
}

/// A webhook secret production accepts.
const WEBHOOK_SECRET: (&str, &str) = ("WEBHOOK_SECRET", "a-webhook-secret-long-enough");

#[test]
fn the_webhook_secret_is_checked_and_production_requires_it() {
    let config = load(&[]).unwrap();
    assert!(config.webhook_secret.is_none() && !config.production);
    let config = load(&[WEBHOOK_SECRET]).unwrap();
    let secret = config.webhook_secret.as_ref().unwrap();
    assert_eq!(secret.header(), "x-webhook-secret");
    let config = load(&[
        WEBHOOK_SECRET,
        ("WEBHOOK_SECRET_HEADER", "X-Platform-Token"),
    ])
    .unwrap();
    assert_eq!(config.webhook_secret.unwrap().header(), "x-platform-token");

    let err = load(&[
        ("APP_ENV", "prod"),
        ("CACHE_KEY_SECRET", "0123456789abcdef"),
    ])
    .unwrap_err();
    assert_eq!(problem_vars(&err), ["WEBHOOK_SECRET"]);
    assert!(err.to_string().contains("would answer anyone"), "{err}");
    let config = load(&[
        ("APP_ENV", "Production"),
        ("CACHE_KEY_SECRET", "0123456789abcdef"),
        WEBHOOK_SECRET,
    ])
    .unwrap();
    assert!(config.production);

    for (bad, shown) in [("tiny-secret", "11"), ("a secret with spaces in it", "26")] {
        let err = load(&[("WEBHOOK_SECRET", bad)]).unwrap_err();
        assert_eq!(problem_vars(&err), ["WEBHOOK_SECRET"]);
        let text = err.to_string();
        assert!(!text.contains(bad) && text.contains(shown), "{text}");
    }
    for bad in [
        "",
        "x_secret",
        "x secret",
        "content-type",
        "Host",
        &"x".repeat(65),
    ] {
        let err = load(&[WEBHOOK_SECRET, ("WEBHOOK_SECRET_HEADER", bad)]).unwrap_err();
        assert_eq!(problem_vars(&err), ["WEBHOOK_SECRET_HEADER"], "{bad:?}");
    }
    let text = format!("{:?}", load(&[WEBHOOK_SECRET]).unwrap());
    assert!(!text.contains("long-enough"), "{text}");
    assert!(text.contains("x-webhook-secret"), "{text}");
}

#[test]
fn monitoring_can_listen_apart_from_the_api() {
    assert_eq!(load(&[]).unwrap().monitoring_bind_addr, None);
    let config = load(&[("MONITORING_BIND_ADDR", "127.0.0.1:9100")]).unwrap();
    assert_eq!(
        config.monitoring_bind_addr,
        Some("127.0.0.1:9100".parse().unwrap())
    );
    let err = load(&[
        ("BIND_ADDR", "127.0.0.1:9100"),
        ("MONITORING_BIND_ADDR", "127.0.0.1:9100"),
    ])
    .unwrap_err();
    assert_eq!(problem_vars(&err), ["MONITORING_BIND_ADDR"]);
    // Two ephemeral ports are two listeners.
    assert!(
        load(&[
            ("BIND_ADDR", "127.0.0.1:0"),
            ("MONITORING_BIND_ADDR", "127.0.0.1:0")
        ])
        .is_ok()
    );
    let err = load(&[("MONITORING_BIND_ADDR", "localhost")]).unwrap_err();
    assert_eq!(problem_vars(&err), ["MONITORING_BIND_ADDR"]);
}

#[test]
fn admin_tokens_must_be_long_enough() {
    let err = load(&[("ADMIN_TOKEN", "short")]).unwrap_err();
    assert_eq!(problem_vars(&err), ["ADMIN_TOKEN"]);
    let config = load(&[("ADMIN_TOKEN", "0123456789abcdef")]).unwrap();
    assert_eq!(config.admin_token.as_deref(), Some("0123456789abcdef"));
}

#[test]
fn non_unicode_values_are_reported_for_our_variables_only() {
    let err = Config::load(
        Vec::new(),
        &["REDIS_URL".to_owned(), "SOMEONE_ELSES".to_owned()],
    )
    .unwrap_err();
    assert_eq!(problem_vars(&err), ["REDIS_URL"]);
    assert_eq!(err.problems[0].message, "not valid UTF-8");
}

#[test]
fn the_encryption_key_is_64_hex_digits_and_never_quoted() {
    let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let config = load(&[("CACHE_ENCRYPTION_KEY", hex)]).unwrap();
    assert!(config.cache.seals_values());
    let text = format!("{config:?}");
    assert!(text.contains(r#"encryption_key: "set""#), "{text}");
    assert!(!text.contains("00112233"), "{text}");
    assert!(!load(&[]).unwrap().cache.seals_values());
    for bad in [
        "",
        &hex[..32],
        &hex.replace('a', "z"),
        "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=",
    ] {
        let err = load(&[("CACHE_ENCRYPTION_KEY", bad)]).unwrap_err();
        assert_eq!(problem_vars(&err), ["CACHE_ENCRYPTION_KEY"], "{bad:?}");
        let text = err.to_string();
        assert!(text.contains("expected 64 hex digits"), "{text}");
        if !bad.is_empty() {
            assert!(!text.contains(&bad[..16]), "{text}");
        }
    }
}
