//! Human text: the cause first, then who tried, who listened, the proof and the fix.
//!
//! ```text
//! DEAD LISTENER  127.0.0.1:8000  (3 failed attempts, 10:01:02 - 10:01:05 UTC)
//!   who tried:  nginx (pid 812), nginx (pid 813)
//!   listener:   gunicorn (pid 700) listened here and closed 1.2 s before the first failed attempt
//!   proof:      tcp:tcp_send_reset NO_SOCKET x3, tcp:tcp_receive_reset x3
//!   hint:       the same process gunicorn (pid 700) listens on 127.0.0.1:8001; ...
//!   why:        <detail>
//!   fix:        <fix paragraph wrapped at ~100 columns>
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};

use crate::explain::{AttemptRecord, Finding};

use super::{Clock, Summary};

/// Lines are wrapped at this width.
const WIDTH: usize = 100;
/// "  who tried:  " : labels are padded so values line up.
const LABEL_WIDTH: usize = 14;

/// A string that came from outside (a path, a comm, an Nginx name or log line) made safe for
/// a terminal: control characters (C0 such as newline, CR and ESC; DEL; C1) and the Unicode
/// characters that reorder or break lines (bidi overrides and isolates, line and paragraph
/// separators) become visible escapes (`\n`, `\r`, `\t`, `\x1b`, `\u{202e}`), so a name can
/// neither forge a line nor drive the terminal. Everything else, backslashes included, is kept
/// as is (Nginx already writes its own escapes as `\xHH`; doubling them would only add noise).
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) && (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `format!("{}", Escaped(path))`: `escape` as a Display wrapper, for format strings.
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&escape(self.0))
    }
}

/// Whether a character must not reach a terminal raw.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// All findings (or "No failed upstream connections seen."), with a loud warning first when
/// the kernel lost events, and a closing summary line.
pub fn write_findings(w: &mut impl Write, findings: &[Finding], summary: &Summary, clock: &Clock) -> io::Result<()> {
    write_lost_warning(w, &summary.lost_events)?;
    if findings.is_empty() {
        writeln!(w, "No failed upstream connections seen.")?;
    }
    // The same cause on the same target in two network namespaces: name the namespace.
    let mut seen = BTreeSet::new();
    let mut repeated = BTreeSet::new();
    for f in findings {
        if !seen.insert((f.cause, f.target.clone())) {
            repeated.insert((f.cause, f.target.clone()));
        }
    }
    for (i, f) in findings.iter().enumerate() {
        if i > 0 {
            writeln!(w)?;
        }
        write_finding_inner(w, f, clock, repeated.contains(&(f.cause, f.target.clone())))?;
    }
    writeln!(w)?;
    let hooks = if summary.hooks.is_empty() { "none".to_string() } else { summary.hooks.join(", ") };
    writeln!(
        w,
        "Traced {:.1} s: {} events, {} finding{}; hooks: {hooks}",
        summary.duration_s,
        summary.events,
        findings.len(),
        if findings.len() == 1 { "" } else { "s" }
    )?;
    if summary.lost_total() > 0 {
        write_lost_warning(w, &summary.lost_events)?;
    }
    Ok(())
}

/// One finding (for `watch`, when a finding opens or changes).
pub fn write_finding(w: &mut impl Write, f: &Finding, clock: &Clock) -> io::Result<()> {
    write_finding_inner(w, f, clock, false)
}

