//! [`Repository`]: reads through the two-tier cache, writes to PostgreSQL and then
//! invalidates every cached view the write changed.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tiercache::log_throttle::{LOG_INTERVAL, LogThrottle};
use tiercache::{InvalidationSource, TwoTierCache};

use crate::cache_keys::{Channel, keys};

use crate::error::Error;
use crate::greeting::greeting_text;
use crate::model::{
    Context, Greeting, HistoryPage, LEAD_STATUSES, Lead, LeadPatch, Message, NewMessage, Org,
    Summary,
};
use crate::phone::Phone;
use crate::pool::{DbPool, PoolObserver, PoolState};
use crate::queries;

/// Largest history page.
pub const MAX_PAGE_LIMIT: u32 = 100;
/// Largest history offset.
pub const MAX_PAGE_OFFSET: u32 = 10_000;
/// Longest name, notes or message body accepted.
pub const MAX_TEXT_LEN: usize = 4_000;

/// The cached repositories: every read goes L1 → L2 → PostgreSQL.
///
/// # Writing
///
/// A write commits in PostgreSQL first, then invalidates the entity and every view derived
/// from it (a lead's update: its id and phone keys, context, summary, greetings and history
/// pages; a new message: context, summary, greetings and history). The invalidation
/// clears this instance's L1 at once, so a read after a successful write never sees the old
/// value here. Its transaction is marked as the service's own
/// ([`queries::mark_service_origin`]), so the database's change triggers stay silent: the
/// other instances hear of it on the Redis bus. Writes that bypass the service reach the
/// cache through [`DbListener`](crate::DbListener) instead.
///
/// # When Redis fails
///
/// Reads answer from L1 or PostgreSQL. A write still commits; its Redis deletes that could
/// not land are owed by the cache, which does not read those keys from Redis until it has
/// replayed them (see [`TwoTierCache::owed_invalidations`]).
///
/// # When PostgreSQL fails
///
/// Cached values are served; a miss returns [`Error::Unavailable`] or [`Error::Timeout`]. A
/// read that meets a connection a restart killed runs once more on a new one, and the other
/// dead connections leave the pool at their next checkout ([`DbPool`]); a write is not run
/// again (it may have committed), and is an [`Error::Unavailable`] then.
#[derive(Clone)]
pub struct Repository {
    db: DbPool,
    cache: TwoTierCache,
    clock: Clock,
    // Merges concurrent loads of one call (the batched query serves four keys at once, so
    // the per-key merging of the cache does not apply). Entries expire at once: this holds
    // loads in flight, not results.
    calls: moka::future::Cache<(String, String), Arc<CallView>>,
}

/// Everything the voice agent's webhook needs about a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallView {
    /// The organization reached on the number called; `None` for an unknown number.
    pub org: Option<Arc<Org>>,
    /// The caller as a lead of it; `None` for a new caller.
    pub lead: Option<Arc<Lead>>,
    /// The lead's context.
    pub context: Option<Arc<Context>>,
    /// The lead's voice greeting.
    pub greeting: Option<Arc<Greeting>>,
}

/// The cached parts of a call, as [`Repository::call_cached`] found them.
pub type CallSlots = crate::cache_keys::CallSlots<Org, Lead, Context, Greeting>;

struct ExpireAtOnce;

impl moka::Expiry<(String, String), Arc<CallView>> for ExpireAtOnce {
    fn expire_after_create(
        &self,
        _key: &(String, String),
        _value: &Arc<CallView>,
        _at: std::time::Instant,
    ) -> Option<std::time::Duration> {
        Some(std::time::Duration::ZERO)
    }
}

/// Where writes take their timestamps from.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

