//! The two-tier cache engine.
