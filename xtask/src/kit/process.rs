//! Starting a service (Nginx, Gunicorn) as the leader of its own process group, stopping
//! that group, and bounded waits for a child process. Nginx's and Gunicorn's workers are in
//! their master's group, so stopping the group leaves no worker behind.

use std::{
    fs,
    io,
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, killpg, Signal},
    unistd::Pid,
};

/// How often `wait_timeout` polls: short against every timeout it is given, long enough
/// not to spin.
const POLL: Duration = Duration::from_millis(20);

/// How long `kill_and_reap` waits for a SIGKILLed child: SIGKILL cannot be caught, so only
/// a process stuck in the kernel takes longer.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Spawns `cmd` as the leader of a new process group, stdin closed, stdout and stderr to
/// the file `log` (created). The group is what `stop_group` stops; it also keeps a Ctrl-C at
/// the terminal from reaching the service, so the demo and the bench stop it in their order.
pub fn spawn_group_logged(cmd: &mut Command, log: &Path) -> io::Result<Child> {
    let out = fs::File::create(log)?;
    cmd.process_group(0).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).spawn()
}

/// The pids of a process's children (its workers, for an Nginx or Gunicorn master).
pub fn children_of(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Polls the child until it exits or the timeout passes; None when it did not exit (or can
/// no longer be waited for).
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    wait_timeout_polling(child, timeout, POLL)
}

/// `wait_timeout` polling every `poll`: the bench times exits to well below 20 ms.
pub fn wait_timeout_polling(child: &mut Child, timeout: Duration, poll: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(poll);
    }
}

/// SIGKILLs the child (only it, not a group) if it still runs, and reaps it (bounded).
pub fn kill_and_reap(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = wait_timeout(child, REAP_TIMEOUT);
    }
}

/// Stops a child that leads its own process group (spawned with `process_group(0)`):
/// `first` to the group, SIGKILL to the group when the leader has not exited within `grace`,
/// and reaps the leader (bounded). Last, SIGKILL to the group again: the workers of a master
/// that was killed outright are still in it.
pub fn stop_group(child: &mut Child, first: Signal, grace: Duration) {
    let group = Pid::from_raw(child.id() as i32);
    if let Ok(None) = child.try_wait() {
        let _ = killpg(group, first);
        if wait_timeout(child, grace).is_none() {
            let _ = killpg(group, Signal::SIGKILL);
            let _ = wait_timeout(child, grace);
        }
    }
    let _ = killpg(group, Signal::SIGKILL);
}

/// How a wait for a child's ready signal ended.
#[derive(Debug)]
pub enum ReadyWait<T> {
    /// The first signal (tracer: its `tracing:` line, sent by the thread that reads its output).
    Ready(T),
    /// The child exited first.
    Exited(ExitStatus),
    TimedOut,
}

/// Waits for the first message on `ready`, the child's exit, or `timeout`, looking every
/// `poll` and calling `check` before each look: xtask's check fails on Ctrl-C, which ends the
/// wait with that error.
pub fn wait_ready<T, E>(
    ready: &Receiver<T>,
    child: &mut Child,
    timeout: Duration,
    poll: Duration,
    mut check: impl FnMut() -> Result<(), E>,
) -> Result<ReadyWait<T>, E> {
    let deadline = Instant::now() + timeout;
    loop {
        check()?;
        match ready.recv_timeout(poll) {
            Ok(signal) => return Ok(ReadyWait::Ready(signal)),
            Err(RecvTimeoutError::Timeout) => {}
            // The reader ended (the child closed its output): only its exit is left to see.
            Err(RecvTimeoutError::Disconnected) => thread::sleep(poll),
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(ReadyWait::Exited(status));
        }
        if Instant::now() >= deadline {
            return Ok(ReadyWait::TimedOut);
        }
    }
}
