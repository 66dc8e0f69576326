//! The Tiercache service binary.

mod config;

fn main() {}
