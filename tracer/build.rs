//! Builds the kernel programs (crate tracer-ebpf, nightly, bpfel-unknown-none) with aya-build
//! and leaves the object in OUT_DIR/tracer, where main.rs embeds it.
//!
//! With AYA_BUILD_SKIP=1 the eBPF build is skipped (for quick userspace-only unit test runs)
//! and an empty object is written instead; the loader then refuses to run with a clear error.
//!
//! It also names the git commit the binary is built from (`TRACER_GIT_COMMIT`, shown by
//! `tracer --version`).
use std::{env, fs, path::PathBuf, process::Command};

fn main() -> anyhow::Result<()> {
    git_commit();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let skip = env::var("AYA_BUILD_SKIP").map(|v| v == "1" || v.eq_ignore_ascii_case("true")).unwrap_or(false);
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        fs::write(out_dir.join("tracer"), [])?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.parent().expect("workspace root").join("tracer-ebpf");
    let ebpf_dir = ebpf_dir.to_str().expect("utf-8 path");
    aya_build::build_ebpf(
        [aya_build::Package { name: "tracer-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}

/// `TRACER_GIT_COMMIT` for `tracer --version`: the environment's value when set (a build from a
/// source tarball can name its commit), else `git rev-parse --short=12 HEAD`, else "unknown".
/// Reruns when HEAD moves: the HEAD file, the branch it names and packed-refs.
fn git_commit() {
    println!("cargo:rerun-if-env-changed=TRACER_GIT_COMMIT");
    let commit = match env::var("TRACER_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            let git = |args: &[&str]| {
                Command::new("git")
                    .args(args)
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .filter(|s| !s.is_empty())
            };
            if let Some(dirs) = git(&["rev-parse", "--git-dir", "--git-common-dir", "--symbolic-full-name", "HEAD"]) {
                let mut lines = dirs.lines();
                let (git_dir, common_dir, head_ref) = (lines.next(), lines.next(), lines.next());
                let mut watched = vec![git_dir.map(|d| format!("{d}/HEAD"))];
                if let Some(d) = common_dir {
                    watched.push(Some(format!("{d}/packed-refs")));
                    watched.push(head_ref.filter(|r| r.starts_with("refs/")).map(|r| format!("{d}/{r}")));
                }
                // Only files that exist: cargo reruns a build script on every build while a
                // path it watches is missing.
                for file in watched.into_iter().flatten().filter(|f| std::path::Path::new(f).exists()) {
                    println!("cargo:rerun-if-changed={file}");
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
        }
    };
    println!("cargo:rustc-env=TRACER_GIT_COMMIT={commit}");
}
