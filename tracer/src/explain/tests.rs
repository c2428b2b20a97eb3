//! Unit tests on recorded event sequences: every cause, and the ambiguous mixes.

use super::rules::{classify_tcp, classify_unix, RejectKind, TcpFacts};
use super::test_kit::*;
use super::*;
use crate::event::{Event, EventBody, RecordKind, Queue, Target, TaskInfo};
use tracer_common::EventKind;

// ---- the verdict table on its own ---------------------------------------------------------

#[test]
fn table_orders_rules_as_documented() {
    let base = TcpFacts::default();
    // Rule 4: nothing at all is not a failure.
    assert_eq!(classify_tcp(&base), None);
    // Rule 1 beats everything, even a local NO_SOCKET reset.
    let f = TcpFacts { netfilter_drop: true, rst_received: true, local_no_socket: true, sk_err: 111, ..base };
    assert_eq!(classify_tcp(&f), Some((Cause::FirewallReject, Some(RejectKind::TcpReset))));
    let f = TcpFacts { netfilter_drop: true, sk_err: 113, ..base };
    assert_eq!(classify_tcp(&f), Some((Cause::FirewallReject, Some(RejectKind::Icmp))));
    let f = TcpFacts { netfilter_drop: true, sk_err: 110, syn_retransmits: 6, local_listener: true, ..base };
    assert_eq!(classify_tcp(&f), Some((Cause::FirewallDrop, None)));
    // Rule 2.
    let f = TcpFacts { rst_received: true, sk_err: 111, local_no_socket: true, ..base };
    assert_eq!(classify_tcp(&f), Some((Cause::DeadListener, None)));
    let f = TcpFacts { rst_received: true, sk_err: 111, queue_full: true, ..base };
    assert_eq!(classify_tcp(&f), Some((Cause::BacklogFull, None)));
    let f = TcpFacts { sk_err: 111, icmp_sent: true, ..base };
    assert_eq!(classify_tcp(&f), Some((Cause::FirewallReject, Some(RejectKind::Icmp))));
    let f = TcpFacts { rst_received: true, sk_err: 111, ..base };
    assert_eq!(classify_tcp(&f), Some((Cause::RemoteRefused, None)));
    // Rule 3.
    let f = TcpFacts { syn_retransmits: 2, listen_overflows_rose: true, ..base };
    assert_eq!(classify_tcp(&f), Some((Cause::BacklogFull, None)));
    let f = TcpFacts { syn_retransmits: 2, ..base };
    assert_eq!(classify_tcp(&f), Some((Cause::NoResponse, None)));
    assert_eq!(classify_unix(2, "/run/gunicorn.sock"), Some(Cause::UnixMissing));
    assert_eq!(classify_unix(22, "/run/gunicorn.sock"), None);
    // glibc's nscd probe on every name lookup is not an upstream, and its absence is normal.
    assert_eq!(classify_unix(2, "/var/run/nscd/socket"), None);
}

#[test]
fn cause_names_are_the_stable_snake_case_contract() {
    let names: Vec<String> =
        Cause::ALL.iter().map(|c| serde_json::to_value(c).unwrap().as_str().unwrap().to_string()).collect();
    assert_eq!(
        names,
        [
            "dead_listener",
            "backlog_full",
            "firewall_drop",
            "firewall_reject",
            "remote_refused",
            "refused_unattributed",
            "unix_missing",
            "unix_stale",
            "unix_backlog_full",
            "unix_permission_denied",
            "no_response",
            "upstream_killed",
            "upstream_reset",
            "upstream_closed",
            "keepalive_race",
            "ports_exhausted",
            "upstream_timeout",
        ]
    );
    for c in Cause::ALL {
        assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
    }
}

// ---- dead listener ------------------------------------------------------------------------

#[test]
fn dead_listener_names_the_last_listener() {
    let gunicorn = task(700, "gunicorn");
    let mut events =
        vec![listen_start(S, &gunicorn, "127.0.0.1:8000"), listen_stop(2 * S, &gunicorn, "127.0.0.1:8000")];
    events.extend(dead_listener_attempt(3 * S, 0x1, &nginx(812), flow("127.0.0.1:40001", "127.0.0.1:8000")));
    events.extend(dead_listener_attempt(4 * S, 0x2, &nginx(813), flow("127.0.0.1:40002", "127.0.0.1:8000")));
    events.extend(dead_listener_attempt(5 * S, 0x3, &nginx(812), flow("127.0.0.1:40003", "127.0.0.1:8000")));
    let (e, updates) = run(&events);
    let f = only(&e);
    assert_eq!(f.cause, Cause::DeadListener);
    assert_eq!(f.target, Target::Tcp(addr("127.0.0.1:8000")));
    assert_eq!(f.netns, NS);
    assert_eq!(f.count, 3);
    assert_eq!(pids(&f), [812, 813]);
    assert_eq!(listener_pid(&f), Some(700));
    assert!(
        f.listener_note
            .starts_with("gunicorn (pid 700) listened here and closed 1.0 s before the first failed attempt"),
        "{}",
        f.listener_note
    );
    assert_eq!(f.listener_closed_ns, Some(2 * S));
    assert_eq!(f.evidence[reset_sent("NO_SOCKET")], 3);
    assert_eq!(f.evidence[dropped_for("NO_SOCKET")], 3);
    assert_eq!(f.evidence[Evidence::ResetReceived], 3);
    assert_eq!(f.evidence[Evidence::ConnectErrno(111)], 3);
    assert_eq!(f.first_seen_ns, 3 * S);
    assert_eq!(f.last_seen_ns, 5 * S + 40_000);
    // The fix names the listener the evidence names; its unit was never learnt, so no
    // `systemctl restart <guess>`.
    assert!(
        f.fix.contains("gunicorn (pid 700) listened there")
            && !f.fix.contains("systemctl restart")
            && f.fix.contains("ss -tlnp | grep 8000")
            && f.fix.contains("Restart=always"),
        "{}",
        f.fix
    );
    assert!(f.detail.contains("no socket"), "{}", f.detail);
    let recs = attempts(&updates);
    assert_eq!(recs.len(), 3);
    assert!(recs.iter().all(|a| a.outcome == Outcome::Failed && a.errno == 111 && a.cause == Cause::DeadListener));
    assert_eq!(recs.iter().map(|a| a.client.pid).collect::<Vec<_>>(), [812, 813, 812]);
}

#[test]
fn dead_listener_says_when_no_listener_was_ever_seen() {
    let events = dead_listener_attempt(3 * S, 0x1, &nginx(812), flow("127.0.0.1:40001", "127.0.0.1:8000"));
    let (e, _) = run(&events);
    let f = only(&e);
    assert_finding(&f, Cause::DeadListener, 1, &[812], None);
    assert_eq!(f.listener_note, "no listener seen on this port since tracing started");
    assert_eq!(f.listener_closed_ns, None);
    assert_eq!(f.hint, None);
}

