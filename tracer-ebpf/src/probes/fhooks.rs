//! The function-hook backend: programs on kernel functions, as fentry/fexit (BPF trampolines)
//! or, where the kernel refuses trampolines, as kprobe/kretprobe. Userspace picks per hook
//! what loads, and falls back to the tracepoint programs for what neither serves.
//!
//! Each hook below names the kernel prototype it expects. Userspace reads the running kernel's
//! prototype from BTF and only loads the variant written for it: fentry/fexit programs read
//! their arguments by position, and a shifted argument would be a silently wrong pointer.
//! kprobe variants read the same arguments from registers (the calling convention puts
//! argument n in the same register whatever the other arguments are), and the return value
//! from the return register.
//!
//! Everything kernel-specific (struct member offsets, enum values) comes from the CONFIG map,
//! read from BTF in userspace.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_probe_read_kernel as read_kernel_raw},
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use tracer_common::{
    AcceptWaitKey, Config, EventKind, Flow, ListenerKey, TcpEvent, UnixEvent, AF_INET,
    AF_INET6, ACCEPT_WAIT_BOUNDS_NS, ACCEPT_WAIT_SLOTS, UNIX_PATH_MAX,
};

use crate::{
    attempts,
    maps::{config, emit_with, ACCEPT_WAITS, FN_ARGS, LISTENERS, QUEUED},
    read::{current_netns, current_task, kernel, netns_of, sock_number, SOCK_NUMBER_TCP_CONNECT},
};



// ---- tcp_connect ---------------------------------------------------------------------------
// Expects: int tcp_connect(struct sock *sk)   (unchanged 6.1 .. 6.18)
// Called by connect() in process context right before the SYN leaves: the owner of the
// attempt is current. Set_state then skips its CLOSE->SYN_SENT bookkeeping.

#[fentry(function = "tcp_connect")]
pub fn tracer_fe_tcp_connect(ctx: FEntryContext) -> i32 {
    // The argument is a typed pointer here, which the attempt table cannot hash as it is.
    if let Some(sk) = sock_number(SOCK_NUMBER_TCP_CONNECT, ctx.arg::<*const u8>(0)) {
        on_tcp_connect(sk);
    }
    0
}

#[kprobe(function = "tcp_connect")]
pub fn tracer_kp_tcp_connect(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        on_tcp_connect(sk);
    }
    0
}

#[inline(always)]
fn on_tcp_connect(sk: u64) {
    let Some(cfg) = config() else { return };
    if sk == 0 {
        return;
    }
    attempts::track(cfg, sk, current_task(), unsafe { bpf_ktime_get_ns() });
}

// ---- tcp_conn_request ----------------------------------------------------------------------
// Expects: int tcp_conn_request(struct request_sock_ops *rsk_ops,
//                               const struct tcp_request_sock_ops *af_ops,
//                               struct sock *sk, struct sk_buff *skb)   (6.1 .. 6.18)
// A SYN reaching a listener. When the accept queue is full (sk_acceptq_is_full: len > max)
// the kernel drops the SYN right here, with no drop reason: this is the overflow, seen
// directly, with the queue as the kernel saw it.

#[fentry(function = "tcp_conn_request")]
pub fn tracer_fe_conn_request(ctx: FEntryContext) -> i32 {
    on_conn_request(ctx.arg::<u64>(2), ctx.arg::<u64>(3));
    0
}

#[kprobe(function = "tcp_conn_request")]
pub fn tracer_kp_conn_request(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(skb)) = (ctx.arg::<u64>(2), ctx.arg::<u64>(3)) {
        on_conn_request(sk, skb);
    }
    0
}

