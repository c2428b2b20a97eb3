//! `watch` lines: each failed attempt, and each finding as it opens or changes.

use std::io::Write;

use anyhow::Result;

use crate::explain::{Finding, Update};
use crate::operator;
use crate::report::{self, Clock};

use super::filter::Filter;

/// `watch` lines for one tick's updates, those the filters keep (`kept_updates`): each
/// attempt, and each finding that opened or changed. A JSON finding line carries the same Nginx context as the final report
/// (`Operator::annotate_json`: upstream, config line, cgroups), with `log_lines` counting the
/// error-log lines matched so far: the logs are read now and matched, as the report does at
/// the end, against every finding kept so far (`all_findings`, asked only when a JSON finding
/// line is printed), so a live count never holds a line the report gives another finding.
pub fn print_updates(
    out: &mut impl Write,
    updates: &[&Update],
    filter: &Filter,
    clock: &Clock,
    json: bool,
    ops: &mut operator::Operator,
    all_findings: impl FnOnce() -> Vec<Finding>,
) -> Result<()> {
    let mut all_findings = Some(all_findings);
    // (the findings kept, the log lines each explains), read once per tick.
    let mut live: Option<(Vec<Finding>, operator::Context)> = None;
    for u in updates {
        match u {
            Update::Finding(f) if json => {
                if live.is_none() {
                    let all = all_findings.take().map(|all| all()).unwrap_or_default();
                    live = Some(super::kept_with_context(all, filter, ops));
                }
                let log_lines: &[String] = live
                    .as_ref()
                    .and_then(|(kept, context)| {
                        let i = kept.iter().position(|k| (k.cause, &k.target, k.netns) == (f.cause, &f.target, f.netns))?;
                        context.explained.get(i).map(Vec::as_slice)
                    })
                    .unwrap_or(&[]);
                let mut v = report::json::finding_json(f, clock);
                ops.annotate_json(&mut v, f, log_lines);
                writeln!(out, "{v}")?;
            }
            Update::Finding(f) => {
                let places = ops.places(std::slice::from_ref(f));
                report::text::write_watch_finding(out, f, clock, &places)?;
            }
            Update::Attempt(a) if json => writeln!(out, "{}", report::json::attempt_json(a, clock))?,
            Update::Attempt(a) => report::text::write_attempt(out, a, clock)?,
        }
    }
    out.flush()?;
    Ok(())
}