#[test]
fn dead_listener_hints_at_the_same_process_on_a_neighbouring_port() {
    let gunicorn = task(700, "gunicorn");
    let mut events = vec![
        listen_start(S, &nginx(800), "0.0.0.0:80"),
        listen_start(S, &task(900, "redis-server"), "127.0.0.1:8002"),
        listen_start(S, &gunicorn, "127.0.0.1:8000"),
        listen_stop(2 * S, &gunicorn, "127.0.0.1:8000"),
        listen_start(2 * S + 1, &gunicorn, "127.0.0.1:8005"),
    ];
    events.extend(dead_listener_attempt(3 * S, 0x1, &nginx(812), flow("127.0.0.1:40001", "127.0.0.1:8000")));
    let (e, _) = run(&events);
    let f = only(&e);
    assert_finding(&f, Cause::DeadListener, 1, &[812], Some(700));
    // The same process wins over a closer port; nginx's own :80 is never suggested.
    assert_eq!(
        f.hint.as_deref(),
        Some(
            "the same process gunicorn (pid 700) listens on 127.0.0.1:8005; is proxy_pass pointing at the wrong port?"
        )
    );
}

#[test]
fn dead_listener_on_ipv6_loopback_hints_at_the_ipv4_listener_on_the_same_port() {
    // proxy_pass http://localhost:8000 tries [::1]:8000 too; Gunicorn binds 127.0.0.1 only.
    let gunicorn = task(700, "gunicorn");
    let mut events = vec![listen_start(S, &gunicorn, "127.0.0.1:8000")];
    events.extend(dead_listener_attempt(3 * S, 0x1, &nginx(812), flow("[::1]:40001", "[::1]:8000")));
    let (e, _) = run(&events);
    let f = only(&e);
    assert_eq!(f.cause, Cause::DeadListener);
    assert_eq!(f.target, Target::Tcp(addr("[::1]:8000")));
    assert_eq!(
        f.hint.as_deref(),
        Some(
            "gunicorn (pid 700) listens on 127.0.0.1:8000 only, not on ::1; is proxy_pass (or `localhost`) pointing at the wrong address family?"
        )
    );
}

#[test]
fn wrong_port_hint_names_the_closest_port_when_nobody_listened_before() {
    let mut events = vec![
        listen_start(S, &nginx(800), "0.0.0.0:80"),
        listen_start(S, &task(901, "node"), "0.0.0.0:8010"),
        listen_start(S, &task(902, "uwsgi"), "127.0.0.1:8001"),
        listen_start(S, &task(903, "other"), "127.0.0.2:8000"),
    ];
    events.extend(dead_listener_attempt(3 * S, 0x1, &nginx(812), flow("127.0.0.1:40001", "127.0.0.1:8000")));
    let (e, _) = run(&events);
    let f = only(&e);
    assert_finding(&f, Cause::DeadListener, 1, &[812], None);
    assert_eq!(
        f.hint.as_deref(),
        Some("uwsgi (pid 902) listens on 127.0.0.1:8001; is proxy_pass pointing at the wrong port?")
    );
}

#[test]
fn dead_listener_note_mentions_a_restart_after_the_failures() {
    let gunicorn = task(700, "gunicorn");
    let mut events =
        vec![listen_start(S, &gunicorn, "127.0.0.1:8000"), listen_stop(2 * S, &gunicorn, "127.0.0.1:8000")];
    events.extend(dead_listener_attempt(3 * S, 0x1, &nginx(812), flow("127.0.0.1:40001", "127.0.0.1:8000")));
    events.push(listen_start(10 * S, &task(701, "gunicorn"), "127.0.0.1:8000"));
    let (e, _) = run(&events);
    let f = only(&e);
    assert_eq!(f.cause, Cause::DeadListener);
    assert_eq!(listener_pid(&f), Some(700));
    assert!(
        f.listener_note.contains("gunicorn (pid 701) listens here again since 7.0 s after the last failed attempt"),
        "{}",
        f.listener_note
    );
    assert_eq!(f.hint, None);
}

// ---- refusals that are not a dead listener ------------------------------------------------

#[test]
fn reset_plus_netfilter_drop_is_a_firewall_reject_not_a_dead_listener() {
    let f1 = flow("127.0.0.1:40001", "127.0.0.1:8003");
    // nft `reject with tcp reset`: the SYN is dropped by netfilter, which forges the reset.
    let events = vec![
        dropped(S, f1, "NETFILTER_DROP"),
        rst_received(S + 10_000, 0x1, &nginx(812), f1),
        failed(S + 20_000, 0x1, &nginx(812), f1, 111, 0, true, S),
    ];
    let (e, _) = run(&events);
    let f = only(&e);
    assert_finding(&f, Cause::FirewallReject, 1, &[812], None);
    assert_eq!(f.target, Target::Tcp(addr("127.0.0.1:8003")));
    assert!(f.detail.contains("netfilter answered with a TCP reset"), "{}", f.detail);
    assert!(f.fix.contains("nft list ruleset | grep reject") && f.fix.contains("reject with tcp reset"), "{}", f.fix);
    assert_eq!(f.evidence[dropped_for("NETFILTER_DROP")], 1);

    // Even if a socket-less reset for the flow shows up too, the netfilter drop decides.
    let mut mixed = events.clone();
    mixed.insert(1, rst_sent_no_socket(S + 5_000, f1));
    let (e, _) = run(&mixed);
    let f = only(&e);
    assert_eq!(f.cause, Cause::FirewallReject);
    assert_eq!(f.count, 1);
    assert_eq!(pids(&f), [812]);
}

#[test]
fn icmp_reject_is_a_firewall_reject() {
    let f1 = flow("127.0.0.1:40001", "127.0.0.1:8004");
    // ICMP errors carry no ports: matched by addresses.
    let icmp =
        packet(S + 5_000, EventBody::IcmpSent { flow: flow("127.0.0.1:0", "127.0.0.1:0"), icmp_type: 3, code: 3 });
    let events = vec![
        icmp.clone(),
        dropped(S + 6_000, f1, "NETFILTER_DROP"),
        failed(S + 20_000, 0x1, &nginx(812), f1, 111, 0, false, S),
    ];
    let (e, updates) = run(&events);
    let f = only(&e);
    assert_finding(&f, Cause::FirewallReject, 1, &[812], None);
    assert_eq!(f.target, Target::Tcp(addr("127.0.0.1:8004")));
    assert!(f.detail.contains("ICMP"), "{}", f.detail);
    assert!(f.fix.contains("reject with icmp"), "{}", f.fix);
    assert_eq!(f.evidence[ICMP_PORT_UNREACHABLE], 1);
    assert_eq!(attempts(&updates)[0].evidence[ICMP_PORT_UNREACHABLE], 1);

    // The drop event lost: the ICMP alone still proves a local reject.
    let (e, _) = run(&[icmp, failed(S + 20_000, 0x1, &nginx(812), f1, 111, 0, false, S)]);
    let f = only(&e);
    assert_eq!(f.cause, Cause::FirewallReject);
    assert_eq!(f.count, 1);
}

