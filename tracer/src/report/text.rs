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

use crate::explain::{duration, unsafe_for_terminal, AttemptRecord, ConnectionFacts, Death, DeathHow, EvidenceCounts, Finding, PortsFacts};
use crate::event::KindCounts;

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
    if !s.chars().any(unsafe_for_terminal) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_for_terminal(c) && (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if unsafe_for_terminal(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
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


/// Where a process runs, for the text report: its container and Kubernetes pod, read by the
/// operator from the process's cgroup while it lived (`Operator::places`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Place {
    /// The full container id (64 hex digits); shown short, as `docker ps` does.
    pub container: Option<String>,
    /// The pod uid, dashed.
    pub pod: Option<String>,
}

/// Places by pid; a process not in it (or in no container) is named by comm and pid alone.
pub type Places = BTreeMap<u32, Place>;

/// Container ids are shown by their first 12 hex digits, as `docker ps` and `crictl ps` do.
pub const SHORT_ID_LEN: usize = 12;

/// `gunicorn (pid 700, container 3f2a9c1b7d4e, pod 6f0e3c2a-...)`, or `gunicorn (pid 700)`.
/// Not escaped: it goes into a field or a line that escapes.
pub fn process_name(comm: &str, pid: u32, places: &Places) -> String {
    let mut name = format!("{comm} (pid {pid}");
    if let Some(place) = places.get(&pid) {
        if let Some(id) = &place.container {
            name.push_str(&format!(", container {}", id.get(..SHORT_ID_LEN).unwrap_or(id)));
        }
        if let Some(pod) = &place.pod {
            name.push_str(&format!(", pod {pod}"));
        }
    }
    name.push(')');
    name
}

/// An engine note ("gunicorn (pid 700) listens here") with the finding's processes named
/// with their places.
fn placed_in(note: &str, f: &Finding, places: &Places) -> String {
    let mut note = note.to_string();
    for p in f.listener.iter().chain(&f.clients).chain(&f.upstream_process) {
        if places.contains_key(&p.pid) {
            note = note.replace(&p.to_string(), &process_name(&p.comm, p.pid, places));
        }
    }
    note
}

/// Full blocks in a report: the largest finding of each of the first this many groups.
pub const DETAILED_GROUPS: usize = 5;
/// One-line rows for the other findings, at most; the rest are counted.
pub const ONE_LINE_ROWS: usize = 20;
/// Groups in the summary at the top, at most; the rest are counted.
pub const SUMMARY_GROUPS: usize = 12;
/// Targets (or port ranges) named in one summary line, at most.
pub const TARGETS_PER_GROUP: usize = 6;

/// The report: the summary first (one line per group of similar findings, the cause in the
/// first words, findings of clients that are not proxies after those of proxies), then the
/// largest finding of each leading group in full, the others one line each, bounded, and a
/// closing line with what was traced. A loud warning first (and last) when the kernel lost
/// events. A single finding needs no summary: its block starts with its cause.
pub fn write_findings(w: &mut impl Write, findings: &[Finding], summary: &Summary, clock: &Clock, places: &Places) -> io::Result<()> {
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
    let show_netns = |f: &Finding| repeated.contains(&(f.cause, f.target.clone()));
    let groups = group_findings(findings);
    if findings.len() > 1 {
        write_summary(w, &groups, clock, places)?;
        writeln!(w)?;
    }
    // The largest finding of each leading group in full; every other one on one line.
    let mut detailed: Vec<&Finding> = Vec::new();
    let mut rest: Vec<&Finding> = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let (head, tail) = g.findings.split_first().expect("groups are never empty");
        if i < DETAILED_GROUPS {
            detailed.push(head);
        } else {
            rest.push(head);
        }
        rest.extend(tail);
    }
    for (i, f) in detailed.iter().enumerate() {
        if i > 0 {
            writeln!(w)?;
        }
        write_finding_inner(w, f, clock, show_netns(f), places)?;
    }
    if !rest.is_empty() {
        writeln!(w)?;
        writeln!(w, "OTHER FINDINGS ({}, one line each; every detail: --json)", rest.len())?;
        for f in rest.iter().take(ONE_LINE_ROWS) {
            writeln!(w, "  {}", one_line(f, clock, show_netns(f), places))?;
        }
        if rest.len() > ONE_LINE_ROWS {
            writeln!(w, "  ... and {} more", rest.len() - ONE_LINE_ROWS)?;
        }
    }
    writeln!(w)?;
    writeln!(
        w,
        "Traced {:.1} s: {} events, {} finding{}; {} hooks active (the list: tracer doctor)",
        summary.duration_s,
        summary.events,
        findings.len(),
        if findings.len() == 1 { "" } else { "s" },
        summary.hooks.len()
    )?;
    if summary.lost_total() > 0 {
        write_lost_warning(w, &summary.lost_events)?;
    }
    Ok(())
}

/// Findings alike enough to be told as one: the same cause, the same kind of client (proxy
/// or not) and the same listener program (or none), largest first.
#[derive(Debug)]
struct Group<'a> {
    proxy_client: bool,
    cause: crate::explain::Cause,
    listener: Option<String>,
    /// Largest first.
    findings: Vec<&'a Finding>,
}

impl Group<'_> {
    fn attempts(&self) -> u64 {
        self.findings.iter().map(|f| f.count).sum()
    }
}

/// Groups, proxy clients' first, then by attempts (most first), then by cause.
fn group_findings(findings: &[Finding]) -> Vec<Group<'_>> {
    let mut by_key: BTreeMap<(bool, crate::explain::Cause, Option<String>), Vec<&Finding>> = BTreeMap::new();
    for f in findings {
        by_key.entry((f.proxy_client(), f.cause, f.listener.as_ref().map(|l| l.comm.clone()))).or_default().push(f);
    }
    let mut groups: Vec<Group<'_>> = by_key
        .into_iter()
        .map(|((proxy_client, cause, listener), mut fs)| {
            fs.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.target.cmp(&b.target)).then_with(|| a.netns.cmp(&b.netns)));
            Group { proxy_client, cause, listener, findings: fs }
        })
        .collect();
    groups.sort_by(|a, b| b.proxy_client.cmp(&a.proxy_client).then_with(|| b.attempts().cmp(&a.attempts())).then_with(|| a.cause.cmp(&b.cause)));
    groups
}

