//! Unit tests on recorded sequences of the function-hook backend's events: SYN-time overflows
//! seen in tcp_conn_request, and accept-queue wait histograms from inet_csk_accept.

use super::test_kit::*;
use super::*;
use crate::event::{EventBody, Queue, Target};

/// listen(1), never accept: each SYN of two clients beyond the first hits the full queue in
/// tcp_conn_request. No queue reading at the retransmits (the tracepoint had no listener
/// recorded), no ListenOverflows counter: the overflow alone names the cause and the listener.
#[test]
fn syn_time_overflow_alone_is_backlog_full_with_queue_and_listener() {
    let app = task(700, "python3");
    let client = task(900, "nginx");
    let f1 = flow("127.0.0.1:40001", "127.0.0.1:8000");
    let f2 = flow("127.0.0.1:40002", "127.0.0.1:8000");
    let events = vec![
        overflow(S, f1, 2, 1, &app),
        overflow(S + MS, f2, 2, 1, &app),
        retransmit(2 * S, 0x1, &client, f1, 1, None, None),
        overflow(2 * S + 10_000, f1, 2, 1, &app),
        retransmit(2 * S + MS, 0x2, &client, f2, 1, None, None),
        overflow(2 * S + MS + 10_000, f2, 2, 1, &app),
    ];
    let (e, _) = run(&events);
    let findings = e.findings();
    assert_eq!(findings.len(), 1, "{findings:#?}");
    let f = &findings[0];
    assert_eq!(f.cause, Cause::BacklogFull);
    assert_eq!(f.target, Target::Tcp(addr("127.0.0.1:8000")));
    assert_eq!(f.count, 2);
    assert_eq!(f.pending, 2);
    assert_eq!(f.listener.as_ref().map(|l| l.pid), Some(700));
    assert_eq!(f.queue, Some(Queue { len: 2, max: 1 }));
    assert_eq!(f.evidence.get(&Evidence::SynOverflow), 4, "{:?}", f.evidence);
    assert_eq!(f.syn_overflows.len(), 4);
    assert!(f.syn_overflows.iter().all(|o| o.queue == Queue { len: 2, max: 1 } && o.listener.as_ref().map(|l| l.pid) == Some(700)));
    assert!(f.syn_overflows.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
    assert!(f.accept_wait_ms.is_empty());
}

/// The overflow is on the SYN's flow: an overflow of another client's SYN does not make this
/// attempt a backlog victim, and overflows with no attempt make no finding.
#[test]
fn overflow_of_another_flow_is_not_evidence() {
    let app = task(700, "python3");
    let client = task(900, "nginx");
    let mine = flow("127.0.0.1:40001", "127.0.0.1:8000");
    let other = flow("127.0.0.1:40009", "127.0.0.1:8000");
    let events = vec![
        overflow(S, other, 2, 1, &app),
        retransmit(2 * S, 0x1, &client, mine, 1, None, None),
        ev(3 * S, 0x1, &client, EventBody::TcpAttemptFailed { flow: mine, sk_err: 110, syn_retransmits: 1, rst_received: false, start_ns: S }),
    ];
    let (e, _) = run(&events);
    let f = e.findings();
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_ne!(f[0].cause, Cause::BacklogFull);
    assert!(!f[0].evidence.contains(&Evidence::SynOverflow));

    let (e, _) = run(&[overflow(S, other, 2, 1, &app)]);
    assert!(e.findings().is_empty());
}

/// A slow acceptor: connections overflow, then the listener drains its queue late. The
/// finding carries the accept-wait histogram of that listener; other listeners' waits stay
/// out of it.
#[test]
fn accept_wait_histogram_per_listener() {
    let app = task(700, "python3");
    let client = task(900, "nginx");
    let f1 = flow("127.0.0.1:40001", "127.0.0.1:8000");
    let elsewhere = flow("127.0.0.1:50001", "127.0.0.1:9000");
    let events = vec![
        accepted(S / 2, 0xc0, &app, flow("127.0.0.1:39999", "127.0.0.1:8000"), 300_000),
        overflow(S, f1, 2, 1, &app),
        retransmit(2 * S, 0x1, &client, f1, 1, None, None),
        accepted(3 * S, 0xc1, &app, flow("127.0.0.1:40003", "127.0.0.1:8000"), 2_500 * MS),
        accepted(3 * S + MS, 0xc2, &app, flow("127.0.0.1:40004", "127.0.0.1:8000"), 2_400 * MS),
        accepted(3 * S + 2 * MS, 0xc3, &app, flow("127.0.0.1:40005", "127.0.0.1:8000"), 5 * MS),
        accepted(3 * S, 0xd1, &task(800, "other"), elsewhere, 150 * MS),
        ev(
            3 * S + 5 * MS,
            0x1,
            &client,
            EventBody::TcpAttemptDelayed { flow: f1, syn_retransmits: 1, start_ns: S },
        ),
    ];
    let (e, _) = run(&events);
    let f = e.findings();
    assert_eq!(f.len(), 1, "{f:#?}");
    let f = &f[0];
    assert_eq!(f.cause, Cause::BacklogFull);
    assert_eq!(f.delayed, 1);
    let h: Vec<(&str, u64)> = f.accept_wait_ms.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(h, vec![("1-10", 1), ("<1", 1), (">=1000", 2)]);
    let all = e.accept_waits();
    assert_eq!(all.len(), 2);
    assert_eq!(all[&(Target::Tcp(addr("127.0.0.1:9000")), NS)]["100-1000"], 1);
}

#[test]
fn accept_wait_buckets() {
    assert_eq!(accept_wait_bucket(0), "<1");
    assert_eq!(accept_wait_bucket(999_999), "<1");
    assert_eq!(accept_wait_bucket(MS), "1-10");
    assert_eq!(accept_wait_bucket(10 * MS), "10-100");
    assert_eq!(accept_wait_bucket(999 * MS), "100-1000");
    assert_eq!(accept_wait_bucket(S), ">=1000");
}

/// Kernel 6.1 (seen in the VM matrix): tcp_send_reset does not fire for a reset sent with no
/// socket, so the dead listener shows only as a NO_SOCKET drop of the SYN, then the RST
/// reaching the client.
#[test]
fn dead_listener_on_6_1_without_socketless_send_reset() {
    let client = task(900, "nginx");
    let f = flow("127.0.0.1:40001", "127.0.0.1:8000");
    let t = S;
    let events = vec![
        ev(t + 20_000, 0, &task(0, "swapper/0"), EventBody::SkbDropped { flow: Some(f), reason: "NO_SOCKET".into() }),
        ev(t + 30_000, 0x1, &client, EventBody::TcpRstReceived { flow: f }),
        ev(t + 40_000, 0x1, &client, EventBody::TcpAttemptFailed { flow: f, sk_err: 111, syn_retransmits: 0, rst_received: true, start_ns: t }),
    ];
    let (e, _) = run(&events);
    let f = e.findings();
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].cause, Cause::DeadListener, "{f:#?}");
}