#[inline(always)]
fn on_conn_request(sk: u64, skb: u64) {
    let Some(cfg) = config() else { return };
    let Some(len) = kernel::<u32>(sk, cfg.offsets.sock_sk_ack_backlog) else { return };
    let Some(max) = kernel::<u32>(sk, cfg.offsets.sock_sk_max_ack_backlog) else { return };
    if len <= max {
        return;
    }
    let netns = netns_of(cfg, sk);
    let port: u16 = kernel(sk, cfg.fn_hooks.sock_skc_num).unwrap_or(0);
    let family: u16 = kernel(sk, cfg.fn_hooks.sock_skc_family).unwrap_or(0);
    let listener = LISTENERS.get_ptr(&ListenerKey { netns, port, family });
    emit_with(EventKind::TcpListenOverflow as u32, |ev: &mut TcpEvent| {
        ev.header.kind = EventKind::TcpListenOverflow as u32;
        ev.header.netns = netns;
        ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
        ev.header.sock = sk;
        // Parsed straight into the ring buffer entry: the BPF stack is small (6.1's verifier
        // refused this program with the flow built on the stack and copied).
        if packet_flow_into(cfg, skb, &mut ev.flow).is_some() {
            ev.from_packet = 1;
        } else {
            ev.flow.family = family;
            ev.flow.dport = port;
        }
        ev.queue_len = len;
        ev.queue_max = max;
        ev.queue_known = 1;
        if let Some(l) = listener {
            let l = unsafe { &*l };
            ev.listener = l.owner;
            ev.header.task = l.owner;
            ev.start_ns = l.start_ns;
        }
    });
}

/// The SYN's TCP flow from its own headers (IP version from the first nibble), written into
/// `flow`. Only `struct sk_buff` offsets come from the kernel (BTF); IP and TCP layouts are
/// wire formats.
#[inline(always)]
fn packet_flow_into(cfg: &Config, skb: u64, flow: &mut Flow) -> Option<()> {
    let head: u64 = kernel(skb, cfg.offsets.skb_head)?;
    let nh: u16 = kernel(skb, cfg.offsets.skb_network_header)?;
    if nh == u16::MAX {
        return None;
    }
    let ip = head + nh as u64;
    let vihl: u8 = kernel(ip, 0)?;
    let tcp_proto = cfg.enums.ipproto_tcp as u8;
    let tcp_at = match vihl >> 4 {
        4 => {
            let proto: u8 = kernel(ip, 9)?;
            if proto != tcp_proto {
                return None;
            }
            flow.family = AF_INET;
            read_into(&mut flow.saddr[..4], ip + 12)?;
            read_into(&mut flow.daddr[..4], ip + 16)?;
            ip + ((vihl & 0x0f) as u64) * 4
        }
        6 => {
            let next: u8 = kernel(ip, 6)?;
            if next != tcp_proto {
                return None;
            }
            flow.family = AF_INET6;
            read_into(&mut flow.saddr[..], ip + 8)?;
            read_into(&mut flow.daddr[..], ip + 24)?;
            ip + 40
        }
        _ => return None,
    };
    let sport: u16 = kernel(tcp_at, 0)?;
    let dport: u16 = kernel(tcp_at, 2)?;
    flow.sport = u16::from_be(sport);
    flow.dport = u16::from_be(dport);
    Some(())
}

/// bpf_probe_read_kernel of `dst.len()` bytes at `src` straight into `dst`.
#[inline(always)]
fn read_into(dst: &mut [u8], src: u64) -> Option<()> {
    let rc = unsafe { read_kernel_raw(dst.as_mut_ptr().cast(), dst.len() as u32, src as *const _) };
    (rc == 0).then_some(())
}

// ---- inet_csk_accept -----------------------------------------------------------------------
// The child socket accept() returns. Its wait on the accept queue is measured from the moment
// it reached ESTABLISHED (recorded by set_state for SYN_RECV->ESTABLISHED into QUEUED).
//
// Expects (before 6.10): struct sock *inet_csk_accept(struct sock *sk, int flags, int *err, bool kern)
#[fexit(function = "inet_csk_accept")]
pub fn tracer_fx_accept4(ctx: FExitContext) -> i32 {
    // fexit: the return value follows the 4 arguments.
    on_accept(ctx.arg::<u64>(0), ctx.arg::<u64>(4));
    0
}

// Expects (6.10 and later): struct sock *inet_csk_accept(struct sock *sk, struct proto_accept_arg *arg)
#[fexit(function = "inet_csk_accept")]
pub fn tracer_fx_accept2(ctx: FExitContext) -> i32 {
    // fexit: the return value follows the 2 arguments.
    on_accept(ctx.arg::<u64>(0), ctx.arg::<u64>(2));
    0
}

