//! See ../hostile.rs. What the 3 a.m. reader sees: outside strings escaped in text (item 2),
//! fixes that name the listener the kernel saw (item 10), a short report with the summary
//! first at scale, and `watch` text that does not repeat itself (item 11).
use crate::common::*;

use std::process::Child;
use std::thread;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use xtask::kit::{collect_lines, read_to_end, ReadyLine, SharedLines};

/// A tracer whose stdout is text (the common `Tracer` parses JSON): started, waited for until
/// its `tracing:` line, ended by SIGINT, its whole stdout kept as bytes.
struct TextTracer {
    child: Child,
    args: Vec<String>,
    stderr: SharedLines,
    stdout: Option<thread::JoinHandle<Vec<u8>>>,
}

impl TextTracer {
    fn start(args: &[&str]) -> TextTracer {
        let mut child = spawn_tracer(args);
        let stdout = read_to_end(child.stdout.take().unwrap());
        let stderr = SharedLines::new();
        let (ready, rx) = ReadyLine::new("tracing:");
        collect_lines(child.stderr.take().unwrap(), &stderr, Some(ready));
        let mut t = TextTracer { child, args: args.iter().map(|s| s.to_string()).collect(), stderr, stdout: Some(stdout) };
        if rx.recv_timeout(TRACING_TIMEOUT).is_err() {
            kill_and_reap(&mut t.child);
            panic!("tracer {:?}: no `tracing:` line within {TRACING_TIMEOUT:?}; stderr:\n{}", t.args, t.stderr_text());
        }
        t
    }

    fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    /// SIGINT, exit 0 (bounded); returns stdout as bytes and stderr.
    fn finish(mut self) -> (Vec<u8>, String) {
        // Late evidence arrives within the engine's grace period.
        thread::sleep(Duration::from_millis(500));
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).expect("SIGINT tracer");
        let status = wait_timeout(&mut self.child, EXIT_TIMEOUT).unwrap_or_else(|| {
            kill_and_reap(&mut self.child);
            panic!("tracer {:?} did not exit within {EXIT_TIMEOUT:?}; stderr:\n{}", self.args, self.stderr_text())
        });
        let stdout = self.stdout.take().unwrap().join().unwrap();
        thread::sleep(Duration::from_millis(100));
        let stderr = self.stderr_text();
        assert!(status.success(), "tracer {:?} exited with {status}; stderr:\n{stderr}", self.args);
        assert!(!stderr.contains("panicked"), "{stderr}");
        (stdout, stderr)
    }
}

