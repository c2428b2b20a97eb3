//! `cargo xtask setup`: everything tracer needs on a fresh Debian 12 machine, installed only
//! when missing. One line per step: `setup: <what> (present|installed)`.
use std::{fs, path::Path, process::Command};

use anyhow::{bail, Result};

use crate::util::{cargo, probe, require_root, run};

/// Debian packages: each entry is satisfied by any one of its alternatives; the first is what
/// gets installed.
const APT: &[&[&str]] = &[
    &["llvm-22-dev"],
    &["libpolly-22-dev"],
    &["nftables"],
    // iptables-nft: the nginx suite's iptables (nft backend) rule naming case.
    &["iptables"],
    &["iproute2"],
    &["bpftool"],
    &["python3"],
    &["python3-venv"],
    &["curl"],
    &["tmux"],
    // promtool (`promtool check metrics`): the hostile suite lints tracer's /metrics with it;
    // `promtool check/test rules` checks deploy/prometheus, and the operator suite runs the
    // Prometheus server itself.
    &["prometheus"],
    // `cargo xtask dist` and its checks: dpkg-deb, `systemd-analyze verify` of tracer.service
    // (which looks up its man pages with man), gzip for the man pages.
    &["dpkg"],
    &["systemd"],
    &["man-db"],
    &["gzip"],
    // musl-gcc: the static build compiles mimalloc (tracer's allocator there) for musl.
    &["musl-tools"],
    // nginx-light only adds a module on top of nginx in Debian 12: either will do.
    &["nginx", "nginx-light"],
    &["wrk"],
    &["procps"],
    &["psmisc"],
    &["util-linux"],
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const TRACEFS: &str = "/sys/kernel/tracing";

pub fn setup() -> Result<()> {
    require_root("setup")?;
    ensure_apt_packages(APT)?;
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    tracefs()?;
    gunicorn()?;
    musl_target()?;
    Ok(())
}

/// The Rust target of the static binary `cargo xtask dist` builds.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The standard library for the static build (`cargo xtask dist`); Rust's musl target brings
/// its own C runtime, and musl-tools (APT above) the C compiler for mimalloc.
fn musl_target() -> Result<()> {
    let (_, out) = probe(Command::new("rustup").args(["target", "list", "--installed"]));
    if out.lines().any(|l| l.trim() == MUSL_TARGET) {
        println!("setup: rust target {MUSL_TARGET} (present)");
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", MUSL_TARGET]))?;
    println!("setup: rust target {MUSL_TARGET} (installed)");
    Ok(())
}

/// Gunicorn from PyPI in a venv under target/ (idempotent): the real upstream of the demo and
/// of the Nginx scenario suite. Returns the path of the `gunicorn` executable.
pub fn gunicorn() -> Result<std::path::PathBuf> {
    let venv = crate::util::target_dir().join("venv");
    let python = venv.join("bin/python");
    let gunicorn = venv.join("bin/gunicorn");
    if !python.exists() {
        let py = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
        run(Command::new(py).args(["-m", "venv"]).arg(&venv))?;
    }
    if gunicorn.exists() {
        println!("setup: gunicorn in {} (present)", venv.display());
    } else {
        run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check", "gunicorn"]))?;
        println!("setup: gunicorn in {} (installed)", venv.display());
    }
    Ok(gunicorn)
}

fn installed_packages(names: &[&str]) -> Vec<String> {
    let mut cmd = Command::new("dpkg-query");
    cmd.args(["-W", "-f=${Package} ${db:Status-Abbrev}\n"]).args(names);
    // dpkg-query exits 1 when some name is unknown; its output still lists the others.
    let (_, out) = probe(&mut cmd);
    out.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (name, status) = (it.next()?, it.next()?);
            (status == "ii").then(|| name.split(':').next().unwrap_or(name).to_string())
        })
        .collect()
}

/// Installs (apt) each of `wanted` that is missing: an entry is satisfied by any one of its
/// alternatives, and the first is what gets installed. `setup` and the bench (which needs
/// more) both install this way, with the same `setup: apt packages ...` line.
pub fn ensure_apt_packages(wanted: &[&[&str]]) -> Result<()> {
    let all: Vec<&str> = wanted.iter().flat_map(|alts| alts.iter().copied()).collect();
    let have = installed_packages(&all);
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|alts| !alts.iter().any(|p| have.iter().any(|h| h == p)))
        .map(|alts| alts[0])
        .collect();
    let names = wanted.iter().map(|a| a[0]).collect::<Vec<_>>().join(" ");
    if missing.is_empty() {
        println!("setup: apt packages {names} (present)");
        return Ok(());
    }
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))?;
    println!("setup: apt packages {} (installed)", missing.join(" "));
    Ok(())
}

fn nightly() -> Result<()> {
    let (_, out) = probe(Command::new("rustup").args(["toolchain", "list"]));
    if out.lines().any(|l| l.starts_with("nightly")) {
        println!("setup: rust nightly toolchain (present)");
        return Ok(());
    }
    run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    println!("setup: rust nightly toolchain (installed)");
    Ok(())
}

fn rust_src() -> Result<()> {
    let (_, out) = probe(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]));
    if out.lines().any(|l| l.trim().starts_with("rust-src")) {
        println!("setup: rust-src for nightly (present)");
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    println!("setup: rust-src for nightly (installed)");
    Ok(())
}

fn bpf_linker_version_ok() -> bool {
    let (ok, out) = probe(Command::new("bpf-linker").arg("--version"));
    ok && out.split_whitespace().any(|w| w == BPF_LINKER_VERSION)
}

fn bpf_linker() -> Result<()> {
    if bpf_linker_version_ok() {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} (present)");
        return Ok(());
    }
    // The default feature wants LLVM 23; Debian 12 has LLVM 22 (TOOLCHAIN.md).
    run(cargo()
        .env("LLVM_PREFIX", "/usr/lib/llvm-22")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
        ])
        .args(["--features", "llvm-22"]))?;
    if !bpf_linker_version_ok() {
        bail!("bpf-linker {BPF_LINKER_VERSION} was installed but `bpf-linker --version` does not report it (is ~/.cargo/bin on PATH?)");
    }
    println!("setup: bpf-linker {BPF_LINKER_VERSION} (installed)");
    Ok(())
}

fn tracefs_mounted() -> bool {
    fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 2 && f[1] == TRACEFS && f[2] == "tracefs"
            })
        })
        .unwrap_or(false)
}

fn tracefs() -> Result<()> {
    if tracefs_mounted() {
        println!("setup: tracefs at {TRACEFS} (present)");
        return Ok(());
    }
    if !Path::new(TRACEFS).is_dir() {
        bail!("{TRACEFS} does not exist: this kernel has no tracefs (CONFIG_TRACING); tracer cannot run here");
    }
    run(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]))?;
    println!("setup: tracefs at {TRACEFS} (installed)");
    Ok(())
}
