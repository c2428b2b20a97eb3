//! The builders the engine's unit tests share: tasks, flows and one builder per event kind,
//! the recorded streams in `testdata/`, and small readers of the engine's output.

use std::net::SocketAddr;

use super::{AttemptRecord, Cause, Engine, EngineOptions, Evidence, Finding, Update};
use crate::event::{Event, EventBody, FlowAddr, Queue, TaskInfo};

pub(crate) const NS: u32 = 4026531840;
pub(crate) const MS: u64 = 1_000_000;
pub(crate) const S: u64 = 1_000_000_000;

pub(crate) fn nginx(pid: u32) -> TaskInfo {
    TaskInfo { pid, tid: pid, uid: 33, comm: "nginx".into() }
}

pub(crate) fn task(pid: u32, comm: &str) -> TaskInfo {
    TaskInfo { pid, tid: pid, uid: 1000, comm: comm.into() }
}

pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(crate) fn flow(src: &str, dst: &str) -> FlowAddr {
    FlowAddr { src: addr(src), dst: addr(dst) }
}

pub(crate) fn ev(ts_ns: u64, sock: u64, task: &TaskInfo, body: EventBody) -> Event {
    Event { ts_ns, netns: NS, sock, task: task.clone(), body }
}

/// Events with no socket: the current task is meaningless there.
pub(crate) fn packet(ts_ns: u64, body: EventBody) -> Event {
    ev(ts_ns, 0, &task(0, "swapper/0"), body)
}

pub(crate) fn listen_start(ts: u64, owner: &TaskInfo, a: &str) -> Event {
    ev(ts, 0xa000 + owner.pid as u64, owner, EventBody::TcpListenStart { addr: addr(a), backlog: None })
}

pub(crate) fn listen_stop(ts: u64, owner: &TaskInfo, a: &str) -> Event {
    ev(ts, 0xa000 + owner.pid as u64, owner, EventBody::TcpListenStop { addr: addr(a), actor: owner.clone() })
}

#[allow(clippy::too_many_arguments)] // mirrors the event's fields one to one
pub(crate) fn failed(
    ts: u64,
    sock: u64,
    client: &TaskInfo,
    f: FlowAddr,
    sk_err: i32,
    retrans: u32,
    rst: bool,
    start: u64,
) -> Event {
    ev(
        ts,
        sock,
        client,
        EventBody::TcpAttemptFailed { flow: f, sk_err, syn_retransmits: retrans, rst_received: rst, start_ns: start },
    )
}

pub(crate) fn retransmit(
    ts: u64,
    sock: u64,
    client: &TaskInfo,
    f: FlowAddr,
    n: u32,
    queue: Option<Queue>,
    listener: Option<TaskInfo>,
) -> Event {
    ev(ts, sock, client, EventBody::TcpSynRetransmit { flow: f, syn_retransmits: n, queue, listener })
}

pub(crate) fn rst_received(ts: u64, sock: u64, client: &TaskInfo, f: FlowAddr) -> Event {
    ev(ts, sock, client, EventBody::TcpRstReceived { flow: f })
}

pub(crate) fn rst_sent_no_socket(ts: u64, f: FlowAddr) -> Event {
    packet(ts, EventBody::TcpRstSentNoSocket { flow: f, reason: Some("SK_RST_REASON_NO_SOCKET".into()) })
}

pub(crate) fn dropped(ts: u64, f: FlowAddr, reason: &str) -> Event {
    packet(ts, EventBody::SkbDropped { flow: Some(f), reason: reason.into() })
}

pub(crate) fn unix_failed(ts: u64, client: &TaskInfo, path: &str, errno: i32) -> Event {
    ev(ts, 0xb000 + ts, client, EventBody::UnixConnectFailed { path: path.into(), errno })
}

/// What the kernel shows for one connect to a port nothing listens on (loopback order: the
/// stack's reset and the SYN's drop come before the client socket hears the reset).
pub(crate) fn dead_listener_attempt(ts: u64, sock: u64, client: &TaskInfo, f: FlowAddr) -> Vec<Event> {
    vec![
        rst_sent_no_socket(ts + 10_000, f),
        dropped(ts + 20_000, f, "NO_SOCKET"),
        rst_received(ts + 30_000, sock, client, f),
        failed(ts + 40_000, sock, client, f, 111, 0, true, ts),
    ]
}

