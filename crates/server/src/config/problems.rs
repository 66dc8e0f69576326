//! The problems found while reading and checking the variables, gathered so that one failed
//! start reports them all, in the order of [`super::variables`].

use super::vars::names;
use super::{ConfigError, EnvProblem};

/// Problems found so far; each (variable, message) pair once.
#[derive(Default)]
pub(super) struct Problems(Vec<EnvProblem>);

impl Problems {
    pub(super) fn add(&mut self, var: &str, message: String) {
        // The cache reports a bad jitter once per entity; the variable is one.
        if !self.0.iter().any(|p| p.var == var && p.message == message) {
            self.0.push(EnvProblem {
                var: var.to_owned(),
                message,
            });
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The error, problems in the order of [`super::variables`] (stable within one
    /// variable; one no variable sets, such as `cache.soft_timeout`, comes last).
    pub(super) fn into_error(self) -> ConfigError {
        let order = names();
        let mut problems = self.0;
        problems.sort_by_key(|p| {
            order
                .iter()
                .position(|name| *name == p.var)
                .unwrap_or(order.len())
        });
        ConfigError { problems }
    }
}
