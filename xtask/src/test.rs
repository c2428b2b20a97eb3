//! `cargo xtask test`: setup, the unit tests of the workspace (no root needed), then the
//! privileged suites (real tracer, real kernel, one network namespace per test, one test at a
//! time), the dist artefacts and their checks, then the kernel matrix in QEMU. Every suite runs; the result names each.
use anyhow::{bail, Result};

use crate::{
    setup::setup,
    util::{cargo, run_status},
};

/// The privileged integration suites: (what, test target in tracer/tests/).
const SUITES: &[(&str, &str)] = &[
    ("scenario suite", "scenarios"),
    ("Nginx + Gunicorn suite", "nginx"),
    ("operator suite (metrics over HTTP, a real Prometheus and its alert, `tracer top` in tmux)", "operators"),
    ("listener lifecycle suite (exits, signals, OOM kills, unlinks)", "lifecycle"),
    ("hostile-input suite (planted binaries, escapes, symlinks, odd files, signals, scale)", "hostile"),
];

pub fn test() -> Result<()> {
    setup()?;
    let gunicorn = crate::setup::gunicorn()?;
    let mut results: Vec<(&str, bool)> = Vec::new();

    // tracer-ebpf is a no_std bpfel-unknown-none program: it has no host tests, and tracer's
    // build.rs builds it for the kernel.
    println!("test: unit tests (cargo test --workspace)");
    let mut unit = cargo();
    unit.args(["test", "--workspace", "--exclude", "tracer-ebpf"])
        .env_remove("TRACER_INTEGRATION")
        .env_remove("AYA_BUILD_SKIP");
    results.push(("unit tests", run_status(&mut unit)?.success()));

    for (what, target) in SUITES {
        println!("test: {what} (TRACER_INTEGRATION=1, one test at a time)");
        let mut suite = cargo();
        suite
            .args(["test", "-p", "tracer", "--test", target, "--", "--test-threads=1"])
            .env("TRACER_INTEGRATION", "1")
            .env("TRACER_GUNICORN", &gunicorn)
            .env_remove("AYA_BUILD_SKIP");
        results.push((target, run_status(&mut suite)?.success()));
    }

    // What ships: the static binary and the Debian package (`cargo xtask dist`), checked as a
    // production host would get them. The kernel matrix below boots the same binary.
    println!("test: dist artefacts (cargo xtask dist; dpkg-deb -c, the binary alone in a chroot, systemd-analyze, promtool)");
    let dist_ok = match crate::dist::dist().and_then(|a| crate::dist::check(&a)) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("test: dist artefacts: {e:#}");
            false
        }
    };
    results.push(("dist artefacts", dist_ok));

    // The kernel matrix: function hooks (fentry, kprobe) and tracepoints on Debian 6.1 and
    // 6.12 under QEMU. TRACER_VM_TEST=0 skips it (e.g. while iterating on something else).
    let vm_ok = if std::env::var("TRACER_VM_TEST").as_deref() == Ok("0") {
        println!("test: kernel matrix skipped (TRACER_VM_TEST=0)");
        true
    } else {
        println!("test: kernel matrix (cargo xtask vm-test: Debian 6.1 and 6.12 kernels under QEMU/TCG)");
        match crate::vm::vm_test() {
            Ok(()) => true,
            Err(e) => {
                eprintln!("test: kernel matrix: {e:#}");
                false
            }
        }
    };
    results.push(("kernel matrix", vm_ok));

    let summary: Vec<String> =
        results.iter().map(|(what, ok)| format!("{what} {}", if *ok { "passed" } else { "FAILED" })).collect();
    println!("test: {}", summary.join(", "));
    if results.iter().any(|(_, ok)| !ok) {
        bail!("tests failed ({})", summary.join(", "));
    }
    println!("test: all tests passed");
    Ok(())
}
