//! JSON objects, one per line: config checks, findings, attempts, unexplained error-log lines
//! and a closing summary. The types below are the contract for scripts (README "JSON output
//! contract"): the binary serialises them and the integration tests deserialise the binary's
//! output into them. New keys may be added, existing ones never change meaning.
//!
//! Fields are in alphabetical order: the lines were once built as `serde_json::Value`, whose
//! map sorts its keys, and keeping that order keeps the output byte for byte what it was.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::Queue;
use crate::event::KindCounts;
use crate::explain::{AttemptRecord, Cause, ConnectionFacts, Death, Finding, Outcome, PortsFacts, ProcessRef, RuleFacts, SynOverflow, TimelineEntry};

use super::{Clock, Summary};

/// One `"type"` value as its own one-variant type, so a line deserialises only into the type
/// it says it is.
macro_rules! line_type {
    ($name:ident = $tag:literal) => {
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            #[default]
            #[serde(rename = $tag)]
            Tag,
        }
    };
}

line_type!(ConfigCheckType = "config_check");
line_type!(FindingType = "finding");
line_type!(AttemptType = "attempt");
line_type!(LogUnexplainedType = "log_unexplained");
line_type!(SummaryType = "summary");

/// A process named in a finding: `{"cgroup","comm","container","pid"}`. The cgroup and the
/// container (or systemd unit) are the operator's (`Operator::annotate_json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessLine {
    pub cgroup: Option<String>,
    pub comm: String,
    pub container: Option<String>,
    pub pid: u32,
    /// The Kubernetes pod uid when the cgroup path names one (kubepods layouts).
    pub pod: Option<String>,
}

impl ProcessLine {
    fn of(p: &ProcessRef) -> ProcessLine {
        ProcessLine { cgroup: None, comm: p.comm.clone(), container: None, pid: p.pid, pod: None }
    }
}

/// A process without cgroup keys: `{"comm","pid"}` (the listener of a SYN overflow).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessName {
    pub comm: String,
    pub pid: u32,
}

/// The queue at one SYN that tcp_conn_request dropped: `{"at","len","listener","max"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynOverflowLine {
    pub at: String,
    pub len: u32,
    pub listener: Option<ProcessName>,
    pub max: u32,
}

/// One step of a listener's story: `{"at","comm","detail","pid","what"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineLine {
    pub at: String,
    pub comm: String,
    pub detail: String,
    pub pid: u32,
    pub what: String,
}

/// `{"type":"config_check",...}`: a configured target nothing listens on when tracing starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigCheckLine {
    pub config_line: String,
    pub config_place: String,
    pub detail: String,
    pub listening: bool,
    pub netns: u32,
    pub target: String,
    #[serde(rename = "type")]
    pub line_type: ConfigCheckType,
    pub upstream: String,
}

/// `{"type":"finding",...}`: everything known about one cause on one target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FindingLine {
    /// Backlog causes, function hooks: bucket in ms -> connections accepted after that wait.
    pub accept_wait_ms: Option<BTreeMap<String, u64>>,
    /// The real backend (`ip:port`) behind `target` after NAT (DNAT, a Service address); null
    /// without NAT.
    pub backend: Option<String>,
    pub cause: Cause,
    pub clients: Vec<ProcessLine>,
    /// The operator's (`Operator::annotate_json`), null when no running Nginx configures the target.
    pub config_line: Option<String>,
    pub config_place: Option<String>,
    /// After-connect causes: `{"after_ms","idle_ms","nginx_sent","nginx_received",
    /// "upstream_sent","upstream_received","reset_reason","upstream_state"}`.
    pub connection: Option<ConnectionFacts>,
    pub count: u64,
    /// upstream_killed: `{"how","signal","sender","exit_status"}`.
    pub death: Option<Death>,
    pub delayed: u64,
    pub detail: String,
    pub evidence: BTreeMap<String, u64>,
    pub first_seen: String,
    pub fix: String,
    pub hint: Option<String>,
    pub last_seen: String,
    pub listener: Option<ProcessLine>,
    pub listener_closed: Option<String>,
    pub listener_note: String,
    /// The operator's: the first Nginx error-log line the finding explains.
    pub log_example: Option<String>,
    /// The operator's: how many Nginx error-log lines the finding explains.
    pub log_lines: u64,
    pub netns: u32,
    pub pending: u64,
    /// ports_exhausted: `{"range":[lo,hi],"held":{"ESTABLISHED":n,...}}`.
    pub ports: Option<PortsFacts>,
    /// false: no client is a proxy (explain::PROXY_COMMS); the finding is not why a proxy fails.
    pub proxy_client: bool,
    pub queue: Option<Queue>,
    /// firewall_drop / firewall_reject: the netfilter rule that dropped or rejected the
    /// packets, from the ruleset of the namespace of the drop; `certain` false when tracer
    /// could not decide statically and it is only the first candidate. Null when none was
    /// named (no nft here, a ruleset tracer could not read).
    #[serde(default)]
    pub rule: Option<RuleLine>,
    /// The further candidates after `rule` (empty when `rule` is certain).
    #[serde(default)]
    pub rule_candidates: Vec<RuleLine>,
    pub syn_overflows: Option<Vec<SynOverflowLine>>,
    pub target: String,
    pub timeline: Vec<TimelineLine>,
    #[serde(rename = "type")]
    pub line_type: FindingType,
    pub uids: Vec<u32>,
    /// The operator's: the Nginx upstream name.
    pub upstream: Option<String>,
    /// After-connect causes: the process that held the upstream's end (`{"comm","pid",...}`).
    pub upstream_process: Option<ProcessLine>,
}

