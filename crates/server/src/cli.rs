//! The binary's command line: `serve` (the default, no arguments), `help`/`--help`,
//! `version`/`--version`, and `api-key create|list|revoke`, which manages the API keys in
//! PostgreSQL. A small hand parser: a handful of subcommands and three flags do not need
//! clap (its derive would add a proc-macro build for one screen of parsing, and every
//! setting stays an environment variable).

use std::ffi::OsString;
use std::io::Write;

use anyhow::Context as _;
use tiercache_repository::MIGRATOR;
use tiercache_repository::api_key::{self, ApiKeyInfo, Revocation, Scope};

use crate::config::Config;

/// What `help` prints.
pub const USAGE: &str = "\
usage:
  tiercache-server [serve]                           serve the API (the default)
  tiercache-server api-key create --org <id> --name <name>
  tiercache-server api-key create --operator --name <name>
  tiercache-server api-key list [--org <id>]
  tiercache-server api-key revoke <id>
  tiercache-server help | --help | -h                this text
  tiercache-server version | --version | -V          the version

Every setting is an environment variable (README, Configuration): DATABASE_URL, REDIS_URL,
REDIS_ENABLED, BIND_ADDR, L1_MAX_BYTES (such as 64MiB), RUST_LOG (info by default),
LOG_FORMAT (text or json), and more; a bad value stops start-up naming the variable.

create prints the new key once, alone on standard output (notes go to standard error):
only its SHA-256 digest is stored. An --org key sees that organization's data only; an
--operator key sees every organization's. A revoked key is refused by every instance
within the staleness bound (2 s). The api-key commands use DATABASE_URL, and migrate the
database first, as the service does.";

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Serve the API (no arguments).
    Serve,
    /// Print [`USAGE`].
    Help,
    /// Print the name and version.
    Version,
    /// Manage API keys.
    ApiKey(ApiKeyCommand),
}

/// `api-key …`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiKeyCommand {
    /// Create a key and print it once.
    Create {
        /// Who it speaks for.
        scope: Scope,
        /// What to call it.
        name: String,
    },
    /// List keys (never their secrets), revoked ones included.
    List {
        /// Only this organization's.
        org: Option<i64>,
    },
    /// Revoke a key by id.
    Revoke {
        /// The key's id, as `list` shows it.
        id: i64,
    },
}

/// A command line that does not parse; its message says what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

fn usage(message: impl Into<String>) -> UsageError {
    UsageError(message.into())
}

/// Parses the arguments after the program's name.
pub fn parse<I, S>(args: I) -> Result<Command, UsageError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let args = args
        .into_iter()
        .map(|arg| {
            arg.into()
                .into_string()
                .map_err(|_| usage("arguments must be valid UTF-8"))
        })
        .collect::<Result<Vec<String>, _>>()?;
    // Asking for help anywhere gets it, rather than a complaint about the rest.
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        return Ok(Command::Help);
    }
    let mut args = args.into_iter();
    let Some(first) = args.next() else {
        return Ok(Command::Serve);
    };
    let command = match first.as_str() {
        "serve" => Command::Serve,
        "help" => Command::Help,
        "version" | "--version" | "-V" => Command::Version,
        "api-key" => {
            let sub = args
                .next()
                .ok_or_else(|| usage("api-key needs a command: create, list or revoke"))?;
            let flags = Flags::parse(args)?;
            return parse_api_key(&sub, flags).map(Command::ApiKey);
        }
        other => return Err(usage(format!("unknown command {other:?}"))),
    };
    match args.next() {
        Some(extra) => Err(usage(format!("unexpected argument {extra:?}"))),
        None => Ok(command),
    }
}

/// What `version` prints: the binary's name and version.
pub fn version() -> String {
    format!("tiercache-server {}", env!("CARGO_PKG_VERSION"))
}

fn parse_api_key(sub: &str, flags: Flags) -> Result<ApiKeyCommand, UsageError> {
    match sub {
        "create" => {
            flags.only(&["org", "operator", "name"], 0)?;
            let scope = match (flags.org()?, flags.has("operator")) {
                (Some(org), false) => Scope::Org(org),
                (None, true) => Scope::Operator,
                _ => {
                    return Err(usage(
                        "create needs exactly one of --org <id> or --operator",
                    ));
                }
            };
            let name = flags
                .value("name")
                .ok_or_else(|| usage("create needs --name <name>"))?
                .to_owned();
            Ok(ApiKeyCommand::Create { scope, name })
        }
        "list" => {
            flags.only(&["org"], 0)?;
            Ok(ApiKeyCommand::List { org: flags.org()? })
        }
        "revoke" => {
            flags.only(&[], 1)?;
            let id = flags.positional[0]
                .parse()
                .map_err(|_| usage("revoke needs a key id, a whole number"))?;
            Ok(ApiKeyCommand::Revoke { id })
        }
        other => Err(usage(format!(
            "unknown api-key command {other:?} (create, list or revoke)"
        ))),
    }
}

