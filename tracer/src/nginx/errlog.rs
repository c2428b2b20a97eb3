//! Nginx error-log lines about upstreams, and which finding explains each (pure).
use crate::event::Target;
use crate::explain::{Cause, Finding};

use super::config::target_of_log_url;

/// What an upstream error line says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogKind {
    /// `connect() failed (N: ...) while connecting to upstream` (also `connect() to unix:...`,
    /// and `connect() to 127.0.0.1:8000 failed (99: ...)` when no local port is free).
    ConnectFailed,
    /// `upstream timed out (110: ...) while connecting to upstream`.
    ConnectTimedOut,
    /// `no live upstreams while connecting to upstream`: nginx marked every server down after
    /// earlier failures and did not even try.
    NoLiveUpstreams,
    /// `upstream prematurely closed connection while reading response header from upstream`
    /// (or `while reading upstream`): the upstream's end closed before the response was done.
    PrematurelyClosed,
    /// `recv() failed (104: ...)` / `readv() failed` while reading the response: reset.
    ReadFailed,
    /// `writev() failed (32: Broken pipe)` / `send() failed (104: ...)` / `sendfile() failed`
    /// while sending the request: the upstream's end was gone or reset.
    SendFailed,
    /// `upstream timed out (110: ...) while reading response header from upstream` (also while
    /// reading the body or sending the request): Nginx gave up waiting (504).
    ReadTimedOut,
    /// Any other upstream error (`upstream sent invalid header`, `upstream sent too big
    /// header`, ...): no connection cause explains it.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub raw: String,
    pub kind: LogKind,
    pub errno: Option<i32>,
    /// The worker that wrote it.
    pub pid: Option<u32>,
    /// From `upstream: "..."`.
    pub upstream_url: Option<String>,
    pub target: Option<Target>,
    /// Network namespaces of the Nginx that write the log this line came from; empty when
    /// unknown (a log named on the command line).
    pub writers: Vec<u32>,
}

/// The levels at which Nginx reports an upstream failure (`[warn]` and below are advice, e.g.
/// "an upstream response is buffered to a temporary file").
const ERROR_LEVELS: [&str; 4] = ["[error] ", "[crit] ", "[alert] ", "[emerg] "];

/// What the message (the part before `, client:`) says happened; `None` for lines that are
/// not about an upstream.
fn kind_of(raw: &str, message: &str) -> Option<LogKind> {
    let has = |s: &str| message.contains(s);
    let kind = if has("no live upstreams") {
        LogKind::NoLiveUpstreams
    } else if has("while connecting to upstream") {
        if has("upstream timed out") {
            LogKind::ConnectTimedOut
        } else if has("connect()") {
            LogKind::ConnectFailed
        } else {
            LogKind::Other
        }
    } else if has("upstream timed out") {
        LogKind::ReadTimedOut
    } else if has("upstream prematurely closed") {
        LogKind::PrematurelyClosed
    } else if (has("recv() failed") || has("readv() failed")) && has("upstream") {
        LogKind::ReadFailed
    } else if (has("writev() failed") || has("send() failed") || has("sendfile() failed")) && has("sending request to upstream") {
        LogKind::SendFailed
    } else if raw.contains(", upstream: \"") || has("upstream") {
        // Only a real error about an upstream: not the notices every reload writes.
        if !ERROR_LEVELS.iter().any(|l| raw.contains(l)) {
            return None;
        }
        LogKind::Other
    } else {
        return None;
    };
    Some(kind)
}