/// A netfilter rule: `{"certain","chain","family","handle","hook","iptables","netns","policy",
/// "table","text"}`; `text` as `nft -a list` prints the rule, `iptables` `{"chain","spec",
/// "table"}` (spec: the `-A ...` line, with any `-m comment`) for an iptables-nft table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleLine {
    pub certain: bool,
    pub chain: String,
    pub family: String,
    pub handle: u64,
    pub hook: String,
    pub iptables: Option<crate::event::IptablesRule>,
    pub netns: u32,
    /// The base chain's policy, no rule (`text` is `policy drop`).
    pub policy: bool,
    pub table: String,
    pub text: String,
}

impl RuleLine {
    /// The rules of a finding as (`rule`, `rule_candidates`).
    fn of(facts: Option<&RuleFacts>) -> (Option<RuleLine>, Vec<RuleLine>) {
        let Some(facts) = facts else { return (None, Vec::new()) };
        let mut lines = facts.rules.iter().map(|r| RuleLine {
            certain: facts.certain,
            chain: r.chain.clone(),
            family: r.family.clone(),
            handle: r.handle,
            hook: r.hook.clone(),
            iptables: r.iptables.clone(),
            netns: facts.netns,
            policy: r.policy,
            table: r.table.clone(),
            text: r.text.clone(),
        });
        (lines.next(), lines.collect())
    }
}

/// The client of an attempt: `{"comm","pid","uid"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientLine {
    pub comm: String,
    pub pid: u32,
    pub uid: u32,
}

/// `{"type":"attempt",...}`: one failed connection attempt (`watch --json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptLine {
    pub cause: Cause,
    pub client: ClientLine,
    /// How many attempts the line stands for: 1, or identical refused attempts the kernel
    /// counted instead of sending one by one (their evidence summed).
    #[serde(default = "one_attempt")]
    pub count: u64,
    pub errno: i32,
    pub evidence: BTreeMap<String, u64>,
    pub netns: u32,
    pub outcome: Outcome,
    /// The socket's kernel address, `0x...`.
    pub sock: String,
    pub start: String,
    pub target: String,
    pub ts: String,
    #[serde(rename = "type")]
    pub line_type: AttemptType,
}

/// `{"type":"log_unexplained",...}`: an Nginx error-log line no finding explains, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogUnexplainedLine {
    pub line: String,
    #[serde(rename = "type")]
    pub line_type: LogUnexplainedType,
    pub why: String,
}

/// `{"type":"summary",...}`: the last line of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SummaryLine {
    pub duration_s: f64,
    pub events: u64,
    pub findings: u64,
    pub hooks: Vec<String>,
    pub lost_events: KindCounts,
    #[serde(rename = "type")]
    pub line_type: SummaryType,
}

