//! tcp:tcp_send_reset with no socket: this host's TCP stack refused a segment because nothing
//! listens on its destination. This, not the client's ECONNREFUSED, proves a dead listener
//! (a netfilter `reject with tcp reset` forges its RST without passing here).
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use tracer_common::{EventKind, Flow, TcpEvent, FIELD_ABSENT};

use crate::{
    maps::{config, emit_with},
    read::{current_task, field, sock_flow, sockaddr_side},
};

#[tracepoint]
pub fn tracer_rst_send(ctx: TracePointContext) -> u32 {
    let _ = try_send_reset(&ctx);
    0
}

#[inline(always)]
fn try_send_reset(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let f = &cfg.send_reset;
    let sk: u64 = field(ctx, f.skaddr).unwrap_or(0);
    if sk != 0 {
        return None;
    }
    // With no socket the tracepoint reverses the offending segment's 4-tuple, so its
    // source is the refused target and its destination the client; flip it to client->target.
    let mut flow = Flow::default();
    if f.sport == FIELD_ABSENT {
        // Since 6.10 addresses are stored as sockaddr images (family, port, address).
        let (family, tport, taddr) = sockaddr_side(ctx, f.saddr)?;
        let (_, cport, caddr) = sockaddr_side(ctx, f.daddr)?;
        flow.family = family;
        flow.sport = cport;
        flow.saddr = caddr;
        flow.dport = tport;
        flow.daddr = taddr;
    } else {
        let raw = sock_flow(ctx, f);
        flow.family = raw.family;
        flow.sport = raw.dport;
        flow.saddr = raw.daddr;
        flow.dport = raw.sport;
        flow.daddr = raw.saddr;
    }
    let reason: u32 = field(ctx, f.reason).unwrap_or(u32::MAX);
    emit_with(EventKind::TcpRstSentNoSocket as u32, |ev: &mut TcpEvent| {
        ev.header.kind = EventKind::TcpRstSentNoSocket as u32;
        ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
        ev.header.task = current_task();
        ev.flow = flow;
        ev.reason = reason;
    });
    Some(())
}