impl Repository {
    /// A repository on this pool and cache. Give it a [`DbPool`] from
    /// [`DbPool::connect`], so that a restart's dead connections leave the pool at once.
    pub fn new(pool: impl Into<DbPool>, cache: TwoTierCache) -> Self {
        Repository {
            db: pool.into(),
            cache,
            clock: Arc::new(Utc::now),
            calls: moka::future::Cache::builder()
                .max_capacity(10_000)
                .expire_after(ExpireAtOnce)
                .build(),
        }
    }

    /// Takes write timestamps from `clock` instead of the system clock (for reproducible runs).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The cache it reads through.
    pub fn cache(&self) -> &TwoTierCache {
        &self.cache
    }

    /// The PostgreSQL pool.
    pub fn pool(&self) -> &PgPool {
        self.db.pool()
    }

    /// How full the PostgreSQL pool is now.
    pub fn pool_state(&self) -> PoolState {
        self.db.state()
    }

    /// This repository with its pool's checkouts reported to `observer`.
    pub fn with_pool_observer(mut self, observer: Arc<dyn PoolObserver>) -> Self {
        self.db = self.db.observed(observer);
        self
    }

    /// Whether PostgreSQL answers (`SELECT 1`), for health checks; retried like any read.
    pub async fn ping(&self) -> Result<(), Error> {
        self.db
            .read(|mut conn| async move {
                sqlx::query("SELECT 1")
                    .execute(&mut *conn)
                    .await
                    .map(|_| ())
            })
            .await
            .map_err(Error::from)
    }

    /// The organization reached on `phone`.
    pub async fn org_by_phone(&self, phone: &Phone) -> Result<Option<Arc<Org>>, Error> {
        let key = keys(&self.cache).org_by_phone(phone.as_str());
        let (db, phone) = (self.db.clone(), phone.clone());
        Ok(self
            .cache
            .get_or_load(key, move || async move {
                db.read(|mut conn| {
                    let phone = phone.clone();
                    async move { queries::org_by_phone(&mut *conn, phone.as_str()).await }
                })
                .await
            })
            .await?)
    }

    /// Everything the webhook needs about a call from `caller` to `called`: from L1, else one
    /// Redis round trip, else one batched query (merged across concurrent callers).
    pub async fn call(&self, called: &Phone, caller: &Phone) -> Result<CallView, Error> {
        let slots = self.call_cached(called, caller).await;
        self.call_complete(called, caller, slots).await
    }

    /// The first half of [`call`](Self::call): what the cache tiers hold.
    pub async fn call_cached(&self, called: &Phone, caller: &Phone) -> CallSlots {
        keys(&self.cache)
            .call(called.as_str(), caller.as_str(), Channel::Voice)
            .read(&self.cache)
            .await
    }

    /// The second half of [`call`](Self::call): loads what `slots` lack with one query and
    /// caches it.
    pub async fn call_complete(
        &self,
        called: &Phone,
        caller: &Phone,
        slots: CallSlots,
    ) -> Result<CallView, Error> {
        if slots.is_complete() {
            return Ok(view_of(&slots));
        }
        let key = (called.as_str().to_owned(), caller.as_str().to_owned());
        let mut spare = slots.clone();
        match self
            .calls
            .try_get_with(key, self.load_call(called, caller, slots))
            .await
        {
            Ok(view) => Ok((*view).clone()),
            // The database failed: what L1 held past its freshness (within grace) answers,
            // marked stale, if it covers the whole call.
            Err(e) if spare.fall_back_to_stale(&self.cache) => {
                // Every call while the database is down: one line per interval
                // (`tiercache_stale_served_total` counts each).
                static STALE_CALL: LogThrottle = LogThrottle::new(LOG_INTERVAL);
                if let Some(suppressed) = STALE_CALL.admit() {
                    tracing::warn!(error = %e, suppressed, "call answered from stale cached values");
                }
                Ok(view_of(&spare))
            }
            Err(e) => Err(e.duplicate()),
        }
    }

