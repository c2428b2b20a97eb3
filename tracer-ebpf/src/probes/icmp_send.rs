//! icmp:icmp_send of a destination-unreachable: this host answered a packet with an ICMP error.
//! For TCP that only happens through a netfilter `reject with icmp...` rule (the stack itself
//! answers TCP with an RST), so it tells an ICMP reject apart from a dead listener.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use tracer_common::{EventKind, PacketEvent};

use crate::{
    maps::{config, emit_with},
    packet::tcp_flow,
    read::{current_task, field},
};

/// ICMP_DEST_UNREACH (UAPI).
const ICMP_DEST_UNREACH: i32 = 3;
const ETH_P_IP: u16 = 0x0800;

#[tracepoint]
pub fn tracer_icmp_send(ctx: TracePointContext) -> u32 {
    let _ = try_icmp_send(&ctx);
    0
}

#[inline(always)]
fn try_icmp_send(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let f = &cfg.icmp_send;
    let icmp_type: i32 = field(ctx, f.state)?;
    if icmp_type != ICMP_DEST_UNREACH {
        return None;
    }
    let code: i32 = field(ctx, f.reason)?;
    let skb: u64 = field(ctx, f.skbaddr)?;
    // The offending packet: only TCP ones matter (UDP port unreachables are normal life).
    let flow = tcp_flow(cfg, skb, ETH_P_IP)?;
    emit_with(EventKind::IcmpSent as u32, |ev: &mut PacketEvent| {
        ev.header.kind = EventKind::IcmpSent as u32;
        ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
        ev.header.task = current_task();
        ev.flow = flow;
        ev.reason = ((icmp_type as u32) << 8) | (code as u32 & 0xff);
        ev.from_packet = 1;
    });
    Some(())
}
