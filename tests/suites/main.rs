//! End-to-end suites.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod fixtures;