/// Of one tick's updates, those the filters keep, for the `watch` lines and the metrics alike:
/// `--port`, `--unix` and `--client-comm` (`Filter`), then `--netns` and `--cgroup` (a finding as
/// `Operator::keep` decides, an attempt with its finding, or by its own namespace and client
/// when its finding did not change this tick).
pub fn kept_updates<'a>(updates: &'a [Update], filter: &Filter, ops: &mut operator::Operator) -> Vec<&'a Update> {
    ops.keep_updates(updates.iter().filter(|u| filter.update(u)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::Enricher;
    use crate::event::{Event, EventBody, FlowAddr, TaskInfo};
    use crate::explain::{Engine, EngineOptions};

    const REFUSED: &str = r#"2026/11/24 10:05:53 [error] 812#812: *3 connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1, server: , request: "GET / HTTP/1.1", upstream: "http://127.0.0.1:8000/", host: "127.0.0.1:8080""#;

    /// A dead-listener finding for 127.0.0.1:8000 made by the engine (an nginx worker, pid 812,
    /// in a network namespace no running Nginx is in), after `attempts` refused connects.
    fn engine_with_refusals(attempts: u64) -> Engine {
        let mut e = Engine::new(EngineOptions::default());
        let nginx = TaskInfo { pid: 812, tid: 812, uid: 33, comm: "nginx".into() };
        for i in 0..attempts {
            let flow = FlowAddr { src: format!("127.0.0.1:{}", 40000 + i).parse().unwrap(), dst: "127.0.0.1:8000".parse().unwrap() };
            let t0 = 1_000_000_000 * (i + 1);
            let body = EventBody::TcpRstSentNoSocket { flow, reason: None };
            e.push(&Event { ts_ns: t0, netns: 1, sock: 0, task: nginx.clone(), body });
            let body = EventBody::TcpAttemptFailed { flow, sk_err: 111, syn_retransmits: 0, rst_received: true, start_ns: t0 };
            e.push(&Event { ts_ns: t0 + 10, netns: 1, sock: 7 + i, task: nginx.clone(), body });
        }
        e
    }

    fn append(path: &std::path::Path, line: &str) {
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        writeln!(f, "{line}").unwrap();
    }

    /// Live `watch --json` finding lines carry the report's Nginx keys, and `log_lines` counts
    /// the error-log lines matched so far; the lines each tick reads stay for the end.
    #[test]
    fn live_json_finding_lines_carry_the_nginx_context_and_log_lines_so_far() {
        let dir = std::env::temp_dir().join(format!("tracer-ut-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("error.log");
        std::fs::write(&log, format!("{REFUSED}\n")).unwrap(); // before tracing: not counted
        let args = operator::OperatorArgs { error_logs: vec![log.clone()], netns: None, cgroup: None };
        let mut ops = operator::Operator::start(&args, Vec::new(), &mut Enricher::new()).unwrap();
        let filter = Filter { ports: vec![], unix_paths: vec![], comms: vec![] };
        let clock = Clock::fixed(0);
        let line = |engine: &mut Engine, ops: &mut operator::Operator| {
            let updates = engine.finish();
            let mut out = Vec::new();
            let kept = kept_updates(&updates, &filter, ops);
            print_updates(&mut out, &kept, &filter, &clock, true, ops, || engine.findings()).unwrap();
            let text = String::from_utf8(out).unwrap();
            let findings: Vec<serde_json::Value> =
                text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|v| v["type"] == "finding").collect();
            assert_eq!(findings.len(), 1, "{text}");
            findings[0].clone()
        };

        let mut engine = engine_with_refusals(1);
        append(&log, REFUSED);
        let v = line(&mut engine, &mut ops);
        for key in ["upstream", "config_line", "config_place", "log_lines", "log_example"] {
            assert!(v.get(key).is_some(), "live finding line lacks {key:?}: {v}");
        }
        assert_eq!(v["log_lines"], 1, "{v}");
        assert_eq!(v["log_example"], REFUSED, "{v}");
        assert!(v["clients"][0].get("cgroup").is_some(), "clients carry their cgroup: {v}");

        // The next tick: one more refusal, one more line; the first is still counted.
        let mut engine = engine_with_refusals(2);
        append(&log, REFUSED);
        let v = line(&mut engine, &mut ops);
        assert_eq!((v["count"].as_u64(), v["log_lines"].as_u64()), (Some(2), Some(2)), "{v}");

        // The end reads nothing new and still matches both lines.
        let end = ops.finish(&engine.findings());
        assert_eq!(end.explained, vec![vec![REFUSED.to_string(), REFUSED.to_string()]]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A long `watch` keeps the newest MAX_LOG_LINES lines to match, not all of them.
    #[test]
    fn the_lines_kept_for_matching_are_bounded() {
        let dir = std::env::temp_dir().join(format!("tracer-ut-bound-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("error.log");
        std::fs::write(&log, "").unwrap();
        let args = operator::OperatorArgs { error_logs: vec![log.clone()], netns: None, cgroup: None };
        let mut ops = operator::Operator::start(&args, Vec::new(), &mut Enricher::new()).unwrap();
        let many = format!("{REFUSED}\n").repeat(operator::MAX_LOG_LINES / 2 + 7);
        for _ in 0..3 {
            std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(many.as_bytes()).unwrap();
            ops.tick();
        }
        let end = ops.finish(&[]);
        assert_eq!(end.unexplained.len(), operator::MAX_LOG_LINES);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
