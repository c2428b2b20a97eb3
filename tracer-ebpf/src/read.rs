//! Reading tracepoint fields and kernel memory at offsets that userspace supplied.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid, bpf_probe_read_kernel,
        generated::bpf_get_current_comm as get_current_comm,
    },
    programs::TracePointContext,
};
use tracer_common::{family_of_saddr_v6, Config, Flow, Task, TpSockFields, AF_INET, AF_INET6, FIELD_ABSENT, TASK_COMM_LEN};

/// Reads a `T` at `offset` in the tracepoint record, `None` when the field is absent.
#[inline(always)]
pub fn field<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    if offset == FIELD_ABSENT {
        return None;
    }
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// Reads a `T` from kernel memory at `base + offset`.
#[inline(always)]
pub fn kernel<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 || offset == FIELD_ABSENT {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

/// The task running now.
#[inline(always)]
pub fn current_task() -> Task {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let mut task = core::mem::MaybeUninit::<Task>::uninit();
    let p = task.as_mut_ptr();
    unsafe {
        core::ptr::addr_of_mut!((*p).pid).write((pid_tgid >> 32) as u32);
        core::ptr::addr_of_mut!((*p).tid).write(pid_tgid as u32);
        core::ptr::addr_of_mut!((*p).uid).write(uid_gid as u32);
        core::ptr::addr_of_mut!((*p)._pad).write(0);
        // The helper writes all 16 bytes (the name NUL-padded, or zeros when it fails), so the
        // name needs no zeroing first: a 16-byte zeroing is a memset loop the verifier walks
        // on every path.
        get_current_comm(core::ptr::addr_of_mut!((*p).comm).cast(), TASK_COMM_LEN as u32);
        task.assume_init()
    }
}

/// Network namespace inode of a socket: sk->__sk_common.skc_net.net->ns.inum.
#[inline(always)]
pub fn netns_of(cfg: &Config, sk: u64) -> u32 {
    let net: u64 = kernel(sk, cfg.offsets.sock_skc_net).unwrap_or(0);
    kernel(net, cfg.offsets.net_ns_inum).unwrap_or(0)
}

/// Network namespace inode of the current task: current->nsproxy->net_ns->ns.inum. Read in
/// the kernel because a short-lived client may be gone before userspace could look.
#[inline(always)]
pub fn current_netns(cfg: &Config) -> u32 {
    let task = unsafe { bpf_get_current_task() };
    let nsproxy: u64 = kernel(task, cfg.offsets.task_nsproxy).unwrap_or(0);
    let net: u64 = kernel(nsproxy, cfg.offsets.nsproxy_net_ns).unwrap_or(0);
    kernel(net, cfg.offsets.net_ns_inum).unwrap_or(0)
}

/// The flow of a socket-based TCP tracepoint (saddr/sport = this socket's side).
#[inline(always)]
pub fn sock_flow(ctx: &TracePointContext, f: &TpSockFields) -> Flow {
    let family: u16 = if f.family == FIELD_ABSENT {
        // 5.10: no `family` field; saddr_v6 holds the v4-mapped form for an IPv4 socket.
        match field::<[u8; 16]>(ctx, f.saddr_v6) {
            Some(v6) => family_of_saddr_v6(&v6),
            None => 0,
        }
    } else {
        field(ctx, f.family).unwrap_or(0)
    };
    let mut flow = Flow {
        family,
        sport: field(ctx, f.sport).unwrap_or(0),
        dport: field(ctx, f.dport).unwrap_or(0),
        ..Flow::default()
    };
    if family == AF_INET6 {
        flow.saddr = field(ctx, f.saddr_v6).unwrap_or([0; 16]);
        flow.daddr = field(ctx, f.daddr_v6).unwrap_or([0; 16]);
    } else if family == AF_INET {
        let s: [u8; 4] = field(ctx, f.saddr).unwrap_or([0; 4]);
        let d: [u8; 4] = field(ctx, f.daddr).unwrap_or([0; 4]);
        flow.saddr[..4].copy_from_slice(&s);
        flow.daddr[..4].copy_from_slice(&d);
    }
    flow
}

/// Fills one side of a flow from a `struct sockaddr_in`/`sockaddr_in6` image as stored by
/// tracepoints that record addresses that way (tcp_send_reset since 6.10): family, port (big
/// endian), then the IPv4 address at +4 or the IPv6 address at +8. UAPI layouts, not kernel ones.
#[allow(dead_code)] // tcp_send_reset reads its images in one call (send_reset.rs)
#[inline(always)]
pub fn sockaddr_side(ctx: &TracePointContext, offset: u32) -> Option<(u16, u16, [u8; 16])> {
    let family: u16 = field(ctx, offset)?;
    let port_be: u16 = field(ctx, offset + 2)?;
    let mut addr = [0u8; 16];
    if family == AF_INET {
        let a: [u8; 4] = field(ctx, offset + 4)?;
        addr[..4].copy_from_slice(&a);
    } else if family == AF_INET6 {
        addr = field(ctx, offset + 8)?;
    } else {
        return None;
    }
    Some((family, u16::from_be(port_be), addr))
}
