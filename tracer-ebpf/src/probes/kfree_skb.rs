//! skb:kfree_skb with the drop reasons that explain a failed upstream connection:
//! NO_SOCKET (nothing listens), NETFILTER_DROP (a firewall rule dropped or rejected it) and
//! TCP_LISTEN_OVERFLOW (a full accept queue, on kernels that have that reason). Every other
//! drop, the vast majority, returns after one comparison.
//!
//! Before 5.17 the tracepoint has no reason, only `location` (the return address into the
//! function that freed the skb): there the drops that count are those from a few functions
//! whose address ranges userspace resolved through /proc/kallsyms (`DropSites`), and every
//! other drop returns after one read and a few comparisons.
//!
//! Where the drop has a reason and BTF gives `sk_buff.protocol`, the raw tracepoint serves:
//! its arguments (skb, location, reason) are plain loads, so the drops that are not ours (one
//! per healthy proxied request on loopback) leave without a helper call.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext,
};
use tracer_common::{Config, DropSites, EventKind, PacketEvent, DROP_SITE_FLAG, FIELD_ABSENT};

use crate::{
    attempts,
    maps::{config, emit_with},
    packet::tcp_flow,
    read::{current_task, field, kernel, netns_of},
};

/// The classic tracepoint: fields from its record (tracefs formats).
#[tracepoint]
pub fn tracer_kfree_skb(ctx: TracePointContext) -> u32 {
    let _ = try_kfree_skb(&ctx);
    0
}

/// The raw tracepoint, on kernels with drop reasons (capture::start chooses).
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn tracer_kfree_skb_raw(ctx: RawTracePointContext) -> i32 {
    let _ = try_kfree_skb(&ctx);
    0
}

/// One call of skb:kfree_skb, from the classic record or the raw arguments.
trait FreedSkb: EbpfContext {
    /// The drop reason; `None` on kernels without one (the location serves then).
    fn reason(&self, cfg: &Config) -> Option<u32>;
    fn location(&self, cfg: &Config) -> Option<u64>;
    fn skb(&self, cfg: &Config) -> Option<u64>;
    /// The skb's protocol (ETH_P_*), host order.
    fn eth_proto(&self, cfg: &Config, skb: u64) -> Option<u16>;
}

impl FreedSkb for TracePointContext {
    #[inline(always)]
    fn reason(&self, cfg: &Config) -> Option<u32> {
        (cfg.kfree_skb.reason != FIELD_ABSENT).then(|| field(self, cfg.kfree_skb.reason)).flatten()
    }
    #[inline(always)]
    fn location(&self, cfg: &Config) -> Option<u64> {
        field(self, cfg.kfree_skb.location)
    }
    #[inline(always)]
    fn skb(&self, cfg: &Config) -> Option<u64> {
        field(self, cfg.kfree_skb.skbaddr)
    }
    #[inline(always)]
    fn eth_proto(&self, cfg: &Config, _skb: u64) -> Option<u16> {
        // The record stores ntohs(skb->protocol).
        field(self, cfg.kfree_skb.protocol)
    }
}

impl FreedSkb for RawTracePointContext {
    // TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason, ...): the
    // reason is the third argument since 5.17; userspace attaches this only where it exists.
    #[inline(always)]
    fn reason(&self, _cfg: &Config) -> Option<u32> {
        Some(self.arg::<u64>(2) as u32)
    }
    #[inline(always)]
    fn location(&self, _cfg: &Config) -> Option<u64> {
        Some(self.arg::<u64>(1))
    }
    #[inline(always)]
    fn skb(&self, _cfg: &Config) -> Option<u64> {
        let skb: u64 = self.arg(0);
        (skb != 0).then_some(skb)
    }
    #[inline(always)]
    fn eth_proto(&self, cfg: &Config, skb: u64) -> Option<u16> {
        kernel::<u16>(skb, cfg.offsets.skb_protocol).map(u16::from_be)
    }
}

#[inline(always)]
fn try_kfree_skb<C: FreedSkb>(ctx: &C) -> Option<()> {
    let cfg = config()?;
    let reason = if let Some(reason) = ctx.reason(cfg) {
        let e = &cfg.enums;
        if reason != e.drop_no_socket && reason != e.drop_netfilter_drop && reason != e.drop_tcp_listen_overflow {
            return None;
        }
        reason
    } else {
        let location = ctx.location(cfg)?;
        DROP_SITE_FLAG | drop_site(&cfg.drop_sites, location)?
    };
    let skb = ctx.skb(cfg)?;
    let eth_proto = ctx.eth_proto(cfg, skb)?;
    let flow = tcp_flow(cfg, skb, eth_proto)?;

    // A locally generated SYN still carries its socket on the output path: attribute directly.
    let sk: u64 = kernel(skb, cfg.offsets.skb_sk).unwrap_or(0);
    let attempt = attempts::find(cfg, sk);
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
