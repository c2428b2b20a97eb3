//! The engine's findings rendered: recorded event streams through `explain::Engine`, then
//! through the text and JSON renderers (the engine's own tests never render).

use crate::event::TaskInfo;
use crate::explain::test_kit::*;
use crate::explain::Update;

use super::{json, text, Clock, Summary};

#[test]
fn engine_findings_render_as_text_and_json() {
    let mut events = fixture("dead_listener.json");
    events.extend(fixture("backlog_and_drop.json"));
    events.push(unix_failed(9 * S, &TaskInfo { uid: 33, ..nginx(812) }, "/run/app.sock", 13));
    let (e, updates) = run(&events);
    let findings = e.findings();
    let clock = Clock::fixed(1_714_557_660_000_000_000);
    let summary = Summary {
        duration_s: 9.0,
        events: events.len() as u64,
        lost_events: e.lost_events().into_iter().collect(),
        hooks: vec![],
        findings: findings.len() as u64,
    };
    let mut out = Vec::new();
    text::write_findings(&mut out, &findings, &summary, &clock, &text::Places::new()).unwrap();
    for u in &updates {
        if let Update::Attempt(a) = u {
            text::write_attempt(&mut out, a, &clock).unwrap();
        }
    }
    let rendered = String::from_utf8(out).unwrap();
    println!("{rendered}");
    for f in &findings {
        assert!(rendered.contains(&format!("{}  {}", f.cause.title(), f.target)), "{rendered}");
        let v = json::finding_json(f, &clock);
        assert_eq!((v.cause, v.count, v.target.as_str()), (f.cause, f.count, f.target.to_string().as_str()));
        println!("{v}");
    }
}

/// The report shows what the function hooks add: the queue at each SYN-time overflow and the
/// accept-wait histogram, in text (bucket order) and JSON.
#[test]
fn reports_show_overflows_and_accept_waits() {
    let app = task(700, "gunicorn");
    let client = task(900, "nginx");
    let f1 = flow("127.0.0.1:40001", "127.0.0.1:8000");
    let events = vec![
        overflow(S, f1, 2, 1, &app),
        retransmit(2 * S, 0x1, &client, f1, 1, None, None),
        overflow(2 * S + 10_000, f1, 3, 1, &app),
        accepted(3 * S, 0xc1, &app, flow("127.0.0.1:40003", "127.0.0.1:8000"), 2_500 * MS),
        accepted(3 * S, 0xc2, &app, flow("127.0.0.1:40004", "127.0.0.1:8000"), 50 * MS),
        accepted(3 * S, 0xc3, &app, flow("127.0.0.1:40005", "127.0.0.1:8000"), 100_000),
    ];
    let (e, _) = run(&events);
    let f = e.findings().into_iter().next().expect("a finding");
    let clock = Clock::fixed(1_714_557_660_000_000_000);
    let mut out = Vec::new();
    text::write_finding(&mut out, &f, &clock, &text::Places::new()).unwrap();
    // Values wrap under their column: read them as one line each.
    let text = String::from_utf8(out).unwrap().replace(&format!("\n{}", " ".repeat(14)), " ");
    assert!(text.contains("2 SYNs dropped by tcp_conn_request on the full queue (queue 2/1, 3/1 when they came;"), "{text}");
    assert!(text.contains("<1 ms: 1, 10-100 ms: 1, >=1000 ms: 1 (time accepted connections waited in the queue)"), "{text}");
    let v = json::finding_json(&f, &clock);
    let waits = v.accept_wait_ms.expect("accept_wait_ms");
    assert_eq!((waits[">=1000"], waits["10-100"]), (1, 1));
    let overflows = v.syn_overflows.expect("syn_overflows");
    assert_eq!(overflows.len(), 2);
    assert_eq!(overflows[1].len, 3);
    assert_eq!(overflows[0].listener.as_ref().map(|l| l.pid), Some(700));
    assert_eq!(v.evidence["tcp_conn_request: queue full"], 2);
}
