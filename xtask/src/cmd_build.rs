//! `cargo xtask build`: setup, then `cargo build -p tracer` (release by default). tracer's
//! build.rs builds the eBPF object (aya-build, nightly) and embeds it.
use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::{
    setup::setup,
    util::{cargo, run, target_dir},
};

/// Builds tracer and returns the path of the binary.
pub fn build(release: bool) -> Result<PathBuf> {
    setup()?;
    let mut cmd = cargo();
    cmd.args(["build", "-p", "tracer"]);
    if release {
        cmd.arg("--release");
    }
    // A leftover AYA_BUILD_SKIP=1 would embed an empty eBPF object.
    cmd.env_remove("AYA_BUILD_SKIP");
    run(&mut cmd)?;
    let bin = target_dir()
        .join(if release { "release" } else { "debug" })
        .join("tracer");
    if !bin.exists() {
        bail!("the build finished but {} is missing", bin.display());
    }
    println!("build: {}", bin.display());
    Ok(bin)
}

/// The binary named by the environment variable `var` when set (after setup, which the build
/// would have run), else a release build's: the demo and the bench can run another binary.
pub fn release_or_env(var: &str) -> Result<PathBuf> {
    match std::env::var_os(var) {
        Some(bin) => {
            setup()?;
            Ok(PathBuf::from(bin))
        }
        None => build(true),
    }
}