#[test]
fn icmp_with_ports_is_claimed_only_by_the_attempt_it_is_about() {
    // Two rejects to the same address at the same moment, one by RST and one by ICMP: the
    // kernel read the ICMP's ports from the offending SYN, so only the second attempt owns it.
    let by_rst = flow("127.0.0.1:40001", "127.0.0.1:8005");
    let by_icmp = flow("127.0.0.1:40002", "127.0.0.1:8006");
    let events = vec![
        dropped(S + 1_000, by_rst, "NETFILTER_DROP"),
        rst_received(S + 2_000, 0x1, &nginx(812), by_rst),
        dropped(S + 3_000, by_icmp, "NETFILTER_DROP"),
        packet(S + 4_000, EventBody::IcmpSent { flow: by_icmp, icmp_type: 3, code: 3 }),
        failed(S + 5_000, 0x1, &nginx(812), by_rst, 111, 0, true, S),
        failed(S + 6_000, 0x2, &nginx(812), by_icmp, 111, 0, false, S),
    ];
    let (e, _) = run(&events);
    let findings = e.findings();
    assert_eq!(findings.len(), 2);
    for f in &findings {
        assert_eq!(f.cause, Cause::FirewallReject);
        assert_eq!(f.count, 1);
        let icmp = f.evidence.get(&ICMP_PORT_UNREACHABLE);
        match &f.target {
            Target::Tcp(a) if a.port() == 8005 => assert_eq!(icmp, 0, "RST reject got the ICMP: {:?}", f.evidence),
            Target::Tcp(a) if a.port() == 8006 => assert_eq!(icmp, 1, "{:?}", f.evidence),
            other => panic!("unexpected target {other}"),
        }
    }
}

#[test]
fn reset_without_local_no_socket_is_remote_refused() {
    let f1 = flow("10.0.0.1:40001", "10.0.0.5:8000");
    let events =
        vec![rst_received(S, 0x1, &nginx(812), f1), failed(S + 10_000, 0x1, &nginx(812), f1, 111, 0, true, S - MS)];
    let (e, _) = run(&events);
    let f = only(&e);
    assert_finding(&f, Cause::RemoteRefused, 1, &[812], None);
    assert_eq!(f.target, Target::Tcp(addr("10.0.0.5:8000")));
    assert!(f.detail.contains("the refusal came from another host"), "{}", f.detail);
    assert!(f.detail.contains("run tracer on the upstream host"), "{}", f.detail);
}

#[test]
fn no_socket_drop_of_a_packet_to_the_client_is_not_a_dead_listener() {
    // The client gave up (sk_err 0) and the late SYN-ACK found no socket on the CLIENT side.
    let f1 = flow("10.0.0.1:40001", "10.0.0.5:8000");
    let events = vec![
        retransmit(S, 0x1, &nginx(812), f1, 1, None, None),
        failed(2 * S, 0x1, &nginx(812), f1, 0, 1, false, 0),
        rst_sent_no_socket(2 * S + MS, f1.reversed()),
        dropped(2 * S + MS, f1.reversed(), "NO_SOCKET"),
    ];
    let (e, _) = run(&events);
    let f = only(&e);
    assert_eq!(f.cause, Cause::NoResponse);
    assert_eq!(f.count, 1);
    assert_eq!(pids(&f), [812]);
    assert_eq!(f.evidence[Evidence::Dropped { reason: "NO_SOCKET".into(), to_client: true }], 1);
}

// ---- unanswered SYNs: backlog vs firewall drop vs nothing ---------------------------------

#[test]
fn syn_retransmits_with_a_full_queue_are_backlog_full() {
    let gunicorn = task(700, "gunicorn");
    let f1 = flow("127.0.0.1:40001", "127.0.0.1:8000");
    let f2 = flow("127.0.0.1:40002", "127.0.0.1:8000");
    let full = Some(Queue { len: 2, max: 1 });
    let events = vec![
        listen_start(S, &gunicorn, "127.0.0.1:8000"),
        retransmit(3 * S, 0x1, &nginx(812), f1, 1, full, Some(gunicorn.clone())),
        retransmit(3 * S + MS, 0x2, &nginx(813), f2, 1, Some(Queue { len: 3, max: 1 }), Some(gunicorn.clone())),
        retransmit(5 * S, 0x1, &nginx(812), f1, 2, full, Some(gunicorn.clone())),
        failed(7 * S, 0x1, &nginx(812), f1, 110, 2, false, 2 * S),
        failed(7 * S, 0x2, &nginx(813), f2, 0, 1, false, 2 * S),
    ];
    let (e, _) = run(&events);
    let f = only(&e);
    assert_finding(&f, Cause::BacklogFull, 2, &[812, 813], Some(700));
    assert_eq!(f.target, Target::Tcp(addr("127.0.0.1:8000")));
    assert_eq!(f.listener_note, "gunicorn (pid 700) listens here");
    assert_eq!(f.queue, Some(Queue { len: 3, max: 1 }));
    assert_eq!(f.evidence[Evidence::SynRetransmits], 3);
    assert_eq!(f.evidence[Evidence::KernelQueueFull], 3);
    assert!(
        f.fix.contains("--backlog") && f.fix.contains("net.core.somaxconn") && f.fix.contains("(2 x CPU cores) + 1")
    );
}

#[test]
fn listen_overflows_alone_make_backlog_full_and_count_once() {
    // No queue sample and no listener known: only the netns counter rose.
    let f1 = flow("127.0.0.1:40001", "127.0.0.1:8000");
    let f2 = flow("127.0.0.1:40002", "127.0.0.1:8000");
    let overflow =
        Event { ts_ns: 2 * S, netns: NS, sock: 0, task: task(0, ""), body: EventBody::ListenOverflows { delta: 4 } };
    let events = vec![
        retransmit(S + 500 * MS, 0x1, &nginx(812), f1, 1, None, None),
        retransmit(S + 600 * MS, 0x2, &nginx(812), f2, 1, None, None),
        overflow,
        failed(3 * S, 0x1, &nginx(812), f1, 110, 1, false, S),
        failed(3 * S, 0x2, &nginx(812), f2, 110, 1, false, S),
    ];
    let (e, _) = run(&events);
    let f = only(&e);
    assert_finding(&f, Cause::BacklogFull, 2, &[812], None);
    assert_eq!(f.evidence[Evidence::ListenOverflows], 4);
    assert!(f.listener_note.starts_with("no listener seen by tracer"), "{}", f.listener_note);
}

