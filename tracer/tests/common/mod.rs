//! Support for the privileged scenario suite (tests/scenarios.rs): a network namespace guard,
//! the python3 helpers (tests/helpers/net.py) run inside it, the real tracer binary, and
//! assertions on tracer's JSON lines.
//!
//! Everything here is bounded in time: every wait has a deadline, and every process a test
//! starts is killed by a Drop guard, also when the test panics.
#![allow(dead_code)]

pub mod bridged;
pub mod stack;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::Value;
pub use tracer::explain::Cause;
pub use tracer::report::json::{ConfigCheckLine, FindingLine, Line, LogUnexplainedLine, SummaryLine};
use xtask::kit::{collect_lines, read_lines, ReadyLine, SharedLines};

/// How long tracer may take to attach everything and print `tracing:`.
pub const TRACING_TIMEOUT: Duration = Duration::from_secs(60);
/// How long tracer may take to print its findings and exit after SIGINT.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a helper may run before the test gives up on it.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the suite must not run here, or None when it may.
pub fn skip_reason() -> Option<String> {
    match std::env::var("TRACER_INTEGRATION") {
        Ok(v) if v == "1" => {}
        _ => return Some("TRACER_INTEGRATION=1 is not set (the privileged suite runs via `cargo xtask test`)".into()),
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root (tracer needs root to load its eBPF programs)".into());
    }
    None
}

/// First line of every scenario: returns from the test, saying why, when the suite cannot run.
#[macro_export]
macro_rules! require_integration {
    () => {
        if let Some(reason) = $crate::common::skip_reason() {
            println!("skipped: {reason}");
            return;
        }
    };
}

/// The python3 the helpers run with: Debian's when present (what `cargo xtask setup`
/// installs), else the first python3 on PATH. Its comm is "python3" either way.
pub fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

pub fn helper_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helpers/net.py")
}

pub fn rst_responder_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helpers/rst_responder.py")
}

pub fn tracer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tracer")
}

/// Runs a command to completion (bounded), panicking with its output when it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = output_with_timeout(Command::new(program).args(args), Duration::from_secs(30));
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}{}",
        args.join(" "),
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command with stdin closed, collecting its output; kills it after `timeout`.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let out = read_all(child.stdout.take().unwrap());
    let err = read_all(child.stderr.take().unwrap());
    let status = wait_timeout(&mut child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not finish within {timeout:?}");
    });
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A child's whole output (the kit's `read_to_end`), as text.
fn read_all<R: std::io::Read + Send + 'static>(r: R) -> thread::JoinHandle<String> {
    let bytes = xtask::kit::read_to_end(r);
    thread::spawn(move || String::from_utf8_lossy(&bytes.join().unwrap_or_default()).into_owned())
}

/// The bounded waits and kills the demo and the bench use too (xtask's kit).
pub use xtask::kit::{kill_and_reap, wait_ready, wait_timeout, ReadyWait};

// ---------------------------------------------------------------------------------------
// Network namespace guard
// ---------------------------------------------------------------------------------------

/// A fresh network namespace `tracer-t-<name>-<pid>` with loopback up: the kit's guard
/// (xtask::kit::Netns: on drop every process still inside it is SIGKILLed and the namespace
/// deleted, its nft tables with it), plus what the tests run inside it.
pub struct Netns(xtask::kit::Netns);

