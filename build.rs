//! Puts the git revision into `batv --version` (BATV_GIT_REV). A build outside a git
//! checkout (a crate tarball, `cargo install` from a copy) or without git says only the
//! version; packagers may set BATV_GIT_REV themselves.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=BATV_GIT_REV");
    println!("cargo:rerun-if-changed=build.rs");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let rev = match std::env::var("BATV_GIT_REV") {
        Ok(r) if !r.trim().is_empty() => Some(r.trim().to_string()),
        _ => git(&dir, &["rev-parse", "--short=12", "HEAD"]),
    };
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it names (a commit)
    // and packed-refs (a gc). Only files that exist: a missing one would rebuild always.
    if let Some(git_dir) = git(&dir, &["rev-parse", "--absolute-git-dir"]) {
        let git_dir = PathBuf::from(git_dir);
        let mut watch = vec![git_dir.join("HEAD"), git_dir.join("packed-refs")];
        if let Some(r) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
            watch.push(git_dir.join(&r));
            // A worktree's branch lives in the common directory.
            if let Some(common) = git(&dir, &["rev-parse", "--path-format=absolute", "--git-common-dir"]) {
                watch.push(PathBuf::from(common).join(&r));
            }
        }
        for p in watch.iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    let version = env!("CARGO_PKG_VERSION");
    let long = match rev {
        Some(r) => format!("{version} (git {r})"),
        None => version.to_string(),
    };
    println!("cargo:rustc-env=BATV_LONG_VERSION={long}");
}
