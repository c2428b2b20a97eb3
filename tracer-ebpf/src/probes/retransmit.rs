//! tcp:tcp_retransmit_skb for SYN_SENT sockets: a SYN got no answer. With a local listener on
//! the destination port, its accept queue is read right here, in the kernel, at that moment:
//! a full queue is the proof of a backlog overflow (the SYN-time overflow has no drop reason).
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use tracer_common::{EventKind, ListenerKey, TcpEvent, AF_INET6};

use crate::{
    attempts,
    maps::{config, emit_with, LISTENERS},
    read::{current_task, field, kernel, netns_of, sock_flow},
};

#[tracepoint]
pub fn tracer_retrans(ctx: TracePointContext) -> u32 {
    let _ = try_retransmit(&ctx);
    0
}

#[inline(always)]
fn try_retransmit(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let f = &cfg.retransmit;
    let state: i32 = field(ctx, f.state)?;
    if state as u32 != cfg.enums.tcp_syn_sent {
        return None;
    }
    let sk: u64 = field(ctx, f.skaddr)?;
    let attempt = attempts::find(cfg, sk)?;
    let attempt = unsafe { &mut *attempt };
    attempt.syn_retransmits += 1;

    let flow = sock_flow(ctx, f);
    let (netns, owner, retransmits, rst, start_ns) =
        (netns_of(cfg, sk), attempt.owner, attempt.syn_retransmits, attempt.rst_received, attempt.start_ns);
    // The listener, if it is local and was seen entering LISTEN: same family first, then a
    // dual-stack IPv6 listener that also takes IPv4.
    let mut key = ListenerKey { netns, port: flow.dport, family: flow.family };
    let mut listener = LISTENERS.get_ptr(&key);
    if listener.is_none() && flow.family != AF_INET6 {
        key.family = AF_INET6;
        listener = LISTENERS.get_ptr(&key);
    }
    emit_with(EventKind::TcpSynRetransmit as u32, |ev: &mut TcpEvent| {
        ev.header.kind = EventKind::TcpSynRetransmit as u32;
        ev.header.netns = netns;
        ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
        ev.header.sock = sk;
        ev.header.task = owner;
        ev.flow = flow;
        ev.syn_retransmits = retransmits;
        ev.rst_received = rst;
        ev.start_ns = start_ns;
        ev.actor = current_task();
        if let Some(l) = listener {
            let l = unsafe { &*l };
            let len: Option<u32> = kernel(l.sock, cfg.offsets.sock_sk_ack_backlog);
            let max: Option<u32> = kernel(l.sock, cfg.offsets.sock_sk_max_ack_backlog);
            if let (Some(len), Some(max)) = (len, max) {
                ev.queue_len = len;
                ev.queue_max = max;
                ev.queue_known = 1;
            }
            ev.listener = l.owner;
        }
    });
    Some(())
}