/// Parses one error-log line; `None` for lines that are not about upstreams.
pub fn parse_line(raw: &str) -> Option<LogLine> {
    // The request's own text (URI, Host) comes after ", client:": it never decides the kind.
    let message = raw.split(", client:").next().unwrap_or(raw);
    let kind = kind_of(raw, message)?;
    // "failed (111: Connection refused)", "timed out (110: ...)"
    let errno = message.split_once(" (").and_then(|(_, r)| r.split_once(':')).and_then(|(n, _)| n.trim().parse().ok());
    // "2026/11/24 10:05:53 [error] 17618#17618: *3 ..."
    let pid = raw.split_once("] ").and_then(|(_, r)| r.split_once('#')).and_then(|(p, _)| p.trim().parse().ok());
    let upstream_url = raw.split_once("upstream: \"").and_then(|(_, r)| r.split_once('"')).map(|(u, _)| u.to_string());
    let target = upstream_url.as_deref().and_then(target_of_log_url);
    Some(LogLine { raw: raw.to_string(), kind, errno, pid, upstream_url, target, writers: Vec::new() })
}

/// Causes of a refused or unreachable connect, by errno (also when Nginx only learns of it
/// at its first read or write of a not yet connected socket).
fn explains_connect_errno(cause: Cause, errno: Option<i32>) -> bool {
    use Cause::*;
    match errno {
        Some(111) => matches!(cause, DeadListener | FirewallReject | RemoteRefused | RefusedUnattributed | UnixStale | BacklogFull),
        Some(2) => cause == UnixMissing,
        Some(11) => matches!(cause, UnixBacklogFull | BacklogFull),
        Some(13) | Some(1) => cause == UnixPermissionDenied,
        Some(113) | Some(101) => matches!(cause, FirewallReject | NoResponse | RemoteRefused),
        // EADDRNOTAVAIL: no free local port for the connection.
        Some(99) => cause == PortsExhausted,
        _ => false,
    }
}

/// Whether a finding's cause explains a line of this kind and errno.
fn explains(cause: Cause, kind: LogKind, errno: Option<i32>) -> bool {
    use Cause::*;
    match kind {
        LogKind::ConnectFailed => explains_connect_errno(cause, errno),
        LogKind::ConnectTimedOut => matches!(cause, FirewallDrop | BacklogFull | NoResponse),
        // Every server was marked down by earlier failures (connect errors, timeouts, resets
        // and early closes all count against max_fails): any cause explains it.
        LogKind::NoLiveUpstreams => true,
        // A FIN before the response: the upstream's process died (its socket closed by the
        // kernel), closed it while alive, or closed a kept-alive connection Nginx reused.
        LogKind::PrematurelyClosed => matches!(cause, UpstreamKilled | UpstreamClosed | KeepaliveRace),
        LogKind::ReadFailed | LogKind::SendFailed => match errno {
            // ECONNRESET, EPIPE: a reset by a live upstream, a process that died with the
            // request unread (its close sends an RST), or a reused connection already closed.
            Some(104) | Some(32) => matches!(cause, UpstreamKilled | UpstreamReset | KeepaliveRace),
            other => explains_connect_errno(cause, other),
        },
        LogKind::ReadTimedOut => cause == UpstreamTimeout,
        LogKind::Other => false,
    }
}

/// Why a line no finding explains stayed unexplained.
fn unexplained_why(kind: LogKind) -> &'static str {
    match kind {
        LogKind::ConnectFailed | LogKind::ConnectTimedOut | LogKind::NoLiveUpstreams => "no failed connection seen by tracer matches it",
        LogKind::PrematurelyClosed | LogKind::ReadFailed | LogKind::SendFailed | LogKind::ReadTimedOut => {
            "no upstream failure after the connect seen by tracer matches it"
        }
        LogKind::Other => "tracer does not explain this kind of upstream error (not a connection failure)",
    }
}

/// The result of matching the log lines written during the trace to the findings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Correlation {
    /// Per finding (same order as given): the indexes of the lines it explains.
    pub explained: Vec<Vec<usize>>,
    /// Lines no finding explains, with why.
    pub unexplained: Vec<(usize, &'static str)>,
}

