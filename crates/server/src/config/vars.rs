//! Every variable the service reads, declared once: its name, a line of doc, its default as
//! the README shows it, and how its text becomes a field of the [`RawConfig`]. The
//! per-entity TTL variables are declared once for all entities and named after each.
//!
//! As in ripgrep's flag definitions, each declaration carries the function that stores its
//! value, so the list of variables, their parsing and the README's table (checked by a
//! test) come from one place.

use std::time::Duration;

use tiercache::{Entity, EntityPolicy};

use super::parse::{
    address, bytes, encryption_key, flag, fraction, instance_name, millis, text,
    webhook_secret_header, whole,
};
use super::raw::RawConfig;
use Decl::{EachEntity, One};
use Shown::{Value, Words};

/// The cached entities and their default policies: the per-entity variables, their
/// defaults and the README's entity list all follow these.
pub(super) fn declared_entities() -> Vec<(Entity, EntityPolicy)> {
    let schema = &tiercache_repository::schema().schema;
    schema
        .entities()
        .filter_map(|entity| Some((entity, *schema.policy(entity)?)))
        .collect()
}

/// A declaration: one variable, or a group read for each declared entity.
pub(super) enum Decl {
    /// A variable read once.
    One(Var),
    /// Variables read for each entity, in this order for one entity, then the next.
    EachEntity(&'static [EntityVar]),
}

/// A variable read once, into the raw config.
pub(super) struct Var {
    /// Its name.
    pub(super) name: &'static str,
    /// What it sets, in a line.
    pub(super) doc: &'static str,
    /// Its default as the README's table shows it.
    pub(super) default: Shown,
    /// Parses the text into its field of the raw config; `Err` is the problem's message.
    pub(super) set: fn(&mut RawConfig, &str) -> Result<(), String>,
}

/// A variable's default, as a user reads it.
#[derive(Clone, Copy)]
pub(super) enum Shown {
    /// A value the variable takes: setting the variable to it changes nothing.
    Value(&'static str),
    /// In words, what leaving the variable unset means.
    Words(&'static str),
}

/// A TTL, in seconds, read for each declared entity into its policy, whose own value is the
/// default.
pub(super) struct EntityVar {
    /// Its name, [`ENTITY`] standing for the entity's name, upper-cased.
    pub(super) name: &'static str,
    /// What it sets, in a line.
    pub(super) doc: &'static str,
    /// The policy's field, as the cache's builder names it in its problems.
    pub(super) field: &'static str,
    /// The policy's TTL it sets.
    pub(super) ttl: fn(&mut EntityPolicy) -> &mut Duration,
}

/// What stands for the entity's name in a per-entity variable's name.
pub(super) const ENTITY: &str = "<ENTITY>";

/// Every variable, in the order their problems are reported.
pub(super) static VARS: &[Decl] = &[
    One(Var {
        name: "DATABASE_URL",
        doc: "Where Postgres is: `postgres://user[:password]@host:port/db`, TLS in its query.",
        default: Value("postgres://postgres@127.0.0.1:5432/tiercache"),
        set: |raw, v| text(v).map(|url| raw.database_url = url),
    }),
    One(Var {
        name: "DATABASE_POOL_SIZE",
        doc: "Connections in the Postgres pool.",
        default: Value("16"),
        set: |raw, v| whole(v).map(|n| raw.database_pool_size = n),
    }),
    One(Var {
        name: "DATABASE_ACQUIRE_TIMEOUT_MS",
        doc: "Bound on waiting for a pooled Postgres connection.",
        default: Value("500"),
        set: |raw, v| millis(v).map(|d| raw.database_acquire_timeout = d),
    }),
    One(Var {
        name: "DATABASE_STATEMENT_TIMEOUT_MS",
        doc: "Postgres `statement_timeout` for every connection.",
        default: Value("2000"),
        set: |raw, v| millis(v).map(|d| raw.database_statement_timeout = d),
    }),
    One(Var {
        name: "DB_NOTIFY_ENABLED",
        doc: "Whether writes that bypass the service invalidate the cache, through triggers.",
        default: Value("true"),
        set: |raw, v| flag(v).map(|on| raw.db_notify_enabled = on),
    }),
    One(Var {
        name: "REDIS_ENABLED",
        doc: "Whether the cache has a Redis tier; off, L1 and Postgres give the same answers.",
        default: Value("true"),
        set: |raw, v| flag(v).map(|on| raw.redis_enabled = on),
    }),
    One(Var {
        name: "REDIS_URL",
        doc: "Where Redis is: `redis[s]://[user:password@]host:port/`.",
        default: Value("redis://127.0.0.1:6379/"),
        set: |raw, v| text(v).map(|url| raw.redis_url = url),
    }),
    One(Var {
        name: "REDIS_CA_CERT",
        doc: "Path of the PEM CA a `rediss://` server's certificate must chain to.",
        default: Words("unset (public roots)"),
        set: |raw, v| text(v).map(|path| raw.redis_ca_cert = Some(path)),
    }),
    One(Var {
        name: "REDIS_POOL_SIZE",
        doc: "Redis connections, each carrying many commands at once.",
        default: Value("1"),
        set: |raw, v| whole(v).map(|n| raw.redis_pool_size = n),
    }),
    One(Var {
        name: "REDIS_COMMAND_TIMEOUT_MS",
        doc: "Bound on every Redis command.",
        default: Value("50"),
        set: |raw, v| millis(v).map(|d| raw.redis_command_timeout = d),
    }),
    One(Var {
        name: "REDIS_CONNECT_TIMEOUT_MS",
        doc: "Bound on connecting to Redis.",
        default: Value("250"),
        set: |raw, v| millis(v).map(|d| raw.redis_connect_timeout = d),
    }),
    One(Var {
        name: "BIND_ADDR",
        doc: "Where the HTTP server listens.",
        default: Value("127.0.0.1:8080"),
        set: |raw, v| address(v, "127.0.0.1:8080").map(|a| raw.bind_addr = a),
    }),
    One(Var {
        name: "MONITORING_BIND_ADDR",
        doc: "Where the monitoring routes listen on their own, apart from the API.",
        default: Words("unset: monitoring on `BIND_ADDR`"),
        set: |raw, v| address(v, "127.0.0.1:9100").map(|a| raw.monitoring_bind_addr = Some(a)),
    }),
    One(Var {
        name: "HTTP_HEADER_TIMEOUT_MS",
        doc: "Bound on reading a request's headers (and on an idle keep-alive connection).",
        default: Value("10000"),
        set: |raw, v| millis(v).map(|d| raw.http_header_timeout = d),
    }),
    One(Var {
        name: "HTTP_BODY_TIMEOUT_MS",
        doc: "Bound on reading a request's whole body.",
        default: Value("10000"),
        set: |raw, v| millis(v).map(|d| raw.http_body_timeout = d),
    }),
    One(Var {
        name: "CACHE_KEY_SECRET",
        doc: "HMAC key for phone numbers in cache keys; live feed tickets derive theirs from it.",
        default: Words("a development secret (refused when `APP_ENV` is `prod`)"),
        set: |raw, v| text(v).map(|secret| raw.key_secret = Some(secret)),
    }),
    One(Var {
        name: "CACHE_ENCRYPTION_KEY",
        doc: "64 hex digits: every value in Redis sealed with this key.",
        default: Words("unset (values in Redis in clear)"),
        set: |raw, v| encryption_key(v).map(|key| raw.encryption_key = Some(key)),
    }),
    One(Var {
        name: "APP_ENV",
        doc: "The environment, in cache keys; `prod` or `production` refuses development secrets.",
        default: Value("dev"),
        set: |raw, v| text(v).map(|env| raw.app_env = env),
    }),
    One(Var {
        name: "CACHE_PREFIX",
        doc: "The first part of every cache key.",
        default: Value("tc"),
        set: |raw, v| text(v).map(|prefix| raw.cache_prefix = prefix),
    }),
    One(Var {
        name: "CACHE_SCHEMA_VERSION",
        doc: "The version in cache keys; a new one leaves the old values behind.",
        default: Value("1"),
        set: |raw, v| whole(v).map(|n| raw.cache_schema_version = n),
    }),
    One(Var {
        name: "L1_ENABLED",
        doc: "Whether the in-process tier is used.",
        default: Value("true"),
        set: |raw, v| flag(v).map(|on| raw.l1_enabled = on),
    }),
    One(Var {
        name: "L1_MAX_BYTES",
        doc: "Bound on the in-process tier, in bytes (`KiB`, `MiB`, `GiB` taken).",
        default: Value("64 MiB"),
        set: |raw, v| bytes(v).map(|n| raw.l1_max_bytes = n),
    }),
    One(Var {
        name: "LOAD_TIMEOUT_MS",
        doc: "Bound on a read that misses: waiting for another instance's load, then loading.",
        default: Value("2000"),
        set: |raw, v| millis(v).map(|d| raw.load_timeout = d),
    }),
    One(Var {
        name: "BREAKER_FAILURE_THRESHOLD",
        doc: "Redis failures in a row after which Redis is skipped.",
        default: Value("5"),
        set: |raw, v| whole(v).map(|n| raw.breaker_failure_threshold = n),
    }),
    One(Var {
        name: "BREAKER_OPEN_MS",
        doc: "How long Redis is skipped once the breaker opens.",
        default: Value("2000"),
        set: |raw, v| millis(v).map(|d| raw.breaker_open = d),
    }),
    EachEntity(&[
        EntityVar {
            name: "CACHE_TTL_<ENTITY>_L2_SECS",
            doc: "How long the entity's values live in Redis.",
            field: "l2_ttl",
            ttl: |policy| &mut policy.l2_ttl,
        },
        EntityVar {
            name: "CACHE_TTL_<ENTITY>_L1_SECS",
            doc: "How long the entity's values live in the in-process tier.",
            field: "l1_ttl",
            ttl: |policy| &mut policy.l1_ttl,
        },
        EntityVar {
            name: "CACHE_TTL_<ENTITY>_NEGATIVE_SECS",
            doc: "How long a \"not found\" of the entity is cached.",
            field: "negative_ttl",
            ttl: |policy| &mut policy.negative_ttl,
        },
    ]),
    One(Var {
        name: "CACHE_TTL_JITTER",
        doc: "Each TTL is scaled by a random factor within this fraction either way.",
        default: Value("0.1"),
        set: |raw, v| fraction(v).map(|jitter| raw.ttl_jitter = jitter),
    }),
    One(Var {
        name: "WEBHOOK_BUDGET_MS",
        doc: "Time the webhook may take before it answers with what it has.",
        default: Value("90"),
        set: |raw, v| millis(v).map(|d| raw.webhook_budget = d),
    }),
    One(Var {
        name: "WEBHOOK_SECRET",
        doc: "The webhook's shared secret.",
        default: Words("unset: the webhook is open (refused when `APP_ENV` is `prod`)"),
        set: |raw, v| text(v).map(|secret| raw.webhook_secret = Some(secret)),
    }),
    One(Var {
        name: "WEBHOOK_SECRET_HEADER",
        doc: "The header the webhook's secret comes in.",
        default: Value("x-webhook-secret"),
        set: |raw, v| webhook_secret_header(v).map(|name| raw.webhook_secret_header = name),
    }),
    One(Var {
        name: "ADMIN_TOKEN",
        doc: "Bearer token for the admin API.",
        default: Words("unset (admin API off)"),
        set: |raw, v| text(v).map(|token| raw.admin_token = Some(token)),
    }),
    One(Var {
        name: "CALL_EVENTS_QUEUE",
        doc: "Call events held in process while Redis is slow or down.",
        default: Value("10000"),
        set: |raw, v| whole(v).map(|n| raw.call_queue = n),
    }),
    One(Var {
        name: "CALL_EVENTS_STREAM_MAXLEN",
        doc: "`MAXLEN ~` of each organization's daily call stream.",
        default: Value("100000"),
        set: |raw, v| whole(v).map(|n| raw.call_stream_maxlen = n),
    }),
    One(Var {
        name: "CALL_EVENTS_CLAIM_IDLE_MS",
        doc: "How long an entry stays pending on a consumer before another claims it.",
        default: Value("30000"),
        set: |raw, v| millis(v).map(|d| raw.call_claim_idle = d),
    }),
    One(Var {
        name: "CALL_EVENTS_MAX_DELIVERIES",
        doc: "Deliveries after which a failing entry goes to the dead-letter stream.",
        default: Value("5"),
        set: |raw, v| whole(v).map(|n| raw.call_max_deliveries = n),
    }),
    One(Var {
        name: "CALL_EVENTS_CONSUMER",
        doc: "Whether this instance folds call events into sessions; off, it only publishes.",
        default: Value("true"),
        set: |raw, v| flag(v).map(|on| raw.call_consumer = on),
    }),
    One(Var {
        name: "CALL_FEED_HEARTBEAT_MS",
        doc: "How often a live feed client hears from an idle feed.",
        default: Value("15000"),
        set: |raw, v| millis(v).map(|d| raw.call_heartbeat = d),
    }),
    One(Var {
        name: "INSTANCE_NAME",
        doc: "This instance's consumer name in the call stream's group; unique per instance.",
        default: Words("the host's name and the process id"),
        set: |raw, v| instance_name(v).map(|name| raw.instance_name = Some(name)),
    }),
];

impl EntityVar {
    /// Its name for `entity`: `CACHE_TTL_<ENTITY>_L2_SECS` is `CACHE_TTL_LEAD_L2_SECS` for
    /// leads.
    pub(super) fn name_for(&self, entity: Entity) -> String {
        self.name
            .replace(ENTITY, &entity.as_str().to_ascii_uppercase())
    }
}

/// One environment variable the service reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variable {
    /// Its name, e.g. `REDIS_URL` or `CACHE_TTL_LEAD_L2_SECS`.
    pub name: String,
    /// Its default.
    pub default: VarDefault,
    /// What it sets, in a line.
    pub doc: &'static str,
}

/// A variable's default, as the README's configuration table shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VarDefault {
    /// A value the variable takes (`16`, `true`, `64 MiB`): setting it changes nothing.
    Value(String),
    /// In words, what leaving the variable unset means (`unset (admin API off)`).
    Words(&'static str),
}

/// Every variable read, in the order their problems are reported: the declarations' order,
/// the per-entity ones entity by entity (all of the lead's, then the organization's, ...).
pub fn variables() -> Vec<Variable> {
    let entities = declared_entities();
    let mut all = Vec::new();
    for decl in VARS {
        match decl {
            One(var) => all.push(Variable {
                name: var.name.to_owned(),
                default: match var.default {
                    Value(value) => VarDefault::Value(value.to_owned()),
                    Words(words) => VarDefault::Words(words),
                },
                doc: var.doc,
            }),
            EachEntity(vars) => {
                for &(entity, mut policy) in &entities {
                    for var in *vars {
                        let secs = (var.ttl)(&mut policy).as_secs();
                        all.push(Variable {
                            name: var.name_for(entity),
                            default: VarDefault::Value(secs.to_string()),
                            doc: var.doc,
                        });
                    }
                }
            }
        }
    }
    all
}

/// The names of [`variables`], in their order.
pub(super) fn names() -> Vec<String> {
    variables().into_iter().map(|var| var.name).collect()
}