/// unix_backlog_full with the listener's queue read in the kernel during the failing connect
/// (unix_find_other + unix_stream_connect): evidence and queue, no sock_diag needed. A queue
/// read for another path is not this failure's.
#[test]
fn unix_peer_queue_read_in_kernel() {
    let client = task(900, "nginx");
    let path = "/run/app.sock";
    let events = vec![
        ev(S, 0, &client, EventBody::UnixPeerQueue { path: "/run/other.sock".into(), queue: Queue { len: 9, max: 8 } }),
        ev(2 * S, 0, &client, EventBody::UnixPeerQueue { path: path.into(), queue: Queue { len: 2, max: 1 } }),
        ev(2 * S, 0xb1, &client, EventBody::UnixConnectFailed { path: path.into(), errno: 11 }),
        ev(3 * S, 0xb2, &client, EventBody::UnixConnectFailed { path: path.into(), errno: 11 }),
    ];
    let (e, _) = run(&events);
    let f = e.findings();
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].cause, Cause::UnixBacklogFull);
    assert_eq!(f[0].count, 2);
    assert_eq!(f[0].queue, Some(Queue { len: 2, max: 1 }));
    // One of the two failures had its queue read in the kernel.
    assert_eq!(f[0].evidence.get(&Evidence::UnixPeerQueueFull), 1, "{:?}", f[0].evidence);
}

/// The kernel's histogram totals (read from its map about once a second) replace each other
/// and add to per-connection events; they reach the backlog finding of that listener only.
#[test]
fn kernel_accept_wait_totals_replace_each_other() {
    let app = task(700, "gunicorn");
    let client = task(900, "nginx");
    let f1 = flow("127.0.0.1:40001", "127.0.0.1:8000");
    let totals = |ts: u64, l: &str, counts: [u64; 5]| ev(ts, 0, &task(0, ""), EventBody::AcceptWaitTotals { listener: addr(l), counts });
    let events = vec![
        overflow(S, f1, 2, 1, &app),
        retransmit(2 * S, 0x1, &client, f1, 1, None, None),
        totals(2 * S, "127.0.0.1:8000", [1, 0, 0, 0, 0]),
        totals(3 * S, "127.0.0.1:8000", [4, 0, 0, 1, 2]),
        totals(3 * S, "127.0.0.1:9000", [7, 0, 0, 0, 0]),
    ];
    let (e, _) = run(&events);
    let f = e.findings().into_iter().next().unwrap();
    let h: Vec<(&str, u64)> = f.accept_wait_ms.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(h, vec![("100-1000", 1), ("<1", 4), (">=1000", 2)]);
    assert_eq!(e.accept_waits()[&(Target::Tcp(addr("127.0.0.1:9000")), NS)]["<1"], 7);
}