/// Matches each line to the finding that caused it: same target (or, for `no live
/// upstreams`, a target of the same upstream name), a cause that produces that error, and
/// the same Nginx: a line is only ever matched to a finding in a namespace of the Nginx that
/// writes its log, and a finding whose clients include the worker that wrote it goes first.
/// `upstream_of` maps a finding to its configured upstream name.
pub fn correlate(lines: &[LogLine], findings: &[Finding], upstream_of: &dyn Fn(&Finding) -> Option<String>) -> Correlation {
    let mut c = Correlation { explained: vec![Vec::new(); findings.len()], unexplained: Vec::new() };
    for (i, line) in lines.iter().enumerate() {
        if line.kind == LogKind::Other {
            c.unexplained.push((i, unexplained_why(line.kind)));
            continue;
        }
        let candidate = |f: &Finding| {
            let same_nginx = line.writers.is_empty() || f.netns == 0 || line.writers.contains(&f.netns);
            if !same_nginx || !explains(f.cause, line.kind, line.errno) {
                return false;
            }
            match (&line.target, line.kind) {
                (Some(t), _) if t == &f.target => true,
                // `upstream: "http://backend/"` names the block, not a server.
                (_, LogKind::NoLiveUpstreams) => {
                    let name = line.upstream_url.as_deref().and_then(|u| u.split_once("://")).map(|(_, r)| r.trim_end_matches('/'));
                    name.is_some() && upstream_of(f).as_deref() == name
                }
                _ => false,
            }
        };
        let written_by = |f: &Finding| line.pid.is_some_and(|pid| f.clients.iter().any(|p| p.pid == pid));
        let found = findings
            .iter()
            .position(|f| candidate(f) && written_by(f))
            .or_else(|| findings.iter().position(|f| candidate(f)));
        match found {
            Some(fi) => c.explained[fi].push(i),
            None => c.unexplained.push((i, unexplained_why(line.kind))),
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::{Engine, EngineOptions};
    use crate::event::{Event, EventBody, FlowAddr, TaskInfo};

    const REFUSED: &str = r#"2026/11/24 10:05:53 [error] 812#812: *3 connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1, server: , request: "GET / HTTP/1.1", upstream: "http://127.0.0.1:8000/", host: "127.0.0.1:8080""#;
    const MISSING: &str = r#"2026/11/24 10:05:53 [crit] 812#812: *3 connect() to unix:/run/g.sock failed (2: No such file or directory) while connecting to upstream, client: 127.0.0.1, server: , request: "GET / HTTP/1.1", upstream: "http://unix:/run/g.sock:/", host: "x""#;
    const TIMEOUT: &str = r#"2026/11/24 10:05:53 [error] 813#813: *1 upstream timed out (110: Connection timed out) while connecting to upstream, client: 127.0.0.1, server: , request: "GET / HTTP/1.1", upstream: "http://127.0.0.1:8000/", host: "x""#;
    const NO_LIVE: &str = r#"2026/11/24 10:05:54 [error] 813#813: *9 no live upstreams while connecting to upstream, client: 127.0.0.1, server: , request: "GET / HTTP/1.1", upstream: "http://backend/", host: "x""#;
    const RECV: &str = r#"2026/11/24 10:05:55 [error] 813#813: *9 recv() failed (104: Connection reset by peer) while reading response header from upstream, client: 127.0.0.1, server: , request: "GET / HTTP/1.1", upstream: "http://127.0.0.1:8000/", host: "x""#;

    #[test]
    fn parses_the_fields_nginx_writes() {
        let l = parse_line(REFUSED).unwrap();
        assert_eq!(l.kind, LogKind::ConnectFailed);
        assert_eq!(l.errno, Some(111));
        assert_eq!(l.pid, Some(812));
        assert_eq!(l.target, Some(Target::Tcp("127.0.0.1:8000".parse().unwrap())));
        let m = parse_line(MISSING).unwrap();
        assert_eq!((m.kind, m.errno), (LogKind::ConnectFailed, Some(2)));
        assert_eq!(m.target, Some(Target::Unix("/run/g.sock".into())));
        assert_eq!(parse_line(TIMEOUT).unwrap().kind, LogKind::ConnectTimedOut);
        assert_eq!(parse_line(NO_LIVE).unwrap().kind, LogKind::NoLiveUpstreams);
        assert_eq!(parse_line(RECV).unwrap().kind, LogKind::ReadFailed);
        assert!(parse_line("2026/11/24 10:00:00 [notice] 1#1: signal process started").is_none());
    }

    /// A real dead-listener finding from the engine.
    fn dead_listener_finding() -> Finding {
        let mut e = Engine::new(EngineOptions::default());
        let flow = FlowAddr { src: "127.0.0.1:40000".parse().unwrap(), dst: "127.0.0.1:8000".parse().unwrap() };
        let nginx = TaskInfo { pid: 812, tid: 812, uid: 33, comm: "nginx".into() };
        let t0 = 1_000_000_000;
        e.push(&Event { ts_ns: t0, netns: 1, sock: 0, task: nginx.clone(), body: EventBody::TcpRstSentNoSocket { flow, reason: None } });
        e.push(&Event {
            ts_ns: t0 + 10,
            netns: 1,
            sock: 7,
            task: nginx,
            body: EventBody::TcpAttemptFailed { flow, sk_err: 111, syn_retransmits: 0, rst_received: true, start_ns: t0 },
        });
        e.finish();
        let f = e.findings();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].cause, Cause::DeadListener);
        f.into_iter().next().unwrap()
    }

    #[test]
    fn matches_lines_to_the_finding_that_caused_them_and_reports_the_rest() {
        let f = dead_listener_finding();
        let lines: Vec<LogLine> = [REFUSED, TIMEOUT, NO_LIVE, RECV, MISSING].iter().map(|l| parse_line(l).unwrap()).collect();
        let upstream_of = |f: &Finding| (f.target == Target::Tcp("127.0.0.1:8000".parse().unwrap())).then(|| "backend".to_string());
        let c = correlate(&lines, &[f], &upstream_of);
        // The refusal and the "no live upstreams" that followed it; not the timeout (wrong
        // cause), not the recv() failure (after connect), not the unix path (other target).
        assert_eq!(c.explained, vec![vec![0, 2]]);
        let unexplained: Vec<usize> = c.unexplained.iter().map(|(i, _)| *i).collect();
        assert_eq!(unexplained, [1, 3, 4]);
    }

    #[test]
    fn lines_stay_with_the_nginx_that_wrote_them() {
        // Two Nginx in two namespaces dial the same dead address: A (netns 1) twice, B
        // (netns 2) three times, each with its own log.
        let a = dead_listener_finding();
        let mut b = a.clone();
        b.netns = 2;
        b.clients[0].pid = 913;
        let line = |pid: u32, writers: Vec<u32>| {
            let mut l = parse_line(&REFUSED.replace("812#812", &format!("{pid}#{pid}"))).unwrap();
            l.writers = writers;
            l
        };
        let mut lines: Vec<LogLine> = (0..2).map(|_| line(812, vec![1])).collect();
        lines.extend((0..3).map(|_| line(913, vec![2])));
        let none = |_: &Finding| None;
        let c = correlate(&lines, &[b.clone(), a.clone()], &none);
        assert_eq!(c.explained, vec![vec![2, 3, 4], vec![0, 1]]);
        // One log shared by both (named on the command line): the worker pid decides.
        let shared: Vec<LogLine> = [812, 913, 913].iter().map(|&p| line(p, vec![])).collect();
        let c = correlate(&shared, &[a, b], &none);
        assert_eq!(c.explained, vec![vec![0], vec![1, 2]]);
    }

    /// Nginx 1.22's own wording (ngx_http_upstream.c, ngx_event_connect.c, ngx_recv.c,
    /// ngx_writev_chain.c): the after-connect forms, with the causes that explain each.
    const AFTER: &[(&str, LogKind, Option<i32>, &[Cause])] = {
        use Cause::*;
        &[
            (r#"2026/11/30 10:00:00 [error] 123#123: *5 upstream prematurely closed connection while reading response header from upstream, client: 10.0.0.1, server: _, request: "POST / HTTP/1.1", upstream: "http://127.0.0.1:8000/", host: "x""#,
             LogKind::PrematurelyClosed, None, &[UpstreamKilled, UpstreamClosed, KeepaliveRace]),
            (r#"2026/11/30 10:00:00 [error] 123#123: *5 upstream prematurely closed connection while reading upstream, client: 10.0.0.1, server: _, request: "GET /big HTTP/1.1", upstream: "http://127.0.0.1:8000/big", host: "x""#,
             LogKind::PrematurelyClosed, None, &[UpstreamKilled, UpstreamClosed, KeepaliveRace]),
            (r#"2026/11/30 10:00:00 [error] 123#123: *5 recv() failed (104: Connection reset by peer) while reading response header from upstream, client: 10.0.0.1, server: _, request: "POST / HTTP/1.1", upstream: "http://127.0.0.1:8000/", host: "x""#,
             LogKind::ReadFailed, Some(104), &[UpstreamKilled, UpstreamReset, KeepaliveRace]),
            (r#"2026/11/30 10:00:00 [error] 123#123: *5 readv() failed (104: Connection reset by peer) while reading upstream, client: 10.0.0.1, server: _, request: "GET / HTTP/1.1", upstream: "http://127.0.0.1:8000/", host: "x""#,
             LogKind::ReadFailed, Some(104), &[UpstreamKilled, UpstreamReset, KeepaliveRace]),
            (r#"2026/11/30 10:00:00 [error] 123#123: *5 writev() failed (104: Connection reset by peer) while sending request to upstream, client: 10.0.0.1, server: _, request: "POST / HTTP/1.1", upstream: "http://127.0.0.1:8000/", host: "x""#,
             LogKind::SendFailed, Some(104), &[UpstreamKilled, UpstreamReset, KeepaliveRace]),
            (r#"2026/11/30 10:00:00 [error] 123#123: *5 send() failed (32: Broken pipe) while sending request to upstream, client: 10.0.0.1, server: _, request: "POST / HTTP/1.1", upstream: "http://127.0.0.1:8000/", host: "x""#,
             LogKind::SendFailed, Some(32), &[UpstreamKilled, UpstreamReset, KeepaliveRace]),
            (r#"2026/11/30 10:00:00 [error] 123#123: *5 writev() failed (32: Broken pipe) while sending request to upstream, client: 10.0.0.1, server: _, request: "POST / HTTP/1.1", upstream: "http://127.0.0.1:8000/", host: "x""#,
             LogKind::SendFailed, Some(32), &[UpstreamKilled, UpstreamReset, KeepaliveRace]),
            (r#"2026/11/30 10:00:00 [error] 123#123: *5 upstream timed out (110: Connection timed out) while reading response header from upstream, client: 10.0.0.1, server: _, request: "GET / HTTP/1.1", upstream: "http://127.0.0.1:8000/", host: "x""#,
             LogKind::ReadTimedOut, Some(110), &[UpstreamTimeout]),
            (r#"2026/11/30 10:00:00 [error] 123#123: *5 upstream timed out (110: Connection timed out) while reading upstream, client: 10.0.0.1, server: _, request: "GET / HTTP/1.1", upstream: "http://127.0.0.1:8000/", host: "x""#,
             LogKind::ReadTimedOut, Some(110), &[UpstreamTimeout]),
            (r#"2026/11/30 10:00:00 [crit] 123#123: *5 connect() to 127.0.0.1:8000 failed (99: Cannot assign requested address) while connecting to upstream, client: 10.0.0.1, server: _, request: "GET / HTTP/1.1", upstream: "http://127.0.0.1:8000/", host: "x""#,
             LogKind::ConnectFailed, Some(99), &[PortsExhausted]),
        ]
    };

    const ALL_CAUSES: [Cause; 17] = {
        use Cause::*;
        [DeadListener, BacklogFull, FirewallDrop, FirewallReject, RemoteRefused, RefusedUnattributed, UnixMissing, UnixStale, UnixBacklogFull,
         UnixPermissionDenied, NoResponse, UpstreamKilled, UpstreamReset, UpstreamClosed, KeepaliveRace, PortsExhausted, UpstreamTimeout]
    };

    #[test]
    fn after_connect_lines_are_parsed_and_tied_to_their_causes() {
        for &(raw, kind, errno, causes) in AFTER {
            let l = parse_line(raw).unwrap_or_else(|| panic!("not parsed: {raw}"));
            assert_eq!((l.kind, l.errno, l.pid), (kind, errno, Some(123)), "{raw}");
            assert_eq!(l.target, Some(Target::Tcp("127.0.0.1:8000".parse().unwrap())), "{raw}");
            for cause in ALL_CAUSES {
                assert_eq!(explains(cause, l.kind, l.errno), causes.contains(&cause), "{cause:?} for {raw}");
            }
        }
    }

    #[test]
    fn other_upstream_errors_are_unexplained_with_a_reason_and_notices_are_not_lines() {
        let invalid = r#"2026/11/30 10:00:00 [error] 123#123: *5 upstream sent invalid header: "X\x00" while reading response header from upstream, client: 10.0.0.1, server: _, request: "GET / HTTP/1.1", upstream: "http://127.0.0.1:8000/", host: "x""#;
        let l = parse_line(invalid).unwrap();
        assert_eq!(l.kind, LogKind::Other);
        let mut f = dead_listener_finding();
        f.cause = Cause::UpstreamReset;
        let c = correlate(&[l], &[f], &|_| None);
        assert_eq!(c.explained, vec![Vec::<usize>::new()]);
        assert_eq!(c.unexplained.len(), 1);
        assert!(c.unexplained[0].1.contains("does not explain"), "{:?}", c.unexplained);
        // Advice, not errors: not upstream lines at all.
        let warn = r#"2026/11/30 10:00:00 [warn] 123#123: *5 an upstream response is buffered to a temporary file /t/proxy/1/00/0000000001 while reading upstream, client: 10.0.0.1, server: _, request: "GET / HTTP/1.1", upstream: "http://127.0.0.1:8000/", host: "x""#;
        assert!(parse_line(warn).is_none());
        // The request's own text never decides the kind or the errno.
        let sneaky = r#"2026/11/30 10:00:00 [error] 123#123: *5 upstream prematurely closed connection while reading response header from upstream, client: 10.0.0.1, server: _, request: "GET /no%20live%20upstreams (111: x) HTTP/1.1", upstream: "http://127.0.0.1:8000/", host: "x""#;
        let l = parse_line(sneaky).unwrap();
        assert_eq!((l.kind, l.errno), (LogKind::PrematurelyClosed, None));
    }

    #[test]
    fn after_connect_findings_explain_their_lines_and_no_live_upstreams() {
        let upstream_of = |_: &Finding| Some("backend".to_string());
        for (i, &(raw, _, _, causes)) in AFTER.iter().enumerate() {
            let lines = vec![parse_line(raw).unwrap(), parse_line(&NO_LIVE.replace("813#813", "123#123")).unwrap()];
            // A finding of the explaining cause, whose client wrote the line.
            let mut f = dead_listener_finding();
            f.cause = causes[i % causes.len()];
            f.clients[0].pid = 123;
            let c = correlate(&lines, &[f.clone()], &upstream_of);
            assert_eq!(c.explained, vec![vec![0, 1]], "{raw}");
            // A finding of another after-connect cause leaves the line unexplained, with why;
            // `no live upstreams` of its upstream block it still explains.
            let wrong = ALL_CAUSES[10..].iter().copied().find(|c| !causes.contains(c)).unwrap();
            f.cause = wrong;
            let c = correlate(&lines, &[f], &upstream_of);
            assert_eq!(c.explained, vec![vec![1]], "{raw}");
            assert_eq!(c.unexplained.len(), 1);
            assert!(c.unexplained[0].1.contains("matches it"), "{:?}", c.unexplained);
        }
    }
}