/// The summary: one line per group, proxies' first; when no proxy failed, the first line says
/// so, so that another program's failure is never read as the proxy's.
fn write_summary(w: &mut impl Write, groups: &[Group<'_>], clock: &Clock, places: &Places) -> io::Result<()> {
    if groups.first().is_some_and(|g| !g.proxy_client) {
        writeln!(w, "No failed connections from a proxy (nginx, haproxy, envoy ...); other clients failed:")?;
    }
    for g in groups.iter().take(SUMMARY_GROUPS) {
        let lead = if !g.proxy_client && groups[0].proxy_client { "not from a proxy: " } else { "" };
        writeln!(w, "{lead}{}", group_line(g, clock, places))?;
    }
    if groups.len() > SUMMARY_GROUPS {
        let more: usize = groups[SUMMARY_GROUPS..].iter().map(|g| g.findings.len()).sum();
        writeln!(w, "... and {} more groups ({more} findings)", groups.len() - SUMMARY_GROUPS)?;
    }
    Ok(())
}

/// "DEAD LISTENER  500 targets: 127.0.0.1:9000-9499  (1000 failed attempts, 10:01:02 - 10:01:05 UTC); no listener seen".
fn group_line(g: &Group<'_>, clock: &Clock, places: &Places) -> String {
    let f0 = g.findings[0];
    if g.findings.len() == 1 {
        return one_line(f0, clock, false, places);
    }
    let title = title_of(f0);
    let targets = compact_targets(g.findings.iter().map(|f| &f.target), TARGETS_PER_GROUP);
    let first = g.findings.iter().map(|f| f.first_seen_ns).min().unwrap_or(0);
    let last = g.findings.iter().map(|f| f.last_seen_ns).max().unwrap_or(0);
    let listener = match &g.listener {
        Some(comm) => {
            let pids: BTreeSet<u32> = g.findings.iter().filter_map(|f| f.listener.as_ref().map(|l| l.pid)).collect();
            let shown: Vec<String> = pids.iter().take(3).map(|p| p.to_string()).collect();
            let more = if pids.len() > 3 { format!(" and {} more", pids.len() - 3) } else { String::new() };
            format!("listener {} (pid {}{more})", escape(comm), shown.join(", "))
        }
        // After the connect the listener may be unknown, the process that held the
        // connection not: name that one.
        None => match g.findings.iter().find_map(|f| f.upstream_process.as_ref()) {
            Some(p) => {
                let pids: BTreeSet<u32> = g.findings.iter().filter_map(|f| f.upstream_process.as_ref()).filter(|u| u.comm == p.comm).map(|u| u.pid).collect();
                let shown: Vec<String> = pids.iter().take(3).map(|p| p.to_string()).collect();
                let more = if pids.len() > 3 { format!(" and {} more", pids.len() - 3) } else { String::new() };
                format!("upstream process {} (pid {}{more})", escape(&p.comm), shown.join(", "))
            }
            None => "no listener named".to_string(),
        },
    };
    let client = if g.proxy_client { String::new() } else { format!("; clients {}", clients_phrase(&g.findings)) };
    format!(
        "{title}  {} targets: {targets}  ({}, {}); {listener}{client}",
        g.findings.len(),
        counts_phrase(g.attempts(), g.findings.iter().map(|f| f.delayed).sum(), g.findings.iter().map(|f| f.pending).sum()),
        when_phrase(first, last, clock)
    )
}

/// The target as dialled, and behind NAT the real backend: `10.96.0.10:80 (Service) →
/// 10.232.0.2:8405`.
fn target_words(f: &Finding) -> String {
    match f.backend {
        Some(b) => format!("{} (Service) → {}", escape(&f.target.to_string()), b),
        None => escape(&f.target.to_string()).to_string(),
    }
}

/// One finding on one line: cause, target, counts, time, and the listener.
fn one_line(f: &Finding, clock: &Clock, show_netns: bool, places: &Places) -> String {
    let netns = if show_netns { format!("  netns {}", f.netns) } else { String::new() };
    let proxy = if f.proxy_client() { String::new() } else { format!("; {}", not_a_proxy_label(f)) };
    format!(
        "{}  {}{netns}  ({}, {}); {}{proxy}",
        title_of(f),
        target_words(f),
        count_phrase(f),
        when_phrase(f.first_seen_ns, f.last_seen_ns, clock),
        escape(&one_line_about(f, places))
    )
}

/// What a one-line row says after the counts: the listener note, or for after-connect
/// findings without one, the process that held the connection (or the ports).
fn one_line_about(f: &Finding, places: &Places) -> String {
    if !f.listener_note.is_empty() {
        return placed_in(&f.listener_note, f, places);
    }
    match (&f.upstream_process, &f.ports) {
        (Some(p), _) => format!("upstream process: {}", process_name(&p.comm, p.pid, places)),
        (None, Some(p)) => format!("ports: {}", ports_phrase(p)),
        (None, None) => "no listener named".to_string(),
    }
}

/// "client is not a proxy: logger (pid 5)" (at most three clients named).
fn not_a_proxy_label(f: &Finding) -> String {
    format!("client is not a proxy: {}", clients_phrase(&[f]))
}

fn clients_phrase(fs: &[&Finding]) -> String {
    let clients: BTreeSet<String> = fs.iter().flat_map(|f| f.clients.iter().map(|c| c.comm.clone())).collect();
    let shown: Vec<String> = clients.iter().take(3).map(|c| escape(c).into_owned()).collect();
    let more = if clients.len() > 3 { format!(" and {} more", clients.len() - 3) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

/// The cause's title; an abstract Unix name (`@name`) is no file, so it is never "missing" or
/// "stale" in the heading (JSON keeps the stable cause names).
fn title_of(f: &Finding) -> String {
    use crate::explain::Cause;
    match (&f.target, f.cause) {
        (crate::event::Target::Unix(p), Cause::UnixMissing | Cause::UnixStale) if p.starts_with('@') => "UNIX NAME NOT BOUND".to_string(),
        _ => f.cause.title(),
    }
}

fn when_phrase(first_ns: u64, last_ns: u64, clock: &Clock) -> String {
    if clock.to_hms(first_ns) == clock.to_hms(last_ns) {
        format!("at {} UTC", clock.to_hms(first_ns))
    } else {
        format!("{} - {} UTC", clock.to_hms(first_ns), clock.to_hms(last_ns))
    }
}

/// Targets in order, consecutive TCP ports of one address folded into a range
/// ("127.0.0.1:9000-9499"), at most `max` items, then "... and N more".
fn compact_targets<'a>(targets: impl Iterator<Item = &'a crate::event::Target>, max: usize) -> String {
    use crate::event::Target;
    let mut all: Vec<&Target> = targets.collect();
    all.sort();
    all.dedup();
    // (first, last port) per address, or a Unix path.
    let mut items: Vec<String> = Vec::new();
    let mut run: Option<(std::net::SocketAddr, u16)> = None;
    let flush = |run: &mut Option<(std::net::SocketAddr, u16)>, items: &mut Vec<String>| {
        if let Some((start, end)) = run.take() {
            items.push(if start.port() == end { start.to_string() } else { format!("{start}-{end}") });
        }
    };
    for t in all {
        match t {
            Target::Tcp(a) => match run {
                Some((start, end)) if start.ip() == a.ip() && end.checked_add(1) == Some(a.port()) => run = Some((start, a.port())),
                _ => {
                    flush(&mut run, &mut items);
                    run = Some((*a, a.port()));
                }
            },
            Target::Unix(_) => {
                flush(&mut run, &mut items);
                items.push(escape(&t.to_string()).into_owned());
            }
        }
    }
    flush(&mut run, &mut items);
    let more = items.len().saturating_sub(max);
    items.truncate(max);
    let mut s = items.join(", ");
    if more > 0 {
        s.push_str(&format!(" ... and {more} more"));
    }
    s
}

/// One finding (for `watch`, when a finding opens or changes).
pub fn write_finding(w: &mut impl Write, f: &Finding, clock: &Clock, places: &Places) -> io::Result<()> {
    write_finding_inner(w, f, clock, false, places)
}

/// A finding in `tracer watch` text: through the process's one `WatchText` (a process has one
/// watch stream; kept here so the trace loop's signature need not carry it).
pub fn write_watch_finding(w: &mut impl Write, f: &Finding, clock: &Clock, places: &Places) -> io::Result<()> {
    static WATCH: std::sync::Mutex<WatchText> = std::sync::Mutex::new(WatchText { printed: BTreeMap::new() });
    let mut watch = WATCH.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    watch.finding(w, f, clock, places)
}

/// `watch` in text: a finding in full when it opens, when its listener changes, or when it
/// comes back after a quiet spell; otherwise at most one short count line per
/// `WATCH_UPDATE_EVERY_NS` of the finding's own (kernel) time. The engine reports a changed
/// finding on every tick (250 ms): printed in full each time, one busy finding buried
/// everything else (18 copies of 15 lines for 196 attempts).
#[derive(Debug, Default)]
pub struct WatchText {
    printed: BTreeMap<(crate::explain::Cause, crate::event::Target, u32), WatchPrinted>,
}

#[derive(Debug, Clone)]
struct WatchPrinted {
    listener: Option<u32>,
    /// Kernel time of the finding's last attempt when it was last printed (full or count).
    last_seen_ns: u64,
    count: u64,
}

/// How often a finding that keeps growing gets a count line in `watch` text.
pub const WATCH_UPDATE_EVERY_NS: u64 = 5_000_000_000;
/// A finding silent this long and then failing again is printed in full again.
pub const WATCH_REOPEN_AFTER_NS: u64 = 60_000_000_000;
/// Findings remembered by `WatchText` (bounded: the oldest are forgotten first).
const WATCH_MAX_REMEMBERED: usize = 10_000;

impl WatchText {
    pub fn new() -> WatchText {
        WatchText::default()
    }

    /// Prints what is new about `f` (see the type), or nothing.
    pub fn finding(&mut self, w: &mut impl Write, f: &Finding, clock: &Clock, places: &Places) -> io::Result<()> {
        let key = (f.cause, f.target.clone(), f.netns);
        let listener = f.listener.as_ref().map(|l| l.pid);
        let full = match self.printed.get(&key) {
            None => true,
            Some(p) => p.listener != listener || f.last_seen_ns.saturating_sub(p.last_seen_ns) >= WATCH_REOPEN_AFTER_NS,
        };
        if full {
            if self.printed.len() >= WATCH_MAX_REMEMBERED {
                if let Some(oldest) = self.printed.iter().min_by_key(|(_, p)| p.last_seen_ns).map(|(k, _)| k.clone()) {
                    self.printed.remove(&oldest);
                }
            }
            write_finding(w, f, clock, places)?;
            self.printed.insert(key, WatchPrinted { listener, last_seen_ns: f.last_seen_ns, count: f.count });
            return Ok(());
        }
        let p = self.printed.get_mut(&key).expect("checked above");
        if f.count != p.count && f.last_seen_ns.saturating_sub(p.last_seen_ns) >= WATCH_UPDATE_EVERY_NS {
            writeln!(
                w,
                "{}  {}  still failing: {} so far (+{} since {} UTC), last at {} UTC",
                title_of(f),
                escape(&f.target.to_string()),
                count_phrase(f),
                f.count.saturating_sub(p.count),
                clock.to_hms(p.last_seen_ns),
                clock.to_hms(f.last_seen_ns)
            )?;
            p.last_seen_ns = f.last_seen_ns;
            p.count = f.count;
        }
        Ok(())
    }
}

fn write_finding_inner(w: &mut impl Write, f: &Finding, clock: &Clock, show_netns: bool, places: &Places) -> io::Result<()> {
    let when = when_phrase(f.first_seen_ns, f.last_seen_ns, clock);
    let netns = if show_netns { format!("  netns {}", f.netns) } else { String::new() };
    let proxy = if f.proxy_client() { String::new() } else { format!("  [{}]", not_a_proxy_label(f)) };
    writeln!(w, "{}  {}{netns}  ({}, {when}){proxy}", title_of(f), target_words(f), count_phrase(f))?;
    let clients = f.clients.iter().map(|c| process_name(&c.comm, c.pid, places)).collect::<Vec<_>>().join(", ");
    field(w, "who tried:", &clients)?;
    if !f.uids.is_empty() {
        let uids = f.uids.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(", ");
        field(w, "uids:", &uids)?;
    }
    let mut listener = placed_in(&f.listener_note, f, places);
    if let Some(ns) = f.listener_closed_ns {
        listener.push_str(&format!(" [closed at {} UTC]", clock.to_hms_millis(ns)));
    }
    // After-connect findings may have no listener to speak of: no empty line for it.
    if !listener.is_empty() || f.listener.is_some() {
        field(w, "listener:", &listener)?;
    }
    // The listener's story, one event per line: "10:01:02.123  exit  gunicorn (pid 700): killed by SIGKILL".
    for (i, e) in f.timeline.iter().enumerate() {
        let who = if e.pid != 0 { format!("  {}", process_name(&e.comm, e.pid, places)) } else { String::new() };
        let label = if i == 0 { "timeline:" } else { "" };
        field(w, label, &format!("{}  {}{who}: {}", clock.to_hms_millis(e.at_ns), e.what, e.detail))?;
    }
    if let Some(q) = f.queue {
        let full = if q.is_full() { " (full)" } else { "" };
        field(w, "queue:", &format!("{}/{} (length/backlog){full}", q.len, q.max))?;
    }
    if let (Some(first), Some(last)) = (f.syn_overflows.first(), f.syn_overflows.last()) {
        let queues: std::collections::BTreeSet<String> = f.syn_overflows.iter().map(|o| format!("{}/{}", o.queue.len, o.queue.max)).collect();
        let overflow = crate::explain::Evidence::SynOverflow;
        let n = if f.evidence.contains(&overflow) { f.evidence.get(&overflow) } else { f.syn_overflows.len() as u64 };
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
    write_after_connect(w, f, places)?;
    field(w, "proof:", &counters_phrase(&f.evidence))?;
    write_rules(w, f)?;
    if let Some(h) = &f.hint {
        field(w, "hint:", h)?;
    }
    field(w, "why:", &f.detail)?;
    field(w, "fix:", &f.fix)
}

/// A firewall finding's rule, one line each: `rule: inet filter output (handle 4): tcp dport
/// 8000 counter drop`; candidates say so (`rule: (candidate, not certain) ...`).
fn write_rules(w: &mut impl Write, f: &Finding) -> io::Result<()> {
    let Some(facts) = &f.rule else { return Ok(()) };
    let netns = if facts.enter_pid.is_some() || facts.netns_name.is_some() { format!("  [netns {}]", facts.netns) } else { String::new() };
    let candidate = if facts.certain { "" } else { "(candidate, not certain) " };
    for r in &facts.rules {
        field(w, "rule:", &format!("{candidate}{}{netns}", crate::explain::rule_line(r)))?;
    }
    Ok(())
}

/// The after-connect facts (and ports_exhausted's): the upstream process, how it died, the
/// failed connection's counters, and the port range with the sockets holding it.
fn write_after_connect(w: &mut impl Write, f: &Finding, places: &Places) -> io::Result<()> {
    if let Some(p) = &f.upstream_process {
        field(w, "upstream process:", &process_name(&p.comm, p.pid, places))?;
    }
    if let Some(d) = &f.death {
        field(w, "death:", &death_phrase(d))?;
    }
    if let Some(c) = &f.connection {
        field(w, "connection:", &connection_phrase(c))?;
        if let Some(ms) = c.idle_ms {
            field(w, "idle before the upstream closed:", &duration(ms.saturating_mul(1_000_000)))?;
        }
        if let Some(r) = &c.reset_reason {
            field(w, "reset:", r)?;
        }
        if let Some(s) = &c.upstream_state {
            field(w, "upstream state:", s)?;
        }
    }
    if let Some(p) = &f.ports {
        field(w, "ports:", &ports_phrase(p))?;
    }
    Ok(())
}

/// "crashed with SIGSEGV", "killed with SIGKILL by bash (pid 9)", "killed by its master
/// gunicorn (pid 699) with SIGABRT (worker timeout)", "OOM kill", "exit status 3".
fn death_phrase(d: &Death) -> String {
    let signal = d.signal.as_deref().unwrap_or("a signal");
    match d.how {
        DeathHow::Crash => format!("crashed with {signal}"),
        DeathHow::Oom => "OOM kill".to_string(),
        DeathHow::WorkerTimeout => match &d.sender {
            Some(master) => format!("killed by its master {master} with {signal} (worker timeout)"),
            None => format!("killed by its master with {signal} (worker timeout)"),
        },
        DeathHow::Signal => match &d.sender {
            Some(sender) => format!("killed with {signal} by {sender}"),
            None => format!("killed with {signal}"),
        },
        DeathHow::Exit => match d.exit_status {
            Some(status) => format!("exit status {status}"),
            None => "exited".to_string(),
        },
    }
}

/// "ended 1.2 s after the connect; nginx sent 143 B, received 0 B; upstream sent 0 B,
/// received 143 B" (the upstream's part when its end was seen).
fn connection_phrase(c: &ConnectionFacts) -> String {
    let mut s = format!(
        "ended {} after the connect; nginx sent {} B, received {} B",
        duration(c.after_ms.saturating_mul(1_000_000)),
        c.nginx_sent,
        c.nginx_received
    );
    if c.upstream_sent.is_some() || c.upstream_received.is_some() {
        let bytes = |b: Option<u64>| b.map(|b| format!("{b} B")).unwrap_or_else(|| "?".into());
        s.push_str(&format!("; upstream sent {}, received {}", bytes(c.upstream_sent), bytes(c.upstream_received)));
    }
    s
}

/// "range 40000-40003 (4 ports); held: 4 ESTABLISHED" (states most first).
fn ports_phrase(p: &PortsFacts) -> String {
    let [lo, hi] = p.range;
    let size = u32::from(hi.saturating_sub(lo)) + 1;
    let mut held: Vec<(&String, &u64)> = p.held.iter().collect();
    held.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    let held = match held.is_empty() {
        true => "none".to_string(),
        false => held.iter().map(|(state, n)| format!("{n} {state}")).collect::<Vec<_>>().join(", "),
    };
    format!("range {lo}-{hi} ({size} port{}); held: {held}", if size == 1 { "" } else { "s" })
}

/// One line per concluded attempt (for `watch`).
pub fn write_attempt(w: &mut impl Write, a: &AttemptRecord, clock: &Clock) -> io::Result<()> {
    let client = format!("{} (pid {})", escape(&a.client.comm), a.client.pid);
    writeln!(
        w,
        "{}  {}  {}  {client}  {}  [{}]",
        clock.to_hms_millis(a.ts_ns),
        a.cause.title(),
        escape(&a.target.to_string()),
        outcome_phrase(a),
        escape(&counters_phrase(&a.evidence))
    )
}

/// `failed`, or `4000 attempts failed` for a line standing for identical attempts the kernel
/// counted (its evidence is theirs, summed).
fn outcome_phrase(a: &AttemptRecord) -> String {
    match a.count {
        0 | 1 => a.outcome.as_str().to_string(),
        n => format!("{n} attempts {}", a.outcome.as_str()),
    }
}

/// The loud line for lost events; nothing when none were lost.
pub fn write_lost_warning(w: &mut impl Write, lost: &KindCounts) -> io::Result<()> {
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
    if f.cause.after_connect() {
        // The connect worked: what failed is the request on the connection.
        return format!("{} failed request{}", f.count, if f.count == 1 { "" } else { "s" });
    }
    counts_phrase(f.count, f.delayed, f.pending)
}

/// `count_phrase` of attempts counted apart (a group's sums).
fn counts_phrase(count: u64, delayed: u64, pending: u64) -> String {
    let failed = count.saturating_sub(delayed + pending);
    if delayed == 0 && pending == 0 {
        return format!("{failed} failed attempt{}", if failed == 1 { "" } else { "s" });
    }
    let mut parts = Vec::new();
    if failed > 0 {
        parts.push(format!("{failed} failed"));
    }
    if delayed > 0 {
        parts.push(format!("{delayed} delayed then connected"));
    }
    if pending > 0 {
        parts.push(format!("{pending} pending"));
    }
    format!("{count} attempt{}: {}", if count == 1 { "" } else { "s" }, parts.join(", "))
}

/// "tcp:tcp_send_reset NO_SOCKET x3, tcp:tcp_receive_reset x3", in label order.
fn counters_phrase(c: &EvidenceCounts) -> String {
    if c.is_empty() {
        return "none".to_string();
    }
    let labelled = super::evidence::labelled(c);
    labelled.iter().map(|(k, n)| if *n == 1 { k.clone() } else { format!("{k} x{n}") }).collect::<Vec<_>>().join(", ")
}

/// `  label:      value`, the value wrapped under itself. Values are built from outside
/// strings (comms, paths, notes and fixes quoting them): escaped here, once, for all fields.
/// A label longer than the column (`idle before the upstream closed:`) gets one space and
/// pushes its value right; the value's width shrinks to match, continuation lines included.
fn field(w: &mut impl Write, label: &str, value: &str) -> io::Result<()> {
    let head = match label.chars().count() + 3 > LABEL_WIDTH {
        true => format!("  {label} "),
        false => format!("  {label:<width$}", width = LABEL_WIDTH - 2),
    };
    let lines = wrap(&escape(value), WIDTH - head.chars().count().max(LABEL_WIDTH));
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

/// Greedy word wrap; words longer than the width stay whole, and so do `code spans` (a
/// command cut over two lines cannot be pasted).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut open_span = false;
    for word in text.split_whitespace() {
        match words.last_mut() {
            Some(last) if open_span => {
                last.push(' ');
                last.push_str(word);
            }
            _ => words.push(word.to_string()),
        }
        if word.matches('`').count() % 2 == 1 {
            open_span = !open_span;
        }
    }
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in &words {
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
    use crate::explain::{Cause, Evidence, Outcome, ProcessRef};

    /// 2024-05-01T10:01:00Z as a boot offset, with monotonic 0 = that moment.
    const OFFSET: i128 = 1_714_557_660_000_000_000;

    fn finding() -> Finding {
        let evidence: EvidenceCounts = [
            (Evidence::ResetSent { reason: "NO_SOCKET".into(), to_client: false }, 3),
            (Evidence::ResetReceived, 3),
        ]
        .into_iter()
        .collect();
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
            upstream_process: None,
            death: None,
            connection: None,
            ports: None,
            backend: None,
            rule: None,
        }
    }

    fn summary(lost: u64) -> Summary {
        let mut lost_events = KindCounts::new();
        if lost > 0 {
            lost_events.insert(crate::event::RecordKind(tracer_common::EventKind::TcpAttemptFailed), lost);
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
        write_findings(&mut out, findings, s, &Clock::fixed(OFFSET), &Places::new()).unwrap();
        String::from_utf8(out).unwrap()
    }

    const CONTAINER: &str = "3f2a9c1b7d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
    const POD: &str = "6f0e3c2a-1b4d-4e5f-8a9b-0c1d2e3f4a5b";

    /// The listener (pid 700) in a Kubernetes pod's container, the client 812 in a bare
    /// container, 813 on the host.
    fn placed() -> Places {
        let mut places = Places::new();
        places.insert(700, Place { container: Some(CONTAINER.into()), pod: Some(POD.into()) });
        places.insert(812, Place { container: Some("a".repeat(64)), pod: None });
        places
    }

    #[test]
    fn processes_in_containers_are_named_by_short_id_and_pod() {
        let mut out = Vec::new();
        write_finding(&mut out, &finding(), &Clock::fixed(OFFSET), &placed()).unwrap();
        let text = String::from_utf8(out).unwrap().replace(&format!("\n{}", " ".repeat(LABEL_WIDTH)), " ");
        let listener = format!("gunicorn (pid 700, container 3f2a9c1b7d4e, pod {POD})");
        assert!(text.contains(&format!("who tried:  nginx (pid 812, container aaaaaaaaaaaa), nginx (pid 813)\n")), "{text}");
        assert!(text.contains(&format!("listener:   {listener} listened here and closed")), "{text}");
        // Never the full id in text (JSON has it).
        assert!(!text.contains(CONTAINER), "{text}");
        // One-line rows (and the summary) name the listener the same way.
        let mut out = Vec::new();
        let many: Vec<Finding> = (0..8)
            .map(|i| {
                let mut f = finding();
                f.cause = [Cause::DeadListener, Cause::RemoteRefused, Cause::NoResponse, Cause::BacklogFull][i % 4];
                f.target = Target::Tcp(format!("127.0.0.1:{}", 8000 + i).parse().unwrap());
                f.listener = Some(ProcessRef { pid: 700 + i as u32 % 2, comm: "gunicorn".into() });
                f.listener_note = format!("gunicorn (pid {}) listens here", 700 + i % 2);
                f
            })
            .collect();
        write_findings(&mut out, &many, &summary(0), &Clock::fixed(OFFSET), &placed()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(&format!("; {listener} listens here")), "{text}");
        assert!(text.contains("; gunicorn (pid 701) listens here"), "{text}");
        // Without places, the report is as before.
        assert_eq!(process_name("gunicorn", 700, &Places::new()), "gunicorn (pid 700)");
    }

    #[test]
    fn a_process_name_with_a_place_is_escaped_and_only_the_exact_pid_is_rewritten() {
        let mut f = finding();
        f.listener = Some(ProcessRef { pid: 700, comm: "guni\x1b[2Jcorn".into() });
        f.listener_note = "guni\x1b[2Jcorn (pid 700) listens here; guni\x1b[2Jcorn (pid 7000) too".into();
        let mut out = Vec::new();
        write_finding(&mut out, &f, &Clock::fixed(OFFSET), &placed()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_no_raw_control(&text);
        assert!(text.contains("guni\\x1b[2Jcorn (pid 700, container 3f2a9c1b7d4e, pod"), "{text}");
        assert!(text.contains("guni\\x1b[2Jcorn (pid 7000) too"), "{text}");
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

    /// A finding as the engine makes it for one client and target (`count` attempts).
    fn engine_finding(client: &str, path_or_addr: &str, errno: i32, count: u64) -> Finding {
        use crate::event::{Event, EventBody};
        let mut e = crate::explain::Engine::new(crate::explain::EngineOptions::default());
        for i in 0..count {
            e.push(&Event {
                ts_ns: 2_000_000_000 + i * 1_000_000,
                netns: 1,
                sock: 0x1000 + i,
                task: TaskInfo { pid: 4242, tid: 4242, uid: 0, comm: client.into() },
                body: EventBody::UnixConnectFailed { path: path_or_addr.into(), errno },
            });
        }
        e.finish();
        e.findings().remove(0)
    }

    /// No raw control byte (C0 but newline, DEL, C1, bidi) anywhere in `text`.
    fn assert_no_raw_control(text: &str) {
        for c in text.chars() {
            assert!(c == '\n' || !(c.is_control() || ('\u{2028}'..='\u{2069}').contains(&c)), "raw {c:?} in:\n{text}");
        }
    }

    #[test]
    fn a_forged_heading_in_a_unix_path_is_escaped_everywhere_in_text() {
        let evil = "/tmp/x\n\x1b[31mFIREWALL DROP 10.0.0.1:443\r\u{9b}2J";
        let mut f = engine_finding("nginx", evil, libc::ENOENT, 2);
        f.clients[0].comm = "ngin\x1b]0;x\x07".into();
        let mut other = finding();
        other.target = Target::Unix(format!("{evil}.2"));
        let text = render(&[f.clone(), other], &summary(0));
        assert_no_raw_control(&text);
        assert!(!text.lines().any(|l| l.starts_with("FIREWALL DROP")), "{text}");
        assert!(text.contains("unix:/tmp/x\\n\\x1b[31mFIREWALL DROP 10.0.0.1:443\\r\\x9b2J"), "{text}");
        // The suggested command is one shell word, and escaped on screen.
        assert!(text.contains("ls -la $'/tmp/x\\n\\x1b[31mFIREWALL"), "{text}");
        let mut out = Vec::new();
        write_finding(&mut out, &f, &Clock::fixed(OFFSET), &Places::new()).unwrap();
        WatchText::new().finding(&mut out, &f, &Clock::fixed(OFFSET), &Places::new()).unwrap();
        let a = AttemptRecord {
            ts_ns: 1,
            start_ns: 1,
            cause: Cause::UnixMissing,
            target: f.target.clone(),
            netns: 1,
            sock: 1,
            client: TaskInfo { pid: 1, tid: 1, uid: 0, comm: "a\x1bb".into() },
            evidence: EvidenceCounts::new(),
            outcome: Outcome::Failed,
            errno: 2,
            count: 1,
        };
        write_attempt(&mut out, &a, &Clock::fixed(OFFSET)).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_no_raw_control(&text);
        assert!(!text.lines().any(|l| l.starts_with("FIREWALL DROP")), "{text}");
    }

    #[test]
    fn findings_of_clients_that_are_not_proxies_are_labelled_and_kept_out_of_the_headline() {
        let logger = engine_finding("logger", "/dev/log", libc::ENOENT, 40);
        let nginx = finding();
        let text = render(&[logger.clone(), nginx.clone()], &summary(0));
        let first = text.lines().next().unwrap();
        assert!(first.starts_with("DEAD LISTENER  127.0.0.1:8000"), "{text}");
        assert!(text.contains("not from a proxy: UNIX MISSING  unix:/dev/log"), "{text}");
        assert!(text.contains("[client is not a proxy: logger]"), "{text}");
        // Only non-proxy findings: the first line says no proxy failed.
        let text = render(&[logger.clone(), engine_finding("logger", "/run/x.sock", libc::ENOENT, 1)], &summary(0));
        assert!(text.starts_with("No failed connections from a proxy"), "{text}");
        assert!(!crate::report::json::finding_json(&logger, &Clock::fixed(OFFSET)).proxy_client);
        assert!(crate::report::json::finding_json(&nginx, &Clock::fixed(OFFSET)).proxy_client);
    }

    #[test]
    fn abstract_names_are_not_called_missing_or_stale_in_text() {
        let f = engine_finding("nginx", "@app", libc::ECONNREFUSED, 1);
        let text = render(&[f], &summary(0));
        assert!(text.starts_with("UNIX NAME NOT BOUND  unix:@app"), "{text}");
        assert!(!text.to_lowercase().contains("stale"), "{text}");
    }

    #[test]
    fn five_hundred_targets_give_a_short_report_with_the_summary_first() {
        let findings: Vec<Finding> = (0..500u64)
            .map(|i| {
                let mut f = finding();
                f.target = Target::Tcp(format!("127.0.0.1:{}", 9000 + i).parse().unwrap());
                f.listener = None;
                f.listener_note = "no listener seen on this port since tracing started".into();
                f.hint = None;
                f.count = 2 + (i == 42) as u64;
                f
            })
            .collect();
        let text = render(&findings, &summary(0));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() <= 60, "{} lines:\n{text}", lines.len());
        assert!(
            lines[0].starts_with("DEAD LISTENER  500 targets: 127.0.0.1:9000-9499  (1001 failed attempts, "),
            "{}",
            lines[0]
        );
        assert!(lines[0].ends_with("; no listener named"), "{}", lines[0]);
        // The largest in full, the others one line each, bounded and counted.
        assert_eq!(lines.iter().filter(|l| l.starts_with("DEAD LISTENER  127.0.0.1:9042")).count(), 1, "{text}");
        assert!(text.contains("  fix:        "), "{text}");
        assert_eq!(text.matches("  fix:").count(), 1, "{text}");
        assert!(text.contains("OTHER FINDINGS (499, one line each; every detail: --json)"), "{text}");
        assert!(text.contains(&format!("  ... and {} more\n", 499 - ONE_LINE_ROWS)), "{text}");
        assert!(lines.last().unwrap().starts_with("Traced 10.0 s: 42 events, 500 findings; 1 hooks active"), "{text}");
        assert!(text.lines().all(|l| l.chars().count() <= 160), "{text}");
    }

    #[test]
    fn compact_targets_folds_port_runs_and_bounds_the_list() {
        let t = |s: &str| Target::Tcp(s.parse().unwrap());
        let ts = [t("10.0.0.1:80"), t("127.0.0.1:9001"), t("127.0.0.1:9000"), t("127.0.0.1:9002"), t("127.0.0.1:9004"), Target::Unix("/a\nb".into())];
        assert_eq!(compact_targets(ts.iter(), 10), "10.0.0.1:80, 127.0.0.1:9000-9002, 127.0.0.1:9004, unix:/a\\nb");
        assert_eq!(compact_targets(ts.iter(), 2), "10.0.0.1:80, 127.0.0.1:9000-9002 ... and 2 more");
    }

    #[test]
    fn watch_prints_a_finding_in_full_once_then_bounded_count_lines() {
        let clock = Clock::fixed(OFFSET);
        let mut watch = WatchText::new();
        let mut out = Vec::new();
        let mut f = finding();
        // 196 attempts reported every 250 ms over 12 s of kernel time.
        for tick in 0..48u64 {
            f.count = 4 * (tick + 1);
            f.last_seen_ns = 2_000_000_000 + tick * 250_000_000;
            watch.finding(&mut out, &f, &clock, &Places::new()).unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("  fix:").count(), 1, "{text}");
        let updates: Vec<&str> = text.lines().filter(|l| l.contains("still failing")).collect();
        // One line per 5 s of the finding's own time at most.
        assert_eq!(updates.len(), 2, "{text}");
        assert!(updates[0].starts_with("DEAD LISTENER  127.0.0.1:8000  still failing: 84 failed attempts so far (+80 since 10:01:02 UTC)"), "{}", updates[0]);
        // A new listener, or a cause change (another key), prints in full again.
        let mut out = Vec::new();
        f.listener = Some(ProcessRef { pid: 701, comm: "python3".into() });
        watch.finding(&mut out, &f, &clock, &Places::new()).unwrap();
        f.cause = Cause::BacklogFull;
        watch.finding(&mut out, &f, &clock, &Places::new()).unwrap();
        assert_eq!(String::from_utf8(out).unwrap().matches("  fix:").count(), 2);
    }

    #[test]
    fn wrap_keeps_a_command_on_one_line() {
        let lines = wrap("then check with `ls -la /run/a b.sock` and more words here", 20);
        assert!(lines.iter().any(|l| l.contains("`ls -la /run/a b.sock`")), "{lines:?}");
        assert_eq!(wrap("a b c", 3), ["a b", "c"]);
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
        assert!(text.starts_with("WARNING: the kernel LOST 7 events (TcpAttemptFailed: 7)"), "{text}");
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

    /// An after-connect finding of `cause` as the engine fills it: no listener, the upstream
    /// process and the failed connection's facts.
    fn after_connect_finding(cause: Cause) -> Finding {
        use crate::explain::ConnectionFacts;
        let mut f = finding();
        f.cause = cause;
        f.count = 1;
        f.listener = None;
        f.listener_note = String::new();
        f.listener_closed_ns = None;
        f.hint = None;
        f.evidence = EvidenceCounts::new();
        f.upstream_process = Some(ProcessRef { pid: 700, comm: "gunicorn".into() });
        f.connection = Some(ConnectionFacts {
            after_ms: 1200,
            nginx_sent: 143,
            upstream_sent: Some(0),
            upstream_received: Some(143),
            ..ConnectionFacts::default()
        });
        f
    }

    #[test]
    fn a_translated_target_names_the_service_and_its_backend() {
        let mut f = finding();
        f.cause = Cause::DeadListener;
        f.target = Target::Tcp("10.96.0.10:80".parse().unwrap());
        f.backend = Some("10.232.0.2:8405".parse().unwrap());
        let mut out = Vec::new();
        write_finding(&mut out, &f, &Clock::fixed(OFFSET), &Places::new()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("DEAD LISTENER  10.96.0.10:80 (Service) → 10.232.0.2:8405  ("), "{text}");
    }

    fn death(how: crate::explain::DeathHow, signal: Option<&str>, sender: Option<(u32, &str)>, exit_status: Option<i32>) -> crate::explain::Death {
        crate::explain::Death {
            how,
            signal: signal.map(String::from),
            sender: sender.map(|(pid, comm)| ProcessRef { pid, comm: comm.into() }),
            exit_status,
        }
    }

    #[test]
    fn upstream_killed_names_the_process_its_death_and_the_connection() {
        use crate::explain::DeathHow;
        let mut f = after_connect_finding(Cause::UpstreamKilled);
        f.death = Some(death(DeathHow::Crash, Some("SIGSEGV"), None, None));
        let text = render(&[f.clone()], &summary(0));
        assert!(text.starts_with("UPSTREAM KILLED  127.0.0.1:8000  (1 failed request, 10:01:02 - 10:01:05 UTC)"), "{text}");
        assert!(text.contains("\n  upstream process: gunicorn (pid 700)\n"), "{text}");
        assert!(text.contains("\n  death:      crashed with SIGSEGV\n"), "{text}");
        // Wrapped under its column at the report's width: read it as one line.
        let unwrapped = text.replace(&format!("\n{}", " ".repeat(LABEL_WIDTH)), " ");
        assert!(
            unwrapped.contains("\n  connection: ended 1.2 s after the connect; nginx sent 143 B, received 0 B; upstream sent 0 B, received 143 B\n"),
            "{text}"
        );
        assert!(!text.contains("listener:"), "no listener to speak of: {text}");
        assert!(text.lines().all(|l| l.chars().count() <= WIDTH), "{text}");
        let deaths = [
            (death(DeathHow::Signal, Some("SIGKILL"), Some((9, "bash")), None), "killed with SIGKILL by bash (pid 9)"),
            (death(DeathHow::Signal, Some("SIGTERM"), None, None), "killed with SIGTERM"),
            (
                death(DeathHow::WorkerTimeout, Some("SIGABRT"), Some((699, "gunicorn")), None),
                "killed by its master gunicorn (pid 699) with SIGABRT (worker timeout)",
            ),
            (death(DeathHow::Oom, Some("SIGKILL"), None, None), "OOM kill"),
            (death(DeathHow::Exit, None, None, Some(3)), "exit status 3"),
        ];
        for (d, words) in deaths {
            f.death = Some(d);
            let text = render(&[f.clone()], &summary(0));
            assert!(text.contains(&format!("\n  death:      {words}\n")), "{words}: {text}");
        }
    }

    #[test]
    fn after_connect_causes_show_idle_time_reset_reason_state_and_ports() {
        let mut race = after_connect_finding(Cause::KeepaliveRace);
        race.connection.as_mut().unwrap().idle_ms = Some(1000);
        let text = render(&[race], &summary(0));
        assert!(text.starts_with("KEEPALIVE RACE  127.0.0.1:8000"), "{text}");
        assert!(text.contains("\n  idle before the upstream closed: 1.0 s\n"), "{text}");

        let mut reset = after_connect_finding(Cause::UpstreamReset);
        reset.connection.as_mut().unwrap().reset_reason = Some("closed with the request unread".into());
        let text = render(&[reset], &summary(0));
        assert!(text.contains("\n  reset:      closed with the request unread\n"), "{text}");

        let mut timeout = after_connect_finding(Cause::UpstreamTimeout);
        timeout.connection.as_mut().unwrap().upstream_state = Some("S (sleeping)".into());
        let text = render(&[timeout], &summary(0));
        assert!(text.starts_with("UPSTREAM TIMEOUT  127.0.0.1:8000"), "{text}");
        assert!(text.contains("\n  upstream state: S (sleeping)\n"), "{text}");

        let mut ports = after_connect_finding(Cause::PortsExhausted);
        ports.upstream_process = None;
        ports.connection = None;
        ports.ports = Some(crate::explain::PortsFacts { range: [40000, 40003], held: [("ESTABLISHED".to_string(), 4)].into_iter().collect() });
        let text = render(&[ports.clone()], &summary(0));
        assert!(text.starts_with("PORTS EXHAUSTED  127.0.0.1:8000"), "{text}");
        assert!(text.contains("\n  ports:      range 40000-40003 (4 ports); held: 4 ESTABLISHED\n"), "{text}");
        assert!(!text.contains("upstream process:") && !text.contains("connection:"), "{text}");
        ports.ports = Some(crate::explain::PortsFacts {
            range: [40000, 40000],
            held: [("TIME_WAIT".to_string(), 1), ("ESTABLISHED".to_string(), 3)].into_iter().collect(),
        });
        assert!(render(&[ports], &summary(0)).contains("ports:      range 40000-40000 (1 port); held: 3 ESTABLISHED, 1 TIME_WAIT\n"));
    }

    #[test]
    fn the_firewall_rule_is_one_line_each_and_its_outside_text_is_escaped() {
        let rule = crate::explain::test_rule;
        let mut f = finding();
        f.cause = Cause::FirewallDrop;
        f.rule = Some(crate::explain::RuleFacts { netns: 1, rules: vec![rule(4, "tcp dport 8000 counter drop")], certain: true, enter_pid: None, netns_name: None });
        let text = render(&[f.clone()], &summary(0));
        assert!(text.contains("  rule:       inet filter output (handle 4): tcp dport 8000 counter drop\n"), "{text}");
        let evil = "drop comment \"x\nFIREWALL DROP\x1b[2J\"";
        f.rule = Some(crate::explain::RuleFacts {
            netns: 9,
            rules: vec![rule(5, evil), rule(6, "tcp dport 8000 drop")],
            certain: false,
            enter_pid: Some(77),
            netns_name: None,
        });
        let text = render(&[f], &summary(0));
        assert_no_raw_control(&text);
        assert_eq!(text.lines().filter(|l| l.starts_with("FIREWALL DROP")).count(), 1, "the title only: {text}");
        assert_eq!(text.matches("  rule:       (candidate, not certain) inet filter output").count(), 2, "{text}");
        assert!(text.contains("(handle 6): tcp dport 8000 drop [netns 9]"), "{text}");
    }

    #[test]
    fn outside_strings_in_after_connect_facts_are_escaped() {
        use crate::explain::DeathHow;
        let mut f = after_connect_finding(Cause::UpstreamKilled);
        f.upstream_process = Some(ProcessRef { pid: 700, comm: "gun\nFIREWALL DROP\x1b[2J".into() });
        f.death = Some(death(DeathHow::Signal, Some("SIGKILL"), Some((9, "ba\u{202e}sh\r")), None));
        f.connection.as_mut().unwrap().reset_reason = Some("x\ny".into());
        f.connection.as_mut().unwrap().upstream_state = Some("S\x1b]0;t\x07".into());
        let text = render(&[f], &summary(0));
        assert_no_raw_control(&text);
        assert!(!text.lines().any(|l| l.starts_with("FIREWALL DROP")), "{text}");
        assert!(text.contains("upstream process: gun\\nFIREWALL DROP\\x1b[2J (pid 700)"), "{text}");
        assert!(text.contains("killed with SIGKILL by ba\\u{202e}sh\\r (pid 9)"), "{text}");
    }

    #[test]
    fn after_connect_findings_in_the_summary_name_the_upstream_process() {
        let mut a = after_connect_finding(Cause::UpstreamKilled);
        a.death = Some(death(crate::explain::DeathHow::Crash, Some("SIGSEGV"), None, None));
        let mut b = a.clone();
        b.target = Target::Tcp("127.0.0.1:8001".parse().unwrap());
        b.upstream_process = Some(ProcessRef { pid: 701, comm: "gunicorn".into() });
        let mut ports = after_connect_finding(Cause::PortsExhausted);
        ports.upstream_process = None;
        ports.target = Target::Tcp("10.0.0.1:80".parse().unwrap());
        ports.ports = Some(crate::explain::PortsFacts { range: [40000, 40003], held: [("ESTABLISHED".to_string(), 4)].into_iter().collect() });
        let text = render(&[a, b, ports], &summary(0));
        let first = text.lines().next().unwrap();
        assert!(first.starts_with("UPSTREAM KILLED  2 targets: 127.0.0.1:8000-8001  (2 failed attempts,"), "{text}");
        assert!(first.ends_with("; upstream process gunicorn (pid 700, 701)"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("PORTS EXHAUSTED  10.0.0.1:80  (") && l.ends_with("; ports: range 40000-40003 (4 ports); held: 4 ESTABLISHED")), "{text}");
    }

    #[test]
    fn a_long_label_keeps_a_space_and_the_width() {
        let mut out = Vec::new();
        field(&mut out, "idle before the upstream closed:", &"word ".repeat(40)).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("  idle before the upstream closed: word word"), "{text}");
        assert!(text.lines().all(|l| l.chars().count() <= WIDTH), "{text}");
        assert!(text.lines().skip(1).all(|l| l.starts_with(&" ".repeat(LABEL_WIDTH))), "{text}");
    }

    #[test]
    fn attempt_line_has_time_cause_target_client_outcome() {
        let a = crate::report::fixtures::unix_missing_attempt();
        let mut out = Vec::new();
        write_attempt(&mut out, &a, &Clock::fixed(OFFSET)).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "10:01:02.500  UNIX MISSING  unix:/run/gunicorn.sock  nginx (pid 812)  failed  [connect() ENOENT]\n"
        );
    }

    #[test]
    fn attempt_line_standing_for_counted_repeats_says_how_many() {
        let a = AttemptRecord {
            count: 4000,
            evidence: [(crate::explain::Evidence::ConnectErrno(2), 4000)].into_iter().collect(),
            ..crate::report::fixtures::unix_missing_attempt()
        };
        let mut out = Vec::new();
        write_attempt(&mut out, &a, &Clock::fixed(OFFSET)).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "10:01:02.500  UNIX MISSING  unix:/run/gunicorn.sock  nginx (pid 812)  4000 attempts failed  [connect() ENOENT x4000]\n"
        );
    }
}