/// `ns.name`, `ns.command(..)`, `ns.listening(..)`: the kit's.
impl std::ops::Deref for Netns {
    type Target = xtask::kit::Netns;
    fn deref(&self) -> &xtask::kit::Netns {
        &self.0
    }
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        let name = format!("tracer-t-{name}-{}", std::process::id());
        // (A leftover from an earlier, killed run of the same test process id is deleted first.)
        Netns(xtask::kit::Netns::create(&name).unwrap_or_else(|e| panic!("cannot create netns {name}: {e:#}")))
    }

    /// Another handle on the namespace `name` (for a thread sharing the test's namespace):
    /// it deletes the namespace when dropped, unless consumed by `curl_keep`.
    pub fn handle(name: String) -> Netns {
        Netns(xtask::kit::Netns { name })
    }

    /// `ip netns exec NS program args...`, bounded; panics when it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// Runs `nft` inside the namespace.
    pub fn nft(&self, args: &[&str]) {
        self.exec("nft", args);
    }

    /// An nft rule on the namespace's output hook (table `inet t`, chain `out`), e.g.
    /// `tcp dport 8000 drop`.
    pub fn nft_output_rule(&self, rule: &str) {
        self.nft(&["add", "table", "inet", "t"]);
        self.nft(&["add", "chain", "inet", "t", "out", "{ type filter hook output priority 0; }"]);
        let mut args = vec!["add", "rule", "inet", "t", "out"];
        args.extend(rule.split_whitespace());
        self.nft(&args);
    }

    /// An nft rule on the namespace's input hook (table `inet t`, chain `in`): what reaches
    /// this namespace's own sockets, e.g. `tcp dport 8000 drop` in an upstream's container.
    pub fn nft_input_rule(&self, rule: &str) {
        self.nft(&["add", "table", "inet", "t"]);
        self.nft(&["add", "chain", "inet", "t", "in", "{ type filter hook input priority 0; }"]);
        let mut args = vec!["add", "rule", "inet", "t", "in"];
        args.extend(rule.split_whitespace());
        self.nft(&args);
    }

    /// A Service address as kube-proxy's nft mode makes one: connections this namespace opens
    /// to `service` (`ip:port`) are DNATed to `backend` (`ip:port`) on the output hook (table
    /// `ip nat`, chain `output`). No interface has the Service address.
    pub fn nft_dnat_output(&self, service: &str, backend: &str) {
        let (ip, port) = service.rsplit_once(':').unwrap_or_else(|| panic!("not ip:port: {service}"));
        self.nft(&["add", "table", "ip", "nat"]);
        self.nft(&["add", "chain", "ip", "nat", "output", "{ type nat hook output priority -100; }"]);
        self.nft(&["add", "rule", "ip", "nat", "output", "ip", "daddr", ip, "tcp", "dport", port, "dnat", "to", backend]);
    }

    /// Starts `python3 net.py <args>` inside the namespace and waits for its `{"pid": N}` line.
    pub fn helper(&self, args: &[&str]) -> Helper {
        self.script(&helper_script(), args)
    }

    /// Starts another helper script (same protocol: JSON lines, `{"pid": N}` first).
    pub fn script(&self, script: &Path, args: &[&str]) -> Helper {
        let mut cmd = self.command(python3());
        cmd.arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start helper {args:?}: {e}"));
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        read_lines(child.stdout.take().unwrap(), move |line| {
            let v = serde_json::from_str::<Value>(&line).unwrap_or_else(|_| serde_json::json!({ "unparsed": line }));
            // The helper outlived its guard: its last lines have no reader.
            let _ = tx.send(v);
        });
        let stderr = read_all(child.stderr.take().unwrap());
        let mut h = Helper {
            args: args.iter().map(|s| s.to_string()).collect(),
            child,
            stdin,
            rx,
            lines: Vec::new(),
            stderr: Some(stderr),
            pid: 0,
        };
        let first = h.expect("pid");
        h.pid = first["pid"].as_u64().expect("helper pid") as u32;
        h
    }
}

// ---------------------------------------------------------------------------------------
// Helper processes (tests/helpers/net.py)
// ---------------------------------------------------------------------------------------

/// One running `net.py` helper. Its JSON lines arrive through a channel; on drop it is
/// SIGKILLed if still running.
pub struct Helper {
    pub args: Vec<String>,
    pub child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Value>,
    /// Every line received so far.
    pub lines: Vec<Value>,
    stderr: Option<thread::JoinHandle<String>>,
    /// The PID the helper printed first (python3's own).
    pub pid: u32,
}

