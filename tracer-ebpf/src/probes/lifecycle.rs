//! Why a listener went away: its owner's exit (with code or signal), the fatal signal and its
//! sender, the OOM killer's choice, and the unlink of a Unix socket file.
//!
//! Only processes that own a listener (WATCHED_PIDS: filled at listen()/bind() here and from
//! userspace's start-up snapshot) and only known socket paths (WATCHED_PATHS) are reported, so
//! the many exits, signals and unlinks of a busy host cost one map lookup each.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_user_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{EventKind, ProcessEvent, SignalMemo, UnixEvent, UNIX_PATH_MAX};

use crate::{
    maps::{config, emit_with, SIGNALS, WATCHED_PATHS, WATCHED_PIDS},
    read::{current_netns, current_task, field, kernel},
};


/// Signals that end a process unless it handles them (UAPI numbers).
const FATAL_SIGNALS: [i32; 9] = [1, 2, 3, 6, 9, 11, 13, 15, 7]; // HUP INT QUIT ABRT KILL SEGV PIPE TERM BUS

#[inline(always)]
pub fn watch_pid(pid: u32) {
    let _ = WATCHED_PIDS.insert(&pid, &1, 0);
}

#[inline(always)]
pub fn watch_path(path: &[u8; UNIX_PATH_MAX]) {
    let _ = WATCHED_PATHS.insert(path, &1, 0);
}

#[tracepoint]
pub fn tracer_proc_exit(ctx: TracePointContext) -> u32 {
    let _ = try_proc_exit(&ctx);
    0
}

#[inline(always)]
fn try_proc_exit(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let l = &cfg.lifecycle;
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    unsafe { WATCHED_PIDS.get(&tgid) }?;
    // The process is gone when its last thread exits (group_dead), or, without that field,
    // when its main thread does.
    let group_dead: Option<u8> = field(ctx, l.exit_group_dead);
    match group_dead {
        Some(0) => return None,
        Some(_) => {}
        None if pid_tgid as u32 != tgid => return None,
        None => {}
    }
    let task = unsafe { bpf_get_current_task() };
    let code: i32 = kernel(task, l.task_exit_code).unwrap_or(-1);
    let _ = WATCHED_PIDS.remove(&tgid);
    let netns = current_netns(cfg);
    emit_with(EventKind::ProcessExit as u32, |ev: &mut ProcessEvent| {
        ev.header.kind = EventKind::ProcessExit as u32;
        ev.header.netns = netns;
        ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
        ev.header.task = current_task();
        ev.code = code;
        ev.actor = ev.header.task;
    });
    Some(())
}

#[tracepoint]
pub fn tracer_sig_gen(ctx: TracePointContext) -> u32 {
    let _ = try_signal(&ctx);
    0
}

#[inline(always)]
fn try_signal(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let l = &cfg.lifecycle;
    let sig: i32 = field(ctx, l.sig_sig)?;
    if !FATAL_SIGNALS.contains(&sig) {
        return None;
    }
    let target: i32 = field(ctx, l.sig_pid)?;
    remember_signal(target as u32, sig);
    unsafe { WATCHED_PIDS.get(&(target as u32)) }?;
    let comm: [u8; 16] = field(ctx, l.sig_comm).unwrap_or([0; 16]);
    emit_with(EventKind::SignalGenerated as u32, |ev: &mut ProcessEvent| {
        ev.header.kind = EventKind::SignalGenerated as u32;
        ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
        ev.header.task.pid = target as u32;
        ev.header.task.tid = target as u32;
        ev.header.task.comm = comm;
        ev.code = sig;
        ev.actor = current_task();
    });
    Some(())
}

/// Keeps the fatal signal for the target process, so the close of its sockets as it dies says
/// how and by whom (probes/conn_end.rs). A fault (SIGSEGV...) is raised by the faulting thread
/// itself: keyed by its process; a kill names the process (its leader's pid is the tgid).
#[inline(always)]
fn remember_signal(target: u32, sig: i32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = if pid_tgid as u32 == target { (pid_tgid >> 32) as u32 } else { target };
    let memo = SignalMemo { ts_ns: unsafe { bpf_ktime_get_ns() }, signal: sig, oom: 0, sender: current_task() };
    let _ = SIGNALS.insert(&key, &memo, 0);
}

#[tracepoint]
pub fn tracer_oom(ctx: TracePointContext) -> u32 {
    let _ = try_oom(&ctx);
    0
}

#[inline(always)]
fn try_oom(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let pid: i32 = field(ctx, cfg.lifecycle.oom_pid)?;
    // The OOM killer sends its SIGKILL just before it marks the victim.
    match SIGNALS.get_ptr_mut(&(pid as u32)) {
        Some(m) => unsafe { (*m).oom = 1 },
        None => {
            let memo = SignalMemo { ts_ns: unsafe { bpf_ktime_get_ns() }, signal: 9, oom: 1, sender: current_task() };
            let _ = SIGNALS.insert(&(pid as u32), &memo, 0);
        }
    }
    unsafe { WATCHED_PIDS.get(&(pid as u32)) }?;
    emit_with(EventKind::OomVictim as u32, |ev: &mut ProcessEvent| {
        ev.header.kind = EventKind::OomVictim as u32;
        ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
        ev.header.task.pid = pid as u32;
        ev.header.task.tid = pid as u32;
        ev.actor = current_task();
    });
    Some(())
}

#[tracepoint]
pub fn tracer_unlinkat(ctx: TracePointContext) -> u32 {
    let _ = config().and_then(|cfg| try_unlink(&ctx, cfg.lifecycle.unlinkat_pathname));
    0
}

#[tracepoint]
pub fn tracer_unlink(ctx: TracePointContext) -> u32 {
    let _ = config().and_then(|cfg| try_unlink(&ctx, cfg.lifecycle.unlink_pathname));
    0
}

#[inline(always)]
fn try_unlink(ctx: &TracePointContext, pathname_off: u32) -> Option<()> {
    let cfg = config()?;
    let user_path: u64 = field(ctx, pathname_off)?;
    // Zero-filled, so the key is the path NUL-padded exactly as userspace and bind() store it.
    let mut path = [0u8; UNIX_PATH_MAX];
    let len = unsafe { bpf_probe_read_user_str_bytes(user_path as *const u8, &mut path) }.ok()?.len();
    unsafe { WATCHED_PATHS.get(&path) }?;
    let netns = current_netns(cfg);
    emit_with(EventKind::UnixUnlink as u32, |ev: &mut UnixEvent| {
        ev.header.kind = EventKind::UnixUnlink as u32;
        ev.header.netns = netns;
        ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
        ev.header.task = current_task();
        ev.path = path;
        ev.path_len = len as u32;
    });
    Some(())
}