#[test]
fn syn_retransmits_with_netfilter_drops_are_firewall_drop_even_with_a_listener() {
    let gunicorn = task(700, "gunicorn");
    let f1 = flow("127.0.0.1:40001", "127.0.0.1:8002");
    let mut events = vec![listen_start(S, &gunicorn, "127.0.0.1:8002")];
    events.extend(dropped_attempt(2 * S, 0x1, &nginx(812), f1, 3));
    let (e, _) = run(&events);
    let f = only(&e);
    assert_finding(&f, Cause::FirewallDrop, 1, &[812], Some(700));
    assert_eq!(f.target, Target::Tcp(addr("127.0.0.1:8002")));
    assert_eq!(f.evidence[dropped_for("NETFILTER_DROP")], 4);
    assert_eq!(f.evidence[Evidence::SynRetransmits], 3);
    assert_eq!(f.evidence[Evidence::ConnectErrno(110)], 1);
    assert!(
        f.fix.contains("nft list ruleset") && f.fix.contains("iptables -S") && f.fix.contains("proxy_connect_timeout")
    );
}

/// The rule enrich named for the drop (in the packet's direction, right after the first
/// drop, before the attempt's own events) is the finding's, and its fix names its removal.
#[test]
fn the_rule_named_for_a_drop_is_the_findings_and_its_fix_removes_it() {
    let f1 = flow("127.0.0.1:40001", "127.0.0.1:8002");
    let mut events = dropped_attempt(2 * S, 0x1, &nginx(812), f1, 2);
    let rule = test_rule(4, "tcp dport 8002 counter drop");
    let named = packet(2 * S + 1, EventBody::FirewallRule { flow: f1, rules: vec![rule.clone()], certain: true, enter_pid: None, netns_name: None });
    events.insert(1, named);
    let (e, _) = run(&events);
    let f = only(&e);
    assert_finding(&f, Cause::FirewallDrop, 1, &[812], None);
    let facts = f.rule.as_ref().expect("the rule");
    assert_eq!((facts.rules.as_slice(), facts.certain), (&[rule][..], true));
    assert_eq!(facts.netns, events[0].netns);
    assert!(f.fix.contains("`sudo nft delete rule inet filter output handle 4`"), "{}", f.fix);
    assert!(f.fix.contains("changes the firewall") && f.fix.contains("proxy_connect_timeout"), "{}", f.fix);
    assert_eq!(f.evidence[dropped_for("NETFILTER_DROP")], 3, "naming the rule is no drop");
}

#[test]
fn syn_retransmits_with_nothing_else_are_no_response_never_firewall_drop() {
    let f1 = flow("10.0.0.1:40001", "10.0.0.5:8000");
    let mut events = vec![
        // A wildcard listener on this host says nothing about another host's port.
        listen_start(S, &task(700, "gunicorn"), "0.0.0.0:8000"),
    ];
    for i in 1..=6u32 {
        events.push(retransmit(S + (1u64 << i) * S, 0x1, &nginx(812), f1, i, None, None));
    }
    events.push(failed(130 * S, 0x1, &nginx(812), f1, 110, 6, false, S));
    let (e, _) = run(&events);
    let f = only(&e);
    assert_finding(&f, Cause::NoResponse, 1, &[812], None);
    assert_eq!(f.target, Target::Tcp(addr("10.0.0.5:8000")));
    assert_eq!(f.evidence[Evidence::SynRetransmits], 6);
    assert!(!f.evidence.iter().any(|(e, _)| matches!(e, Evidence::Dropped { reason, .. } if reason.contains("NETFILTER"))));
}

#[test]
fn distinct_attempts_are_counted_once_whatever_the_retransmits() {
    let f1 = flow("10.0.0.1:40001", "10.0.0.5:8000");
    let mut events = Vec::new();
    for i in 1..=6u32 {
        events.push(retransmit(u64::from(i) * S, 0x1, &nginx(812), f1, i, None, None));
        // A duplicate delivery of the same retransmit changes nothing.
        events.push(retransmit(u64::from(i) * S, 0x1, &nginx(812), f1, i, None, None));
    }
    events.push(failed(10 * S, 0x1, &nginx(812), f1, 110, 6, false, 0));
    let (e, updates) = run(&events);
    let f = only(&e);
    assert_eq!(f.cause, Cause::NoResponse);
    assert_eq!(f.count, 1);
    assert_eq!(pids(&f), [812]);
    assert_eq!(f.evidence[Evidence::SynRetransmits], 6);
    assert_eq!(attempts(&updates).len(), 1);
}

// ---- timing: grace, delayed, pending ------------------------------------------------------

#[test]
fn evidence_arriving_after_the_close_within_grace_is_still_used() {
    let f1 = flow("127.0.0.1:40001", "127.0.0.1:8000");
    let mut e = engine();
    // The client side first (another CPU delivers the stack's side late).
    e.push(&rst_received(S, 0x1, &nginx(812), f1));
    e.push(&failed(S + 10_000, 0x1, &nginx(812), f1, 111, 0, true, S - MS));
    assert!(e.tick(S + 100 * MS).is_empty(), "concluded before the grace period ended");
    // Read 150 ms later, stamped when they happened: before the client heard the reset (a
    // segment to the target stamped after the close is a later attempt's: see
    // a_reused_ports_reset_read_before_its_attempt_is_not_claimed_by_the_closed_one).
    e.push(&rst_sent_no_socket(S + 5_000, f1));
    e.push(&dropped(S + 6_000, f1, "NO_SOCKET"));
    assert!(e.tick(S + 250 * MS).is_empty());
    let updates = e.tick(S + 10_000 + 301 * MS);
    let recs = attempts(&updates);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].cause, Cause::DeadListener);
    assert_eq!(recs[0].client.pid, 812);
    let f = only(&e);
    assert_finding(&f, Cause::DeadListener, 1, &[812], None);
    // The finding is reported as opened.
    assert!(updates.iter().any(|u| matches!(u, Update::Finding(f) if f.cause == Cause::DeadListener && f.count == 1)));
    // Nothing new: nothing to report.
    assert!(e.tick(S + 2 * S).is_empty());
    assert!(e.finish().is_empty());
}