// kprobe variant (any of the prototypes above: the listener is argument 0 in both).
#[kprobe(function = "inet_csk_accept")]
pub fn tracer_kp_accept(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        let _ = FN_ARGS.insert(&(bpf_get_current_pid_tgid() ^ ACCEPT_TAG), &[sk, 0], 0);
    }
    0
}

#[kretprobe(function = "inet_csk_accept")]
pub fn tracer_kr_accept(ctx: RetProbeContext) -> u32 {
    let key = bpf_get_current_pid_tgid() ^ ACCEPT_TAG;
    let Some([sk, _]) = (unsafe { FN_ARGS.get(&key) }).copied() else { return 0 };
    let _ = FN_ARGS.remove(&key);
    on_accept(sk, ctx.ret::<u64>());
    0
}

/// FN_ARGS is shared by the kprobe pairs; keys are pid_tgid with a per-function tag.
const ACCEPT_TAG: u64 = 0xacce_0000_0000_0000;
const UNIX_TAG: u64 = 0x0417_0000_0000_0000;

#[inline(always)]
fn on_accept(_listener: u64, child: u64) {
    if child == 0 {
        return;
    }
    let Some(q) = (unsafe { QUEUED.get(&child) }).copied() else { return };
    let _ = QUEUED.remove(&child);
    // Counted here, per listener address and bucket, instead of one event per accepted
    // connection: userspace reads the histograms about once a second.
    let wait = unsafe { bpf_ktime_get_ns() }.saturating_sub(q.start_ns);
    let b = ACCEPT_WAIT_BOUNDS_NS;
    let slot = if wait < b[0] {
        0
    } else if wait < b[1] {
        1
    } else if wait < b[2] {
        2
    } else if wait < b[3] {
        3
    } else {
        4
    };
    let key = AcceptWaitKey { netns: q.netns, family: q.flow.family, port: q.flow.dport, addr: q.flow.daddr };
    match ACCEPT_WAITS.get_ptr_mut(&key) {
        // Per-CPU value: no other CPU writes this copy.
        Some(h) => unsafe {
            if slot < ACCEPT_WAIT_SLOTS {
                (*h)[slot] += 1;
            }
        },
        None => {
            let mut h = [0u64; ACCEPT_WAIT_SLOTS];
            if slot < ACCEPT_WAIT_SLOTS {
                h[slot] = 1;
            }
            let _ = ACCEPT_WAITS.insert(&key, &h, 0);
        }
    }
}

// ---- unix_stream_connect -------------------------------------------------------------------
// Expects: int unix_stream_connect(struct socket *sock, struct sockaddr *uaddr, int addr_len, int flags)
// (6.1 .. 6.16; `uaddr` is the kernel's copy of the caller's address). Only failures with the
// errnos that explain a 502 are reported.

#[fexit(function = "unix_stream_connect")]
pub fn tracer_fx_unix_connect(ctx: FExitContext) -> i32 {
    // fexit: the return value follows the 4 arguments.
    let ret: i64 = ctx.arg::<i64>(4);
    // addr_len is an `int`: the trampoline saves the whole register, whose upper half the
    // caller may leave as garbage (5.10's __sys_connect_file does), so only the low 32 bits
    // are the length, as in the kretprobe.
    on_unix_connect(ret as i32, ctx.arg::<u64>(1), ctx.arg::<u64>(2) as i32 as i64);
    0
}

#[kprobe(function = "unix_stream_connect")]
pub fn tracer_kp_unix_connect(ctx: ProbeContext) -> u32 {
    if let (Some(addr), Some(len)) = (ctx.arg::<u64>(1), ctx.arg::<u64>(2)) {
        let _ = FN_ARGS.insert(&(bpf_get_current_pid_tgid() ^ UNIX_TAG), &[addr, len], 0);
    }
    0
}

#[kretprobe(function = "unix_stream_connect")]
pub fn tracer_kr_unix_connect(ctx: RetProbeContext) -> u32 {
    let key = bpf_get_current_pid_tgid() ^ UNIX_TAG;
    let Some([addr, len]) = (unsafe { FN_ARGS.get(&key) }).copied() else { return 0 };
    let _ = FN_ARGS.remove(&key);
    on_unix_connect(ctx.ret::<i64>() as i32, addr, len as i32 as i64);
    0
}

