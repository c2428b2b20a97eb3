//! Command line and process life (issue 10, items 4, 5, 9): a FIFO or a directory given as
//! the Nginx error log, filters that name nothing, stop signals at any time (SIGHUP from a
//! dropped ssh session, SIGTERM during start-up), and a reader that closes stdout early
//! (`| head -1`). Every way out is bounded in time and leaves no tracer program attached.
use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    os::unix::fs::MetadataExt,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::Value;
use xtask::kit::{collect_lines, read_to_end, SharedLines};

#[allow(unused_imports)]
use crate::common::*;

// ---------------------------------------------------------------------------------------
// Helpers: a tracer whose pipes and pid the test holds, and what the kernel still runs
// ---------------------------------------------------------------------------------------

/// A tracer started with piped stdout and stderr; stderr lines are collected as they come.
/// SIGKILLed on drop if still running.
struct Spawned {
    child: Child,
    stderr: SharedLines,
}

impl Spawned {
    fn start(args: &[&str]) -> Spawned {
        let mut child = spawn_tracer(args);
        let stderr = SharedLines::new();
        collect_lines(child.stderr.take().unwrap(), &stderr, None);
        Spawned { child, stderr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    fn tracing(&self) -> bool {
        self.stderr.any(|l| l.starts_with("tracing:"))
    }

    /// Waits (bounded) for the `tracing:` line.
    fn wait_tracing(&mut self) {
        let deadline = Instant::now() + TRACING_TIMEOUT;
        while !self.tracing() {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("tracer exited ({st}) before `tracing:`; stderr:\n{}", self.stderr_text());
            }
            assert!(Instant::now() < deadline, "no `tracing:` within {TRACING_TIMEOUT:?}; stderr:\n{}", self.stderr_text());
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).unwrap_or_else(|e| panic!("{signal} to tracer: {e}"));
    }

    /// Waits (bounded) for the exit; panics with stderr when it does not come.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = wait_timeout(&mut self.child, timeout).unwrap_or_else(|| {
            kill_and_reap(&mut self.child);
            panic!("tracer did not exit within {timeout:?}; stderr:\n{}", self.stderr_text())
        });
        // Let the stderr reader take the last lines.
        thread::sleep(Duration::from_millis(100));
        status
    }

    /// The whole stdout (read to its end in a thread: call before waiting for the exit).
    fn stdout_reader(&mut self) -> thread::JoinHandle<String> {
        let bytes = read_to_end(self.child.stdout.take().expect("stdout not taken yet"));
        thread::spawn(move || String::from_utf8_lossy(&bytes.join().unwrap_or_default()).into_owned())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// The BPF programs a process holds open (`prog_id:` in /proc/PID/fdinfo).
fn prog_ids_held_by(pid: u32) -> BTreeSet<u32> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return BTreeSet::new() };
    entries
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .flat_map(|text| {
            text.lines().filter_map(|l| l.strip_prefix("prog_id:")).filter_map(|v| v.trim().parse().ok()).collect::<Vec<u32>>()
        })
        .collect()
}