fn write_finding_inner(w: &mut impl Write, f: &Finding, clock: &Clock, show_netns: bool) -> io::Result<()> {
    let when = if clock.to_hms(f.first_seen_ns) == clock.to_hms(f.last_seen_ns) {
        format!("at {} UTC", clock.to_hms(f.first_seen_ns))
    } else {
        format!("{} - {} UTC", clock.to_hms(f.first_seen_ns), clock.to_hms(f.last_seen_ns))
    };
    let netns = if show_netns { format!("  netns {}", f.netns) } else { String::new() };
    writeln!(w, "{}  {}{netns}  ({}, {when})", f.cause.title(), f.target, count_phrase(f))?;
    let clients = f.clients.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ");
    field(w, "who tried:", &clients)?;
    if !f.uids.is_empty() {
        let uids = f.uids.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(", ");
        field(w, "uids:", &uids)?;
    }
    let mut listener = f.listener_note.clone();
    if let Some(ns) = f.listener_closed_ns {
        listener.push_str(&format!(" [closed at {} UTC]", clock.to_hms_millis(ns)));
    }
    field(w, "listener:", &listener)?;
    // The listener's story, one event per line: "10:01:02.123  exit  gunicorn (pid 700): killed by SIGKILL".
    for (i, e) in f.timeline.iter().enumerate() {
        let who = if e.pid != 0 { format!("  {} (pid {})", e.comm, e.pid) } else { String::new() };
        let label = if i == 0 { "timeline:" } else { "" };
        field(w, label, &format!("{}  {}{who}: {}", clock.to_hms_millis(e.at_ns), e.what, e.detail))?;
    }
    if let Some(q) = f.queue {
        let full = if q.is_full() { " (full)" } else { "" };
        field(w, "queue:", &format!("{}/{} (length/backlog){full}", q.len, q.max))?;
    }
    if let (Some(first), Some(last)) = (f.syn_overflows.first(), f.syn_overflows.last()) {
        let queues: std::collections::BTreeSet<String> = f.syn_overflows.iter().map(|o| format!("{}/{}", o.queue.len, o.queue.max)).collect();
        let n = f.evidence.get(crate::explain::LABEL_SYN_OVERFLOW).copied().unwrap_or(f.syn_overflows.len() as u64);
        field(
            w,
            "overflows:",
            &format!(
                "{n} SYNs dropped by tcp_conn_request on the full queue (queue {} when they came; {} - {} UTC)",
                queues.into_iter().collect::<Vec<_>>().join(", "),
                clock.to_hms_millis(first.ts_ns),
                clock.to_hms_millis(last.ts_ns)
            ),
        )?;
    }
    if !f.accept_wait_ms.is_empty() {
        // Bucket order, not string order.
        let parts: Vec<String> = crate::explain::ACCEPT_WAIT_BUCKETS
            .iter()
            .filter_map(|b| f.accept_wait_ms.get(*b).map(|n| format!("{b} ms: {n}")))
            .collect();
        field(w, "accepted after:", &format!("{} (time accepted connections waited in the queue)", parts.join(", ")))?;
    }
    field(w, "proof:", &counters_phrase(&f.evidence))?;
    if let Some(h) = &f.hint {
        field(w, "hint:", h)?;
    }
    field(w, "why:", &f.detail)?;
    field(w, "fix:", &f.fix)
}

/// One line per concluded attempt (for `watch`).
pub fn write_attempt(w: &mut impl Write, a: &AttemptRecord, clock: &Clock) -> io::Result<()> {
    let client = format!("{} (pid {})", a.client.comm, a.client.pid);
    writeln!(
        w,
        "{}  {}  {}  {client}  {}  [{}]",
        clock.to_hms_millis(a.ts_ns),
        a.cause.title(),
        a.target,
        a.outcome.as_str(),
        counters_phrase(&a.evidence)
    )
}

/// The loud line for lost events; nothing when none were lost.
pub fn write_lost_warning(w: &mut impl Write, lost: &BTreeMap<String, u64>) -> io::Result<()> {
    let total: u64 = lost.values().sum();
    if total == 0 {
        return Ok(());
    }
    let kinds = lost.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", ");
    writeln!(
        w,
        "WARNING: the kernel LOST {total} events ({kinds}): some attempts may be missing and counts may be low."
    )
}

