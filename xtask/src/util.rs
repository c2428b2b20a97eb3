//! Small shared helpers: paths, running commands (printing what runs), root checks.
use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{bail, Context, Result};

/// The workspace root (xtask's parent directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Cargo's target directory: $CARGO_TARGET_DIR, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                root().join(d)
            }
        }
        _ => root().join("target"),
    }
}

/// The cargo that runs xtask (`$CARGO`), else the one on PATH.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// A printable form of a command: `$ VAR=x prog arg ...`.
pub fn show(cmd: &Command) -> String {
    let mut s = String::from("$ ");
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&quote(cmd.get_program()));
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c)) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs a command, printing it first; fails when it does not exit 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = run_status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd).trim_start_matches("$ "));
    }
    Ok(())
}

/// Runs a command, printing it first; returns its exit status whatever it is.
pub fn run_status(cmd: &mut Command) -> Result<ExitStatus> {
    eprintln!("{}", show(cmd));
    cmd.status()
        .with_context(|| format!("cannot start `{}`", show(cmd).trim_start_matches("$ ")))
}

/// Runs a command quietly (a probe) and returns (success, stdout). A command that cannot
/// start counts as a failure.
pub fn probe(cmd: &mut Command) -> (bool, String) {
    match cmd.stdin(Stdio::null()).stderr(Stdio::null()).output() {
        Ok(o) => (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned()),
        Err(_) => (false, String::new()),
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Fails with one clear line when not root.
pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask {what}` must run as root (it installs packages, mounts tracefs and loads eBPF programs); \
             run it as root, e.g. `sudo -E cargo xtask {what}`"
        );
    }
    Ok(())
}

/// The kit's bounded wait for a child (vm.rs waits with it too).
pub use xtask::kit::wait_timeout;