/// `--name value`, `--name=value` and bare `--operator`, in any order, plus positionals.
struct Flags {
    named: Vec<(String, Option<String>)>,
    positional: Vec<String>,
}

impl Flags {
    /// Flags that take no value.
    const SWITCHES: [&'static str; 1] = ["operator"];

    fn parse(args: impl Iterator<Item = String>) -> Result<Flags, UsageError> {
        let mut flags = Flags {
            named: Vec::new(),
            positional: Vec::new(),
        };
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                flags.positional.push(arg);
                continue;
            };
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                None if Self::SWITCHES.contains(&flag) => (flag.to_owned(), None),
                None => {
                    let value = args
                        .next()
                        .ok_or_else(|| usage(format!("--{flag} needs a value")))?;
                    (flag.to_owned(), Some(value))
                }
            };
            if flags.named.iter().any(|(seen, _)| *seen == name) {
                return Err(usage(format!("--{name} given twice")));
            }
            flags.named.push((name, value));
        }
        Ok(flags)
    }

    /// Refuses flags outside `allowed` and a positional count other than `positionals`.
    fn only(&self, allowed: &[&str], positionals: usize) -> Result<(), UsageError> {
        if let Some((name, _)) = self
            .named
            .iter()
            .find(|(n, _)| !allowed.contains(&n.as_str()))
        {
            return Err(usage(format!("unknown flag --{name}")));
        }
        if self.positional.len() != positionals {
            return Err(usage(match self.positional.get(positionals) {
                Some(extra) => format!("unexpected argument {extra:?}"),
                None => "missing argument".to_owned(),
            }));
        }
        Ok(())
    }

    fn has(&self, name: &str) -> bool {
        self.named.iter().any(|(n, _)| n == name)
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.named
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn org(&self) -> Result<Option<i64>, UsageError> {
        match self.value("org") {
            None if self.has("org") => Err(usage("--org needs a value")),
            None => Ok(None),
            Some(raw) => raw
                .parse()
                .map(Some)
                .map_err(|_| usage(format!("--org needs an organization id, got {raw:?}"))),
        }
    }
}

