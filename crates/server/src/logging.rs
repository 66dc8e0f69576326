//! The process's log subscriber: which lines (`RUST_LOG`, checked), in which format
//! (`LOG_FORMAT`: text or JSON), coloured only when written to a terminal.

use std::io::IsTerminal as _;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{ConfigError, EnvProblem};

/// The filter when `RUST_LOG` is unset or empty.
pub const DEFAULT_FILTER: &str = "info";

/// How log lines are written (`LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One line of text per event (`text`, the default), coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line (`json`): `timestamp`, `level`, `target`, `message`, the
    /// event's fields, and `span` with the request's `request_id`.
    Json,
}

/// What to log and how, read from `RUST_LOG` and `LOG_FORMAT`.
#[derive(Debug)]
pub struct LogSettings {
    /// Which lines (`RUST_LOG`, [`DEFAULT_FILTER`] when unset).
    pub filter: EnvFilter,
    /// In which format (`LOG_FORMAT`).
    pub format: LogFormat,
}

impl LogSettings {
    /// Reads `RUST_LOG` and `LOG_FORMAT`; a value that does not parse is an error naming
    /// its variable, rather than silently ignored.
    pub fn from_env() -> Result<LogSettings, ConfigError> {
        let read = |name: &str| match std::env::var(name) {
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(EnvProblem {
                var: name.to_owned(),
                message: "not valid UTF-8".to_owned(),
            }),
        };
        let (rust_log, log_format) = (read("RUST_LOG"), read("LOG_FORMAT"));
        let mut problems = Vec::new();
        let rust_log = rust_log.unwrap_or_else(|p| {
            problems.push(p);
            None
        });
        let log_format = log_format.unwrap_or_else(|p| {
            problems.push(p);
            None
        });
        match Self::from_values(rust_log.as_deref(), log_format.as_deref()) {
            Ok(settings) if problems.is_empty() => Ok(settings),
            Ok(_) => Err(ConfigError { problems }),
            Err(mut error) => {
                problems.append(&mut error.problems);
                Err(ConfigError { problems })
            }
        }
    }

    /// Builds the settings from these values of `RUST_LOG` and `LOG_FORMAT` (`None`: unset).
    pub fn from_values(
        rust_log: Option<&str>,
        log_format: Option<&str>,
    ) -> Result<LogSettings, ConfigError> {
        let mut problems = Vec::new();
        let rust_log = rust_log.map(str::trim).filter(|s| !s.is_empty());
        let filter = match EnvFilter::try_new(rust_log.unwrap_or(DEFAULT_FILTER)) {
            Ok(filter) => Some(filter),
            Err(e) => {
                problems.push(EnvProblem {
                    var: "RUST_LOG".to_owned(),
                    message: format!(
                        "{e} in {:?} (directives such as info or info,tiercache=debug)",
                        rust_log.unwrap_or_default()
                    ),
                });
                None
            }
        };
        let format = match log_format.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("" | "text") => Some(LogFormat::Text),
            Some("json") => Some(LogFormat::Json),
            Some(_) => {
                problems.push(EnvProblem {
                    var: "LOG_FORMAT".to_owned(),
                    message: format!(
                        "expected text or json, got {:?}",
                        log_format.unwrap_or_default()
                    ),
                });
                None
            }
        };
        match (filter, format) {
            (Some(filter), Some(format)) => Ok(LogSettings { filter, format }),
            _ => Err(ConfigError { problems }),
        }
    }

    /// The subscriber these settings describe, writing to `writer`, in colour only when
    /// `ansi` (and in text).
    pub fn subscriber<W>(self, writer: W, ansi: bool) -> Box<dyn Subscriber + Send + Sync>
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(self.filter)
            .with_writer(writer);
        match self.format {
            LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
            LogFormat::Json => Box::new(
                builder
                    .json()
                    // The message and fields at the top level, beside time, level and target.
                    .flatten_event(true)
                    // The innermost span (the request's, with its id), not the whole stack.
                    .with_current_span(true)
                    .with_span_list(false)
                    .finish(),
            ),
        }
    }

    /// Installs the subscriber for the whole process, writing to standard output, or to
    /// standard error with `to_stderr` (where standard output carries a command's result).
    pub fn install(self, to_stderr: bool) -> anyhow::Result<()> {
        use tracing_subscriber::util::SubscriberInitExt as _;
        let subscriber = if to_stderr {
            let ansi = std::io::stderr().is_terminal();
            self.subscriber(std::io::stderr, ansi)
        } else {
            let ansi = std::io::stdout().is_terminal();
            self.subscriber(std::io::stdout, ansi)
        };
        subscriber
            .try_init()
            .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(rust_log: Option<&str>, log_format: Option<&str>) -> Vec<String> {
        match LogSettings::from_values(rust_log, log_format) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn defaults_and_good_values_are_taken() {
        let settings = LogSettings::from_values(None, None).unwrap();
        assert_eq!(settings.format, LogFormat::Text);
        let settings = LogSettings::from_values(Some(" "), Some("")).unwrap();
        assert_eq!(settings.format, LogFormat::Text);
        let settings =
            LogSettings::from_values(Some("warn,tiercache=debug"), Some("JSON")).unwrap();
        assert_eq!(settings.format, LogFormat::Json);
        assert!(problems(Some("debug"), Some("text")).is_empty());
    }

    #[test]
    fn bad_values_are_errors_naming_their_variable() {
        let found = problems(Some("info,tiercache=loud"), Some("yaml"));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("RUST_LOG: "), "{found:?}");
        assert!(found[0].contains("tiercache=loud"), "{found:?}");
        assert_eq!(found[1], r#"LOG_FORMAT: expected text or json, got "yaml""#);
    }
}
