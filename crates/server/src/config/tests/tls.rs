//! Configuration that names files: a Redis CA and a Postgres `sslrootcert`, read (or
//! refused) before anything connects.

use super::{load, problem_vars};

/// A file holding `text` in a directory of its own, removed when the guard drops.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let dir = std::env::temp_dir().join(format!(
            "tiercache-config-{}-{name}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn rediss_urls_with_credentials_and_a_ca_are_taken() {
    // Before TLS was built in, the first was refused: "not a Redis URL (expected redis://...)".
    let config = load(&[("REDIS_URL", "rediss://app:s3cret@cache.internal:6380/0")]).unwrap();
    let redis = config.cache.redis().unwrap();
    assert_eq!(redis.url, "rediss://app:s3cret@cache.internal:6380/0");
    assert_eq!(redis.ca_cert, None);
    // The CA is read here and handed over as bytes (the cache never sees the path).
    let file = TempFile::new("ca.pem", TEST_CA_PEM);
    let config = load(&[
        ("REDIS_URL", "rediss://:s3cret@127.0.0.1:6380/"),
        ("REDIS_CA_CERT", file.path()),
    ])
    .unwrap();
    assert_eq!(
        config.cache.redis().unwrap().ca_cert.as_deref(),
        Some(TEST_CA_PEM.as_bytes())
    );
    let text = format!("{config:?}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains(r#"ca_cert: "set""#), "{text}");
    // With Redis off the CA is not read at all.
    let config = load(&[
        ("REDIS_ENABLED", "false"),
        ("REDIS_CA_CERT", "/nonexistent/ca.pem"),
    ])
    .unwrap();
    assert!(config.cache.redis().is_none());
}

/// A self-signed CA certificate (P-256, valid to 2126), made once with the openssl CLI
/// for these tests; nothing connects with it here.
const TEST_CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----
MIIBnTCCAUOgAwIBAgIUD2GVKpSjsPk9trbtVkk4L3zTvhYwCgYIKoZIzj0EAwIw
IzEhMB8GA1UEAwwYdGllcmNhY2hlIGNvbmZpZyB0ZXN0IENBMCAXDTI2MTIwNzE4
MjIwMFoYDzIxMjYxMTEzMTgyMjAwWjAjMSEwHwYDVQQDDBh0aWVyY2FjaGUgY29u
ZmlnIHRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARA1jOJlAiKM3+W
etcSxJJAcHmCP83beJxBCCwCR7Taj7ho8PbPD3x08UNY6XV0DroSjt1bS0Dm5JkC
I5yn0qDyo1MwUTAdBgNVHQ4EFgQUgXZdXr6mCLlx8hFiC3cINcZhTYcwHwYDVR0j
BBgwFoAUgXZdXr6mCLlx8hFiC3cINcZhTYcwDwYDVR0TAQH/BAUwAwEB/zAKBggq
hkjOPQQDAgNIADBFAiEA/wg97Hyp8a8RjXhlZ+wHX9jr/GcFPcqAC9gwox57y9wC
IGuM6glUEFs+GgckIp+6SUqKs7fuIczUt0Qs/5rGrkkV
-----END CERTIFICATE-----
";

#[test]
fn a_bad_redis_ca_is_named_with_its_path_or_its_fault() {
    let err = load(&[
        ("REDIS_URL", "rediss://127.0.0.1:6380/"),
        ("REDIS_CA_CERT", "/nonexistent/ca.pem"),
    ])
    .unwrap_err();
    assert_eq!(problem_vars(&err), ["REDIS_CA_CERT"]);
    assert!(
        err.problems[0]
            .message
            .starts_with("cannot read /nonexistent/ca.pem: No such file"),
        "{err}"
    );
    let not_pem = TempFile::new("key.txt", "not a certificate");
    let ca = TempFile::new("ca.pem", TEST_CA_PEM);
    // Not PEM; and a CA with a plain redis:// URL; both at once with other problems.
    let err = load(&[
        ("REDIS_URL", "rediss://127.0.0.1:6380/"),
        ("REDIS_CA_CERT", not_pem.path()),
    ])
    .unwrap_err();
    assert_eq!(problem_vars(&err), ["REDIS_CA_CERT"]);
    assert!(
        err.problems[0].message.contains("no PEM certificate"),
        "{err}"
    );
    let err = load(&[
        ("REDIS_URL", "redis://127.0.0.1:6379/"),
        ("REDIS_CA_CERT", ca.path()),
        ("REDIS_POOL_SIZE", "many"),
    ])
    .unwrap_err();
    assert_eq!(problem_vars(&err), ["REDIS_CA_CERT", "REDIS_POOL_SIZE"]);
    assert!(err.problems[0].message.contains("rediss://"), "{err}");
}

#[test]
fn database_tls_parameters_are_checked_before_connecting() {
    let ca = TempFile::new("root.pem", TEST_CA_PEM);
    for url in [
        "postgres://u@h/db?sslmode=require".to_owned(),
        "postgres://u@h/db?sslmode=VERIFY-FULL".to_owned(),
        format!(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert={}",
            ca.path()
        ),
        format!(
            "postgres://u@h/db?sslrootcert={}&sslmode=verify-ca",
            ca.path().replace('/', "%2F")
        ),
    ] {
        let config = load(&[("DATABASE_URL", &url)]).unwrap();
        assert_eq!(config.database.url, url);
    }
    let err = load(&[(
        "DATABASE_URL",
        "postgres://u:pw@h/db?sslmode=verify-full&sslrootcert=/nonexistent/root.pem",
    )])
    .unwrap_err();
    assert_eq!(problem_vars(&err), ["DATABASE_URL"]);
    assert!(
        err.problems[0]
            .message
            .starts_with("sslrootcert: cannot read /nonexistent/root.pem: No such file"),
        "{err}"
    );
    let err = load(&[("DATABASE_URL", "postgres://u@h/db?sslmode=always")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: DATABASE_URL: sslmode must be one of disable, allow, \
         prefer, require, verify-ca, verify-full, got \"always\""
    );
    // A CA that sqlx would ignore (it verifies only under verify-ca and verify-full).
    let err = load(&[(
        "DATABASE_URL",
        &format!(
            "postgres://u@h/db?sslmode=require&sslrootcert={}",
            ca.path()
        ),
    )])
    .unwrap_err();
    assert_eq!(problem_vars(&err), ["DATABASE_URL"]);
    assert!(err.problems[0].message.contains("verify-ca"), "{err}");
}