/// "3 failed attempts" / "5 attempts: 3 failed, 1 delayed then connected, 1 pending".
fn count_phrase(f: &Finding) -> String {
    let failed = f.count.saturating_sub(f.delayed + f.pending);
    if f.delayed == 0 && f.pending == 0 {
        return format!("{failed} failed attempt{}", if failed == 1 { "" } else { "s" });
    }
    let mut parts = Vec::new();
    if failed > 0 {
        parts.push(format!("{failed} failed"));
    }
    if f.delayed > 0 {
        parts.push(format!("{} delayed then connected", f.delayed));
    }
    if f.pending > 0 {
        parts.push(format!("{} pending", f.pending));
    }
    format!("{} attempt{}: {}", f.count, if f.count == 1 { "" } else { "s" }, parts.join(", "))
}

/// "tcp:tcp_send_reset NO_SOCKET x3, tcp:tcp_receive_reset x3".
fn counters_phrase(c: &BTreeMap<String, u64>) -> String {
    if c.is_empty() {
        return "none".to_string();
    }
    c.iter().map(|(k, n)| if *n == 1 { k.clone() } else { format!("{k} x{n}") }).collect::<Vec<_>>().join(", ")
}

/// `  label:      value`, the value wrapped under itself.
fn field(w: &mut impl Write, label: &str, value: &str) -> io::Result<()> {
    let head = format!("  {label:<width$}", width = LABEL_WIDTH - 2);
    let lines = wrap(value, WIDTH - LABEL_WIDTH);
    for (i, line) in lines.iter().enumerate() {
        if i == 0 {
            writeln!(w, "{head}{line}")?;
        } else {
            writeln!(w, "{:width$}{line}", "", width = LABEL_WIDTH)?;
        }
    }
    if lines.is_empty() {
        writeln!(w, "{}", head.trim_end())?;
    }
    Ok(())
}

