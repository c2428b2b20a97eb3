//! The network-namespace guard: each run (a demo, a bench, a test) works inside a fresh
//! namespace of its own on its loopback, so its ports, nft rules and listeners touch nothing
//! else; dropping the guard kills what is still inside and deletes it.

use std::{
    ffi::OsStr,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

/// How long the guard waits, after SIGKILLing what is inside, for it to be gone: a namespace
/// deleted while a process still lives in it only loses its name, and lives on.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(1);

/// A network namespace with loopback up. On drop every process still inside it is
/// SIGKILLed and the namespace deleted (its nft tables go with it).
pub struct Netns {
    pub name: String,
}

/// Something listening inside a namespace.
#[derive(Debug, Clone)]
pub enum Listener {
    Tcp(u16),
    /// A Unix stream socket's path.
    Unix(String),
}

/// How a wait for a listener ended.
#[derive(Debug)]
pub enum ListenWait {
    Listening,
    /// The process that should listen exited first.
    Exited(ExitStatus),
    TimedOut,
}

impl Netns {
    /// Creates the namespace `name` with loopback up, printing the commands as xtask prints
    /// what it runs. A namespace of that name left by a run killed hard is deleted first.
    pub fn create(name: impl Into<String>) -> Result<Netns> {
        let name = name.into();
        if Path::new("/run/netns").join(&name).exists() {
            delete(&name);
        }
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip netns exec NAME program`: a command to run inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Whether something listens on `what` inside the namespace. It asks the kernel (`ss`,
    /// sock_diag) instead of connecting: a probe connect before the listener is up would be a
    /// real refused connection, and tracer would rightly report it.
    pub fn listening(&self, what: &Listener) -> bool {
        let mut ss = self.command("ss");
        match what {
            Listener::Tcp(port) => ss.args(["-Hltn", &format!("sport = :{port}")]),
            Listener::Unix(path) => ss.args(["-Hlx", "src", path]),
        };
        match ss.stdin(Stdio::null()).stderr(Stdio::null()).output() {
            Ok(o) => o.status.success() && !String::from_utf8_lossy(&o.stdout).trim().is_empty(),
            Err(_) => false,
        }
    }

    /// Waits until something listens on `what`, `child` (the process that should listen)
    /// exits, or `timeout` passes, calling `pause(100 ms)` between looks: xtask's pause
    /// returns an error on Ctrl-C, which ends the wait with that error.
    pub fn wait_listening(
        &self,
        what: &Listener,
        child: &mut Child,
        timeout: Duration,
        mut pause: impl FnMut(Duration) -> Result<()>,
    ) -> Result<ListenWait> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.listening(what) {
                return Ok(ListenWait::Listening);
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Ok(ListenWait::Exited(status));
            }
            if Instant::now() >= deadline {
                return Ok(ListenWait::TimedOut);
            }
            pause(Duration::from_millis(100))?;
        }
    }
}

/// Linking namespaces like a container runtime does (docker0, a CNI bridge): a Linux bridge
/// in one namespace, and other namespaces joined to it by veth pairs.
impl Netns {
    /// Adds the Linux bridge `bridge` inside this namespace, up.
    pub fn add_bridge(&self, bridge: &str) -> Result<()> {
        ip(&["-n", &self.name, "link", "add", bridge, "type", "bridge"])?;
        ip(&["-n", &self.name, "link", "set", bridge, "up"])
    }

    /// Joins `member` to this namespace's bridge `bridge` by a veth pair: the end `port`
    /// stays here, enslaved to the bridge; the end `ifname` moves into `member` with the
    /// address `cidr` (e.g. `10.232.0.1/24`). Both ends up. The names live in their own
    /// namespaces, so every member may call its end `eth0`.
    pub fn join_bridge(&self, bridge: &str, port: &str, member: &Netns, ifname: &str, cidr: &str) -> Result<()> {
        ip(&["-n", &self.name, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", &member.name])?;
        ip(&["-n", &self.name, "link", "set", port, "master", bridge])?;
        ip(&["-n", &self.name, "link", "set", port, "up"])?;
        ip(&["-n", &member.name, "addr", "add", cidr, "dev", ifname])?;
        ip(&["-n", &member.name, "link", "set", ifname, "up"])
    }

    /// A default route out of `dev` in this namespace: a connect() to an address no interface
    /// covers (a Service address that only a DNAT rule knows) is routed, not refused with
    /// ENETUNREACH before the NAT hook sees it.
    pub fn add_default_route(&self, dev: &str) -> Result<()> {
        ip(&["-n", &self.name, "route", "add", "default", "dev", dev])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// The pids of every process inside the namespace `name`.
fn pids(name: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs every process inside the namespace, waits (bounded) until none is left, and
/// deletes it.
fn delete(name: &str) {
    for pid in pids(name) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + EMPTY_TIMEOUT;
    while !pids(name).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `ip ARGS`, printed first as `$ ip ARGS` (the names the kit passes need no quoting); fails
/// with ip's own message.
fn ip(args: &[&str]) -> Result<()> {
    eprintln!("$ ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run ip")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