impl Drop for TextTracer {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// Control bytes that must never reach a terminal raw: C0 but newline, DEL, and C1 (as UTF-8).
fn raw_controls(bytes: &[u8]) -> Vec<(usize, String)> {
    let text = String::from_utf8_lossy(bytes);
    text.char_indices()
        .filter(|(_, c)| (*c != '\n' && c.is_control()) || ('\u{2028}'..='\u{2069}').contains(c))
        .map(|(i, c)| (i, format!("{c:?}")))
        .collect()
}

/// The namespace's inode, for `--netns`.
fn netns_inode(ns: &Netns) -> String {
    let link = ns.exec("readlink", &["/proc/self/ns/net"]);
    link.trim().trim_start_matches("net:[").trim_end_matches(']').to_string()
}

/// Item 2: a user connects to a Unix path holding a newline and ANSI escapes. Before: root's
/// text report printed them raw, forging a `FIREWALL DROP 10.0.0.1:443` heading, also inside
/// the suggested `ls -la`. After: every control byte is a visible escape, no line starts with
/// the forged heading, and the command quotes the path as one shell word.
#[test]
fn unix_path_with_terminal_escapes_is_escaped_in_the_text_report() {
    require_integration!();
    let ns = Netns::new("rep-esc");
    let evil = format!("/tmp/tracer-t-esc-{}\n\x1b[31mFIREWALL DROP 10.0.0.1:443\x1b[0m\r\u{9b}2J", std::process::id());
    let tracer = TextTracer::start(&["diagnose", "--duration", "60s", "--unix", &evil]);
    let mut client = ns.helper(&["unix-connect", "--path", &evil, "--count", "2"]);
    let done = client.finish();
    assert_eq!(result_count(&done, "ENOENT"), 2, "the path does not exist: {done}");
    let (stdout, _) = tracer.finish();
    let text = String::from_utf8_lossy(&stdout).into_owned();

    assert!(raw_controls(&stdout).is_empty(), "raw control characters {:?} in:\n{text}", raw_controls(&stdout));
    assert!(text.starts_with("UNIX MISSING  unix:/tmp/tracer-t-esc-"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("FIREWALL DROP")), "a forged heading:\n{text}");
    assert!(text.contains("\\n\\x1b[31mFIREWALL DROP 10.0.0.1:443\\x1b[0m\\r\\x9b2J  (2 failed attempts"), "{text}");
    // The command names the path exactly, as one word bash reads back.
    assert!(text.contains("`ls -la $'/tmp/tracer-t-esc-"), "{text}");
    // python3 is no proxy: labelled so.
    assert!(text.contains("[client is not a proxy: python3]"), "{text}");
}

/// Item 10: the listener was python3. Before: the fix said `systemctl restart gunicorn` and
/// `journalctl -u gunicorn`. After: it names python3 and its pid, never Gunicorn; and a client
/// that is no proxy (python3 here) is marked `proxy_client: false`.
#[test]
fn dead_python3_listener_fix_names_python3_not_gunicorn() {
    require_integration!();
    let ns = Netns::new("rep-py");
    let inode = netns_inode(&ns);
    let tracer = Tracer::diagnose(&["--netns", &inode]);
    let mut listener = ns.helper(&["tcp-listen", "--host", "127.0.0.1", "--port", "8000"]);
    listener.expect("listening");
    let listener_pid = listener.pid;
    listener.stop();
    let mut client = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", "8000", "--count", "3"]);
    let done = client.finish();
    assert_eq!(result_count(&done, "ECONNREFUSED"), 3, "{done}");
    let run = tracer.finish();
    let f = run.only_finding("127.0.0.1:8000", Cause::DeadListener);
    assert_eq!(f.count, 3, "{f:?}");
    assert_listener(f, listener_pid);
    let fix = &f.fix;
    assert!(fix.contains(&format!("python3 (pid {listener_pid}")), "{fix}");
    assert!(!fix.to_lowercase().contains("gunicorn"), "{fix}");
    assert!(fix.contains("ss -tlnp | grep 8000"), "{fix}");
    assert!(!f.proxy_client, "python3 is no proxy: {f:?}");
}

/// Item 10: nothing ever listened. The fix says so and names no program.
#[test]
fn dead_listener_never_seen_gets_a_generic_fix() {
    require_integration!();
    let ns = Netns::new("rep-none");
    let inode = netns_inode(&ns);
    let tracer = Tracer::diagnose(&["--netns", &inode]);
    let mut client = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", "8001", "--count", "2"]);
    assert_eq!(result_count(&client.finish(), "ECONNREFUSED"), 2);
    let run = tracer.finish();
    let f = run.only_finding("127.0.0.1:8001", Cause::DeadListener);
    let fix = &f.fix;
    assert!(fix.contains("tracer saw no listener there since it started"), "{fix}");
    assert!(!fix.to_lowercase().contains("gunicorn") && !fix.contains("systemctl restart"), "{fix}");
}

/// A client named `nginx` (prctl PR_SET_NAME) connecting twice to each of 500 ports nothing
/// listens on, inside the namespace.
const FIVE_HUNDRED_REFUSALS: &str = r#"
import ctypes, socket
ctypes.CDLL(None).prctl(15, b"nginx", 0, 0, 0)
refused = 0
for round in range(2):
    for port in range(9000, 9500):
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            refused += 1
        finally:
            s.close()
print(refused)
"#;

/// Item 11: 500 failing targets. Before: an 8,509-line report, the summary at line 8,001.
/// After: the first line is the summary, cause first, the 500 targets folded into one port
/// range; one full block; the rest bounded; the whole report short.
#[test]
fn five_hundred_failing_targets_give_a_short_report_with_the_summary_first() {
    require_integration!();
    let ns = Netns::new("rep-500");
    let inode = netns_inode(&ns);
    let tracer = TextTracer::start(&["diagnose", "--duration", "120s", "--netns", &inode]);
    let refused = ns.exec(python3(), &["-c", FIVE_HUNDRED_REFUSALS]);
    assert_eq!(refused.trim(), "1000", "every connect refused");
    let (stdout, stderr) = tracer.finish();
    let text = String::from_utf8_lossy(&stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert!(!text.contains("WARNING"), "no event may be lost for the counts below:\n{text}");
    assert!(
        lines[0].starts_with("DEAD LISTENER  500 targets: 127.0.0.1:9000-9499  (1000 failed attempts, "),
        "the summary comes first:\n{}",
        lines.iter().take(5).copied().collect::<Vec<_>>().join("\n")
    );
    assert!(lines.len() <= 80, "{} lines:\n{text}", lines.len());
    assert_eq!(text.matches("\n  fix:").count(), 1, "one full block:\n{text}");
    assert!(text.contains("OTHER FINDINGS (499, one line each; every detail: --json)"), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("  ... and ") && l.ends_with(" more")), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("Traced ") && l.contains(" 500 findings; ")), "{text}");
    // The tracing: line is short: counts, not the list.
    let tracing = stderr.lines().find(|l| l.starts_with("tracing:")).unwrap();
    assert!(tracing.len() < 200 && tracing.contains(" hooks: "), "{tracing}");
}

/// Item 11: `watch` text. Before: the full finding again every 250 ms (18 copies for 196
/// attempts). After: in full once, then short count lines; the closing report has it once.
#[test]
fn watch_text_prints_a_repeating_finding_in_full_once() {
    require_integration!();
    let ns = Netns::new("rep-watch");
    let inode = netns_inode(&ns);
    let tracer = TextTracer::start(&["watch", "--netns", &inode]);
    let mut client =
        ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", "8002", "--count", "40", "--interval", "0.1"]);
    assert_eq!(result_count(&client.finish(), "ECONNREFUSED"), 40);
    let (stdout, _) = tracer.finish();
    let text = String::from_utf8_lossy(&stdout).into_owned();
    // A line per attempt, or per group the kernel counted (`4 attempts failed`).
    let attempts: u64 = text
        .lines()
        .filter(|l| l.contains("  DEAD LISTENER  127.0.0.1:8002  python3 (pid "))
        .map(|l| l.split(")  ").nth(1).and_then(|rest| rest.split(" attempts failed").next()?.parse().ok()).unwrap_or(1))
        .sum();
    assert_eq!(attempts, 40, "every attempt in a line:\n{text}");
    // Once live, once in the closing report.
    assert_eq!(text.matches("\n  fix:").count() + usize::from(text.starts_with("  fix:")), 2, "{text}");
    let updates = text.lines().filter(|l| l.contains("still failing:")).count();
    assert!(updates < 10, "{updates} count lines for 40 attempts:\n{text}");
}