#[test]
fn without_the_late_evidence_the_same_refusal_is_remote_refused() {
    let f1 = flow("127.0.0.1:40001", "127.0.0.1:8000");
    let mut e = engine();
    e.push(&rst_received(S, 0x1, &nginx(812), f1));
    e.push(&failed(S + 10_000, 0x1, &nginx(812), f1, 111, 0, true, S - MS));
    let updates = e.tick(S + 400 * MS);
    assert_eq!(attempts(&updates)[0].cause, Cause::RemoteRefused);
    // Evidence arriving after the conclusion does not open a second attempt.
    e.push(&rst_sent_no_socket(S + 500 * MS, f1));
    assert!(attempts(&e.tick(S + 900 * MS)).is_empty());
    assert!(attempts(&e.finish()).is_empty());
    let f = only(&e);
    assert_eq!(f.cause, Cause::RemoteRefused);
    assert_eq!(f.count, 1);
    assert_eq!(pids(&f), [812]);
}

#[test]
fn delayed_then_connected_counts_only_under_backlog() {
    let gunicorn = task(700, "gunicorn");
    let local = flow("127.0.0.1:40001", "127.0.0.1:8000");
    let remote = flow("10.0.0.1:40002", "10.0.0.5:8000");
    let events = vec![
        listen_start(S, &gunicorn, "127.0.0.1:8000"),
        retransmit(3 * S, 0x1, &nginx(812), local, 1, Some(Queue { len: 129, max: 128 }), Some(gunicorn.clone())),
        ev(
            3 * S + 200 * MS,
            0x1,
            &nginx(812),
            EventBody::TcpAttemptDelayed { flow: local, syn_retransmits: 1, start_ns: 2 * S },
        ),
        // Slow but nothing says why: not a failure.
        retransmit(3 * S, 0x2, &nginx(813), remote, 1, None, None),
        ev(
            3 * S + 300 * MS,
            0x2,
            &nginx(813),
            EventBody::TcpAttemptDelayed { flow: remote, syn_retransmits: 1, start_ns: 2 * S },
        ),
    ];
    let (e, updates) = run(&events);
    let f = only(&e);
    assert_eq!(f.cause, Cause::BacklogFull);
    assert_eq!(f.target, Target::Tcp(addr("127.0.0.1:8000")));
    assert_eq!(f.count, 1);
    assert_eq!(f.delayed, 1);
    assert_eq!(pids(&f), [812]);
    assert_eq!(listener_pid(&f), Some(700));
    assert_eq!(f.queue, Some(Queue { len: 129, max: 128 }));
    assert_eq!(f.evidence[Evidence::DelayedThenConnected], 1);
    let recs = attempts(&updates);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].outcome, Outcome::Delayed);
}

#[test]
fn attempts_still_waiting_at_finish_are_classified_and_pending() {
    let gunicorn = task(700, "gunicorn");
    let f1 = flow("127.0.0.1:40001", "127.0.0.1:8000");
    let f2 = flow("10.0.0.1:40002", "10.0.0.9:8000");
    let mut e = engine();
    e.push(&listen_start(S, &gunicorn, "127.0.0.1:8000"));
    e.push(&retransmit(3 * S, 0x1, &nginx(812), f1, 1, Some(Queue { len: 5, max: 4 }), Some(gunicorn.clone())));
    e.push(&retransmit(3 * S, 0x2, &nginx(813), f2, 1, None, None));
    // Still open: tick does not conclude them.
    assert!(e.tick(4 * S).is_empty());
    assert!(e.findings().is_empty());
    let updates = e.finish();
    let recs = attempts(&updates);
    assert_eq!(recs.len(), 2);
    assert!(recs.iter().all(|a| a.outcome == Outcome::Pending && a.evidence[Evidence::PendingAtEnd] == 1));
    let all = e.findings();
    assert_eq!(all.len(), 2);
    let backlog = all.iter().find(|f| f.cause == Cause::BacklogFull).unwrap();
    assert_eq!(backlog.target, Target::Tcp(addr("127.0.0.1:8000")));
    assert_eq!((backlog.count, backlog.pending), (1, 1));
    assert_eq!(pids(backlog), [812]);
    assert_eq!(listener_pid(backlog), Some(700));
    let silent = all.iter().find(|f| f.cause == Cause::NoResponse).unwrap();
    assert_eq!(silent.target, Target::Tcp(addr("10.0.0.9:8000")));
    assert_eq!((silent.count, silent.pending), (1, 1));
    assert_eq!(pids(silent), [813]);
    assert_eq!(listener_pid(silent), None);
}

#[test]
fn an_owner_closing_without_evidence_is_not_a_failure() {
    let f1 = flow("127.0.0.1:40001", "127.0.0.1:8000");
    let (e, updates) = run(&[failed(S, 0x1, &nginx(812), f1, 0, 0, false, S - MS)]);
    assert!(e.findings().is_empty());
    assert!(updates.is_empty());
}

// ---- Unix sockets -------------------------------------------------------------------------

#[test]
fn unix_errnos_map_to_their_causes() {
    let gunicorn = task(700, "gunicorn");
    let events = vec![
        ev(S, 0, &gunicorn, EventBody::UnixBind { path: "/run/gunicorn/stale.sock".into() }),
        unix_failed(2 * S, &nginx(812), "/run/gunicorn/missing.sock", 2),
        unix_failed(2 * S + 1, &nginx(813), "/run/gunicorn/missing.sock", 2),
        unix_failed(3 * S, &nginx(812), "/run/gunicorn/stale.sock", 111),
        unix_failed(4 * S, &nginx(812), "/run/gunicorn/busy.sock", 11),
        unix_failed(5 * S, &nginx(812), "/run/gunicorn/private.sock", 13),
        unix_failed(5 * S + 1, &TaskInfo { uid: 34, ..nginx(814) }, "/run/gunicorn/private.sock", 1),
        unix_failed(6 * S, &nginx(812), "/run/gunicorn/other.sock", 22),
    ];
    let mut e = engine();
    for x in &events {
        e.push(x);
    }
    // Unix attempts conclude at once: the next tick reports them.
    let updates = e.tick(6 * S);
    // EINVAL (22) is not an upstream failure tracer explains.
    assert_eq!(attempts(&updates).len(), 6);
    let all = e.findings();
    assert_eq!(all.len(), 4, "{all:#?}");
    let get = |c: Cause| all.iter().find(|f| f.cause == c).unwrap_or_else(|| panic!("no {c:?}"));

    let missing = get(Cause::UnixMissing);
    assert_eq!(missing.target, Target::Unix("/run/gunicorn/missing.sock".into()));
    assert_eq!(missing.target.to_string(), "unix:/run/gunicorn/missing.sock");
    assert_eq!(missing.count, 2);
    assert_eq!(pids(missing), [812, 813]);
    assert_eq!(listener_pid(missing), None);
    assert_eq!(missing.listener_note, "no bind() of this path seen since tracing started");
    assert!(missing.evidence[Evidence::ConnectErrno(2)] == 2);
    assert!(missing.fix.contains("recreates") && missing.fix.contains("tmpfiles"));
    // Another path in the same directory is bound by a live process.
    assert_eq!(
        missing.hint.as_deref(),
        Some("gunicorn (pid 700) bound /run/gunicorn/stale.sock; is proxy_pass pointing at the wrong path?")
    );

    let stale = get(Cause::UnixStale);
    assert_eq!(stale.target, Target::Unix("/run/gunicorn/stale.sock".into()));
    assert_eq!(stale.count, 1);
    assert_eq!(pids(stale), [812]);
    assert_eq!(listener_pid(stale), Some(700));
    assert!(
        stale.listener_note.starts_with("gunicorn (pid 700) bound this path 2.0 s before the first failed attempt"),
        "{}",
        stale.listener_note
    );

    let busy = get(Cause::UnixBacklogFull);
    assert_eq!(busy.count, 1);
    assert_eq!(pids(busy), [812]);
    assert_eq!(listener_pid(busy), None);

    let denied = get(Cause::UnixPermissionDenied);
    assert_eq!(denied.count, 2);
    assert_eq!(pids(denied), [812, 814]);
    assert_eq!(listener_pid(denied), None);
    assert_eq!(denied.uids, [33, 34]);
    assert!(denied.fix.contains("uid 33, 34"), "{}", denied.fix);
}

