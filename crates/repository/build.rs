//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds the directory's files
//! at compile time, but cargo does not watch a directory for new files unless told to.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