impl Helper {
    /// Waits (bounded) for the next line having `key`; returns it.
    pub fn expect(&mut self, key: &str) -> Value {
        if let Some(v) = self.lines.iter().find(|v| v.get(key).is_some()) {
            return v.clone();
        }
        let deadline = Instant::now() + HELPER_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.lines.push(v.clone());
                    if v.get(key).is_some() {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    kill_and_reap(&mut self.child);
                    let err = self.stderr();
                    panic!(
                        "helper {:?}: no {key:?} line within {HELPER_TIMEOUT:?}; got {:?}{err}",
                        self.args, self.lines
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = wait_timeout(&mut self.child, Duration::from_secs(5));
                    let err = self.stderr();
                    panic!(
                        "helper {:?} ended without a {key:?} line; got {:?}{err}",
                        self.args, self.lines
                    );
                }
            }
        }
    }

    /// Waits (bounded) for the helper to exit 0 and returns its `done` line.
    pub fn finish(&mut self) -> Value {
        let done = self.expect("done");
        self.wait_exit(true);
        done
    }

    /// Asks a listener to close its socket and exit 0 ("stop" on stdin), and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        self.wait_exit(true);
    }

    /// SIGKILLs the helper (a crashing upstream) and reaps it.
    pub fn sigkill(&mut self) {
        kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL).expect("kill helper");
        // `ip netns exec` execs python3, so the helper is our child; reap it.
        let st = wait_timeout(&mut self.child, Duration::from_secs(10)).expect("killed helper exits");
        assert!(!st.success(), "a SIGKILLed helper cannot exit 0");
    }

    fn wait_exit(&mut self, must_succeed: bool) {
        let st = wait_timeout(&mut self.child, HELPER_TIMEOUT).unwrap_or_else(|| {
            kill_and_reap(&mut self.child);
            panic!("helper {:?} did not exit within {HELPER_TIMEOUT:?}", self.args)
        });
        // Collect what is left on its stdout.
        while let Ok(v) = self.rx.recv_timeout(Duration::from_millis(200)) {
            self.lines.push(v);
        }
        if must_succeed && !st.success() {
            let err = self.stderr();
            panic!("helper {:?} failed ({st}); lines {:?}{err}", self.args, self.lines);
        }
    }

    fn stderr(&mut self) -> String {
        match self.stderr.take() {
            Some(h) if h.is_finished() => format!("; stderr: {}", h.join().unwrap_or_default()),
            Some(h) => {
                self.stderr = Some(h);
                String::new()
            }
            None => String::new(),
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

// ---------------------------------------------------------------------------------------
// The real tracer binary
// ---------------------------------------------------------------------------------------

/// A running `tracer` (host network namespace). On drop it is SIGKILLed if still running.
pub struct Tracer {
    pub args: Vec<String>,
    child: Child,
    stderr_lines: SharedLines,
    stdout: Option<thread::JoinHandle<String>>,
}

/// What tracer printed once it exited.
pub struct TracerRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Every stdout line read into the contract's types (`tracer::report::json`), in order:
    /// a line that is not JSON, or has a key missing, added or of another shape, fails the run.
    pub lines: Vec<Line>,
}

/// `tracer <args>` started with stdin closed and stdout and stderr piped.
pub fn spawn_tracer(args: &[&str]) -> std::process::Child {
    Command::new(tracer_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", tracer_bin()))
}

impl Tracer {
    /// Starts `tracer <args>` and waits (bounded) for its `tracing:` line on stderr.
    pub fn start(args: &[&str]) -> Tracer {
        Tracer::start_child(spawn_tracer(args), args)
    }

    /// `start`, with tracer's sockets (its `--metrics` server) in the network namespace `ns`:
    /// `nsenter --net` changes only the network namespace (`ip netns exec` would also mount a
    /// /sys of its own, without tracefs). The kernel programs see every namespace all the same.
    pub fn start_in_netns(ns: &Netns, args: &[&str]) -> Tracer {
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg("--")
            .arg(tracer_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nsenter {}: {e}", tracer_bin()));
        Tracer::start_child(child, args)
    }

    fn start_child(mut child: Child, args: &[&str]) -> Tracer {
        let stdout = read_all(child.stdout.take().unwrap());
        let stderr_lines = SharedLines::new();
        let (ready, rx) = ReadyLine::new("tracing:");
        collect_lines(child.stderr.take().unwrap(), &stderr_lines, Some(ready));
        let mut t = Tracer {
            args: args.iter().map(|s| s.to_string()).collect(),
            child,
            stderr_lines,
            stdout: Some(stdout),
        };
        // A test is not interrupted: nothing to check between looks.
        let never_interrupted = || Ok::<(), std::convert::Infallible>(());
        let Ok(waited) = wait_ready(&rx, &mut t.child, TRACING_TIMEOUT, Duration::from_millis(20), never_interrupted);
        if let ReadyWait::Ready(_) = waited {
            return t;
        }
        let status = t.child.try_wait().ok().flatten();
        kill_and_reap(&mut t.child);
        panic!(
            "tracer {:?} printed no `tracing:` line within {TRACING_TIMEOUT:?} (exit: {status:?}); stderr:\n{}",
            t.args,
            t.stderr_text()
        );
    }

    /// `tracer diagnose --json --duration 60s <filters>`, attached and tracing.
    pub fn diagnose(filters: &[&str]) -> Tracer {
        let mut args = vec!["diagnose", "--json", "--duration", "60s"];
        args.extend_from_slice(filters);
        Tracer::start(&args)
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_lines.text()
    }

    /// Sends SIGINT (what Ctrl-C does), waits (bounded) for exit 0 and parses stdout.
    pub fn finish(mut self) -> TracerRun {
        // A human's Ctrl-C never comes within the same instant as the last failure.
        thread::sleep(Duration::from_millis(500));
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).expect("SIGINT tracer");
        let status = wait_timeout(&mut self.child, EXIT_TIMEOUT).unwrap_or_else(|| {
            kill_and_reap(&mut self.child);
            panic!(
                "tracer {:?} did not exit within {EXIT_TIMEOUT:?} of SIGINT; stderr:\n{}",
                self.args,
                self.stderr_text()
            )
        });
        let stdout = self.stdout.take().unwrap().join().unwrap();
        // Let the stderr reader take the last lines.
        thread::sleep(Duration::from_millis(100));
        let stderr = self.stderr_text();
        assert!(
            status.success(),
            "tracer {:?} exited with {status} after SIGINT; stderr:\n{stderr}\nstdout:\n{stdout}",
            self.args
        );
        assert!(!stderr.contains("panicked"), "tracer panicked:\n{stderr}");
        TracerRun::parse(status, stdout, stderr)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

// ---------------------------------------------------------------------------------------
// Assertions on tracer's output
// ---------------------------------------------------------------------------------------

impl TracerRun {
    /// A `--json` run's output, every line read as JSON and into the contract's types.
    pub fn parse(status: ExitStatus, stdout: String, stderr: String) -> TracerRun {
        let lines = stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                // Not JSON at all is told apart from JSON outside the contract, with the stderr.
                if let Err(e) = serde_json::from_str::<Value>(l) {
                    panic!("tracer --json printed a non-JSON line ({e}): {l:?}\nstderr:\n{stderr}");
                }
                contract_line(l)
            })
            .collect();
        TracerRun { status, stdout, stderr, lines }
    }

    pub fn findings(&self) -> Vec<&FindingLine> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::Finding(f) => Some(&**f),
                _ => None,
            })
            .collect()
    }

    pub fn findings_for(&self, target: &str) -> Vec<&FindingLine> {
        self.findings().into_iter().filter(|f| f.target == target).collect()
    }

    pub fn config_checks(&self) -> Vec<&ConfigCheckLine> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::ConfigCheck(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    pub fn log_unexplained(&self) -> Vec<&LogUnexplainedLine> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::LogUnexplained(u) => Some(u),
                _ => None,
            })
            .collect()
    }

    /// The one summary line, which comes last.
    pub fn summary(&self) -> &SummaryLine {
        let sums: Vec<&SummaryLine> = self
            .lines
            .iter()
            .filter_map(|l| match l {
                Line::Summary(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(sums.len(), 1, "exactly one summary line expected; output:\n{}", self.stdout);
        assert!(
            matches!(self.lines.last(), Some(Line::Summary(_))),
            "the summary comes last; output:\n{}",
            self.stdout
        );
        sums[0]
    }

    /// The one finding for `target`, which must have `cause` (and the shape
    /// `check_finding_shape` checks); every other finding for the same target (a wrong cause)
    /// fails the test.
    pub fn only_finding(&self, target: &str, cause: Cause) -> &FindingLine {
        let fs = self.findings_for(target);
        let wrong: Vec<&&FindingLine> = fs.iter().filter(|f| f.cause != cause).collect();
        let cause = cause.as_str();
        assert!(
            wrong.is_empty(),
            "findings with a wrong cause for {target} (expected only {cause}): {}\nfull output:\n{}\nstderr:\n{}",
            show(&wrong),
            self.stdout,
            self.stderr
        );
        assert_eq!(
            fs.len(),
            1,
            "expected exactly one {cause} finding for {target}; output:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        let f = fs[0];
        check_finding_shape(f);
        assert_eq!(self.summary().findings as usize, self.findings().len(), "summary.findings counts the findings");
        f
    }

    pub fn assert_no_finding_for(&self, target: &str) {
        let fs = self.findings_for(target);
        assert!(
            fs.is_empty(),
            "expected no finding for {target}, got {}\nstderr:\n{}",
            show(&fs),
            self.stderr
        );
        self.summary();
    }
}

fn show<T: std::fmt::Debug>(v: &[T]) -> String {
    v.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join("\n")
}

/// One line of tracer's output read into the contract's types, which must hold it whole:
/// written back, it is the same JSON (no key missing, none unknown, every value's shape).
pub fn contract_line(text: &str) -> Line {
    let line = Line::parse(text).unwrap_or_else(|e| panic!("not a line of the JSON contract ({e}): {text}"));
    let raw: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(serde_json::to_value(&line).unwrap(), raw, "the contract's types do not hold this line whole: {text}");
    line
}

/// A finding line (already read whole into the contract's `FindingLine` by `contract_line`)
/// has a fix to give and RFC 3339 times.
pub fn check_finding_shape(f: &FindingLine) {
    assert!(!f.fix.is_empty(), "fix is a non-empty string: {f:?}");
    for s in [&f.first_seen, &f.last_seen] {
        assert!(s.len() >= 20 && s.as_bytes()[4] == b'-' && s.as_bytes()[10] == b'T', "RFC 3339: {s:?} in {f:?}");
    }
}

/// The client helper (its pid, comm "python3") is among the finding's clients.
pub fn assert_client(f: &FindingLine, pid: u32) {
    assert!(
        f.clients.iter().any(|c| c.pid == pid && c.comm == "python3"),
        "clients should contain {{pid: {pid}, comm: python3}}: {f:?}"
    );
}

pub fn assert_listener(f: &FindingLine, pid: u32) {
    assert_eq!(
        f.listener.as_ref().map(|l| l.pid),
        Some(pid),
        "listener.pid should be {pid} (the listener helper): {f:?}"
    );
}

/// The helper's `results` summary for one outcome (e.g. "ECONNREFUSED"), 0 when absent.
pub fn result_count(done: &Value, name: &str) -> u64 {
    done["results"][name].as_u64().unwrap_or(0)
}

/// A fresh directory for Unix socket paths, traversable by every user (mode 0755), removed
/// on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tracer-t-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        TempDir(dir)
    }

    pub fn path(&self, file: &str) -> String {
        self.0.join(file).to_str().expect("utf-8 temp path").to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