#[test]
fn unix_backlog_full_reports_the_measured_queue() {
    let target = Target::Unix("/run/app.sock".into());
    let events = vec![
        Event {
            ts_ns: S,
            netns: NS,
            sock: 0,
            task: task(700, "gunicorn"),
            body: EventBody::ListenerSeen { target: target.clone(), queue: Queue { len: 129, max: 128 } },
        },
        unix_failed(S + 10 * MS, &nginx(812), "/run/app.sock", 11),
    ];
    let (e, _) = run(&events);
    let f = only(&e);
    assert_finding(&f, Cause::UnixBacklogFull, 1, &[812], Some(700));
    assert_eq!(f.target, target);
    assert_eq!(f.queue, Some(Queue { len: 129, max: 128 }));
}

// ---- aggregation and bookkeeping ----------------------------------------------------------

#[test]
fn two_clients_are_deduplicated_and_findings_sorted_by_count() {
    let mut events = Vec::new();
    for i in 0..5u64 {
        let pid = if i < 3 { 812 } else { 813 };
        events.extend(dead_listener_attempt(
            (i + 1) * S,
            0x10 + i,
            &nginx(pid),
            flow(&format!("127.0.0.1:{}", 40000 + i), "127.0.0.1:8000"),
        ));
    }
    events.extend(dead_listener_attempt(9 * S, 0x99, &nginx(812), flow("127.0.0.1:41000", "127.0.0.1:7000")));
    let (e, _) = run(&events);
    let all = e.findings();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].target, Target::Tcp(addr("127.0.0.1:8000")));
    assert_eq!(all[0].count, 5);
    assert_eq!(pids(&all[0]), [812, 813]);
    assert_eq!(all[0].clients[0].comm, "nginx");
    assert_eq!(all[1].target, Target::Tcp(addr("127.0.0.1:7000")));
    assert_eq!(all[1].count, 1);
}

#[test]
fn the_client_is_the_owner_recorded_at_connect_time() {
    // The stack's events fire in whatever task softirq interrupted: never the client.
    let f1 = flow("127.0.0.1:40001", "127.0.0.1:8000");
    let mut events = dead_listener_attempt(S, 0x1, &nginx(812), f1);
    for x in events.iter_mut().filter(|x| x.sock == 0) {
        x.task = task(1, "systemd");
    }
    let (e, _) = run(&events);
    let f = only(&e);
    assert_eq!(pids(&f), [812]);
}

#[test]
fn lost_events_are_surfaced() {
    let mut e = engine();
    e.push(&packet(S, EventBody::Lost { kind: RecordKind(EventKind::TcpAttemptFailed), count: 5 }));
    e.push(&packet(2 * S, EventBody::Lost { kind: RecordKind(EventKind::TcpAttemptFailed), count: 2 }));
    e.push(&packet(2 * S, EventBody::Lost { kind: RecordKind(EventKind::UnixConnectFailed), count: 1 }));
    let lost = e.lost_events();
    assert_eq!(lost.get(&RecordKind(EventKind::TcpAttemptFailed)), Some(&7));
    assert_eq!(lost.get(&RecordKind(EventKind::UnixConnectFailed)), Some(&1));
}

#[test]
fn memory_stays_bounded_and_no_attempt_is_lost() {
    let opts = EngineOptions { max_tracked: 100, ..EngineOptions::default() };
    let mut e = Engine::new(opts);
    let mut most = 0;
    for i in 0..1000u64 {
        let f = flow(&format!("10.0.{}.{}:{}", i / 250, i % 250, 40000 + i % 20000), "10.9.9.9:8000");
        e.push(&retransmit(S + i * MS, 0x1000 + i, &nginx(812), f, 1, None, None));
        // Unrelated socket-less evidence that no attempt will claim.
        e.push(&dropped(
            S + i * MS,
            flow(&format!("192.168.{}.{}:80", i / 250, i % 250), "10.1.1.1:5555"),
            "NO_SOCKET",
        ));
        e.push(&packet(
            S + i * MS,
            EventBody::IcmpSent { flow: flow("192.168.0.1:0", "10.1.1.1:0"), icmp_type: 3, code: 1 },
        ));
        most = most.max(e.tracked_attempts());
    }
    assert!(most <= 100, "tracked {most} attempts");
    // flow evidence + ICMP + overflows + listeners, each bounded by max_tracked.
    assert!(e.buffered_evidence() <= 400, "buffered {}", e.buffered_evidence());
    e.finish();
    let f = only(&e);
    assert_eq!(f.cause, Cause::NoResponse);
    assert_eq!(f.target, Target::Tcp(addr("10.9.9.9:8000")));
    assert_eq!(f.count, 1000, "every attempt counted once, evicted or not");
    assert_eq!(f.pending, 1000);
    assert_eq!(pids(&f), [812]);
    assert_eq!(e.tracked_attempts(), 0);
}

