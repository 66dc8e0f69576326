//! Why PostgreSQL could not be reached at start-up, said in terms of `DATABASE_URL`: the
//! variable (its password hidden) and, where the error's type says why, what in it to check
//! (the CA in `sslrootcert`, the host name under `verify-full`, `sslmode`, the password).

use rustls::CertificateError;

use crate::config::{DatabaseConfig, DatabaseTls};

/// `error`, met while `doing` something with the database, with `DATABASE_URL` named and
/// a hint where one can be given.
pub fn explain(error: sqlx::Error, config: &DatabaseConfig, doing: &str) -> anyhow::Error {
    let hint = hint(&error, &DatabaseTls::of(&config.url));
    let error = anyhow::Error::new(error);
    let error = match hint {
        Some(hint) => error.context(hint),
        None => error,
    };
    error.context(format!("{doing} (DATABASE_URL={})", config.redacted_url()))
}

/// What to check, from the error's type and codes (never its text).
fn hint(error: &sqlx::Error, tls: &DatabaseTls) -> Option<String> {
    if let Some(tls_error) = rustls_error(error) {
        return Some(certificate_hint(tls_error, tls));
    }
    match error {
        // sqlx's own TLS errors (a server without TLS under `require`, a CA file it could
        // not use) carry no rustls error.
        sqlx::Error::Tls(_) => Some(format!(
            "TLS to PostgreSQL failed (sslmode={} in DATABASE_URL)",
            tls.mode.as_deref().unwrap_or("prefer")
        )),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // invalid_password
            Some("28P01") => {
                Some("PostgreSQL refused the user or password in DATABASE_URL".to_owned())
            }
            // invalid_authorization_specification: no pg_hba.conf line lets this in.
            Some("28000") => Some(
                "PostgreSQL's pg_hba.conf lets no such connection in: check the user and, \
                 if it takes only TLS connections (hostssl), sslmode in DATABASE_URL"
                    .to_owned(),
            ),
            _ => None,
        },
        _ => None,
    }
}

/// The rustls error under `error`: a failed handshake is an I/O error wrapping it.
fn rustls_error(error: &sqlx::Error) -> Option<&rustls::Error> {
    match error {
        sqlx::Error::Io(io) => io.get_ref()?.downcast_ref(),
        sqlx::Error::Tls(inner) => inner.downcast_ref(),
        _ => None,
    }
}

fn certificate_hint(error: &rustls::Error, tls: &DatabaseTls) -> String {
    let ca = match &tls.root_cert {
        Some(path) => format!("the CA in sslrootcert ({path})"),
        None => "a public root (DATABASE_URL sets no sslrootcert)".to_owned(),
    };
    match error {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => format!("PostgreSQL's certificate is not signed by {ca}"),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "PostgreSQL's certificate does not name the host in DATABASE_URL \
              (sslmode=verify-full checks the name)"
            .to_owned(),
        rustls::Error::InvalidCertificate(_) => {
            format!("PostgreSQL's certificate was refused (checked against {ca})")
        }
        _ => "the TLS handshake with PostgreSQL failed (sslmode in DATABASE_URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> DatabaseConfig {
        DatabaseConfig {
            url: url.to_owned(),
            pool_size: 1,
            acquire_timeout: std::time::Duration::from_secs(1),
            statement_timeout: std::time::Duration::from_secs(1),
            notify_enabled: false,
        }
    }

    fn handshake_failure(e: CertificateError) -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(e),
        ))
    }

    #[test]
    fn an_unknown_issuer_names_the_variable_and_the_ca_path_without_the_password() {
        let config =
            config("postgres://app:hunter2@db:5432/tc?sslmode=verify-full&sslrootcert=/etc/ca.pem");
        let text = format!(
            "{:#}",
            explain(
                handshake_failure(CertificateError::UnknownIssuer),
                &config,
                "connecting to PostgreSQL"
            )
        );
        assert!(
            text.starts_with(
                "connecting to PostgreSQL (DATABASE_URL=postgres://app:***@db:5432/tc?\
                 sslmode=verify-full&sslrootcert=/etc/ca.pem): PostgreSQL's certificate is \
                 not signed by the CA in sslrootcert (/etc/ca.pem): "
            ),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn a_wrong_host_and_a_missing_tls_say_what_to_check() {
        let config = config("postgres://app@db/tc?sslmode=verify-full");
        let text = format!(
            "{:#}",
            explain(
                handshake_failure(CertificateError::NotValidForName),
                &config,
                "connecting to PostgreSQL"
            )
        );
        assert!(text.contains("does not name the host"), "{text}");
        let text = format!(
            "{:#}",
            explain(
                sqlx::Error::Tls("server does not support TLS".into()),
                &config,
                "connecting to PostgreSQL"
            )
        );
        assert!(
            text.contains("sslmode=verify-full in DATABASE_URL"),
            "{text}"
        );
    }
}
