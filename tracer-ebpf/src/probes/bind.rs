//! syscalls:sys_enter_bind for AF_UNIX: who created a socket file, so a stale or missing
//! socket can name the process that owned it.
use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};
use tracer_common::EventKind;

use super::connect::{emit_unix, AF_UNIX};
use crate::{maps::config, read::field};

#[tracepoint]
pub fn tracer_bind(ctx: TracePointContext) -> u32 {
    let _ = try_bind(&ctx);
    0
}

#[inline(always)]
fn try_bind(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let f = &cfg.bind_enter;
    let addr: u64 = field(ctx, f.addr)?;
    let len: u64 = field(ctx, f.addrlen)?;
    let family: u16 = unsafe { bpf_probe_read_user(addr as *const u16) }.ok()?;
    if family != AF_UNIX || len <= 2 {
        return None;
    }
    emit_unix(cfg, EventKind::UnixBind, 0, addr, len);
    Some(())
}
