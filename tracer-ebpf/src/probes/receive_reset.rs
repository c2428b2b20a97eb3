//! tcp:tcp_receive_reset: an RST reached an attempt in SYN_SENT. Folded into the attempt's
//! state (reported with its close), so a flood of refusals costs one event per attempt.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    attempts,
    maps::config,
    read::field,
};

#[tracepoint]
pub fn tracer_rst_recv(ctx: TracePointContext) -> u32 {
    let _ = try_receive_reset(&ctx);
    0
}

#[inline(always)]
fn try_receive_reset(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let sk: u64 = field(ctx, cfg.receive_reset.skaddr)?;
    let attempt = attempts::find(cfg, sk)?;
    unsafe { (*attempt).rst_received = 1 };
    Some(())
}
