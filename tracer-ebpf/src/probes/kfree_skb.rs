//! skb:kfree_skb with the drop reasons that explain a failed upstream connection:
//! NO_SOCKET (nothing listens), NETFILTER_DROP (a firewall rule dropped or rejected it) and
//! TCP_LISTEN_OVERFLOW (a full accept queue, on kernels that have that reason). Every other
//! drop, the vast majority, returns after one comparison.
//!
//! Before 5.17 the tracepoint has no reason, only `location` (the return address into the
//! function that freed the skb): there the drops that count are those from a few functions
//! whose address ranges userspace resolved through /proc/kallsyms (`DropSites`), and every
//! other drop returns after one read and a few comparisons.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use tracer_common::{DropSites, EventKind, PacketEvent, DROP_SITE_FLAG, FIELD_ABSENT};

use crate::{
    maps::{config, emit_with, ATTEMPTS},
    packet::tcp_flow,
    read::{current_task, field, kernel, netns_of},
};

#[tracepoint]
pub fn tracer_kfree_skb(ctx: TracePointContext) -> u32 {
    let _ = try_kfree_skb(&ctx);
    0
}

#[inline(always)]
fn try_kfree_skb(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let f = &cfg.kfree_skb;
    let reason = if f.reason != FIELD_ABSENT {
        let reason: u32 = field(ctx, f.reason)?;
        let e = &cfg.enums;
        if reason != e.drop_no_socket && reason != e.drop_netfilter_drop && reason != e.drop_tcp_listen_overflow {
            return None;
        }
        reason
    } else {
        let location: u64 = field(ctx, f.location)?;
        DROP_SITE_FLAG | drop_site(&cfg.drop_sites, location)?
    };
    let skb: u64 = field(ctx, f.skbaddr)?;
    let eth_proto: u16 = field(ctx, f.protocol)?;
    let flow = tcp_flow(cfg, skb, eth_proto)?;

    // A locally generated SYN still carries its socket on the output path: attribute directly.
    let sk: u64 = kernel(skb, cfg.offsets.skb_sk).unwrap_or(0);
    let attempt = if sk != 0 { ATTEMPTS.get_ptr(&sk) } else { None };
    emit_with(EventKind::SkbDropped as u32, |ev: &mut PacketEvent| {
        ev.header.kind = EventKind::SkbDropped as u32;
        ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
        match attempt {
            Some(a) => {
                let a = unsafe { &*a };
                ev.header.sock = sk;
                ev.header.netns = netns_of(cfg, sk);
                ev.header.task = a.owner;
            }
            None => ev.header.task = current_task(),
        }
        ev.flow = flow;
        ev.reason = reason;
        ev.from_packet = 1;
    });
    Some(())
}

/// The index of the drop site whose range holds `location`.
#[inline(always)]
fn drop_site(sites: &DropSites, location: u64) -> Option<u32> {
    let mut i = 0;
    while i < sites.ranges.len() {
        let [start, end] = sites.ranges[i];
        if location >= start && location < end {
            return Some(i as u32);
        }
        i += 1;
    }
    None
}
