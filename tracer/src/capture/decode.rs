//! Raw ring-buffer records -> decoded `Event`s. Kernel enum numbers become names here (through
//! BTF), so nothing after this point knows a kernel number.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use tracer_common::{
    ConnEndEvent, EventHeader, EventKind, Flow, PacketEvent, ProcessEvent, Task, TcpEvent, UnixEvent, AF_INET6, CONN_LOCAL_FIN, CONN_PEER_FIN,
    DROP_SITE_FLAG, DROP_SITE_FUNCTIONS, RST_FROM_NO_SOCKET_HERE,
};

use crate::event::{ConnEnd, Event, EventBody, FatalSignal, FlowAddr, Queue, TaskInfo};

use super::repeats::RepeatClasses;

/// Names for raw kernel enum values (implemented from BTF; a table in tests). Shared copies:
/// every event of a flood carries one of the same few.
pub trait ReasonNames {
    fn drop_reason(&self, value: u32) -> Option<Arc<str>>;
    fn rst_reason(&self, value: u32) -> Option<Arc<str>>;
}

/// A drop's reason by name, or on kernels without drop reasons, where it happened
/// (`in nf_hook_slow`: `rules::drop_meaning` reads both).
fn drop_reason(names: &dyn ReasonNames, raw: u32) -> Arc<str> {
    // Named once: there, every drop event names its site.
    static DROP_SITES: OnceLock<Vec<Arc<str>>> = OnceLock::new();
    if raw & DROP_SITE_FLAG != 0 {
        let sites = DROP_SITES.get_or_init(|| DROP_SITE_FUNCTIONS.iter().map(|f| format!("in {f}").into()).collect());
        if let Some(site) = sites.get((raw & !DROP_SITE_FLAG) as usize) {
            return site.clone();
        }
    }
    names.drop_reason(raw).unwrap_or_else(|| raw.to_string().into())
}

pub fn task_info(t: &Task) -> TaskInfo {
    TaskInfo { pid: t.pid, tid: t.tid, uid: t.uid, comm: String::from_utf8_lossy(t.comm_bytes()).into_owned() }
}

