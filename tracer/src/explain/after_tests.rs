//! The after-connect causes, replayed from recorded-like streams: Nginx's side of a
//! connection, the upstream's side when this host has it, and tracer's measurements.

use super::rules::{classify_after_connect, ConnFacts};
use super::test_kit::*;
use super::{Cause, DeathHow, Evidence};
use crate::event::{ConnEnd, Event, EventBody, FatalSignal, FlowAddr, TaskInfo};

const NGINX_SOCK: u64 = 0xffff_0001;
const UPSTREAM_SOCK: u64 = 0xffff_0002;

fn nginx_flow() -> FlowAddr {
    flow("127.0.0.1:40000", "127.0.0.1:8000")
}

/// Nginx's side (the socket tracer saw connect, owned by worker 812).
fn nginx_end(ts: u64, end: ConnEnd, sk_err: i32, after_fin: bool, received: u64, idle_ns: Option<u64>) -> Event {
    ev(
        ts,
        NGINX_SOCK,
        &nginx(812),
        EventBody::TcpConnEnded {
            flow: nginx_flow(),
            end,
            client_side: true,
            after_fin,
            sk_err,
            bytes_sent: 143,
            bytes_received: received,
            start_ns: 10 * S,
            established_ns: 10 * S + MS,
            idle_before_fin_ns: idle_ns,
            since_fin_ns: None,
            closer: None,
            exit_code: 0,
            signal: None,
            unread_bytes: 0,
        },
    )
}

/// The upstream's side, closed by `closer` (a dying one when `exit_code` != 0).
fn upstream_end(ts: u64, end: ConnEnd, closer: &TaskInfo, exit_code: i32, signal: Option<FatalSignal>, unread: u32) -> Event {
    ev(
        ts,
        UPSTREAM_SOCK,
        closer,
        EventBody::TcpConnEnded {
            flow: nginx_flow().reversed(),
            end,
            client_side: false,
            after_fin: false,
            sk_err: 0,
            bytes_sent: 0,
            bytes_received: 143,
            start_ns: 0,
            established_ns: 0,
            idle_before_fin_ns: None,
            since_fin_ns: None,
            closer: Some(closer.clone()),
            exit_code,
            signal,
            unread_bytes: unread,
        },
    )
}

fn signal(sig: i32, ts: u64, sender: &TaskInfo) -> Option<FatalSignal> {
    Some(FatalSignal { signal: sig, ts_ns: ts, sender: sender.clone(), oom: false })
}

fn worker() -> TaskInfo {
    task(701, "gunicorn")
}

#[test]
fn the_after_connect_table_reads_like_its_comments() {
    let f = |g: fn(&mut ConnFacts)| {
        let mut facts = ConnFacts::default();
        g(&mut facts);
        classify_after_connect(&facts)
    };
    assert_eq!(f(|x| x.no_local_port = true), Some(Cause::PortsExhausted));
    assert_eq!(f(|x| { x.upstream_died = true; x.reset = true }), Some(Cause::UpstreamKilled));
    assert_eq!(f(|x| { x.reset_after_fin = true; x.nginx_received = 500 }), Some(Cause::KeepaliveRace));
    // A reset after a FIN on a connection that never carried a response: the upstream closed.
    assert_eq!(f(|x| { x.reset_after_fin = true; x.fin_before_response = true; x.nginx_sent = 143 }), Some(Cause::UpstreamClosed));
    assert_eq!(f(|x| x.reset = true), Some(Cause::UpstreamReset));
    assert_eq!(f(|x| { x.fin_before_response = true; x.nginx_sent = 143 }), Some(Cause::UpstreamClosed));
    // A server closing a connection on which no request went out failed nothing.
    assert_eq!(f(|x| x.fin_before_response = true), None);
    assert_eq!(f(|x| { x.nginx_closed = true; x.nginx_sent = 143 }), Some(Cause::UpstreamTimeout));
    // Closed well before its read timeout: Nginx's client went away (a 499), nothing failed.
    assert_eq!(f(|x| { x.nginx_closed = true; x.nginx_sent = 143; x.closed_before_read_timeout = true }), None);
    // Given up on while still in the listener's accept queue: nobody accepted it in time.
    assert_eq!(f(|x| { x.nginx_closed = true; x.nginx_sent = 143; x.never_accepted = true }), Some(Cause::BacklogFull));
    // A client closing a connection it never sent a request on gave up on nothing.
    assert_eq!(f(|x| x.nginx_closed = true), None);
    // Nginx closing a connection that had its response is not a failure.
    assert_eq!(f(|x| { x.nginx_closed = true; x.nginx_sent = 143; x.nginx_received = 10 }), None);
    assert_eq!(f(|_| {}), None);
}