    async fn load_call(
        &self,
        called: &Phone,
        caller: &Phone,
        slots: CallSlots,
    ) -> Result<Arc<CallView>, Error> {
        use tiercache::Slot;
        let started = std::time::Instant::now();
        let rows = self
            .db
            .read(|mut conn| async move {
                queries::call(&mut *conn, called.as_str(), caller.as_str()).await
            })
            .await
            .map_err(Error::from)?;
        let took = started.elapsed();
        let keys = keys(&self.cache);
        let schema = crate::cache_keys::schema();
        let org = match slots.org() {
            Slot::Found(org) => Some(org),
            Slot::NotFound => None,
            Slot::Missing => {
                self.cache
                    .observe_load(schema.org, rows.org.is_some(), took);
                self.cache
                    .install(
                        slots.batch(),
                        keys.org_by_phone(called.as_str()),
                        rows.org.clone(),
                    )
                    .await?
            }
        };
        let Some(org) = org else {
            return Ok(Arc::new(CallView {
                org: None,
                lead: None,
                context: None,
                greeting: None,
            }));
        };
        // The query found the lead through the organization it found; a cached organization
        // must be the same one for its rows to apply.
        let rows_apply = rows.org.as_ref().is_some_and(|o| o.id == org.id);
        let lead = match slots.lead() {
            Slot::Found(lead) => Some(lead),
            Slot::NotFound => None,
            Slot::Missing if rows_apply => {
                self.cache
                    .observe_load(schema.lead, rows.lead.is_some(), took);
                self.cache
                    .install(
                        slots.batch(),
                        keys.lead_by_phone(caller.as_str(), org.id),
                        rows.lead.clone(),
                    )
                    .await?
            }
            Slot::Missing => self.lead_by_phone(caller, org.id).await?,
        };
        let Some(lead) = lead else {
            return Ok(Arc::new(CallView {
                org: Some(org),
                lead: None,
                context: None,
                greeting: None,
            }));
        };
        let rows_apply = rows_apply && rows.lead.as_ref().is_some_and(|l| l.id == lead.id);
        let context = match slots.context() {
            Slot::Found(context) => Some(context),
            Slot::NotFound => None,
            Slot::Missing if rows_apply => {
                self.cache
                    .observe_load(schema.context, rows.context.is_some(), took);
                self.cache
                    .install(slots.batch(), keys.context(lead.id), rows.context.clone())
                    .await?
            }
            Slot::Missing => self.context(lead.id).await?,
        };
        let greeting = match (slots.greeting(), &context) {
            (Slot::Found(greeting), _) => Some(greeting),
            (Slot::NotFound, _) | (Slot::Missing, None) => None,
            (Slot::Missing, Some(context)) => {
                let greeting = Greeting {
                    lead_id: lead.id,
                    channel: Channel::Voice.as_str().to_owned(),
                    text: greeting_text(context, Channel::Voice),
                };
                self.cache
                    .observe_load(schema.greeting, true, std::time::Duration::ZERO);
                self.cache
                    .install(
                        slots.batch(),
                        keys.greeting(lead.id, Channel::Voice),
                        Some(greeting),
                    )
                    .await?
            }
        };
        Ok(Arc::new(CallView {
            org: Some(org),
            lead: Some(lead),
            context,
            greeting,
        }))
    }

    /// The lead with `phone` in organization `org_id`.
    pub async fn lead_by_phone(
        &self,
        phone: &Phone,
        org_id: i64,
    ) -> Result<Option<Arc<Lead>>, Error> {
        let key = keys(&self.cache).lead_by_phone(phone.as_str(), org_id);
        let (db, phone) = (self.db.clone(), phone.clone());
        Ok(self
            .cache
            .get_or_load(key, move || async move {
                db.read(|mut conn| {
                    let phone = phone.clone();
                    async move { queries::lead_by_phone(&mut *conn, phone.as_str(), org_id).await }
                })
                .await
            })
            .await?)
    }