fn ip(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        let v6 = Ipv6Addr::from(*raw);
        // An IPv4 peer of an IPv6 socket: show it as the IPv4 address it is.
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

pub fn flow_addr(f: &Flow) -> FlowAddr {
    FlowAddr {
        src: SocketAddr::new(ip(f.family, &f.saddr), f.sport),
        dst: SocketAddr::new(ip(f.family, &f.daddr), f.dport),
    }
}

/// A Unix socket path as users write it: abstract names (leading NUL) as `@name`.
pub fn unix_path(bytes: &[u8]) -> String {
    if let Some((&0, rest)) = bytes.split_first() {
        let end = rest.iter().rposition(|b| *b != 0).map(|i| i + 1).unwrap_or(0);
        return format!("@{}", String::from_utf8_lossy(&rest[..end]));
    }
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn read<T: Copy>(data: &[u8]) -> Option<T> {
    if data.len() < std::mem::size_of::<T>() {
        return None;
    }
    // The ring buffer gives no alignment guarantee beyond 8 bytes; read unaligned anyway.
    Some(unsafe { std::ptr::read_unaligned(data.as_ptr().cast::<T>()) })
}

/// A `TcpEvent` from a record that may be only its prefix (`PacketEvent`, `AttemptEvent`): the
/// fields the record does not carry are zero. `None` below the shortest prefix.
fn read_tcp_event(data: &[u8]) -> Option<TcpEvent> {
    if data.len() < std::mem::size_of::<PacketEvent>() {
        return None;
    }
    let mut full = [0u8; std::mem::size_of::<TcpEvent>()];
    let n = data.len().min(full.len());
    full[..n].copy_from_slice(&data[..n]);
    read(&full)
}

/// The kernel's HZ, from a jiffies reading and the monotonic time of the same moment. At boot
/// jiffies start at INITIAL_JIFFIES = 2^32 - 300 * HZ (so that they wrap five minutes in), and
/// then advance HZ per second: the candidate HZ that predicts the reading best is the one.
/// (HZ is a build option found in no BTF, and /proc/config.gz is not on every host.)
pub fn kernel_hz(jiffies: u64, ts_ns: u64) -> u64 {
    let uptime = ts_ns as f64 / 1e9;
    let predicted = |hz: f64| (1u64 << 32) as f64 + (uptime - 300.0) * hz;
    [100.0, 250.0, 300.0, 1000.0]
        .into_iter()
        .min_by(|a, b| (predicted(*a) - jiffies as f64).abs().total_cmp(&(predicted(*b) - jiffies as f64).abs()))
        .unwrap_or(250.0) as u64
}

/// Decodes an after-connect record. Jiffies stamps become durations at the kernel's HZ.
fn conn_ended(ev: &ConnEndEvent) -> EventBody {
    let end = match ev.how {
        CONN_PEER_FIN => ConnEnd::PeerFin,
        CONN_LOCAL_FIN => ConnEnd::LocalFin,
        _ => ConnEnd::Reset,
    };
    let ns_per_jiffy = 1_000_000_000 / kernel_hz(ev.jiffies, ev.header.ts_ns).max(1);
    // The stamps are the low 32 bits of jiffies; differences wrap the same way.
    let now32 = ev.jiffies as u32;
    let known = ev.jiffies != 0 && ev.rcv_tstamp != 0;
    let since_fin_ns = known.then(|| now32.wrapping_sub(ev.rcv_tstamp) as u64 * ns_per_jiffy);
    let idle_before_fin_ns = (known && ev.lrcvtime != 0).then(|| ev.rcv_tstamp.wrapping_sub(ev.lrcvtime) as u64 * ns_per_jiffy);
    let local = ev.actor.pid != 0;
    EventBody::TcpConnEnded {
        flow: flow_addr(&ev.flow),
        end,
        client_side: ev.client_side != 0,
        after_fin: ev.after_fin != 0,
        sk_err: ev.sk_err,
        bytes_sent: ev.bytes_sent,
        bytes_received: ev.bytes_received,
        start_ns: ev.start_ns,
        established_ns: ev.established_ns,
        idle_before_fin_ns: idle_before_fin_ns.filter(|n| *n < 86_400_000_000_000),
        since_fin_ns: since_fin_ns.filter(|n| *n < 86_400_000_000_000),
        closer: local.then(|| task_info(&ev.actor)),
        exit_code: ev.exit_code,
        signal: (ev.signal != 0).then(|| FatalSignal {
            signal: ev.signal,
            ts_ns: ev.signal_ts_ns,
            sender: task_info(&ev.sender),
            oom: ev.signal_oom != 0,
        }),
        unread_bytes: ev.unread_bytes,
    }
}

/// A reset's sk_rst_reason by name (`None` where the tracepoint has no reason).
fn rst_reason(names: &dyn ReasonNames, raw: u32) -> Option<Arc<str>> {
    (raw != u32::MAX).then(|| names.rst_reason(raw).unwrap_or_else(|| raw.to_string().into()))
}

/// A reset this host's stack sent from no socket, as the event it is reported as.
pub fn reset_from_no_socket(flow: &Flow, reason: u32, ts_ns: u64, names: &dyn ReasonNames) -> Event {
    Event {
        ts_ns,
        netns: 0,
        sock: 0,
        task: task_info(&Task::default()),
        body: EventBody::TcpRstSentNoSocket { flow: flow_addr(flow), reason: rst_reason(names, reason) },
    }
}

/// Decodes one record into `out`: its event, preceded, for a refused attempt whose reset the
/// kernel joined to it (`RST_FROM_NO_SOCKET_HERE`), by that reset as the event it would
/// have been on its own. A refused attempt the kernel counts the repeats of (`repeat_class`)
/// opens its class in `repeats`, and the class it displaced gets its final count. Nothing for
/// a record `decode` refuses.
pub fn decode_into(data: &[u8], names: &dyn ReasonNames, out: &mut Vec<Event>, repeats: &mut RepeatClasses) {
    let Some(ev) = decode(data, names) else { return };
    let mut exemplar = None;
    if matches!(ev.body, EventBody::TcpAttemptFailed { .. }) {
        if let Some(tcp) = read_tcp_event(data).filter(|t| t.rst_received == RST_FROM_NO_SOCKET_HERE) {
            // Sent just before the attempt's close took it.
            out.push(reset_from_no_socket(&tcp.flow, tcp.reason, ev.ts_ns.saturating_sub(1), names));
            exemplar = (tcp.repeat_class != 0).then_some((tcp.repeat_class, tcp.repeats_before));
        }
    }
    let Some((class, before)) = exemplar else { return out.push(ev) };
    let (displaced, mark) = repeats.exemplar(&ev, class, before);
    out.extend(displaced);
    out.push(ev);
    out.extend(mark);
}

/// Decodes one record; `None` for a record too short or of an unknown kind (never panics).
pub fn decode(data: &[u8], names: &dyn ReasonNames) -> Option<Event> {
    let header: EventHeader = read(data)?;
    let kind = EventKind::from_u32(header.kind)?;
    let base = |body: EventBody| Event {
        ts_ns: header.ts_ns,
        netns: header.netns,
        sock: header.sock,
        task: task_info(&header.task),
        body,
    };
    if matches!(kind, EventKind::UnixConnectFailed | EventKind::UnixBind | EventKind::UnixUnlink | EventKind::UnixPeerQueue) {
        let ev: UnixEvent = read(data)?;
        let path = unix_path(ev.path_bytes());
        let body = match kind {
            EventKind::UnixConnectFailed => EventBody::UnixConnectFailed { path, errno: ev.errno },
            EventKind::UnixUnlink => EventBody::UnixUnlink { path },
            EventKind::UnixPeerQueue => EventBody::UnixPeerQueue { path, queue: Queue { len: ev.queue_len, max: ev.queue_max } },
            _ => EventBody::UnixBind { path },
        };
        return Some(base(body));
    }
    if matches!(kind, EventKind::ProcessExit | EventKind::SignalGenerated | EventKind::OomVictim) {
        let ev: ProcessEvent = read(data)?;
        let body = match kind {
            EventKind::ProcessExit => EventBody::ProcessExit { code: ev.code },
            EventKind::SignalGenerated => EventBody::SignalGenerated { signal: ev.code, sender: task_info(&ev.actor) },
            _ => EventBody::OomKilled,
        };
        return Some(base(body));
    }
    if kind == EventKind::TcpConnEnded {
        return Some(base(conn_ended(&read(data)?)));
    }
    let ev = read_tcp_event(data)?;
    let flow = flow_addr(&ev.flow);
    let body = match kind {
        EventKind::TcpAttemptFailed => EventBody::TcpAttemptFailed {
            flow,
            sk_err: ev.sk_err,
            syn_retransmits: ev.syn_retransmits,
            rst_received: ev.rst_received != 0,
            start_ns: ev.start_ns,
        },
        EventKind::TcpSynRetransmit => EventBody::TcpSynRetransmit {
            flow,
            syn_retransmits: ev.syn_retransmits,
            queue: (ev.queue_known != 0).then_some(Queue { len: ev.queue_len, max: ev.queue_max }),
            listener: (ev.queue_known != 0 && ev.listener.pid != 0).then(|| task_info(&ev.listener)),
        },
        EventKind::TcpAttemptDelayed => {
            EventBody::TcpAttemptDelayed { flow, syn_retransmits: ev.syn_retransmits, start_ns: ev.start_ns }
        }
        EventKind::TcpRstReceived => EventBody::TcpRstReceived { flow },
        EventKind::TcpRstSentNoSocket => EventBody::TcpRstSentNoSocket { flow, reason: rst_reason(names, ev.reason) },
        EventKind::SkbDropped => EventBody::SkbDropped { flow: Some(flow), reason: drop_reason(names, ev.reason) },
        EventKind::IcmpSent => {
            EventBody::IcmpSent { flow, icmp_type: (ev.reason >> 8) as u8, code: (ev.reason & 0xff) as u8 }
        }
        EventKind::TcpListenStart => {
            EventBody::TcpListenStart { addr: flow.src, backlog: (ev.queue_known != 0).then_some(ev.queue_max) }
        }
        EventKind::TcpListenStop => EventBody::TcpListenStop { addr: flow.src, actor: task_info(&ev.actor) },
        EventKind::TcpListenOverflow => EventBody::TcpListenOverflow {
            flow: (ev.from_packet != 0).then_some(flow),
            port: ev.flow.dport,
            queue: Queue { len: ev.queue_len, max: ev.queue_max },
            listener: (ev.listener.pid != 0).then(|| task_info(&ev.listener)),
        },
        EventKind::TcpAccepted => EventBody::TcpAccepted {
            flow,
            wait_ns: header.ts_ns.saturating_sub(ev.start_ns),
            queue: (ev.queue_known != 0).then_some(Queue { len: ev.queue_len, max: ev.queue_max }),
        },
        EventKind::UnixConnectFailed
        | EventKind::UnixBind
        | EventKind::UnixUnlink
        | EventKind::UnixPeerQueue
        | EventKind::ProcessExit
        | EventKind::SignalGenerated
        | EventKind::OomVictim
        | EventKind::TcpConnEnded => return None,
    };
    Some(base(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoNames;
    impl ReasonNames for NoNames {
        fn drop_reason(&self, v: u32) -> Option<Arc<str>> {
            (v == 3).then(|| "NO_SOCKET".into())
        }
        fn rst_reason(&self, _: u32) -> Option<Arc<str>> {
            None
        }
    }

    fn bytes<T>(v: &T) -> Vec<u8> {
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
    }

    #[test]
    fn decodes_a_failed_ipv4_attempt_with_its_owner() {
        let mut ev = TcpEvent::default();
        ev.header.kind = EventKind::TcpAttemptFailed as u32;
        ev.header.sock = 0xffff_8880_1234_5678;
        ev.header.task.pid = 812;
        ev.header.task.comm[..5].copy_from_slice(b"nginx");
        ev.flow = Flow { family: 2, sport: 40000, dport: 8000, _pad: 0, saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], daddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] };
        ev.sk_err = 111;
        ev.rst_received = 1;
        let decoded = decode(&bytes(&ev), &NoNames).expect("decodes");
        assert_eq!(decoded.task.pid, 812);
        assert_eq!(decoded.task.comm, "nginx");
        match decoded.body {
            EventBody::TcpAttemptFailed { flow, sk_err, rst_received, .. } => {
                assert_eq!(flow.dst, "127.0.0.1:8000".parse().unwrap());
                assert_eq!(flow.src, "127.0.0.1:40000".parse().unwrap());
                assert_eq!(sk_err, 111);
                assert!(rst_received);
            }
            other => panic!("wrong body {other:?}"),
        }
    }

    /// The frequent kinds come as prefixes of `TcpEvent`; what they do not carry reads as zero,
    /// and a record shorter than the shortest prefix is refused.
    #[test]
    fn decodes_the_short_records_of_packet_and_attempt_events() {
        let flow = Flow { family: 2, sport: 40000, dport: 9000, _pad: 0, saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], daddr: [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] };
        let mut reset = PacketEvent::default();
        reset.header.kind = EventKind::TcpRstSentNoSocket as u32;
        reset.flow = flow;
        reset.reason = u32::MAX;
        match decode(&bytes(&reset), &NoNames).expect("decodes").body {
            EventBody::TcpRstSentNoSocket { flow: f, reason } => {
                assert_eq!(f.dst, "127.0.0.2:9000".parse().unwrap());
                assert_eq!(reason, None);
            }
            other => panic!("wrong body {other:?}"),
        }
        let mut attempt = tracer_common::AttemptEvent::default();
        attempt.header.kind = EventKind::TcpAttemptFailed as u32;
        attempt.header.task.pid = 812;
        attempt.flow = flow;
        attempt.sk_err = 111;
        attempt.rst_received = 1;
        attempt.start_ns = 77;
        let decoded = decode(&bytes(&attempt), &NoNames).expect("decodes");
        assert_eq!(decoded.task.pid, 812);
        match decoded.body {
            EventBody::TcpAttemptFailed { sk_err, rst_received, start_ns, syn_retransmits, .. } => {
                assert_eq!((sk_err, rst_received, start_ns, syn_retransmits), (111, true, 77, 0));
            }
            other => panic!("wrong body {other:?}"),
        }
        let short = bytes(&reset);
        assert!(decode(&short[..short.len() - 8], &NoNames).is_none());
    }

    /// A refused attempt whose reset from no socket the kernel joined to it comes as one record
    /// and leaves as the two events it stands for: the reset (just before), then the attempt.
    #[test]
    fn a_refused_attempt_with_its_joined_reset_decodes_into_both_events() {
        let flow = Flow { family: 2, sport: 40000, dport: 9000, _pad: 0, saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], daddr: [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] };
        let mut attempt = tracer_common::AttemptEvent::default();
        attempt.header.kind = EventKind::TcpAttemptFailed as u32;
        attempt.header.ts_ns = 5_000;
        attempt.header.task.pid = 812;
        attempt.flow = flow;
        attempt.sk_err = 111;
        attempt.rst_received = tracer_common::RST_FROM_NO_SOCKET_HERE;
        attempt.reason = u32::MAX;
        let mut out = Vec::new();
        decode_into(&bytes(&attempt), &NoNames, &mut out, &mut RepeatClasses::default());
        assert_eq!(out.len(), 2);
        match &out[0].body {
            EventBody::TcpRstSentNoSocket { flow: f, reason } => {
                assert_eq!((f.src, f.dst), ("127.0.0.1:40000".parse().unwrap(), "127.0.0.2:9000".parse().unwrap()));
                assert_eq!(*reason, None);
            }
            other => panic!("wrong body {other:?}"),
        }
        assert_eq!((out[0].ts_ns, out[0].task.pid), (4_999, 0), "the reset carries no task");
        match &out[1].body {
            EventBody::TcpAttemptFailed { rst_received, sk_err, .. } => assert_eq!((*rst_received, *sk_err), (true, 111)),
            other => panic!("wrong body {other:?}"),
        }
        // An RST from elsewhere: the attempt alone.
        attempt.rst_received = 1;
        out.clear();
        decode_into(&bytes(&attempt), &NoNames, &mut out, &mut RepeatClasses::default());
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn decodes_ipv6_and_mapped_ipv4() {
        let mut f = Flow { family: AF_INET6, sport: 1, dport: 2, ..Flow::default() };
        f.daddr[15] = 1; // ::1
        f.saddr[10] = 0xff;
        f.saddr[11] = 0xff;
        f.saddr[12..].copy_from_slice(&[10, 0, 0, 1]);
        let fa = flow_addr(&f);
        assert_eq!(fa.dst.to_string(), "[::1]:2");
        assert_eq!(fa.src.to_string(), "10.0.0.1:1");
    }

    #[test]
    fn decodes_unix_paths_and_drop_reasons() {
        let mut ev = UnixEvent::default();
        ev.header.kind = EventKind::UnixConnectFailed as u32;
        ev.errno = 2;
        let p = b"/run/app.sock\0";
        ev.path[..p.len()].copy_from_slice(p);
        ev.path_len = p.len() as u32;
        let d = decode(&bytes(&ev), &NoNames).unwrap();
        assert_eq!(d.body, EventBody::UnixConnectFailed { path: "/run/app.sock".into(), errno: 2 });
        assert_eq!(unix_path(b"\0abstract\0\0"), "@abstract");

        let mut drop = TcpEvent::default();
        drop.header.kind = EventKind::SkbDropped as u32;
        drop.reason = 3;
        drop.flow.family = 2;
        match decode(&bytes(&drop), &NoNames).unwrap().body {
            EventBody::SkbDropped { reason, .. } => assert_eq!(&*reason, "NO_SOCKET"),
            other => panic!("{other:?}"),
        }
        // Before 5.17: the drop site instead of a reason.
        drop.reason = DROP_SITE_FLAG;
        match decode(&bytes(&drop), &NoNames).unwrap().body {
            EventBody::SkbDropped { reason, .. } => assert_eq!(&*reason, "in nf_hook_slow"),
            other => panic!("{other:?}"),
        }
        drop.reason = DROP_SITE_FLAG | 2;
        match decode(&bytes(&drop), &NoNames).unwrap().body {
            EventBody::SkbDropped { reason, .. } => assert_eq!(&*reason, "in tcp_v6_rcv"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_function_hook_events() {
        let mut ev = TcpEvent::default();
        ev.header.kind = EventKind::TcpListenOverflow as u32;
        ev.header.ts_ns = 5_000;
        ev.flow = Flow { family: 2, sport: 40001, dport: 8000, _pad: 0, saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], daddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] };
        ev.from_packet = 1;
        ev.queue_len = 2;
        ev.queue_max = 1;
        ev.listener.pid = 700;
        match decode(&bytes(&ev), &NoNames).unwrap().body {
            EventBody::TcpListenOverflow { flow, port, queue, listener } => {
                assert_eq!(flow.unwrap().dst, "127.0.0.1:8000".parse().unwrap());
                assert_eq!(port, 8000);
                assert_eq!(queue, Queue { len: 2, max: 1 });
                assert_eq!(listener.unwrap().pid, 700);
            }
            other => panic!("{other:?}"),
        }
        ev.header.kind = EventKind::TcpAccepted as u32;
        ev.start_ns = 2_000;
        ev.queue_known = 1;
        match decode(&bytes(&ev), &NoNames).unwrap().body {
            EventBody::TcpAccepted { wait_ns, queue, .. } => {
                assert_eq!(wait_ns, 3_000);
                assert_eq!(queue, Some(Queue { len: 2, max: 1 }));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_or_unknown_records_are_ignored() {
        assert!(decode(&[1, 2, 3], &NoNames).is_none());
        let mut ev = TcpEvent::default();
        ev.header.kind = 999;
        assert!(decode(&bytes(&ev), &NoNames).is_none());
    }
}
