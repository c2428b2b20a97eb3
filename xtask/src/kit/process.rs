//! Starting a service (Nginx, Gunicorn) as the leader of its own process group, stopping
//! that group, and bounded waits for a child process. Nginx's and Gunicorn's workers are in
//! their master's group, so stopping the group leaves no worker behind.

use std::{
    fs,
    io::{self, BufRead, BufReader, Read},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
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
/// that was killed outright are still in it. Returns the leader's exit status when it had
/// exited already or exited within `grace` of `first`; None when it needed SIGKILL.
pub fn stop_group(child: &mut Child, first: Signal, grace: Duration) -> Option<ExitStatus> {
    let group = Pid::from_raw(child.id() as i32);
    let status = match child.try_wait() {
        Ok(None) => {
            let _ = killpg(group, first);
            let status = wait_timeout(child, grace);
            if status.is_none() {
                let _ = killpg(group, Signal::SIGKILL);
                let _ = wait_timeout(child, grace);
            }
            status
        }
        Ok(Some(status)) => Some(status),
        Err(_) => None,
    };
    let _ = killpg(group, Signal::SIGKILL);
    status
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

/// A child that leads its own process group (`spawn_group_logged`, or `process_group(0)`),
/// stopped with its whole group when dropped: `first` to the group, SIGKILL after `grace`
/// (`stop_group`). The demo's and the bench's services take SIGTERM, the tests' SIGKILL.
/// Derefs to the `Child` for waits and pids.
pub struct ProcessGroup {
    child: Child,
    first: Signal,
    grace: Duration,
}

impl ProcessGroup {
    /// `child` must lead its own process group: the group is what is stopped.
    pub fn new(child: Child, first: Signal, grace: Duration) -> ProcessGroup {
        ProcessGroup { child, first, grace }
    }

    /// Stops the group now (`stop_group`): the leader's exit status when it exited by itself
    /// or within `grace` of the first signal, None when it needed SIGKILL.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        stop_group(&mut self.child, self.first, self.grace)
    }
}

impl std::ops::Deref for ProcessGroup {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for ProcessGroup {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.stop();
    }
}

/// At most this many lines of a child's output are kept: a child flooding its output cannot
/// take the memory.
const MAX_KEPT_LINES: usize = 100_000;

/// The lines a child wrote so far, shared with the threads that read them (`collect_lines`).
#[derive(Clone, Debug, Default)]
pub struct SharedLines(Arc<Mutex<Vec<String>>>);

impl SharedLines {
    pub fn new() -> SharedLines {
        SharedLines::default()
    }

    fn push(&self, line: String) {
        // A reader that panicked while holding the lock left whole lines: keep using them.
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() < MAX_KEPT_LINES {
            lines.push(line);
        }
    }

    /// A copy of the lines so far.
    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The lines so far, joined by newlines.
    pub fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    }

    /// Whether a line so far satisfies `pred`.
    pub fn any(&self, pred: impl FnMut(&String) -> bool) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().any(pred)
    }
}

/// Tells, once, when a child printed the line that says it is ready (tracer's `tracing:`):
/// the moment the first line starting with the prefix was read arrives on the receiver that
/// `new` returns, for `wait_ready`. Clones (one per stream read) share that receiver.
#[derive(Clone, Debug)]
pub struct ReadyLine {
    prefix: &'static str,
    tx: Option<Sender<Instant>>,
}

impl ReadyLine {
    pub fn new(prefix: &'static str) -> (ReadyLine, Receiver<Instant>) {
        let (tx, rx) = mpsc::channel();
        (ReadyLine { prefix, tx: Some(tx) }, rx)
    }

    /// Looks at one line; sends its moment when it is the first ready line this one saw.
    pub fn see(&mut self, line: &str) {
        if line.starts_with(self.prefix) {
            if let Some(tx) = self.tx.take() {
                // The waiter may have given up already: nothing more to tell it.
                let _ = tx.send(Instant::now());
            }
        }
    }
}

/// Reads `stream` (a child's stdout or stderr) line by line in a thread of its own until the
/// child closes it (or writes a line that is not UTF-8), handing each line to `each`. The
/// thread ends with the stream: join it to have every line.
pub fn read_lines<R: Read + Send + 'static>(stream: R, mut each: impl FnMut(String) + Send + 'static) -> JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            each(line);
        }
    })
}

/// `read_lines` into `into`; `ready`, when given, is told each line after it was kept, so a
/// waiter woken by it finds the ready line among the kept ones.
pub fn collect_lines<R: Read + Send + 'static>(stream: R, into: &SharedLines, mut ready: Option<ReadyLine>) -> JoinHandle<()> {
    let into = into.clone();
    read_lines(stream, move |line| match ready.as_mut() {
        Some(ready) => {
            into.push(line.clone());
            ready.see(&line);
        }
        None => into.push(line),
    })
}

/// Reads `stream` (a child's whole stdout) to its end in a thread of its own.
pub fn read_to_end<R: Read + Send + 'static>(mut stream: R) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error ends the output: what came before it is what the child wrote.
        let _ = stream.read_to_end(&mut buf);
        buf
    })
}