    /// The lead with id `id`.
    pub async fn lead(&self, id: i64) -> Result<Option<Arc<Lead>>, Error> {
        let key = keys(&self.cache).lead_by_id(id);
        let db = self.db.clone();
        Ok(self
            .cache
            .get_or_load(key, move || async move {
                db.read(|mut conn| async move { queries::lead_by_id(&mut *conn, id).await })
                    .await
            })
            .await?)
    }

    /// The lead's conversation context.
    pub async fn context(&self, lead_id: i64) -> Result<Option<Arc<Context>>, Error> {
        let key = keys(&self.cache).context(lead_id);
        let db = self.db.clone();
        Ok(self
            .cache
            .get_or_load(key, move || async move {
                db.read(|mut conn| async move { queries::context(&mut *conn, lead_id).await })
                    .await
            })
            .await?)
    }

    /// The lead's conversation summary.
    pub async fn summary(&self, lead_id: i64) -> Result<Option<Arc<Summary>>, Error> {
        let key = keys(&self.cache).summary(lead_id);
        let db = self.db.clone();
        Ok(self
            .cache
            .get_or_load(key, move || async move {
                db.read(|mut conn| async move { queries::summary(&mut *conn, lead_id).await })
                    .await
            })
            .await?)
    }

    /// The greeting for the lead on `channel`, built from its (cached) context.
    pub async fn greeting(
        &self,
        lead_id: i64,
        channel: Channel,
    ) -> Result<Option<Arc<Greeting>>, Error> {
        let key = keys(&self.cache).greeting(lead_id, channel);
        let repo = self.clone();
        let loaded = self
            .cache
            .get_or_load(key, move || async move {
                let context = repo.context(lead_id).await?;
                Ok::<_, Error>(context.map(|context| Greeting {
                    lead_id,
                    channel: channel.as_str().to_owned(),
                    text: greeting_text(&context, channel),
                }))
            })
            .await;
        loaded.map_err(|e| match &e {
            // The loader's own error (the context read), passed through the cache.
            tiercache::Error::Load { source, .. } => match source.downcast_ref::<Error>() {
                Some(inner) => inner.duplicate(),
                None => e.into(),
            },
            _ => e.into(),
        })
    }

    /// A page of the lead's messages, newest first; `None` when the lead does not exist.
    pub async fn history(
        &self,
        lead_id: i64,
        limit: u32,
        offset: u32,
    ) -> Result<Option<Arc<HistoryPage>>, Error> {
        if !(1..=MAX_PAGE_LIMIT).contains(&limit) {
            return Err(Error::Invalid {
                field: "limit",
                message: format!("must be between 1 and {MAX_PAGE_LIMIT}, got {limit}"),
            });
        }
        if offset > MAX_PAGE_OFFSET {
            return Err(Error::Invalid {
                field: "offset",
                message: format!("must be at most {MAX_PAGE_OFFSET}, got {offset}"),
            });
        }
        let key = keys(&self.cache).history(lead_id, limit, offset);
        let db = self.db.clone();
        Ok(self
            .cache
            .get_or_load(key, move || async move {
                db.read(|mut conn| async move {
                    queries::history(&mut conn, lead_id, limit, offset).await
                })
                .await
            })
            .await?)
    }

