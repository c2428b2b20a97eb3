//! syscalls:sys_enter_connect / sys_exit_connect for AF_UNIX sockets: a Unix connect fails
//! synchronously, so the errno is the whole story (ENOENT missing file, ECONNREFUSED stale
//! file, EAGAIN full queue, EACCES/EPERM permissions). TCP connects are followed through the
//! socket instead (set_state.rs), because over a network their failure arrives later.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, generated::bpf_probe_read_user as read_user_raw},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{Config, EventKind, UnixEvent, UNIX_PATH_MAX};

use crate::{
    maps::{config, emit_with, UNIX_CONNECTS},
    read::{current_netns, current_task, field},
};

/// AF_UNIX (UAPI).
pub const AF_UNIX: u16 = 1;
/// The errnos that explain a failed Unix upstream connect (UAPI numbers).
const EPERM: i64 = 1;
const ENOENT: i64 = 2;
const EAGAIN: i64 = 11;
const EACCES: i64 = 13;
const ECONNREFUSED: i64 = 111;

#[tracepoint]
pub fn tracer_conn_enter(ctx: TracePointContext) -> u32 {
    let _ = try_connect_enter(&ctx);
    0
}

#[inline(always)]
fn try_connect_enter(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let f = &cfg.connect_enter;
    let addr: u64 = field(ctx, f.addr)?;
    let len: u64 = field(ctx, f.addrlen)?;
    let family: u16 = unsafe { bpf_probe_read_user(addr as *const u16) }.ok()?;
    if family != AF_UNIX {
        return None;
    }
    let _ = UNIX_CONNECTS.insert(&bpf_get_current_pid_tgid(), &[addr, len], 0);
    Some(())
}

#[tracepoint]
pub fn tracer_conn_exit(ctx: TracePointContext) -> u32 {
    let _ = try_connect_exit(&ctx);
    0
}

#[inline(always)]
fn try_connect_exit(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let key = bpf_get_current_pid_tgid();
    let [addr, len] = unsafe { UNIX_CONNECTS.get(&key) }.copied()?;
    let _ = UNIX_CONNECTS.remove(&key);
    let ret: i64 = field(ctx, cfg.connect_exit.ret)?;
    let errno = -ret;
    if errno != ENOENT && errno != ECONNREFUSED && errno != EAGAIN && errno != EACCES && errno != EPERM {
        return None;
    }
    emit_unix(cfg, EventKind::UnixConnectFailed, errno as i32, addr, len);
    Some(())
}

/// Sends a Unix event with the path read from the caller's sockaddr_un (still mapped: we are
/// in the same syscall).
#[inline(always)]
pub fn emit_unix(cfg: &Config, kind: EventKind, errno: i32, addr: u64, len: u64) {
    let netns = current_netns(cfg);
    emit_with(kind as u32, |ev: &mut UnixEvent| {
        ev.header.kind = kind as u32;
        ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
        ev.header.netns = netns;
        ev.header.task = current_task();
        ev.errno = errno;
        // sun_path follows the 2-byte sun_family.
        let mut n = len.saturating_sub(2);
        if n > UNIX_PATH_MAX as u64 {
            n = UNIX_PATH_MAX as u64;
        }
        let n = (n as u32) & 0x7f;
        if n > 0 && n <= UNIX_PATH_MAX as u32 {
            let rc = unsafe { read_user_raw(ev.path.as_mut_ptr().cast(), n, (addr + 2) as *const _) };
            if rc == 0 {
                ev.path_len = n;
            }
        }
    });
}
