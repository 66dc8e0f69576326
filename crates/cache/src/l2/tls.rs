//! The Redis client for a URL and an optional CA: plain `redis://` or TLS `rediss://`, and
//! the checks the config builder runs on both before anything connects.
//!
//! TLS is rustls on ring. A `rediss://` server's certificate must chain to the CA given
//! ([`RedisConfig::ca_cert`]) or, without one, to the public roots compiled in
//! (webpki-roots), and must name the URL's host. Verification cannot be turned off: the
//! redis crate's `#insecure` URL fragment is refused by [`problems`].

use redis::{ConnectionAddr, TlsCertificates};

use crate::config::RedisConfig;

/// What a PEM certificate starts with.
const PEM_CERTIFICATE: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// The client for `config`: every connection the pool and the bus subscriber open comes
/// from it, so both speak TLS (and trust the same CA) or neither does. Public for other
/// users of the same Redis (the call log), so they connect as the cache does.
pub fn client(config: &RedisConfig) -> Result<redis::Client, redis::RedisError> {
    let client = match &config.ca_cert {
        None => redis::Client::open(config.url.as_str())?,
        Some(pem) => redis::Client::build_with_tls(
            config.url.as_str(),
            TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            },
        )?,
    };
    if is_tls(&client) {
        install_crypto_provider();
    }
    Ok(client)
}

/// Every problem with `url` (and `ca_cert`, a PEM bundle) as `(field, message)`; none
/// when [`client`] will build a client that verifies its server. Messages never quote the
/// URL, which may hold a password.
pub(crate) fn problems(url: &str, ca_cert: Option<&[u8]>) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    // The parser's message may quote the URL, password included: not repeated.
    let Ok(client) = redis::Client::open(url) else {
        problems.push((
            "redis_url",
            "not a Redis URL (expected redis:// or rediss://[user:password@]host:port/db)"
                .to_owned(),
        ));
        return problems;
    };
    if let ConnectionAddr::TcpTls { insecure: true, .. } = client.get_connection_info().addr() {
        problems.push((
            "redis_url",
            "#insecure would turn off certificate verification, which Tiercache does not do; \
             give the server's CA as the CA certificate instead"
                .to_owned(),
        ));
    }
    let Some(pem) = ca_cert else {
        return problems;
    };
    if !is_tls(&client) {
        problems.push((
            "redis_ca_cert",
            "a CA certificate is for TLS: the Redis URL must start with rediss://".to_owned(),
        ));
    } else if !pem
        .windows(PEM_CERTIFICATE.len())
        .any(|w| w == PEM_CERTIFICATE)
    {
        problems.push((
            "redis_ca_cert",
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    } else if let Err(e) = redis::Client::build_with_tls(
        url,
        TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.to_vec()),
        },
    ) {
        // The URL parsed above, so this is the certificate's fault; it is not secret.
        problems.push(("redis_ca_cert", format!("not a usable CA certificate: {e}")));
    }
    problems
}

/// Whether `client` connects over TLS.
fn is_tls(client: &redis::Client) -> bool {
    matches!(
        client.get_connection_info().addr(),
        ConnectionAddr::TcpTls { .. }
    )
}

/// Makes ring rustls's process-wide provider, unless one is installed already.
///
/// The redis crate builds each TLS connection's config on that provider, and rustls
/// picks one by itself only when exactly one is compiled in: a dependency that brought in
/// aws-lc-rs too would make every `rediss://` connect panic, in a pool's or the bus's
/// background task. Installing ring here rules that out. sqlx names its provider itself.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange;
        // aws-lc-rs has it but needs a C and cmake build. ring is what sqlx uses too.
        #[allow(deprecated)]
        let ring = rustls::crypto::ring::default_provider();
        // Another thread may have installed one meanwhile; either way there is one now.
        let _ = rustls::crypto::CryptoProvider::install_default(ring);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(url: &str, ca: Option<&[u8]>) -> Vec<&'static str> {
        problems(url, ca).into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn tls_urls_are_accepted_with_or_without_a_ca() {
        assert!(fields("rediss://:secret@cache.internal:6380/0", None).is_empty());
        assert!(fields("rediss://app:secret@127.0.0.1:6380/", None).is_empty());
        assert!(fields("redis://app:secret@127.0.0.1:6379/", None).is_empty());
    }

    #[test]
    fn a_ca_needs_a_tls_url_and_a_certificate() {
        let ca = b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n";
        assert_eq!(
            fields("redis://127.0.0.1:6379/", Some(ca)),
            ["redis_ca_cert"]
        );
        assert_eq!(
            fields("rediss://127.0.0.1:6380/", Some(b"just text")),
            ["redis_ca_cert"]
        );
        assert_eq!(
            fields("rediss://127.0.0.1:6380/", Some(ca)),
            ["redis_ca_cert"]
        );
    }

    #[test]
    fn verification_cannot_be_turned_off_and_bad_urls_are_not_quoted() {
        assert_eq!(
            fields("rediss://127.0.0.1:6380/#insecure", None),
            ["redis_url"]
        );
        let problems = problems("http://:hunter2@h/", None);
        assert_eq!(problems.len(), 1);
        assert!(!problems[0].1.contains("hunter2"), "{problems:?}");
    }
}
