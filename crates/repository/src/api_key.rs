//! API keys at rest: a key's format and digest, who it speaks for, and the statements that
//! create, list, read and revoke them (`api_keys`, `migrations/…_api_keys.sql`).
//!
//! A key is `tck_` and 64 hex digits: 256 bits from the operating system's generator,
//! through `rand`'s thread-local CSPRNG. Only its SHA-256 digest is stored. A plain digest
//! suffices because the secret is random and high-entropy: no one can search the key
//! space from a leaked digest, so salts and slow hashes (argon2, bcrypt: meant for
//! passwords people choose) would only add tens of milliseconds of CPU to every check.
//! A keyed digest (HMAC with a server-side pepper) would add a second secret to manage
//! for no gain at this entropy. The digest is also what a key is found by.

use std::fmt;

use chrono::{DateTime, Utc};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use sqlx::PgExecutor;

use crate::error::Error;

/// Who a key speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every organization (an operator's key).
    Operator,
    /// One organization, by id.
    Org(i64),
}

impl Scope {
    /// Whether a key of this scope may see data of organization `org_id`.
    pub fn admits(self, org_id: i64) -> bool {
        match self {
            Scope::Operator => true,
            Scope::Org(own) => own == org_id,
        }
    }

    /// The `org_id` column: `None` for an operator.
    pub fn org_id(self) -> Option<i64> {
        match self {
            Scope::Operator => None,
            Scope::Org(id) => Some(id),
        }
    }

    fn from_column(org_id: Option<i64>) -> Scope {
        org_id.map_or(Scope::Operator, Scope::Org)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Operator => f.write_str("operator"),
            Scope::Org(id) => write!(f, "org {id}"),
        }
    }
}

/// A key as its holder has it. Shown once at creation; `Debug` never prints it.
pub struct ApiKeySecret(String);

impl ApiKeySecret {
    /// What every generated key starts with, so secret scanners and people recognise one.
    pub const PREFIX: &'static str = "tck_";
    /// Random bytes in a generated key.
    pub const RANDOM_BYTES: usize = 32;

    /// A new random key.
    pub fn generate() -> ApiKeySecret {
        let mut bytes = [0u8; Self::RANDOM_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        ApiKeySecret(format!("{}{}", Self::PREFIX, hex::encode(bytes)))
    }

    /// A key given as text (the demo key, or a key read back in a test).
    pub fn from_text(text: impl Into<String>) -> ApiKeySecret {
        ApiKeySecret(text.into())
    }

    /// The key itself, to print once or to send.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its digest, as stored.
    pub fn digest(&self) -> KeyDigest {
        KeyDigest::of(&self.0)
    }
}

impl fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeySecret(***)")
    }
}

/// The SHA-256 digest of a key: what the database stores and a key is checked by.
///
/// No `PartialEq`: compare digests in constant time (`subtle`), never with `==`.
#[derive(Clone, Copy)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// The digest of `presented`, a key as a client sent it.
    pub fn of(presented: &str) -> KeyDigest {
        KeyDigest(Sha256::digest(presented.as_bytes()).into())
    }

    /// Its bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first bytes suffice to tell digests apart in a log; none of it is the key.
        write!(f, "KeyDigest({}…)", hex::encode(&self.0[..4]))
    }
}

/// A stored key, as listed: never its secret or digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyInfo {
    /// Its id, for `revoke`.
    pub id: i64,
    /// Who it speaks for.
    pub scope: Scope,
    /// What its creator called it.
    pub name: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// An active key, as every instance holds it in memory.
#[derive(Clone, Copy, Debug)]
pub struct ActiveKey {
    /// Its id.
    pub id: i64,
    /// Who it speaks for.
    pub scope: Scope,
    /// Its digest.
    pub digest: KeyDigest,
}

/// What [`revoke`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// The key was active and is now revoked.
    Revoked(ApiKeyInfo),
    /// The key had been revoked before; nothing changed.
    AlreadyRevoked(ApiKeyInfo),
    /// No key has this id.
    NoSuchKey,
}

/// Longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// The statements, public so that tests can `EXPLAIN` exactly what runs.
pub mod sql {
    /// The `create` statement.
    pub const INSERT: &str = "INSERT INTO api_keys (org_id, name, digest) VALUES ($1, $2, $3)
         ON CONFLICT (digest) DO NOTHING
         RETURNING id, org_id, name, created_at, revoked_at";

    /// The `list` statement.
    pub const LIST: &str = "SELECT id, org_id, name, created_at, revoked_at FROM api_keys
         WHERE $1::bigint IS NULL OR org_id = $1 ORDER BY id";

    /// The `active` statement.
    pub const ACTIVE: &str = "SELECT id, org_id, digest FROM api_keys WHERE revoked_at IS NULL";

    /// The `revoke` statement.
    pub const REVOKE: &str = "UPDATE api_keys SET revoked_at = now()
         WHERE id = $1 AND revoked_at IS NULL
         RETURNING id, org_id, name, created_at, revoked_at";

    /// The `by_id` statement.
    pub const BY_ID: &str =
        "SELECT id, org_id, name, created_at, revoked_at FROM api_keys WHERE id = $1";

    /// The `is_active` statement.
    pub const IS_ACTIVE: &str =
        "SELECT EXISTS (SELECT 1 FROM api_keys WHERE digest = $1 AND revoked_at IS NULL)";
}