#[test]
fn a_worker_that_segfaults_mid_request_is_upstream_killed_by_a_crash() {
    let w = worker();
    let (e, _) = run(&[
        upstream_end(11 * S, ConnEnd::LocalFin, &w, 11 | 0x80, signal(11, 11 * S - MS, &w), 0),
        nginx_end(11 * S + MS, ConnEnd::PeerFin, 0, false, 0, None),
    ]);
    let f = only(&e);
    assert_finding(&f, Cause::UpstreamKilled, 1, &[812], None);
    assert_eq!(f.upstream_process.as_ref().map(|p| p.pid), Some(701));
    let d = f.death.as_ref().unwrap();
    assert_eq!(d.how, DeathHow::Crash);
    assert_eq!(d.signal.as_deref(), Some("SIGSEGV"));
    assert_eq!(d.sender, None);
    let c = f.connection.as_ref().unwrap();
    assert_eq!(c.after_ms, 1000);
    assert_eq!((c.nginx_sent, c.nginx_received, c.upstream_received), (143, 0, Some(143)));
    assert_eq!(f.evidence.get(&Evidence::FatalSignal(11)), 1);
    assert!(f.detail.starts_with("1 request to 127.0.0.1:8000 lost its upstream: gunicorn (pid 701) crashed with SIGSEGV"), "{}", f.detail);
    assert!(f.fix.contains("coredumpctl info 701"), "{}", f.fix);
}

#[test]
fn kill_9_by_another_process_names_the_sender() {
    let w = worker();
    let killer = task(4242, "bash");
    let (e, _) = run(&[
        upstream_end(12 * S, ConnEnd::LocalFin, &w, 9, signal(9, 12 * S - MS, &killer), 0),
        nginx_end(12 * S + MS, ConnEnd::PeerFin, 0, false, 0, None),
    ]);
    let f = only(&e);
    assert_eq!(f.cause, Cause::UpstreamKilled);
    let d = f.death.as_ref().unwrap();
    assert_eq!((d.how, d.signal.as_deref()), (DeathHow::Signal, Some("SIGKILL")));
    assert_eq!(d.sender.as_ref().map(|s| s.pid), Some(4242));
    assert!(f.fix.contains("bash (pid 4242)"), "{}", f.fix);
}

#[test]
fn a_master_killing_its_worker_is_a_worker_timeout_with_the_masters_option() {
    let w = worker();
    let master = task(700, "gunicorn");
    // Gunicorn's worker handles SIGABRT and exits 1 while Python tears down: exit code 256,
    // and the socket may even close before do_exit (exit code 0), the signal just before.
    let (e, _) = run(&[
        upstream_end(40 * S, ConnEnd::Reset, &w, 0, signal(6, 39 * S, &master), 0),
        nginx_end(40 * S + MS, ConnEnd::Reset, 104, false, 0, None),
    ]);
    let f = only(&e);
    assert_eq!(f.cause, Cause::UpstreamKilled);
    let d = f.death.as_ref().unwrap();
    assert_eq!((d.how, d.signal.as_deref()), (DeathHow::WorkerTimeout, Some("SIGABRT")));
    assert!(f.fix.contains("Gunicorn's `--timeout`"), "{}", f.fix);
}

#[test]
fn an_old_signal_does_not_make_a_live_close_a_death() {
    let w = worker();
    // SIGTERM handled a minute ago; the worker now closes a connection alive.
    let (e, _) = run(&[
        upstream_end(100 * S, ConnEnd::LocalFin, &w, 0, signal(15, 40 * S, &task(1, "systemd")), 0),
        nginx_end(100 * S + MS, ConnEnd::PeerFin, 0, false, 0, None),
    ]);
    let f = only(&e);
    assert_eq!(f.cause, Cause::UpstreamClosed);
    assert_eq!(f.death, None);
    assert_eq!(f.upstream_process.as_ref().map(|p| p.pid), Some(701));
}

