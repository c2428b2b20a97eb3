//! tcp:tcp_send_reset with no socket: this host's TCP stack refused a segment because nothing
//! listens on its destination. This, not the client's ECONNREFUSED, proves a dead listener
//! (a netfilter `reject with tcp reset` forges its RST without passing here).
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use tracer_common::{EventKind, Flow, PacketEvent, AF_INET, AF_INET6, FIELD_ABSENT};

use crate::{
    maps::{config, emit_with},
    read::{field, sock_flow},
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
        let (family, tport, taddr) = sockaddr_image(ctx, f.saddr)?;
        let (_, cport, caddr) = sockaddr_image(ctx, f.daddr)?;
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
    emit_with(EventKind::TcpRstSentNoSocket as u32, |ev: &mut PacketEvent| {
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
/// port, IPv4 address at +4 or IPv6 address at +8: UAPI layouts), read with ONE helper call
/// instead of three: this program runs once per refused connection, floods included.
#[inline(always)]
fn sockaddr_image(ctx: &TracePointContext, offset: u32) -> Option<(u16, u16, [u8; 16])> {
    let b: [u8; 24] = field(ctx, offset)?;
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