#[test]
fn evidence_expires_after_its_ttl() {
    let opts = EngineOptions { evidence_ttl_ns: 10 * S, ..EngineOptions::default() };
    let mut e = Engine::new(opts);
    let f1 = flow("127.0.0.1:40001", "127.0.0.1:8000");
    e.push(&rst_sent_no_socket(S, f1));
    e.push(&dropped(S, f1, "NETFILTER_DROP"));
    assert_eq!(e.buffered_evidence(), 2);
    e.tick(20 * S);
    assert_eq!(e.buffered_evidence(), 0);
    // Too old to explain a later attempt on a reused port.
    e.push(&rst_received(21 * S, 0x1, &nginx(812), f1));
    e.push(&failed(21 * S, 0x1, &nginx(812), f1, 111, 0, true, 21 * S - MS));
    e.finish();
    let f = only(&e);
    assert_eq!(f.cause, Cause::RemoteRefused);
    assert_eq!(f.count, 1);
}

#[test]
fn an_open_attempt_silent_for_too_long_is_concluded_as_pending() {
    let mut e = engine();
    let f1 = flow("10.0.0.1:40001", "10.0.0.5:8000");
    e.push(&retransmit(S, 0x1, &nginx(812), f1, 1, None, None));
    assert!(e.tick(100 * S).is_empty());
    let recs = attempts(&e.tick(300 * S));
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].outcome, Outcome::Pending);
    assert_eq!(recs[0].evidence[Evidence::PendingNoCloseSeen], 1);
    // Its lost close arriving late does not count it twice.
    e.push(&failed(301 * S, 0x1, &nginx(812), f1, 110, 6, false, 0));
    e.finish();
    assert_eq!(only(&e).count, 1);
}

// ---- recorded streams ---------------------------------------------------------------------

#[test]
fn recorded_dead_listener_stream() {
    let (e, _) = run(&fixture("dead_listener.json"));
    let f = only(&e);
    assert_finding(&f, Cause::DeadListener, 2, &[812, 813], Some(700));
    assert_eq!(f.target.to_string(), "127.0.0.1:8000");
    assert_eq!(
        f.hint.as_deref(),
        Some(
            "the same process gunicorn (pid 700) listens on 127.0.0.1:8001; is proxy_pass pointing at the wrong port?"
        )
    );
}

#[test]
fn recorded_mixed_stream() {
    // IPv6 backlog (measured by sock_diag on a [::] listener) next to an IPv4 firewall drop.
    let (e, _) = run(&fixture("backlog_and_drop.json"));
    let all = e.findings();
    assert_eq!(all.len(), 2, "{all:#?}");
    let backlog = all.iter().find(|f| f.cause == Cause::BacklogFull).unwrap();
    assert_eq!(backlog.target.to_string(), "[::1]:8000");
    assert_eq!(backlog.count, 2);
    assert_eq!(pids(backlog), [812]);
    assert_eq!(listener_pid(backlog), Some(700));
    assert_eq!(backlog.queue, Some(Queue { len: 11, max: 10 }));
    let drop = all.iter().find(|f| f.cause == Cause::FirewallDrop).unwrap();
    assert_eq!(drop.target.to_string(), "127.0.0.1:8002");
    assert_eq!(drop.count, 1);
    assert_eq!(pids(drop), [813]);
    assert_eq!(listener_pid(drop), None);
}

/// A refused-connect flood: socket memory and ephemeral ports are reused within moments, so
/// the same (socket, flow) comes back while the previous attempt is still followed or was
/// just concluded. Every attempt must count once, each with its own evidence.
#[test]
fn flood_with_reused_sockets_and_ports_counts_every_attempt() {
    let client = nginx(812);
    let mut e = engine();
    let n = 2000u64;
    for i in 0..n {
        // Two sockets and three source ports, reused round robin: keys repeat every 6 attempts.
        let sock = 0x10 + (i % 2);
        let f = flow(&format!("127.0.0.1:{}", 40000 + (i % 3)), "127.0.0.1:9000");
        let ts = S + i * 50_000;
        let mut evs = dead_listener_attempt(ts, sock, &client, f);
        evs.retain(|ev| !matches!(ev.body, EventBody::TcpRstReceived { .. })); // folded in the kernel
        for ev in &evs {
            e.push(ev);
        }
        if i % 500 == 0 {
            e.tick(ts);
        }
    }
    e.finish();
    let f = only(&e);
    assert_eq!(f.cause, Cause::DeadListener);
    assert_eq!(f.count, n);
    assert_eq!(f.evidence[reset_sent("NO_SOCKET")], n);
    assert_eq!(f.evidence[dropped_for("NO_SOCKET")], n);
    assert_eq!(f.evidence[Evidence::ConnectErrno(111)], n);
}

/// The flood's rare miss (1 attempt in ~160,000 called `remote_refused`): an ephemeral port
/// comes back 0.25 s after its last refusal, inside the 300 ms the closed attempt waits for
/// late evidence. The new attempt's reset is read in one drain, its close in the next, and the
/// tick between them concludes the old attempt, which must not take that reset: a closed
/// SYN_SENT socket sends nothing more, so a refused segment going to the target after its
/// close is a later attempt's.
#[test]
fn a_reused_ports_reset_read_before_its_attempt_is_not_claimed_by_the_closed_one() {
    let client = nginx(812);
    let f = flow("127.0.0.1:40000", "127.0.0.1:9000");
    let mut e = engine();
    for ev in dead_listener_attempt(S, 0x10, &client, f) {
        e.push(&ev);
    }
    let t = S + 250 * MS;
    let second = dead_listener_attempt(t, 0x11, &client, f);
    // The reset and the drop of the second attempt's SYN ...
    e.push(&second[0]);
    e.push(&second[1]);
    // ... then the first attempt's grace runs out ...
    e.tick(S + 400 * MS);
    // ... then the second attempt's reset and close.
    e.push(&second[2]);
    e.push(&second[3]);
    e.finish();
    let f = only(&e);
    assert_eq!(f.cause, Cause::DeadListener);
    assert_eq!(f.count, 2);
    assert_eq!(f.evidence[reset_sent("NO_SOCKET")], 2);
    assert_eq!(f.evidence[dropped_for("NO_SOCKET")], 2);
}

// ---- issue 10 item 10: the fix follows the evidence -------------------------------------