/// Every loaded BPF program: (id, type).
fn loaded_programs() -> Vec<(u32, String)> {
    let out = sh("bpftool", &["prog", "show", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool prog show --json: {e}: {out}"));
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|p| (p["id"].as_u64().expect("id") as u32, p["type"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn program_exists(id: u32) -> bool {
    Command::new("bpftool").args(["prog", "show", "id", &id.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The programs tracer held while running are all gone after its exit (the kernel frees
/// them asynchronously: bounded wait).
fn assert_detached(ids: &BTreeSet<u32>) {
    assert!(!ids.is_empty(), "tracer held no BPF program while tracing: nothing was checked");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = ids.iter().copied().filter(|&id| program_exists(id)).collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "BPF programs {left:?} that tracer held are still loaded after its exit");
        thread::sleep(Duration::from_millis(200));
    }
}

/// For exits during start-up, when the test cannot know which programs tracer loaded: no
/// tracing program loaded since `before` outlives its holder. Programs other tests' tracers
/// hold (the machine is shared) are held by a live process, so they do not count.
fn assert_no_orphan_programs_since(before: &BTreeSet<u32>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held: BTreeSet<u32> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .flat_map(prog_ids_held_by)
            .collect();
        let orphans: Vec<(u32, String)> = loaded_programs()
            .into_iter()
            .filter(|(id, kind)| {
                !before.contains(id) && !held.contains(id) && ["tracepoint", "kprobe", "tracing", "raw_tracepoint"].contains(&kind.as_str())
            })
            .collect();
        if orphans.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "tracing programs loaded during the test and held by no process: {orphans:?}");
        thread::sleep(Duration::from_millis(200));
    }
}

fn program_ids() -> BTreeSet<u32> {
    loaded_programs().into_iter().map(|(id, _)| id).collect()
}


/// A one-line error and a non-zero exit, before anything was attached.
fn assert_one_line_refusal(out: &Output, must_contain: &[&str]) {
    assert!(!out.status.success(), "must fail: {}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "one line: {:?}", out.stderr);
    for s in must_contain {
        assert!(out.stderr.contains(s), "{s:?} missing from {:?}", out.stderr);
    }
    assert!(!out.stderr.contains("tracing:"), "refused before attaching: {:?}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{:?}", out.stderr);
    assert!(out.stdout.is_empty(), "no report after a refusal: {:?}", out.stdout);
}

/// How long a refusal may take: it comes before anything is attached.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Item 4: the Nginx error log must be a regular file
// ---------------------------------------------------------------------------------------

/// A FIFO as `--nginx-error-log`: tracer used to hang in open() (no writer) before `tracing:`,
/// deaf to SIGTERM and SIGINT. Now: a one-line error naming the file, non-zero, at once.
#[test]
fn fifo_as_nginx_error_log_is_refused_at_once() {
    require_integration!();
    let dir = TempDir::new("fifo-log");
    let fifo = dir.path("error.log");
    nix::unistd::mkfifo(fifo.as_str(), nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
    let before = program_ids();
    // output_with_timeout fails the test (after SIGKILL) if tracer is still blocked.
    let out = output_with_timeout(
        Command::new(tracer_bin()).args(["diagnose", "--duration", "30s", "--nginx-error-log", &fifo]),
        REFUSAL_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_one_line_refusal(&out, &[&fifo, "not a regular file", "--nginx-error-log"]);
    assert_no_orphan_programs_since(&before);
}

/// A directory as `--nginx-error-log` used to be accepted silently (no log line ever read).
#[test]
fn directory_as_nginx_error_log_is_refused() {
    require_integration!();
    let dir = TempDir::new("dir-log");
    let logdir = dir.path("logs");
    std::fs::create_dir(&logdir).unwrap();
    let out = output_with_timeout(
        Command::new(tracer_bin()).args(["diagnose", "--duration", "30s", "--nginx-error-log", &logdir]),
        REFUSAL_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_one_line_refusal(&out, &[&logdir, "not a regular file", "--nginx-error-log"]);
}

// ---------------------------------------------------------------------------------------
// Item 5: filters that name nothing
// ---------------------------------------------------------------------------------------

/// `--netns 12345` (no namespace has that inode) and `--cgroup no-such` used to trace and end
/// with "No failed upstream connections seen.", a false all-clear.
#[test]
fn netns_and_cgroup_filters_naming_nothing_are_refused() {
    require_integration!();
    let no_cgroup = format!("no-such-cgroup-{}", std::process::id());
    for (args, expect) in [
        (vec!["--netns", "12345"], vec!["--netns 12345", "no network namespace has this inode"]),
        (vec!["--cgroup", no_cgroup.as_str()], vec!["--cgroup", no_cgroup.as_str(), "no cgroup path contains"]),
    ] {
        let mut all = vec!["diagnose", "--duration", "30s"];
        all.extend_from_slice(&args);
        let out = output_with_timeout(Command::new(tracer_bin()).args(&all), REFUSAL_TIMEOUT);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", out.stderr);
        assert_one_line_refusal(&out, &expect);
        assert!(!out.stdout.contains("No failed upstream connections seen"), "{args:?}: {}", out.stdout);
    }
}

/// `--unix relative/path` can never match (connect paths are absolute): a usage error, exit 2,
/// at argument parsing (no root needed).
#[test]
fn relative_unix_path_is_a_usage_error() {
    for cmd in ["diagnose", "watch", "top"] {
        let out = output_with_timeout(Command::new(tracer_bin()).args([cmd, "--unix", "relative/path"]), REFUSAL_TIMEOUT);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", out.stderr);
        assert_one_line_refusal(&out, &["\"relative/path\"", "not an absolute Unix socket path", "@name"]);
    }
}

/// The other side of the check: a namespace that exists only as `ip netns add` made it (no
/// process in it when tracer starts) is accepted, and the filter keeps its finding.
#[test]
fn netns_filter_of_a_namespace_without_processes_is_accepted() {
    require_integration!();
    let ns = Netns::new("cli-netns");
    let inode = std::fs::metadata(format!("/run/netns/{}", ns.name)).expect("netns bind mount").ino().to_string();
    let port = "18431";
    let tracer = Tracer::diagnose(&["--port", port, "--netns", &inode]);
    let mut client = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", port, "--count", "2"]);
    let done = client.finish();
    assert_eq!(result_count(&done, "ECONNREFUSED"), 2, "helper: {done}");
    let run = tracer.finish();
    let f = run.only_finding(&format!("127.0.0.1:{port}"), Cause::DeadListener);
    assert_eq!(f.count, 2, "{f:?}");
    assert_eq!(f.netns.to_string(), inode, "{f:?}");
}

// ---------------------------------------------------------------------------------------
// Item 9: signals and pipes
// ---------------------------------------------------------------------------------------

/// An ssh session dropping sends SIGHUP: tracer used to die (rc 129) without a report. Now it
/// ends as on SIGTERM: the full report, exit 0, every program detached.
#[test]
fn sighup_during_a_trace_prints_the_report_and_exits_0() {
    require_integration!();
    let ns = Netns::new("cli-sighup");
    let port = "18432";
    let mut tracer = Spawned::start(&["diagnose", "--json", "--duration", "60s", "--port", port]);
    let stdout = tracer.stdout_reader();
    tracer.wait_tracing();
    let held = prog_ids_held_by(tracer.pid());

    let mut client = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", port, "--count", "3"]);
    let done = client.finish();
    assert_eq!(result_count(&done, "ECONNREFUSED"), 3, "helper: {done}");
    // A session never drops within the same instant as the last failure.
    thread::sleep(Duration::from_millis(500));
    tracer.signal(Signal::SIGHUP);
    let status = tracer.wait_exit(EXIT_TIMEOUT);
    let run = TracerRun::parse(status, stdout.join().unwrap(), tracer.stderr_text());
    assert_eq!(run.status.code(), Some(0), "exit 0 after SIGHUP, not 129; stderr:\n{}", run.stderr);
    let f = run.only_finding(&format!("127.0.0.1:{port}"), Cause::DeadListener);
    assert_eq!(f.count, 3, "{f:?}");
    assert_detached(&held);
}

/// SIGTERM, SIGHUP or SIGINT while tracer is still starting (probing the kernel, attaching):
/// tracer used to die at once (rc 143 for SIGTERM) and print nothing. Now the signal is noted
/// from the first instant of the trace and start-up ends in the orderly exit: the report (here
/// empty, with its summary), exit 0, nothing left attached.
#[test]
fn stop_signal_during_start_up_prints_the_report_and_exits_0() {
    require_integration!();
    for signal in [Signal::SIGTERM, Signal::SIGHUP, Signal::SIGINT] {
        let before = program_ids();
        let mut tracer = Spawned::start(&["diagnose", "--json", "--duration", "60s"]);
        let stdout = tracer.stdout_reader();
        // The moment tracer catches the signal (its handler is installed first thing in a
        // trace; before that, the default action would kill it, as for any program).
        let bit = 1u64 << (signal as i32 - 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = std::fs::read_to_string(format!("/proc/{}/status", tracer.pid())).unwrap_or_default();
            let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).and_then(|h| u64::from_str_radix(h.trim(), 16).ok());
            if caught.is_some_and(|c| c & bit != 0) {
                break;
            }
            assert!(Instant::now() < deadline, "{signal}: tracer never caught it; stderr:\n{}", tracer.stderr_text());
            thread::sleep(Duration::from_millis(1));
        }
        assert!(!tracer.tracing(), "{signal}: the signal must come during start-up, before `tracing:`");
        tracer.signal(signal);
        let status = tracer.wait_exit(TRACING_TIMEOUT + EXIT_TIMEOUT);
        let run = TracerRun::parse(status, stdout.join().unwrap(), tracer.stderr_text());
        assert_eq!(run.status.code(), Some(0), "{signal} during start-up: exit 0; stderr:\n{}", run.stderr);
        let summary = run.summary();
        assert_eq!(summary.findings, 0, "{summary:?}");
        assert!(!run.stderr.contains("error"), "{signal}: {}", run.stderr);
        // Not an all-clear: the reader is told the report covers no time.
        assert!(
            run.stderr.contains(&format!("tracer: {signal} arrived during start-up")) && run.stderr.contains("covers no tracing time"),
            "{signal}: {}",
            run.stderr
        );
        assert_no_orphan_programs_since(&before);
    }
}

/// `tracer diagnose | head -1` where the reader has gone when the report comes: no "Broken
/// pipe" error, the quiet status of a program killed by SIGPIPE (141), nothing attached.
#[test]
fn report_to_a_closed_pipe_ends_quietly() {
    require_integration!();
    let mut tracer = Spawned::start(&["diagnose", "--duration", "2s"]);
    // The reader exits before anything is written (as `head` does once it has its line).
    drop(tracer.child.stdout.take());
    tracer.wait_tracing();
    let held = prog_ids_held_by(tracer.pid());
    let status = tracer.wait_exit(Duration::from_secs(2) + EXIT_TIMEOUT);
    let stderr = tracer.stderr_text();
    assert_eq!(status.code(), Some(141), "quiet SIGPIPE status; stderr:\n{stderr}");
    assert!(!stderr.contains("Broken pipe") && !stderr.contains("error"), "quiet: {stderr}");
    assert_detached(&held);
}

/// `tracer watch | head -1`: the reader takes the first attempt line and exits; the next line
/// tracer writes ends it at once (not at the end of --duration), quietly, detached.
#[test]
fn watch_piped_to_head_ends_quietly_after_the_first_line() {
    require_integration!();
    let ns = Netns::new("cli-head");
    let port = "18433";
    let mut tracer = Spawned::start(&["watch", "--duration", "120s", "--port", port]);
    let pipe = tracer.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // `head -1`: read one line, then close the pipe.
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
    });
    tracer.wait_tracing();
    let held = prog_ids_held_by(tracer.pid());
    let mut first = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", port, "--count", "1"]);
    first.finish();
    let line = rx.recv_timeout(Duration::from_secs(15)).unwrap_or_else(|_| panic!("no first line; stderr:\n{}", tracer.stderr_text()));
    assert!(line.contains(&format!("127.0.0.1:{port}")), "the first line is the attempt: {line:?}");
    thread::sleep(Duration::from_millis(100));
    // More failures: more lines for a reader that is gone.
    let mut more = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", port, "--count", "3", "--interval", "0.3"]);
    more.finish();
    let status = tracer.wait_exit(Duration::from_secs(20));
    let stderr = tracer.stderr_text();
    assert_eq!(status.code(), Some(141), "quiet SIGPIPE status; stderr:\n{stderr}");
    assert!(!stderr.contains("Broken pipe") && !stderr.contains("error"), "quiet: {stderr}");
    assert_detached(&held);
}