/// A connect whose SYN and `retrans` retransmits are dropped by netfilter, then times out.
pub(crate) fn dropped_attempt(ts: u64, sock: u64, client: &TaskInfo, f: FlowAddr, retrans: u32) -> Vec<Event> {
    let mut v = vec![dropped(ts, f, "NETFILTER_DROP")];
    for i in 1..=retrans {
        let t = ts + (1u64 << i) * S / 2;
        v.push(retransmit(t, sock, client, f, i, None, None));
        v.push(dropped(t + 1000, f, "NETFILTER_DROP"));
    }
    v.push(failed(ts + (1u64 << (retrans + 1)) * S / 2, sock, client, f, 110, retrans, false, ts));
    v
}

pub(crate) fn engine() -> Engine {
    Engine::new(EngineOptions::default())
}

pub(crate) fn run(events: &[Event]) -> (Engine, Vec<Update>) {
    let mut e = engine();
    for ev in events {
        e.push(ev);
    }
    let updates = e.finish();
    (e, updates)
}

/// The only finding; fails when there are none or several.
pub(crate) fn only(e: &Engine) -> Finding {
    let f = e.findings();
    assert_eq!(f.len(), 1, "expected exactly one finding, got {f:#?}");
    f.into_iter().next().unwrap()
}

/// What most tests check of a finding at once: its cause, how many attempts, the clients'
/// pids and the listener it names.
pub(crate) fn assert_finding(f: &Finding, cause: Cause, count: u64, client_pids: &[u32], listener: Option<u32>) {
    let got = (f.cause, f.count, pids(f), listener_pid(f));
    assert_eq!(got, (cause, count, client_pids.to_vec(), listener), "{f:#?}");
}

pub(crate) fn pids(f: &Finding) -> Vec<u32> {
    f.clients.iter().map(|c| c.pid).collect()
}

pub(crate) fn listener_pid(f: &Finding) -> Option<u32> {
    f.listener.as_ref().map(|l| l.pid)
}

pub(crate) fn attempts(updates: &[Update]) -> Vec<AttemptRecord> {
    updates
        .iter()
        .filter_map(|u| match u {
            Update::Attempt(a) => Some(a.clone()),
            _ => None,
        })
        .collect()
}

pub(crate) fn overflow(ts: u64, f: FlowAddr, len: u32, max: u32, listener: &TaskInfo) -> Event {
    // tcp_conn_request runs in softirq: the current task means nothing; the listener owner
    // comes from the kernel's listener table.
    ev(
        ts,
        0xa000,
        &task(0, "swapper/1"),
        EventBody::TcpListenOverflow {
            flow: Some(f),
            port: f.dst.port(),
            queue: Queue { len, max },
            listener: Some(listener.clone()),
        },
    )
}

pub(crate) fn accepted(ts: u64, child: u64, acceptor: &TaskInfo, f: FlowAddr, wait_ns: u64) -> Event {
    ev(ts, child, acceptor, EventBody::TcpAccepted { flow: f, wait_ns, queue: Some(Queue { len: 0, max: 1 }) })
}

/// A recorded event stream from `testdata/`.
pub(crate) fn fixture(name: &str) -> Vec<Event> {
    let path = format!("{}/src/explain/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The evidence of an RST this host sent for lack of a socket, to the target.
pub(crate) fn reset_sent(reason: &str) -> Evidence {
    Evidence::ResetSent { reason: reason.into(), to_client: false }
}

/// The evidence of a packet to the target dropped for `reason`.
pub(crate) fn dropped_for(reason: &str) -> Evidence {
    Evidence::Dropped { reason: reason.into(), to_client: false }
}

/// The evidence of an ICMP port unreachable (type 3, code 3) this host sent.
pub(crate) const ICMP_PORT_UNREACHABLE: Evidence = Evidence::IcmpSent { icmp_type: 3, code: 3 };
