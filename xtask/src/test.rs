//! `cargo xtask test`: setup, the unit tests of the workspace (no root needed), then the
//! privileged scenario suite (real tracer, real kernel, one network namespace per test).
use anyhow::{bail, Result};

use crate::{
    setup::setup,
    util::{cargo, run_status},
};

pub fn test() -> Result<()> {
    setup()?;

    // tracer-ebpf is a no_std bpfel-unknown-none program: it has no host tests, and tracer's
    // build.rs builds it for the kernel.
    println!("test: unit tests (cargo test --workspace)");
    let mut unit = cargo();
    unit.args(["test", "--workspace", "--exclude", "tracer-ebpf"])
        .env_remove("TRACER_INTEGRATION")
        .env_remove("AYA_BUILD_SKIP");
    let unit_ok = run_status(&mut unit)?.success();

    println!("test: privileged scenario suite (TRACER_INTEGRATION=1, one test at a time)");
    let mut scen = cargo();
    scen.args(["test", "-p", "tracer", "--test", "scenarios", "--", "--test-threads=1"])
        .env("TRACER_INTEGRATION", "1")
        .env_remove("AYA_BUILD_SKIP");
    let scen_ok = run_status(&mut scen)?.success();

    println!("test: Nginx + Gunicorn suite (real Nginx, real Gunicorn, one network namespace per test)");
    let gunicorn = crate::setup::gunicorn()?;
    let mut stack = cargo();
    stack
        .args(["test", "-p", "tracer", "--test", "nginx", "--", "--test-threads=1"])
        .env("TRACER_INTEGRATION", "1")
        .env("TRACER_GUNICORN", &gunicorn)
        .env_remove("AYA_BUILD_SKIP");
    let stack_ok = run_status(&mut stack)?.success();

    println!("test: operator suite (metrics scraped over HTTP, `tracer top` in tmux)");
    let mut ops = cargo();
    ops.args(["test", "-p", "tracer", "--test", "operators", "--", "--test-threads=1"])
        .env("TRACER_INTEGRATION", "1")
        .env_remove("AYA_BUILD_SKIP");
    let ops_ok = run_status(&mut ops)?.success();

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

    let word = |ok: bool| if ok { "passed" } else { "FAILED" };
    println!(
        "test: unit tests {}, scenario suite {}, Nginx + Gunicorn suite {}, operator suite {}, kernel matrix {}",
        word(unit_ok),
        word(scen_ok),
        word(stack_ok),
        word(ops_ok),
        word(vm_ok)
    );
    if !(unit_ok && scen_ok && stack_ok && ops_ok && vm_ok) {
        bail!(
            "tests failed (unit tests {}, scenario suite {}, Nginx + Gunicorn suite {}, operator suite {}, kernel matrix {})",
            word(unit_ok),
            word(scen_ok),
            word(stack_ok),
            word(ops_ok),
            word(vm_ok)
        );
    }
    println!("test: all tests passed");
    Ok(())
}