/// Any line tracer prints with `--json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line {
    ConfigCheck(ConfigCheckLine),
    Finding(Box<FindingLine>),
    Attempt(AttemptLine),
    LogUnexplained(LogUnexplainedLine),
    Summary(SummaryLine),
}

impl Line {
    /// One printed line, read by its `"type"` (an error names the type and the key at fault).
    pub fn parse(text: &str) -> Result<Line, serde_json::Error> {
        #[derive(Deserialize)]
        struct TypeOnly {
            #[serde(rename = "type")]
            line_type: String,
        }
        match serde_json::from_str::<TypeOnly>(text)?.line_type.as_str() {
            "config_check" => serde_json::from_str(text).map(Line::ConfigCheck),
            "finding" => serde_json::from_str(text).map(|f| Line::Finding(Box::new(f))),
            "attempt" => serde_json::from_str(text).map(Line::Attempt),
            "log_unexplained" => serde_json::from_str(text).map(Line::LogUnexplained),
            "summary" => serde_json::from_str(text).map(Line::Summary),
            other => Err(serde::de::Error::custom(format!("unknown line type {other:?}"))),
        }
    }
}

/// Each line prints as its one-line JSON object.
macro_rules! display_as_json {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&serde_json::to_string(self).map_err(|_| fmt::Error)?)
            }
        }
    )*};
}
display_as_json!(ConfigCheckLine, FindingLine, AttemptLine, LogUnexplainedLine, SummaryLine, Line);

fn syn_overflow(o: &SynOverflow, clock: &Clock) -> SynOverflowLine {
    SynOverflowLine {
        at: clock.to_rfc3339(o.ts_ns),
        len: o.queue.len,
        listener: o.listener.as_ref().map(|p| ProcessName { comm: p.comm.clone(), pid: p.pid }),
        max: o.queue.max,
    }
}

fn timeline(e: &TimelineEntry, clock: &Clock) -> TimelineLine {
    TimelineLine { at: clock.to_rfc3339(e.at_ns), comm: e.comm.clone(), detail: e.detail.clone(), pid: e.pid, what: e.what.clone() }
}

/// A finding's line, without the operator's keys yet (`Operator::annotate_json` fills them).
pub fn finding_json(f: &Finding, clock: &Clock) -> FindingLine {
    let (rule, rule_candidates) = RuleLine::of(f.rule.as_ref());
    FindingLine {
        accept_wait_ms: (!f.accept_wait_ms.is_empty()).then(|| f.accept_wait_ms.clone()),
        backend: f.backend.map(|b| b.to_string()),
        cause: f.cause,
        clients: f.clients.iter().map(ProcessLine::of).collect(),
        config_line: None,
        config_place: None,
        count: f.count,
        delayed: f.delayed,
        detail: f.detail.clone(),
        evidence: super::evidence::labelled(&f.evidence),
        first_seen: clock.to_rfc3339(f.first_seen_ns),
        fix: f.fix.clone(),
        hint: f.hint.clone(),
        last_seen: clock.to_rfc3339(f.last_seen_ns),
        listener: f.listener.as_ref().map(ProcessLine::of),
        listener_closed: f.listener_closed_ns.map(|ns| clock.to_rfc3339(ns)),
        listener_note: f.listener_note.clone(),
        log_example: None,
        log_lines: 0,
        netns: f.netns,
        pending: f.pending,
        proxy_client: f.proxy_client(),
        queue: f.queue,
        rule,
        rule_candidates,
        syn_overflows: (!f.syn_overflows.is_empty()).then(|| f.syn_overflows.iter().map(|o| syn_overflow(o, clock)).collect()),
        target: f.target.to_string(),
        timeline: f.timeline.iter().map(|e| timeline(e, clock)).collect(),
        line_type: FindingType::Tag,
        uids: f.uids.clone(),
        upstream: None,
        upstream_process: f.upstream_process.as_ref().map(ProcessLine::of),
        death: f.death.clone(),
        connection: f.connection.clone(),
        ports: f.ports.clone(),
    }
}

/// Lines written before attempts were counted stood for one each.
fn one_attempt() -> u64 {
    1
}