type InfoRow = (
    i64,
    Option<i64>,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

fn info((id, org_id, name, created_at, revoked_at): InfoRow) -> ApiKeyInfo {
    ApiKeyInfo {
        id,
        scope: Scope::from_column(org_id),
        name,
        created_at,
        revoked_at,
    }
}

/// Creates a key named `name` for `scope` and returns it with its secret, which is not
/// stored and cannot be shown again.
///
/// An empty, overlong or control-character name is `Error::Invalid` (`name`); an
/// organization that does not exist is `Error::Invalid` (`org`).
pub async fn create(
    db: impl PgExecutor<'_>,
    scope: Scope,
    name: &str,
) -> Result<(ApiKeyInfo, ApiKeySecret), Error> {
    let secret = ApiKeySecret::generate();
    match insert(db, scope, name, &secret).await? {
        Some(info) => Ok((info, secret)),
        // 256 random bits do not collide; a conflict means the generator is broken.
        None => Err(Error::Invalid {
            field: "key",
            message: "a generated key collided with a stored one".to_owned(),
        }),
    }
}

/// Stores `secret` (its digest) as a key named `name` for `scope`; `None` when a key with
/// this digest exists already (kept as it is, revoked or not).
pub async fn insert(
    db: impl PgExecutor<'_>,
    scope: Scope,
    name: &str,
    secret: &ApiKeySecret,
) -> Result<Option<ApiKeyInfo>, Error> {
    check_name(name)?;
    let row: Option<InfoRow> = sqlx::query_as(sql::INSERT)
        .bind(scope.org_id())
        .bind(name)
        .bind(&secret.digest().bytes()[..])
        .fetch_optional(db)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.constraint() == Some("api_keys_org_id_fkey") => {
                Error::Invalid {
                    field: "org",
                    message: format!("no organization has id {}", scope.org_id().unwrap_or(0)),
                }
            }
            _ => Error::from(e),
        })?;
    Ok(row.map(info))
}

fn check_name(name: &str) -> Result<(), Error> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(Error::Invalid {
            field: "name",
            message: format!(
                "must be 1 to {MAX_NAME_CHARS} characters, none of them control characters"
            ),
        });
    }
    Ok(())
}

/// Every key, revoked ones included, oldest first; only `org`'s when given.
pub async fn list(db: impl PgExecutor<'_>, org: Option<i64>) -> Result<Vec<ApiKeyInfo>, Error> {
    let rows: Vec<InfoRow> = sqlx::query_as(sql::LIST).bind(org).fetch_all(db).await?;
    Ok(rows.into_iter().map(info).collect())
}

/// Every key not revoked, with its digest.
pub async fn active(db: impl PgExecutor<'_>) -> Result<Vec<ActiveKey>, Error> {
    let rows: Vec<(i64, Option<i64>, Vec<u8>)> = sqlx::query_as(sql::ACTIVE).fetch_all(db).await?;
    Ok(rows
        .into_iter()
        // The table's check keeps every digest at 32 bytes.
        .filter_map(|(id, org_id, digest)| {
            Some(ActiveKey {
                id,
                scope: Scope::from_column(org_id),
                digest: KeyDigest(digest.try_into().ok()?),
            })
        })
        .collect())
}

/// Whether a key with `secret`'s digest is stored and not revoked.
pub async fn is_active(db: impl PgExecutor<'_>, secret: &ApiKeySecret) -> Result<bool, Error> {
    Ok(sqlx::query_scalar(sql::IS_ACTIVE)
        .bind(&secret.digest().bytes()[..])
        .fetch_one(db)
        .await?)
}

/// Revokes key `id`. Every instance refuses it once it has re-read the active keys, within
/// the staleness bound.
pub async fn revoke(db: impl PgExecutor<'_> + Copy, id: i64) -> Result<Revocation, Error> {
    let revoked: Option<InfoRow> = sqlx::query_as(sql::REVOKE)
        .bind(id)
        .fetch_optional(db)
        .await?;
    if let Some(row) = revoked {
        return Ok(Revocation::Revoked(info(row)));
    }
    let existing: Option<InfoRow> = sqlx::query_as(sql::BY_ID)
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(existing.map_or(Revocation::NoSuchKey, |row| {
        Revocation::AlreadyRevoked(info(row))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_format_and_differ() {
        let (a, b) = (ApiKeySecret::generate(), ApiKeySecret::generate());
        for key in [&a, &b] {
            let hex = key.expose().strip_prefix(ApiKeySecret::PREFIX).unwrap();
            assert_eq!(hex.len(), 64);
            assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()), "{hex}");
        }
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.digest().bytes(), b.digest().bytes());
    }

    #[test]
    fn the_digest_is_sha256_of_the_key_and_debug_hides_both() {
        let key = ApiKeySecret::from_text("abc");
        assert_eq!(
            hex::encode(key.digest().bytes()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(format!("{key:?}"), "ApiKeySecret(***)");
        assert_eq!(format!("{:?}", key.digest()), "KeyDigest(ba7816bf…)");
    }

    #[test]
    fn scopes_admit_their_own() {
        assert!(Scope::Operator.admits(7));
        assert!(Scope::Org(7).admits(7));
        assert!(!Scope::Org(7).admits(8));
        assert_eq!(Scope::from_column(None), Scope::Operator);
        assert_eq!(Scope::from_column(Some(3)), Scope::Org(3));
        assert_eq!(Scope::Org(3).to_string(), "org 3");
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "a\nb", "tab\there", &"x".repeat(MAX_NAME_CHARS + 1)] {
            assert!(
                matches!(check_name(bad), Err(Error::Invalid { field: "name", .. })),
                "{bad:?}"
            );
        }
        for good in ["portal", "Zoë's CRM", &"x".repeat(MAX_NAME_CHARS)] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }
}
