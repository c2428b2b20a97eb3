//! JSON objects, one per line: findings, attempts and a closing summary. The keys are a stable
//! contract for scripts; new keys may be added, existing ones never change meaning.

use std::io::{self, Write};

use serde_json::{json, Map, Value};

use crate::explain::{AttemptRecord, Finding, ProcessRef};

use super::{Clock, Summary};

fn process(p: &ProcessRef) -> Value {
    json!({ "pid": p.pid, "comm": p.comm })
}

fn counters(c: &std::collections::BTreeMap<String, u64>) -> Value {
    Value::Object(c.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<String, Value>>())
}

pub fn finding_json(f: &Finding, clock: &Clock) -> Value {
    json!({
        "type": "finding",
        "cause": f.cause.as_str(),
        "target": f.target.to_string(),
        "netns": f.netns,
        "count": f.count,
        "delayed": f.delayed,
        "pending": f.pending,
        "clients": f.clients.iter().map(process).collect::<Vec<_>>(),
        // false: no client is a proxy (explain::PROXY_COMMS); the finding is not why a proxy fails.
        "proxy_client": f.proxy_client(),
        "uids": f.uids,
        "listener": f.listener.as_ref().map(process),
        "listener_note": f.listener_note,
        "listener_closed": f.listener_closed_ns.map(|ns| clock.to_rfc3339(ns)),
        "queue": f.queue.map(|q| json!({ "len": q.len, "max": q.max })),
        "accept_wait_ms": (!f.accept_wait_ms.is_empty()).then(|| counters(&f.accept_wait_ms)),
        "syn_overflows": (!f.syn_overflows.is_empty()).then(|| {
            f.syn_overflows
                .iter()
                .map(|o| json!({ "at": clock.to_rfc3339(o.ts_ns), "len": o.queue.len, "max": o.queue.max, "listener": o.listener.as_ref().map(process) }))
                .collect::<Vec<_>>()
        }),
        "hint": f.hint,
        "evidence": counters(&super::evidence::labelled(&f.evidence)),
        "detail": f.detail,
        "fix": f.fix,
        "timeline": f.timeline.iter().map(|e| json!({
            "at": clock.to_rfc3339(e.at_ns),
            "what": e.what,
            "pid": e.pid,
            "comm": e.comm,
            "detail": e.detail,
        })).collect::<Vec<_>>(),
        "first_seen": clock.to_rfc3339(f.first_seen_ns),
        "last_seen": clock.to_rfc3339(f.last_seen_ns),
    })
}

pub fn attempt_json(a: &AttemptRecord, clock: &Clock) -> Value {
    json!({
        "type": "attempt",
        "ts": clock.to_rfc3339(a.ts_ns),
        "start": clock.to_rfc3339(a.start_ns),
        "cause": a.cause.as_str(),
        "target": a.target.to_string(),
        "netns": a.netns,
        "sock": format!("{:#x}", a.sock),
        "client": { "pid": a.client.pid, "comm": a.client.comm, "uid": a.client.uid },
        "outcome": a.outcome.as_str(),
        "errno": a.errno,
        "evidence": counters(&super::evidence::labelled(&a.evidence)),
    })
}

pub fn summary_json(s: &Summary, _clock: &Clock) -> Value {
    json!({
        "type": "summary",
        "duration_s": s.duration_s,
        "events": s.events,
        "lost_events": counters(&s.lost_events),
        "hooks": s.hooks,
        "findings": s.findings,
    })
}

/// One JSON object on one line.
pub fn write_line(w: &mut impl Write, v: &Value) -> io::Result<()> {
    serde_json::to_writer(&mut *w, v)?;
    w.write_all(b"\n")
}

/// Every finding, then the summary, one object per line (what `diagnose --json` prints).
pub fn write_findings(w: &mut impl Write, findings: &[Finding], summary: &Summary, clock: &Clock) -> io::Result<()> {
    for f in findings {
        write_line(w, &finding_json(f, clock))?;
    }
    write_line(w, &summary_json(summary, clock))
}