#[test]
fn a_killed_worker_whose_socket_resets_is_killed_not_reset() {
    let w = worker();
    let (e, _) = run(&[
        upstream_end(11 * S, ConnEnd::Reset, &w, 9, signal(9, 11 * S - MS, &task(9, "kill")), 143),
        nginx_end(11 * S + MS, ConnEnd::Reset, 104, false, 0, None),
    ]);
    assert_eq!(only(&e).cause, Cause::UpstreamKilled);
}

#[test]
fn a_live_upstream_closing_with_the_request_unread_is_upstream_reset() {
    let srv = task(900, "python3");
    let (e, _) = run(&[
        upstream_end(11 * S, ConnEnd::Reset, &srv, 0, None, 143),
        nginx_end(11 * S, ConnEnd::Reset, 104, false, 0, None),
    ]);
    let f = only(&e);
    assert_finding(&f, Cause::UpstreamReset, 1, &[812], None);
    assert_eq!(f.upstream_process.as_ref().map(|p| p.pid), Some(900));
    let reason = f.connection.as_ref().unwrap().reset_reason.clone().unwrap();
    assert!(reason.contains("143 bytes of the request unread"), "{reason}");
    assert_eq!(f.evidence.get(&Evidence::UpstreamAbort), 1);
}

#[test]
fn a_reset_from_another_host_is_upstream_reset_without_a_process() {
    let (e, _) = run(&[nginx_end(11 * S, ConnEnd::Reset, 104, false, 0, None)]);
    let f = only(&e);
    assert_eq!(f.cause, Cause::UpstreamReset);
    assert_eq!(f.upstream_process, None);
    assert!(f.connection.as_ref().unwrap().reset_reason.as_deref().unwrap().contains("not on this host"));
}

#[test]
fn a_reset_after_an_idle_close_on_a_reused_connection_is_a_keepalive_race() {
    // Two responses earlier (900 bytes), the upstream's FIN after 1.0 s idle, then Nginx wrote.
    let (e, _) = run(&[nginx_end(20 * S, ConnEnd::Reset, 32, true, 900, Some(1_000 * MS))]);
    let f = only(&e);
    assert_finding(&f, Cause::KeepaliveRace, 1, &[812], None);
    assert_eq!(f.connection.as_ref().unwrap().idle_ms, Some(1000));
    assert!(f.fix.contains("keepalive_timeout"), "{}", f.fix);
}

#[test]
fn an_application_reset_is_not_a_keepalive_race_even_on_a_reused_connection() {
    // Reset while ESTABLISHED (no FIN first): the application reset it.
    let (e, _) = run(&[nginx_end(20 * S, ConnEnd::Reset, 104, false, 900, None)]);
    assert_eq!(only(&e).cause, Cause::UpstreamReset);
}

#[test]
fn the_fin_then_the_reset_of_one_connection_count_once() {
    let (e, _) = run(&[
        nginx_end(11 * S, ConnEnd::PeerFin, 0, false, 0, None),
        nginx_end(11 * S + 2 * MS, ConnEnd::Reset, 32, true, 0, None),
    ]);
    let f = only(&e);
    assert_eq!((f.cause, f.count), (Cause::UpstreamClosed, 1));
}

#[test]
fn nginx_giving_up_is_upstream_timeout_with_the_holder_and_its_state() {
    let w = worker();
    let holder = ev(
        12 * S + MS,
        0,
        &w,
        EventBody::ConnHolder { flow: nginx_flow(), state: Some("S (sleeping)".into()), in_queue: false },
    );
    let (e, _) = run(&[nginx_end(12 * S, ConnEnd::LocalFin, 0, false, 0, None), holder]);
    let f = only(&e);
    assert_finding(&f, Cause::UpstreamTimeout, 1, &[812], None);
    assert_eq!(f.upstream_process.as_ref().map(|p| p.pid), Some(701));
    let c = f.connection.as_ref().unwrap();
    assert_eq!((c.after_ms, c.upstream_state.as_deref()), (2000, Some("S (sleeping)")));
}

#[test]
fn nginx_giving_up_on_a_connection_never_accepted_is_backlog_full() {
    let w = worker();
    let holder = ev(12 * S + MS, 0, &w, EventBody::ConnHolder { flow: nginx_flow(), state: None, in_queue: true });
    let (e, _) = run(&[nginx_end(12 * S, ConnEnd::LocalFin, 0, false, 0, None), holder]);
    let f = only(&e);
    assert_finding(&f, Cause::BacklogFull, 1, &[812], None);
    assert_eq!(f.evidence.get(&Evidence::NeverAccepted), 1);
    assert_eq!(f.connection, None);
}