#[test]
fn dead_listener_fix_names_the_python3_listener_and_its_unit_never_gunicorn() {
    let app = task(700, "python3");
    let events = vec![
        listen_start(S, &app, "127.0.0.1:8000"),
        ev(S, 0, &app, EventBody::ProcessInfo { ppid: 1, cgroup: Some("/system.slice/shop-api.service".into()), unit: Some("shop-api.service".into()) }),
        listen_stop(2 * S, &app, "127.0.0.1:8000"),
    ]
    .into_iter()
    .chain(dead_listener_attempt(3 * S, 0x1, &nginx(812), flow("127.0.0.1:40001", "127.0.0.1:8000")))
    .collect::<Vec<_>>();
    let (e, _) = run(&events);
    let f = only(&e);
    assert_eq!(f.cause, Cause::DeadListener);
    assert!(f.fix.contains("python3 (pid 700, unit shop-api.service)"), "{}", f.fix);
    assert!(f.fix.contains("`sudo systemctl restart shop-api.service`"), "{}", f.fix);
    assert!(f.fix.contains("`journalctl -u shop-api.service --since '5 min ago'`"), "{}", f.fix);
    assert!(!f.fix.to_lowercase().contains("gunicorn"), "{}", f.fix);
    assert!(f.proxy_client());

    // A scope is where it ran, not a service to restart.
    let scoped: Vec<Event> = events
        .iter()
        .cloned()
        .map(|mut e| {
            if let EventBody::ProcessInfo { unit, .. } = &mut e.body {
                *unit = Some("session-4.scope".into());
            }
            e
        })
        .collect();
    let f = only(&run(&scoped).0);
    assert!(f.fix.contains("python3 (pid 700, in session-4.scope)") && !f.fix.contains("systemctl restart"), "{}", f.fix);

    // Without a unit: the process is named, no unit is guessed.
    let events: Vec<Event> = events.into_iter().filter(|e| !matches!(e.body, EventBody::ProcessInfo { .. })).collect();
    let f = only(&run(&events).0);
    assert!(f.fix.contains("python3 (pid 700) listened there"), "{}", f.fix);
    assert!(!f.fix.contains("systemctl restart") && f.fix.contains("journalctl _COMM=python3"), "{}", f.fix);
}

#[test]
fn dead_listener_fix_without_any_listener_names_no_program() {
    let events = dead_listener_attempt(3 * S, 0x1, &nginx(812), flow("127.0.0.1:40001", "127.0.0.1:8000"));
    let f = only(&run(&events).0);
    assert!(f.fix.contains("tracer saw no listener there since it started"), "{}", f.fix);
    assert!(f.fix.contains("ss -tlnp | grep 8000"), "{}", f.fix);
    assert!(!f.fix.to_lowercase().contains("gunicorn") && !f.fix.contains("systemctl restart"), "{}", f.fix);
}

#[test]
fn logger_on_dev_log_is_not_a_proxy_finding_and_gets_no_gunicorn_fix() {
    let logger = task(4242, "logger");
    let (e, _) = run(&[unix_failed(S, &logger, "/dev/log", libc::ENOENT)]);
    let f = only(&e);
    assert_eq!(f.cause, Cause::UnixMissing);
    assert!(!f.proxy_client());
    assert!(!f.fix.to_lowercase().contains("gunicorn") && !f.fix.contains("proxy_pass"), "{}", f.fix);
    assert!(f.fix.contains("the program that should listen there"), "{}", f.fix);
    assert!(f.fix.contains("`ls -la /dev/log`"), "{}", f.fix);

    // nginx among the clients makes it a proxy finding again.
    let (e, _) = run(&[unix_failed(S, &logger, "/dev/log", libc::ENOENT), unix_failed(S + 1, &nginx(812), "/dev/log", libc::ENOENT)]);
    assert!(only(&e).proxy_client());
    for comm in ["nginx", "haproxy", "envoy", "openresty"] {
        assert!(is_proxy_comm(comm), "{comm}");
    }
    assert!(!is_proxy_comm("logger") && !is_proxy_comm("curl") && PROXY_COMMS.len() > 4);
}

#[test]
fn abstract_unix_names_are_never_called_files() {
    let (e, _) = run(&[unix_failed(S, &nginx(812), "@app-socket", libc::ECONNREFUSED)]);
    let f = only(&e);
    assert_eq!(f.cause, Cause::UnixStale);
    for text in [&f.detail, &f.fix, &f.listener_note] {
        let lower = text.to_lowercase();
        for wrong in ["socket file", "a file", "the file", "stale", "left behind", "ls -la"] {
            assert!(!lower.contains(wrong), "{wrong}: {text}");
        }
    }
    assert!(f.detail.contains("abstract name @app-socket"), "{}", f.detail);
    assert!(f.fix.contains("abstract socket name @app-socket"), "{}", f.fix);
}

#[test]
fn paths_in_suggested_commands_are_single_shell_words() {
    use super::cause_words::shell_word;
    assert_eq!(shell_word("/run/app.sock"), "/run/app.sock");
    assert_eq!(shell_word("/run/my app.sock"), "'/run/my app.sock'");
    assert_eq!(shell_word("/run/it's"), "'/run/it'\\''s'");
    assert_eq!(shell_word("/tmp/x\n\x1b[31mFIREWALL DROP"), "$'/tmp/x\\n\\x1b[31mFIREWALL DROP'");
    assert_eq!(shell_word("a\u{9b}b'\\"), "$'a\\u009bb\\'\\\\'");
    let evil = "/tmp/x\n\x1b[31mFIREWALL DROP 10.0.0.1:443";
    let (e, _) = run(&[unix_failed(S, &nginx(812), evil, libc::ENOENT)]);
    let f = only(&e);
    assert!(f.fix.contains("`ls -la $'/tmp/x\\n\\x1b[31mFIREWALL DROP 10.0.0.1:443'`"), "{}", f.fix);
}

/// The bench's nft-dropped burst as the kernel shows it: 50,000 non-blocking connects closed at
/// once, one socket address, the ephemeral port stepping by two (each back every 14,116
/// attempts, inside the grace a closed attempt waits for late evidence), and drains that split
/// a drop from its close with a tick up to a second late between them. Every attempt counts
/// once as a firewall drop, none as anything else.
#[test]
fn nft_dropped_burst_with_reused_ports_counts_every_attempt() {
    let client = nginx(812);
    for (lag_ms, every) in [(5u64, 7u64), (299, 5000), (1000, 5000)] {
        let mut e = engine();
        let n = 50_000u64;
        for i in 0..n {
            let sock = 0x10;
            let f = flow(&format!("127.0.0.1:{}", 32768 + (i * 2) % 28232), "127.0.0.1:9001");
            let ts = S + i * 3_600;
            // The drop happens inside connect(), where the kernel finds the attempt's record.
            let mut drop = dropped(ts + 1_000, f, "NETFILTER_DROP");
            drop.sock = sock;
            drop.task = client.clone();
            e.push(&drop);
            if i % every == every - 1 {
                e.tick(ts + lag_ms * MS);
            }
            e.push(&failed(ts + 2_000, sock, &client, f, 0, 0, false, ts));
        }
        e.finish();
        let f = only(&e);
        assert_eq!(f.cause, Cause::FirewallDrop, "tick {lag_ms} ms late every {every}");
        assert_eq!(f.count, n, "tick {lag_ms} ms late every {every}");
        assert_eq!(pids(&f), [812]);
    }
}