pub fn attempt_json(a: &AttemptRecord, clock: &Clock) -> AttemptLine {
    AttemptLine {
        cause: a.cause,
        client: ClientLine { comm: a.client.comm.clone(), pid: a.client.pid, uid: a.client.uid },
        count: a.count,
        errno: a.errno,
        evidence: super::evidence::labelled(&a.evidence),
        netns: a.netns,
        outcome: a.outcome,
        sock: format!("{:#x}", a.sock),
        start: clock.to_rfc3339(a.start_ns),
        target: a.target.to_string(),
        ts: clock.to_rfc3339(a.ts_ns),
        line_type: AttemptType::Tag,
    }
}

pub fn summary_json(s: &Summary, _clock: &Clock) -> SummaryLine {
    SummaryLine {
        duration_s: s.duration_s,
        events: s.events,
        findings: s.findings,
        hooks: s.hooks.clone(),
        lost_events: s.lost_events.clone(),
        line_type: SummaryType::Tag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Target;
    use crate::explain::Evidence;

    /// 2024-05-01T10:01:00Z as a boot offset, with monotonic 0 = that moment.
    const CLOCK: Clock = Clock { boot_offset_ns: 1_714_557_660_000_000_000 };

    fn finding() -> Finding {
        Finding {
            cause: Cause::BacklogFull,
            target: Target::Tcp("127.0.0.1:8000".parse().unwrap()),
            netns: 4026531840,
            count: 3,
            delayed: 1,
            pending: 0,
            clients: vec![ProcessRef { pid: 812, comm: "nginx".into() }],
            uids: vec![33],
            listener: Some(ProcessRef { pid: 700, comm: "gunicorn".into() }),
            listener_note: "gunicorn (pid 700) listens here".into(),
            listener_closed_ns: None,
            queue: Some(Queue { len: 2, max: 1 }),
            hint: None,
            evidence: [(Evidence::ResetReceived, 3)].into_iter().collect(),
            detail: "d".into(),
            fix: "f".into(),
            first_seen_ns: 2_000_000_000,
            last_seen_ns: 5_123_000_000,
            accept_wait_ms: [("<1".to_string(), 4)].into_iter().collect(),
            syn_overflows: vec![SynOverflow {
                ts_ns: 3_000_000_000,
                queue: Queue { len: 2, max: 1 },
                listener: Some(ProcessRef { pid: 700, comm: "gunicorn".into() }),
            }],
            timeline: vec![TimelineEntry { at_ns: 1_000_000_000, what: "listen".into(), pid: 700, comm: "gunicorn".into(), detail: "backlog 1".into() }],
            upstream_process: None,
            death: None,
            connection: None,
            ports: None,
            backend: None,
            rule: None,
        }
    }

    /// The README's key names, in the order the lines always had (sorted), value shapes included.
    #[test]
    fn a_finding_line_is_the_documented_object() {
        let mut line = finding_json(&finding(), &CLOCK);
        line.upstream = Some("backend".into());
        line.config_line = Some("server 127.0.0.1:8000;".into());
        line.config_place = Some("/etc/nginx/nginx.conf:12".into());
        line.log_lines = 1;
        line.log_example = Some("connect() failed".into());
        line.clients[0].cgroup = Some("/system.slice/nginx.service".into());
        line.clients[0].container = Some("nginx.service".into());
        assert_eq!(
            line.to_string(),
            concat!(
                r#"{"accept_wait_ms":{"<1":4},"backend":null,"cause":"backlog_full","#,
                r#""clients":[{"cgroup":"/system.slice/nginx.service","comm":"nginx","container":"nginx.service","pid":812,"pod":null}],"#,
                r#""config_line":"server 127.0.0.1:8000;","config_place":"/etc/nginx/nginx.conf:12","connection":null,"count":3,"death":null,"delayed":1,"#,
                r#""detail":"d","evidence":{"tcp:tcp_receive_reset":3},"first_seen":"2024-05-01T10:01:02.000Z","fix":"f","hint":null,"#,
                r#""last_seen":"2024-05-01T10:01:05.123Z","listener":{"cgroup":null,"comm":"gunicorn","container":null,"pid":700,"pod":null},"#,
                r#""listener_closed":null,"listener_note":"gunicorn (pid 700) listens here","log_example":"connect() failed","log_lines":1,"#,
                r#""netns":4026531840,"pending":0,"ports":null,"proxy_client":true,"queue":{"len":2,"max":1},"rule":null,"rule_candidates":[],"#,
                r#""syn_overflows":[{"at":"2024-05-01T10:01:03.000Z","len":2,"listener":{"comm":"gunicorn","pid":700},"max":1}],"#,
                r#""target":"127.0.0.1:8000","timeline":[{"at":"2024-05-01T10:01:01.000Z","comm":"gunicorn","detail":"backlog 1","pid":700,"what":"listen"}],"#,
                r#""type":"finding","uids":[33],"upstream":"backend","upstream_process":null}"#
            )
        );
        // Not measured: null, as documented.
        let mut f = finding();
        f.accept_wait_ms.clear();
        f.syn_overflows.clear();
        f.queue = None;
        f.listener = None;
        let v = serde_json::to_value(finding_json(&f, &CLOCK)).unwrap();
        for key in ["accept_wait_ms", "syn_overflows", "queue", "listener", "upstream"] {
            assert!(v[key].is_null(), "{key}: {v}");
        }
    }

    #[test]
    fn an_attempt_line_standing_for_counted_repeats_says_how_many() {
        let a = AttemptRecord { count: 5, ..crate::report::fixtures::unix_missing_attempt() };
        let line = attempt_json(&a, &CLOCK).to_string();
        assert!(line.contains(r#""count":5,"#), "{line}");
        let back: AttemptLine = serde_json::from_str(&line).unwrap();
        assert_eq!(back.count, 5);
        let older = line.replace(r#""count":5,"#, "");
        assert_eq!(serde_json::from_str::<AttemptLine>(&older).unwrap().count, 1);
    }

    #[test]
    fn attempt_and_summary_lines_are_the_documented_objects() {
        let a = crate::report::fixtures::unix_missing_attempt();
        assert_eq!(
            attempt_json(&a, &CLOCK).to_string(),
            concat!(
                r#"{"cause":"unix_missing","client":{"comm":"nginx","pid":812,"uid":33},"count":1,"errno":2,"#,
                r#""evidence":{"connect() ENOENT":1},"netns":1,"outcome":"failed","sock":"0xffff888000001000","#,
                r#""start":"2024-05-01T10:01:02.400Z","target":"unix:/run/gunicorn.sock","ts":"2024-05-01T10:01:02.500Z","type":"attempt"}"#
            )
        );
        let s = Summary {
            duration_s: 10.0,
            events: 42,
            lost_events: [(crate::event::RecordKind(tracer_common::EventKind::TcpAttemptFailed), 3)].into_iter().collect(),
            hooks: vec!["tp/sock/inet_sock_set_state".into()],
            findings: 1,
        };
        assert_eq!(
            summary_json(&s, &CLOCK).to_string(),
            r#"{"duration_s":10.0,"events":42,"findings":1,"hooks":["tp/sock/inet_sock_set_state"],"lost_events":{"TcpAttemptFailed":3},"type":"summary"}"#
        );
    }

    /// What the integration tests rely on: every line reads back into its own type, whole.
    #[test]
    fn every_line_reads_back_into_its_own_type() {
        let finding = finding_json(&finding(), &CLOCK).to_string();
        let lines = [
            finding.as_str(),
            r#"{"config_line":"server 127.0.0.1:8009;","config_place":"/etc/nginx/nginx.conf:3","detail":"d","listening":false,"netns":1,"target":"127.0.0.1:8009","type":"config_check","upstream":"b"}"#,
            r#"{"line":"x","type":"log_unexplained","why":"no finding"}"#,
            r#"{"duration_s":1.5,"events":0,"findings":0,"hooks":[],"lost_events":{},"type":"summary"}"#,
        ];
        for text in lines {
            let line = Line::parse(text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(line.to_string(), text);
        }
        assert!(matches!(Line::parse(&finding), Ok(Line::Finding(f)) if f.count == 3 && f.clients[0].pid == 812));
        // A line missing a key, or of a type nobody documented, is refused, naming what is wrong.
        let without_count = finding.replace(r#""count":3,"#, "");
        assert!(Line::parse(&without_count).unwrap_err().to_string().contains("count"));
        assert!(Line::parse(r#"{"type":"gossip"}"#).unwrap_err().to_string().contains("gossip"));
    }
}