#[test]
fn a_connect_without_a_free_port_is_ports_exhausted_with_the_range() {
    let no_port = failed(5 * S, 0xbeef, &nginx(812), flow("127.0.0.1:0", "127.0.0.1:8000"), 0, 0, false, 5 * S);
    let ports = ev(
        5 * S + MS,
        0,
        &task(0, "tracer"),
        EventBody::PortsInUse {
            target: addr("127.0.0.1:8000"),
            range: (40000, 40003),
            by_state: [("ESTABLISHED".to_string(), 4)].into_iter().collect(),
        },
    );
    let (e, _) = run(&[no_port, ports]);
    let f = only(&e);
    assert_finding(&f, Cause::PortsExhausted, 1, &[812], None);
    let p = f.ports.as_ref().unwrap();
    assert_eq!((p.range, p.held.get("ESTABLISHED")), ([40000, 40003], Some(&4)));
    assert!(f.detail.contains("40000-40003 (4 ports)"), "{}", f.detail);
    assert!(f.fix.contains("keepalive 32;"), "{}", f.fix);
}

#[test]
fn a_third_ack_dropped_at_a_full_queue_makes_the_later_timeout_backlog_full() {
    // Nginx's connect succeeded (SYN-ACK), the ACK and the request were dropped by the full
    // listener: the connection never reached a worker, and Nginx gave up later.
    let drop = dropped(10 * S + 2 * MS, nginx_flow(), "TCP_LISTEN_OVERFLOW");
    let (e, _) = run(&[drop, nginx_end(70 * S, ConnEnd::LocalFin, 0, false, 0, None)]);
    let f = only(&e);
    assert_finding(&f, Cause::BacklogFull, 1, &[812], None);
    assert_eq!(f.evidence.get(&dropped_for("TCP_LISTEN_OVERFLOW")), 1);
    assert_eq!(f.connection, None);
}

#[test]
fn a_connection_that_connected_late_at_a_full_queue_stays_with_its_backlog_finding() {
    // The attempt connected after SYN retransmits (backlog_full, delayed); Nginx then gave up
    // on it: that is the same failure, not an upstream timeout.
    let f = nginx_flow();
    let late = vec![
        retransmit(10 * S + S, NGINX_SOCK, &nginx(812), f, 1, Some(crate::event::Queue { len: 2, max: 1 }), None),
        ev(11 * S + 10 * MS, NGINX_SOCK, &nginx(812), EventBody::TcpAttemptDelayed { flow: f, syn_retransmits: 1, start_ns: 10 * S }),
        nginx_end(12 * S, ConnEnd::LocalFin, 0, false, 0, None),
    ];
    let (e, _) = run(&late);
    let f = only(&e);
    assert_eq!((f.cause, f.count, f.delayed), (Cause::BacklogFull, 1, 1));
}

#[test]
fn an_oom_kill_is_told_as_such() {
    let w = worker();
    let oom = Some(FatalSignal { signal: 9, ts_ns: 11 * S - MS, sender: task(1234, "python3"), oom: true });
    let (e, _) = run(&[
        upstream_end(11 * S, ConnEnd::LocalFin, &w, 9, oom, 0),
        nginx_end(11 * S + MS, ConnEnd::PeerFin, 0, false, 0, None),
    ]);
    let f = only(&e);
    assert_eq!(f.death.as_ref().map(|d| d.how), Some(DeathHow::Oom));
    assert_eq!(f.evidence.get(&Evidence::OomKill), 1);
}

#[test]
fn upstream_sides_alone_and_healthy_ends_make_no_finding() {
    let w = worker();
    let (e, _) = run(&[
        upstream_end(11 * S, ConnEnd::LocalFin, &w, 0, None, 0),
        // Nginx closing after it had its response (not sent by the kernel, but harmless).
        nginx_end(12 * S, ConnEnd::LocalFin, 0, false, 300, None),
    ]);
    assert!(e.findings().is_empty());
}

