//! tcp:tcp_send_reset with no socket: this host's TCP stack refused a segment because nothing
//! listens on its destination. This, not the client's ECONNREFUSED, proves a dead listener
//! (a netfilter `reject with tcp reset` forges its RST without passing here).
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use tracer_common::{EventKind, Flow, TcpEvent, AF_INET, AF_INET6, FIELD_ABSENT};

use crate::{
    maps::{config, emit_with},
    read::{field, sock_flow},
};

#[tracepoint]
pub fn tracer_rst_send(ctx: TracePointContext) -> u32 {
    let _ = try_send_reset(&ctx);
    0
}

/// tcp_send_reset's record since 6.10 from `skaddr` on (state, reason and the two sockaddr
/// images follow it): read in one call where the tracefs offsets say the fields sit so.
#[repr(C)]
struct RecordSince610 {
    skaddr: u64,
    _state: i32,
    reason: u32,
    saddr: [u8; 28],
    daddr: [u8; 28],
}

#[inline(always)]
fn try_send_reset(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let f = &cfg.send_reset;
    let one_read = f.sport == FIELD_ABSENT
        && f.state == f.skaddr + 8
        && f.reason == f.skaddr + 12
        && f.saddr == f.skaddr + 16
        && f.daddr == f.skaddr + 44;
    // With no socket the tracepoint reverses the offending segment's 4-tuple, so its
    // source is the refused target and its destination the client; flip it to client->target.
    let mut flow = Flow::default();
    let reason: u32;
    if one_read {
        let r: RecordSince610 = field(ctx, f.skaddr)?;
        if r.skaddr != 0 {
            return None;
        }
        let (family, tport, taddr) = sockaddr_image(&r.saddr)?;
        let (_, cport, caddr) = sockaddr_image(&r.daddr)?;
        (flow.family, flow.sport, flow.saddr, flow.dport, flow.daddr) = (family, cport, caddr, tport, taddr);
        reason = r.reason;
    } else {
        let sk: u64 = field(ctx, f.skaddr).unwrap_or(0);
        if sk != 0 {
            return None;
        }
        if f.sport == FIELD_ABSENT {
            // Since 6.10 addresses are stored as sockaddr images (family, port, address).
            let s: [u8; 28] = field(ctx, f.saddr)?;
            let d: [u8; 28] = field(ctx, f.daddr)?;
            let (family, tport, taddr) = sockaddr_image(&s)?;
            let (_, cport, caddr) = sockaddr_image(&d)?;
            (flow.family, flow.sport, flow.saddr, flow.dport, flow.daddr) = (family, cport, caddr, tport, taddr);
        } else {
            let raw = sock_flow(ctx, f);
            (flow.family, flow.sport, flow.saddr, flow.dport, flow.daddr) = (raw.family, raw.dport, raw.daddr, raw.sport, raw.saddr);
        }
        reason = field(ctx, f.reason).unwrap_or(u32::MAX);
    }
    emit_with(EventKind::TcpRstSentNoSocket as u32, |ev: &mut TcpEvent| {
        ev.header.kind = EventKind::TcpRstSentNoSocket as u32;
        ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
        // No task: this runs in whatever context received the segment, and the evidence is
        // matched to its attempt by flow (the attempt carries its owner).
        ev.flow = flow;
        ev.reason = reason;
    });
    Some(())
}

/// One side of the flow from a `struct sockaddr_in`/`sockaddr_in6` image (family, big-endian
/// port, IPv4 address at +4 or IPv6 address at +8: UAPI layouts).
#[inline(always)]
fn sockaddr_image(b: &[u8; 28]) -> Option<(u16, u16, [u8; 16])> {
    let family = u16::from_ne_bytes([b[0], b[1]]);
    let port = u16::from_be_bytes([b[2], b[3]]);
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&b[4..8]);
    } else if family == AF_INET6 {
        addr.copy_from_slice(&b[8..24]);
    } else {
        return None;
    }
    Some((family, port, addr))
}
