//! Fixtures for the end-to-end suites.
