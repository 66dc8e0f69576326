//! What `DATABASE_URL` says beyond where Postgres is: its TLS parameters, checked before
//! anything connects, and the URL with its password hidden for messages and logs.

/// `sslmode` values sqlx takes (in any case), as libpq names them.
const SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// The TLS parameters of a `postgres://` URL, as sqlx reads them (the keys its URL parser
/// takes, values percent-decoded as it decodes them).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct DatabaseTls {
    /// `sslmode`, lowercased; `None` when absent (sqlx then uses `prefer`).
    pub mode: Option<String>,
    /// `sslrootcert`: the CA's path.
    pub root_cert: Option<String>,
}

impl DatabaseTls {
    /// The parameters in `url`'s query.
    pub(crate) fn of(url: &str) -> DatabaseTls {
        let mut tls = DatabaseTls::default();
        let query = url.split_once('?').map_or("", |(_, query)| query);
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" | "ssl-mode" => {
                    tls.mode = Some(percent_decode(value).to_ascii_lowercase())
                }
                "sslrootcert" | "ssl-root-cert" | "ssl-ca" => {
                    tls.root_cert = Some(percent_decode(value));
                }
                _ => {}
            }
        }
        tls
    }

    /// Whether the server's certificate is checked against a CA (`verify-ca`, `verify-full`).
    pub(crate) fn verifies(&self) -> bool {
        matches!(self.mode.as_deref(), Some("verify-ca" | "verify-full"))
    }
}

/// What is wrong with the TLS parameters of a `postgres://` URL, checked before anything
/// connects: an `sslmode` sqlx does not know, an `sslrootcert` that cannot be read, or one
/// that would be ignored. sqlx checks the CA only under `verify-ca` and `verify-full`
/// (libpq also checks it under `require` when the file exists), so a CA with any other
/// mode would leave the server unverified while the URL reads as if it were not.
pub(super) fn tls_problems(url: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let tls = DatabaseTls::of(url);
    if let Some(mode) = &tls.mode
        && !SSL_MODES.contains(&mode.as_str())
    {
        problems.push(format!(
            "sslmode must be one of {}, got {mode:?}",
            SSL_MODES.join(", ")
        ));
    }
    if let Some(path) = &tls.root_cert {
        if let Err(e) = std::fs::read(path) {
            problems.push(format!("sslrootcert: cannot read {path}: {e}"));
        }
        if !tls.verifies() {
            problems.push(
                "sslrootcert is checked only with sslmode=verify-ca or verify-full; without \
                 one the server's certificate would not be verified"
                    .to_owned(),
            );
        }
    }
    problems
}

/// Decodes `%XX` escapes and `+` (a space) in a URL query value, as form decoding does;
/// a malformed escape is kept as written.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(byte) = hex {
                    out.push(byte);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL with its password, if any, replaced by `***` (`postgres://user:***@host/db`),
/// in the authority and in a `password` query parameter alike.
pub(super) fn redact_database_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        // Not a URL we accepted; it could be anything, a password included.
        return "***".to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    // The last '@' ends the user info: a password may hold an unescaped '@', and erring
    // the other way (an '@' in the query) hides too much rather than too little.
    let (authority, tail) = match rest.rfind('@') {
        Some(at) => {
            let (user_info, tail) = rest.split_at(at);
            let user_info = match user_info.split_once(':') {
                Some((user, _password)) => format!("{user}:***"),
                None => user_info.to_owned(),
            };
            (user_info, tail)
        }
        None => (String::new(), rest),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.to_ascii_lowercase().ends_with("password") => {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_follows_form_decoding() {
        assert_eq!(percent_decode("%2Ftmp%2Fa+b.pem"), "/tmp/a b.pem");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn database_urls_are_redacted() {
        for (url, shown) in [
            (
                "postgres://postgres@127.0.0.1:5432/tiercache",
                "postgres://postgres@127.0.0.1:5432/tiercache",
            ),
            ("postgres://u:p@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?sslmode=require&password=p",
                "postgres://u@h/db?sslmode=require&password=***",
            ),
            ("postgres://h/db", "postgres://h/db"),
            ("host=h password=p", "***"),
        ] {
            assert_eq!(redact_database_url(url), shown, "{url}");
        }
    }
}