    /// Updates a lead, then invalidates it and its derived views and caches the updated lead
    /// in this instance's L1; `None` if there is no such lead.
    pub async fn update_lead(&self, id: i64, patch: &LeadPatch) -> Result<Option<Lead>, Error> {
        if let Some(name) = &patch.name {
            check_text("name", name, true)?;
        }
        if let Some(status) = &patch.status
            && !LEAD_STATUSES.contains(&status.as_str())
        {
            return Err(Error::Invalid {
                field: "status",
                message: format!("must be one of {}", LEAD_STATUSES.join(", ")),
            });
        }
        if let Some(Some(notes)) = &patch.notes {
            check_text("notes", notes, false)?;
        }
        let keys = keys(&self.cache);
        let by_id = keys.lead_by_id(id);
        // Before the write: the written row is cached only if no other invalidation of the
        // lead comes between (see `TwoTierCache::invalidate_and_cache`).
        let ticket = self.cache.write_ticket(&by_id);
        // One statement, committed on its own (it marks itself as the service's write). Not
        // run again if its connection broke: it may have committed first.
        let mut conn = self.db.acquire().await.map_err(|e| self.db.checked(e))?;
        let updated = queries::update_lead(&mut *conn, id, patch, (self.clock)()).await;
        drop(conn);
        let Some(lead) = updated.map_err(|e| self.db.checked(e))? else {
            return Ok(None);
        };
        // The next read of the lead on this instance is a hit, not a load.
        let cached = [by_id, keys.lead_by_phone(&lead.phone, lead.org_id)];
        self.cache
            .invalidate_and_cache(
                keys.lead_changed(lead.id, lead.org_id, &lead.phone),
                InvalidationSource::Write,
                ticket,
                lead.clone(),
                &cached,
            )
            .await;
        Ok(Some(lead))
    }

    /// Adds a message, then invalidates the lead's conversation views, returning once this
    /// instance serves none of the old ones (Redis's part goes on behind it); `None` if there
    /// is no such lead.
    pub async fn add_message(
        &self,
        lead_id: i64,
        message: &NewMessage,
    ) -> Result<Option<Message>, Error> {
        if message.channel.parse::<Channel>().is_err() {
            return Err(Error::Invalid {
                field: "channel",
                message: "must be one of voice, sms, web".to_owned(),
            });
        }
        if !["inbound", "outbound"].contains(&message.direction.as_str()) {
            return Err(Error::Invalid {
                field: "direction",
                message: "must be one of inbound, outbound".to_owned(),
            });
        }
        check_text("body", &message.body, true)?;
        // Only the `BEGIN` is run again when its connection broke: past it, the transaction
        // may have committed before the break was seen.
        let mut tx = match self.db.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                let error = self.db.checked(e);
                if !error.is_broken_connection() {
                    return Err(error.into());
                }
                self.db.begin().await.map_err(|e| self.db.checked(e))?
            }
        };
        let written = async {
            queries::mark_service_origin(&mut *tx).await?;
            queries::insert_message(&mut tx, lead_id, message, (self.clock)()).await
        }
        .await
        .map_err(|e| self.db.checked(e))?;
        let Some((inserted, phone)) = written else {
            return Ok(None);
        };
        tx.commit().await.map_err(|e| self.db.checked(e))?;
        self.cache
            .invalidate_after_write(
                keys(&self.cache).lead_activity(lead_id, &phone),
                InvalidationSource::Write,
            )
            .await;
        Ok(Some(inserted))
    }
}

fn view_of(slots: &CallSlots) -> CallView {
    use tiercache::Slot;
    fn get<T>(slot: &Slot<T>) -> Option<Arc<T>> {
        match slot {
            Slot::Found(value) => Some(Arc::clone(value)),
            _ => None,
        }
    }
    CallView {
        org: get(&slots.org()),
        lead: get(&slots.lead()),
        context: get(&slots.context()),
        greeting: get(&slots.greeting()),
    }
}

fn check_text(field: &'static str, text: &str, required: bool) -> Result<(), Error> {
    if required && text.trim().is_empty() {
        return Err(Error::Invalid {
            field,
            message: "must not be empty".to_owned(),
        });
    }
    if text.chars().count() > MAX_TEXT_LEN {
        return Err(Error::Invalid {
            field,
            message: format!("must be at most {MAX_TEXT_LEN} characters"),
        });
    }
    // PostgreSQL's text cannot hold a NUL: refused here, as the caller's mistake, rather
    // than by the query, as a server error.
    if text.contains('\0') {
        return Err(Error::Invalid {
            field,
            message: "must not contain a NUL character (\\u0000)".to_owned(),
        });
    }
    Ok(())
}
