//! Sets `TIERCACHE_COMMIT` for `tiercache_build_info`: the variable itself when the build
//! sets it (a Docker build has no `.git`), else `git rev-parse --short HEAD`, else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=TIERCACHE_COMMIT");
    // Rebuilt when HEAD moves: HEAD itself, and the branch it points at.
    for path in [
        Some("HEAD".to_owned()),
        git(&["symbolic-ref", "-q", "HEAD"]),
    ]
    .into_iter()
    .flatten()
    {
        // A missing file (a packed ref) would rerun this script on every build.
        if let Some(file) = git(&[
            "rev-parse",
            "--path-format=absolute",
            "--git-path",
            path.as_str(),
        ])
        .filter(|file| std::path::Path::new(file).exists())
        {
            println!("cargo:rerun-if-changed={file}");
        }
    }
    let commit = std::env::var("TIERCACHE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TIERCACHE_COMMIT={commit}");
}