/// Nginx's read timeout for the test's upstream, as the run loop hands it from the config.
fn read_timeout(ms: u64) -> Vec<crate::explain::NginxReadTimeout> {
    vec![crate::explain::NginxReadTimeout { netns: NS, target: crate::event::Target::Tcp(nginx_flow().dst), timeout_ms: ms }]
}

/// Nginx closing with no response byte, `after` the connect (at 10 s), under `timeouts`.
fn nginx_gives_up_after(after: u64, timeouts: Vec<crate::explain::NginxReadTimeout>) -> super::Engine {
    let mut e = engine();
    e.set_read_timeouts(timeouts);
    e.push(&nginx_end(10 * S + after, ConnEnd::LocalFin, 0, false, 0, None));
    e.finish();
    e
}

#[test]
fn nginx_closing_well_before_its_read_timeout_is_a_client_abort_not_a_finding() {
    // proxy_read_timeout 30s, closed after 7 s: Nginx's client went away (a 499).
    let e = nginx_gives_up_after(7 * S, read_timeout(30_000));
    assert_eq!(e.findings(), Vec::new());
}

#[test]
fn nginx_closing_at_its_read_timeout_is_upstream_timeout() {
    let e = nginx_gives_up_after(30 * S + 200 * MS, read_timeout(30_000));
    let f = only(&e);
    assert_finding(&f, Cause::UpstreamTimeout, 1, &[812], None);
    assert_eq!(f.connection.as_ref().map(|c| c.after_ms), Some(30_200));
    // Just inside the slack (90% of 30 s minus 300 ms = 26.7 s) it still counts.
    let e = nginx_gives_up_after(26_700 * MS, read_timeout(30_000));
    assert_eq!((only(&e).cause, only(&e).count), (Cause::UpstreamTimeout, 1));
    let e = nginx_gives_up_after(26_699 * MS, read_timeout(30_000));
    assert_eq!(e.findings(), Vec::new());
}

#[test]
fn without_a_known_read_timeout_nginx_closing_stays_upstream_timeout() {
    // No configuration for the target.
    let e = nginx_gives_up_after(7 * S, Vec::new());
    let f = only(&e);
    assert_finding(&f, Cause::UpstreamTimeout, 1, &[812], None);
    assert_eq!(f.connection.as_ref().map(|c| c.after_ms), Some(7_000));
    // Another namespace's Nginx configures it: not this one's timeout.
    let mut other_netns = read_timeout(30_000);
    other_netns[0].netns = NS + 1;
    let e = nginx_gives_up_after(7 * S, other_netns);
    assert_eq!((only(&e).cause, only(&e).count), (Cause::UpstreamTimeout, 1));
    // Another target's timeout.
    let other_target = vec![crate::explain::NginxReadTimeout {
        netns: NS,
        target: crate::event::Target::Tcp(addr("127.0.0.1:9000")),
        timeout_ms: 30_000,
    }];
    let e = nginx_gives_up_after(7 * S, other_target);
    assert_eq!((only(&e).cause, only(&e).count), (Cause::UpstreamTimeout, 1));
    // Timeouts set, then replaced by none (the Nginx exited and none is left).
    let mut e = engine();
    e.set_read_timeouts(read_timeout(30_000));
    e.set_read_timeouts(Vec::new());
    e.push(&nginx_end(17 * S, ConnEnd::LocalFin, 0, false, 0, None));
    e.finish();
    assert_eq!((only(&e).cause, only(&e).count), (Cause::UpstreamTimeout, 1));
}

#[test]
fn a_client_that_is_not_nginx_keeps_the_upstream_timeout_verdict() {
    let mut e = engine();
    e.set_read_timeouts(read_timeout(30_000));
    let mut close = nginx_end(17 * S, ConnEnd::LocalFin, 0, false, 0, None);
    close.task = task(900, "python3");
    e.push(&close);
    e.finish();
    assert_finding(&only(&e), Cause::UpstreamTimeout, 1, &[900], None);
}

#[test]
fn the_smallest_of_several_read_timeouts_for_a_target_counts() {
    // Two Nginx blocks (or two masters) for the same target: 5 s and 60 s. A close at 7 s is
    // past the 5 s one: it may be that timeout.
    let mut timeouts = read_timeout(60_000);
    timeouts.extend(read_timeout(5_000));
    let e = nginx_gives_up_after(7 * S, timeouts);
    assert_eq!((only(&e).cause, only(&e).count), (Cause::UpstreamTimeout, 1));
}
