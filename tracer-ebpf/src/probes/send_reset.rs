//! tcp:tcp_send_reset with no socket: this host's TCP stack refused a segment because nothing
//! listens on its destination. This, not the client's ECONNREFUSED, proves a dead listener
//! (a netfilter `reject with tcp reset` forges its RST without passing here).
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext, EbpfContext};
use tracer_common::{EventKind, Flow, PacketEvent, AF_INET, AF_INET6, FIELD_ABSENT};

use crate::{
    maps::{config, emit_with, STASHED_RESETS},
    read::{field, sock_flow, words_to_bytes, Block, BLOCK_SEND_RESET},
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
    // With no socket the tracepoint reverses the offending segment's 4-tuple, so its
    // source is the refused target and its destination the client; flip it to client->target.
    let mut flow = Flow::default();
    let reason: u32;
    if f.sport == FIELD_ABSENT {
        // Since 6.10 addresses are stored as sockaddr images (family, port, address), and the
        // record's fields lie in its first bytes: one read for all (once per refused connect).
        let record = Block::read(BLOCK_SEND_RESET, ctx.as_ptr() as u64)?;
        if record.get::<u64>(f.skaddr)? != 0 {
            return None;
        }
        let (family, tport, taddr) = sockaddr_image(&record, f.saddr)?;
        let (_, cport, caddr) = sockaddr_image(&record, f.daddr)?;
        flow.family = family;
        flow.sport = cport;
        flow.saddr = caddr;
        flow.dport = tport;
        flow.daddr = taddr;
        reason = record.get(f.reason).unwrap_or(u32::MAX);
    } else {
        let sk: u64 = field(ctx, f.skaddr).unwrap_or(0);
        if sk != 0 {
            return None;
        }
        let raw = sock_flow(ctx, f);
        flow.family = raw.family;
        flow.sport = raw.dport;
        flow.saddr = raw.daddr;
        flow.dport = raw.sport;
        flow.daddr = raw.saddr;
        reason = field(ctx, f.reason).unwrap_or(u32::MAX);
    }
    let now = unsafe { bpf_ktime_get_ns() };
    // Stashed: on loopback and veth the client's stack takes the reset next, on this CPU, and
    // the refused attempt's close claims it (set_state.rs): its proof then rides in the
    // attempt's own record. The reset held before this one was not claimed: it goes first.
    let Some(stash) = STASHED_RESETS.get_ptr_mut(0) else {
        send(&flow, reason, now);
        return Some(());
    };
    let stash = unsafe { &mut *stash };
    if stash.held() {
        send(&stash.flow, stash.reason, stash.ts_ns);
    }
    stash.flow = flow;
    stash.reason = reason;
    stash.ts_ns = now;
    // Last: a claim that read the fields before sees the sequence move.
    unsafe { core::ptr::write_volatile(&mut stash.seq, stash.seq.wrapping_add(1)) };
    Some(())
}

/// Sends a reset from no socket as an event of its own.
#[inline(always)]
fn send(flow: &Flow, reason: u32, ts_ns: u64) {
    emit_with(EventKind::TcpRstSentNoSocket as u32, |ev: &mut PacketEvent| {
        ev.header.kind = EventKind::TcpRstSentNoSocket as u32;
        ev.header.ts_ns = ts_ns;
        // No task: this runs in whatever context received the segment, and the evidence is
        // matched to its attempt by flow (the attempt carries its owner).
        ev.flow = *flow;
        ev.reason = reason;
    });
}

/// The reset stashed on this CPU, if it is `flow`'s: taken (no longer held), and its reason
/// and time returned. Called by the close of a refused attempt, on the CPU that took the reset.
#[inline(always)]
pub fn claim(flow: &Flow) -> Option<(u32, u64)> {
    let stash = STASHED_RESETS.get_ptr_mut(0)?;
    let seq = unsafe { core::ptr::read_volatile(&(*stash).seq) };
    let (held, same, reason, ts_ns) = unsafe { (seq != (*stash).claimed, (*stash).flow.same_as(flow), (*stash).reason, (*stash).ts_ns) };
    // A reset stashed since the read (this close interrupted by a softirq's) is not this one.
    if !held || !same || unsafe { core::ptr::read_volatile(&(*stash).seq) } != seq {
        return None;
    }
    unsafe { core::ptr::write_volatile(&mut (*stash).claimed, seq) };
    Some((reason, ts_ns))
}

/// One side of the flow from a `struct sockaddr_in`/`sockaddr_in6` image in the record
/// (family, big-endian port, IPv4 address at +4 or IPv6 address at +8: UAPI layouts).
#[inline(always)]
fn sockaddr_image(record: &Block, offset: u32) -> Option<(u16, u16, [u8; 16])> {
    let family: u16 = record.get(offset)?;
    let port = u16::from_be(record.get::<u16>(offset.checked_add(2)?)?);
    let addr = if family == AF_INET {
        words_to_bytes([record.get::<u32>(offset.checked_add(4)?)?, 0, 0, 0])
    } else if family == AF_INET6 {
        // Read as words: the image is 4-byte aligned in the record, not 8.
        words_to_bytes(record.get(offset.checked_add(8)?)?)
    } else {
        return None;
    };
    Some((family, port, addr))
}