// ---- unix_find_other ----------------------------------------------------------------------
// The listener a Unix connect() reaches: remembered per thread so that unix_stream_connect's
// exit can read its queue when the connect fails with EAGAIN (the queue is full).
//
// Expects (5.19 .. 6.12): struct sock *unix_find_other(struct net *net, struct sockaddr_un *sunaddr, int addr_len, int type)
#[fexit(function = "unix_find_other")]
pub fn tracer_fx_unix_peer4(ctx: FExitContext) -> i32 {
    // fexit: the return value follows the 4 arguments.
    on_unix_peer(ctx.arg::<u64>(4));
    0
}

// Expects (later kernels, e.g. 6.18): struct sock *unix_find_other(struct net *net, struct sockaddr_un *sunaddr, int addr_len, int type, int flags)
#[fexit(function = "unix_find_other")]
pub fn tracer_fx_unix_peer5(ctx: FExitContext) -> i32 {
    // fexit: the return value follows the 5 arguments.
    on_unix_peer(ctx.arg::<u64>(5));
    0
}

// kretprobe variant: the return register, whatever the arguments.
#[kretprobe(function = "unix_find_other")]
pub fn tracer_kr_unix_peer(ctx: RetProbeContext) -> u32 {
    on_unix_peer(ctx.ret::<u64>());
    0
}

const PEER_TAG: u64 = 0x9ee7_0000_0000_0000;

#[inline(always)]
fn on_unix_peer(other: u64) {
    // NULL or ERR_PTR (the last 4095 addresses): no peer.
    if other == 0 || other >= (-4095i64) as u64 {
        return;
    }
    let _ = FN_ARGS.insert(&(bpf_get_current_pid_tgid() ^ PEER_TAG), &[other, 0], 0);
}

const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const EAGAIN: i32 = 11;
const EACCES: i32 = 13;
const ECONNREFUSED: i32 = 111;

#[inline(always)]
fn on_unix_connect(ret: i32, addr: u64, addr_len: i64) {
    let errno = -ret;
    // The peer unix_find_other found during this connect, if that hook runs.
    let peer_key = bpf_get_current_pid_tgid() ^ PEER_TAG;
    let peer = (unsafe { FN_ARGS.get(&peer_key) }).map(|v| v[0]);
    if peer.is_some() {
        let _ = FN_ARGS.remove(&peer_key);
    }
    if errno != ENOENT && errno != ECONNREFUSED && errno != EAGAIN && errno != EACCES && errno != EPERM {
        return;
    }
    let Some(cfg) = config() else { return };
    if errno == EAGAIN {
        if let Some(peer) = peer {
            let qlen: Option<u32> = kernel(peer, cfg.fn_hooks.sock_rcvq_len);
            let qmax: Option<u32> = kernel(peer, cfg.offsets.sock_sk_max_ack_backlog);
            if let (Some(qlen), Some(qmax)) = (qlen, qmax) {
                emit_unix_event(cfg, EventKind::UnixPeerQueue, errno, addr, addr_len, qlen, qmax);
            }
        }
    }
    emit_unix_event(cfg, EventKind::UnixConnectFailed, errno, addr, addr_len, 0, 0);
}

/// A Unix event with the path read from the kernel's copy of the caller's sockaddr_un.
#[inline(always)]
fn emit_unix_event(cfg: &Config, kind: EventKind, errno: i32, addr: u64, addr_len: i64, qlen: u32, qmax: u32) {
    let netns = current_netns(cfg);
    emit_with(kind as u32, |ev: &mut UnixEvent| {
        ev.header.kind = kind as u32;
        ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
        ev.header.netns = netns;
        ev.header.task = current_task();
        ev.errno = errno;
        ev.queue_len = qlen;
        ev.queue_max = qmax;
        // sun_path follows the 2-byte sun_family.
        let mut n = addr_len - 2;
        if n < 0 {
            n = 0;
        }
        if n > UNIX_PATH_MAX as i64 {
            n = UNIX_PATH_MAX as i64;
        }
        let n = (n as u32) & 0x7f;
        if n > 0 && n <= UNIX_PATH_MAX as u32 && addr != 0 {
            let rc = unsafe { read_kernel_raw(ev.path.as_mut_ptr().cast(), n, (addr + 2) as *const _) };
            if rc == 0 {
                ev.path_len = n;
            }
        }
    });
}