/// Runs `command` against `config`'s database (created and migrated first, as at
/// start-up). `out` gets what a script reads (the new key alone, the list); `notes` gets
/// what a person reads.
pub async fn run(
    command: ApiKeyCommand,
    config: &Config,
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> anyhow::Result<()> {
    let pool = crate::startup::connect(&config.database).await?;
    MIGRATOR
        .run(pool.pool())
        .await
        .context("running database migrations")?;
    let pool = pool.pool();
    let bound = config.cache.staleness_bound();
    match command {
        ApiKeyCommand::Create { scope, name } => {
            let (key, secret) = api_key::create(pool, scope, &name)
                .await
                .context("creating the API key")?;
            writeln!(out, "{}", secret.expose())?;
            writeln!(
                notes,
                "Created API key {} ({:?}) for {}. It is shown this once: only its digest is \
                 stored.\nSend it as `Authorization: Bearer <key>`.",
                key.id, key.name, key.scope
            )?;
        }
        ApiKeyCommand::List { org } => {
            let keys = api_key::list(pool, org).await.context("listing API keys")?;
            write_table(out, &keys)?;
        }
        ApiKeyCommand::Revoke { id } => {
            match api_key::revoke(pool, id)
                .await
                .context("revoking the API key")?
            {
                Revocation::Revoked(key) => writeln!(
                    notes,
                    "Revoked API key {} ({:?}, {}): every instance refuses it within {bound:?}.",
                    key.id, key.name, key.scope
                )?,
                Revocation::AlreadyRevoked(key) => writeln!(
                    notes,
                    "API key {} ({:?}) was already revoked, at {}.",
                    key.id,
                    key.name,
                    key.revoked_at.map(|at| at.to_rfc3339()).unwrap_or_default()
                )?,
                Revocation::NoSuchKey => anyhow::bail!("no API key has id {id}"),
            }
        }
    }
    Ok(())
}

/// One line per key, in aligned columns: id, scope, state, created, name (last: it is
/// the only free text).
fn write_table(out: &mut dyn Write, keys: &[ApiKeyInfo]) -> std::io::Result<()> {
    let rows: Vec<[String; 5]> = keys
        .iter()
        .map(|key| {
            [
                key.id.to_string(),
                key.scope.to_string(),
                match key.revoked_at {
                    Some(at) => format!("revoked {}", at.format("%Y-%m-%d %H:%M:%SZ")),
                    None => "active".to_owned(),
                },
                key.created_at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
                key.name.clone(),
            ]
        })
        .collect();
    let header = ["id", "scope", "state", "created", "name"].map(str::to_owned);
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter().zip(row) {
            write!(out, "{cell:<width$}  ")?;
        }
        writeln!(out, "{}", row[4])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> Result<Command, UsageError> {
        parse(line.split_whitespace())
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse(Vec::<String>::new()), Ok(Command::Serve));
        assert_eq!(parsed("serve"), Ok(Command::Serve));
        for help in ["help", "--help", "-h", "serve --help", "api-key create -h"] {
            assert_eq!(parsed(help), Ok(Command::Help), "{help}");
        }
        for version in ["version", "--version", "-V"] {
            assert_eq!(parsed(version), Ok(Command::Version), "{version}");
        }
        let create = |scope, name: &str| {
            Ok(Command::ApiKey(ApiKeyCommand::Create {
                scope,
                name: name.to_owned(),
            }))
        };
        assert_eq!(
            parsed("api-key create --org 7 --name portal"),
            create(Scope::Org(7), "portal")
        );
        assert_eq!(
            parsed("api-key create --name=portal --org=7"),
            create(Scope::Org(7), "portal")
        );
        assert_eq!(
            parsed("api-key create --operator --name ops"),
            create(Scope::Operator, "ops")
        );
        assert_eq!(
            parse(["api-key", "create", "--name", "the CRM", "--operator"]),
            create(Scope::Operator, "the CRM")
        );
        assert_eq!(
            parsed("api-key list"),
            Ok(Command::ApiKey(ApiKeyCommand::List { org: None }))
        );
        assert_eq!(
            parsed("api-key list --org 3"),
            Ok(Command::ApiKey(ApiKeyCommand::List { org: Some(3) }))
        );
        assert_eq!(
            parsed("api-key revoke 12"),
            Ok(Command::ApiKey(ApiKeyCommand::Revoke { id: 12 }))
        );
    }

    #[test]
    fn mistakes_are_named() {
        for (line, says) in [
            ("serve now", "unexpected argument \"now\""),
            ("--serve", "unknown command"),
            ("--version 2", "unexpected argument"),
            ("api-key", "needs a command"),
            ("api-key rotate 3", "unknown api-key command"),
            ("api-key create --name x", "exactly one of --org"),
            (
                "api-key create --org 7 --operator --name x",
                "exactly one of --org",
            ),
            ("api-key create --org 7", "needs --name"),
            ("api-key create --org seven --name x", "organization id"),
            ("api-key create --org 7 --name", "--name needs a value"),
            ("api-key create --org 7 --name x --name y", "given twice"),
            (
                "api-key create --org 7 --name x --colour red",
                "unknown flag --colour",
            ),
            ("api-key list --operator", "unknown flag --operator"),
            ("api-key list extra", "unexpected argument"),
            ("api-key revoke", "missing argument"),
            ("api-key revoke 3 4", "unexpected argument"),
            ("api-key revoke three", "whole number"),
        ] {
            let err = parsed(line).unwrap_err();
            assert!(err.to_string().contains(says), "{line}: {err}");
        }
    }

    #[test]
    fn the_table_aligns_and_puts_the_name_last() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-06-01T10:00:00Z")
            .unwrap()
            .to_utc();
        let keys = [
            ApiKeyInfo {
                id: 1,
                scope: Scope::Operator,
                name: "demo".to_owned(),
                created_at: at,
                revoked_at: None,
            },
            ApiKeyInfo {
                id: 12,
                scope: Scope::Org(7),
                name: "the portal".to_owned(),
                created_at: at,
                revoked_at: Some(at),
            },
        ];
        let mut out = Vec::new();
        write_table(&mut out, &keys).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id  scope     state                         created               name\n\
             1   operator  active                        2026-06-01 10:00:00Z  demo\n\
             12  org 7     revoked 2026-06-01 10:00:00Z  2026-06-01 10:00:00Z  the portal\n"
        );
    }
}
