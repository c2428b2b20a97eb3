//! syscalls:sys_enter_bind for AF_UNIX: who created a socket file, so a stale or missing
//! socket can name the process that owned it.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{EventKind, UNIX_PATH_MAX};

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
    // A socket file's creator: watch it and the path for the listener's story.
    let mut path = [0u8; UNIX_PATH_MAX];
    if unsafe { bpf_probe_read_user_str_bytes((addr + 2) as *const u8, &mut path) }.is_ok() && path[0] != 0 {
        super::lifecycle::watch_path(&path);
    }
    super::lifecycle::watch_pid((bpf_get_current_pid_tgid() >> 32) as u32);
    emit_unix(cfg, EventKind::UnixBind, 0, addr, len);
    Some(())
}