/// Greedy word wrap; words longer than the width stay whole.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TaskInfo;
    use crate::event::{Queue, Target};
    use crate::explain::{Cause, Outcome, ProcessRef};
    use crate::report::json::{attempt_json, finding_json, summary_json};

    /// 2024-05-01T10:01:00Z as a boot offset, with monotonic 0 = that moment.
    const OFFSET: i128 = 1_714_557_660_000_000_000;

    fn finding() -> Finding {
        let mut evidence = BTreeMap::new();
        evidence.insert("tcp:tcp_send_reset NO_SOCKET".to_string(), 3);
        evidence.insert("tcp:tcp_receive_reset".to_string(), 3);
        Finding {
            cause: Cause::DeadListener,
            target: Target::Tcp("127.0.0.1:8000".parse().unwrap()),
            netns: 4026531840,
            count: 3,
            delayed: 0,
            pending: 0,
            clients: vec![ProcessRef { pid: 812, comm: "nginx".into() }, ProcessRef { pid: 813, comm: "nginx".into() }],
            uids: vec![],
            listener: Some(ProcessRef { pid: 700, comm: "gunicorn".into() }),
            listener_note: "gunicorn (pid 700) listened here and closed 1.0 s before the first failed attempt".into(),
            listener_closed_ns: Some(1_000_000_000),
            queue: None,
            hint: Some("the same process gunicorn (pid 700) listens on 127.0.0.1:8001".into()),
            evidence,
            detail: "This host's kernel answered 3 connection attempts with a reset.".into(),
            fix: "Restart the upstream. ".repeat(20),
            first_seen_ns: 2_000_000_000,
            last_seen_ns: 5_123_000_000,
            accept_wait_ms: BTreeMap::new(),
            syn_overflows: vec![],
            timeline: Vec::new(),
        }
    }

    fn summary(lost: u64) -> Summary {
        let mut lost_events = BTreeMap::new();
        if lost > 0 {
            lost_events.insert("tcp".to_string(), lost);
        }
        Summary {
            duration_s: 10.0,
            events: 42,
            lost_events,
            hooks: vec!["tp/sock/inet_sock_set_state".into()],
            findings: 1,
        }
    }

    fn render(findings: &[Finding], s: &Summary) -> String {
        let mut out = Vec::new();
        write_findings(&mut out, findings, s, &Clock::fixed(OFFSET)).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escape_makes_control_characters_visible_and_keeps_the_rest() {
        assert!(matches!(escape("/run/gunicorn.sock"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(escape("a\nb\rc\td"), "a\\nb\\rc\\td");
        assert_eq!(escape("\x1b[31mRED\x7f"), "\\x1b[31mRED\\x7f");
        assert_eq!(escape("c1\u{9b}31m"), "c1\\x9b31m");
        assert_eq!(escape("abc\u{202e}gpj.exe\u{2028}"), "abc\\u{202e}gpj.exe\\u{2028}");
        assert_eq!(escape("caf\u{e9} \\x0A"), "caf\u{e9} \\x0A");
        assert_eq!(Escaped("x\ny").to_string(), "x\\ny");
        for c in (0u32..0x110000).filter_map(char::from_u32) {
            let e = escape(&c.to_string()).into_owned();
            assert!(!e.chars().any(|c| c.is_control()), "{c:?} -> {e:?}");
        }
    }

    #[test]
    fn clock_renders_utc_with_milliseconds() {
        let c = Clock::fixed(OFFSET);
        assert_eq!(c.to_rfc3339(2_000_000_000), "2024-05-01T10:01:02.000Z");
        assert_eq!(c.to_rfc3339(5_123_456_789), "2024-05-01T10:01:05.123Z");
        assert_eq!(c.to_hms(5_123_456_789), "10:01:05");
    }

    #[test]
    fn text_puts_cause_first_and_names_everything() {
        let text = render(&[finding()], &summary(0));
        let first = text.lines().next().unwrap();
        assert!(
            first.starts_with("DEAD LISTENER  127.0.0.1:8000  (3 failed attempts, 10:01:02 - 10:01:05 UTC)"),
            "{first}"
        );
        assert!(text.contains("  who tried:  nginx (pid 812), nginx (pid 813)\n"), "{text}");
        assert!(text.contains("  listener:   gunicorn (pid 700) listened here"), "{text}");
        assert!(text.contains("[closed at 10:01:01.000 UTC]"), "{text}");
        assert!(text.contains("  proof:      tcp:tcp_receive_reset x3, tcp:tcp_send_reset NO_SOCKET x3\n"), "{text}");
        assert!(text.contains("  hint:       the same process gunicorn (pid 700) listens on 127.0.0.1:8001"), "{text}");
        assert!(text.contains("  fix:        Restart the upstream."), "{text}");
        assert!(text.lines().all(|l| l.chars().count() <= WIDTH), "{text}");
        assert!(!text.contains("WARNING"));
    }

    #[test]
    fn text_says_when_nothing_failed_and_warns_loudly_about_lost_events() {
        let text = render(&[], &summary(7));
        assert!(text.contains("No failed upstream connections seen."), "{text}");
        assert!(text.starts_with("WARNING: the kernel LOST 7 events (tcp: 7)"), "{text}");
        let quiet = render(&[], &summary(0));
        assert!(!quiet.contains("WARNING"), "{quiet}");
    }

    #[test]
    fn text_counts_delayed_and_pending_and_shows_the_queue() {
        let mut f = finding();
        f.cause = Cause::BacklogFull;
        f.count = 5;
        f.delayed = 1;
        f.pending = 1;
        f.queue = Some(Queue { len: 129, max: 128 });
        let text = render(&[f], &summary(0));
        assert!(
            text.starts_with(
                "BACKLOG FULL  127.0.0.1:8000  (5 attempts: 3 failed, 1 delayed then connected, 1 pending,"
            ),
            "{text}"
        );
        assert!(text.contains("  queue:      129/128 (length/backlog) (full)"), "{text}");
    }

    #[test]
    fn attempt_line_has_time_cause_target_client_outcome() {
        let a = AttemptRecord {
            ts_ns: 2_500_000_000,
            start_ns: 2_400_000_000,
            cause: Cause::UnixMissing,
            target: Target::Unix("/run/gunicorn.sock".into()),
            netns: 1,
            sock: 0xffff_8880_0000_1000,
            client: TaskInfo { pid: 812, tid: 812, uid: 33, comm: "nginx".into() },
            evidence: [("connect() ENOENT".to_string(), 1)].into_iter().collect(),
            outcome: Outcome::Failed,
            errno: 2,
        };
        let mut out = Vec::new();
        write_attempt(&mut out, &a, &Clock::fixed(OFFSET)).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "10:01:02.500  UNIX MISSING  unix:/run/gunicorn.sock  nginx (pid 812)  failed  [connect() ENOENT]\n"
        );

        let v = attempt_json(&a, &Clock::fixed(OFFSET));
        assert_eq!(v["type"], "attempt");
        assert_eq!(v["ts"], "2024-05-01T10:01:02.500Z");
        assert_eq!(v["cause"], "unix_missing");
        assert_eq!(v["target"], "unix:/run/gunicorn.sock");
        assert_eq!(v["netns"], 1);
        assert_eq!(v["client"]["pid"], 812);
        assert_eq!(v["client"]["comm"], "nginx");
        assert_eq!(v["client"]["uid"], 33);
        assert_eq!(v["outcome"], "failed");
        assert_eq!(v["errno"], 2);
        assert_eq!(v["evidence"]["connect() ENOENT"], 1);
    }

    #[test]
    fn finding_json_has_the_stable_keys_typed() {
        let v = finding_json(&finding(), &Clock::fixed(OFFSET));
        let o = v.as_object().unwrap();
        for key in [
            "type",
            "cause",
            "target",
            "netns",
            "count",
            "clients",
            "listener",
            "listener_note",
            "queue",
            "uids",
            "hint",
            "evidence",
            "detail",
            "fix",
            "first_seen",
            "last_seen",
            "pending",
        ] {
            assert!(o.contains_key(key), "missing {key}");
        }
        assert_eq!(v["type"], "finding");
        assert_eq!(v["cause"], "dead_listener");
        assert_eq!(v["target"], "127.0.0.1:8000");
        assert_eq!(v["netns"], 4026531840u64);
        assert_eq!(v["count"], 3);
        assert_eq!(v["clients"][0]["pid"], 812);
        assert_eq!(v["clients"][1]["comm"], "nginx");
        assert_eq!(v["listener"]["pid"], 700);
        assert!(v["listener_note"].is_string());
        assert!(v["queue"].is_null());
        assert!(v["uids"].as_array().unwrap().is_empty());
        assert!(v["hint"].is_string());
        assert_eq!(v["evidence"]["tcp:tcp_send_reset NO_SOCKET"], 3);
        assert!(v["detail"].is_string() && v["fix"].is_string());
        assert_eq!(v["first_seen"], "2024-05-01T10:01:02.000Z");
        assert_eq!(v["last_seen"], "2024-05-01T10:01:05.123Z");
        assert_eq!(v["pending"], 0);

        let mut f = finding();
        f.listener = None;
        f.hint = None;
        f.queue = Some(Queue { len: 2, max: 1 });
        f.uids = vec![33];
        let v = finding_json(&f, &Clock::fixed(OFFSET));
        assert!(v["listener"].is_null());
        assert!(v["hint"].is_null());
        assert_eq!(v["queue"]["len"], 2);
        assert_eq!(v["queue"]["max"], 1);
        assert_eq!(v["uids"][0], 33);
    }

    #[test]
    fn summary_json_is_typed_and_json_lines_end_with_it() {
        let s = summary(3);
        let v = summary_json(&s, &Clock::fixed(OFFSET));
        assert_eq!(v["type"], "summary");
        assert_eq!(v["duration_s"], 10.0);
        assert_eq!(v["events"], 42);
        assert_eq!(v["lost_events"]["tcp"], 3);
        assert_eq!(v["hooks"][0], "tp/sock/inet_sock_set_state");
        assert_eq!(v["findings"], 1);

        let mut out = Vec::new();
        crate::report::json::write_findings(&mut out, &[finding()], &s, &Clock::fixed(OFFSET)).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["type"], "finding");
        assert_eq!(lines[1]["type"], "summary");
    }
}
