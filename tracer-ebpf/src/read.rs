//! Reading tracepoint fields and kernel memory at offsets that userspace supplied.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf, generated::bpf_get_current_comm as get_current_comm,
    },
    macros::map,
    maps::PerCpuArray,
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
    EbpfContext,
};
use tracer_common::{
    family_of_saddr_v6, BtfOffsets, Config, Flow, Task, TpSockFields, AF_INET, AF_INET6, FIELD_ABSENT, TASK_COMM_LEN,
};

/// Reads a `T` at `offset` in the tracepoint record, `None` when the field is absent.
#[inline(always)]
pub fn field<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    if offset == FIELD_ABSENT {
        return None;
    }
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// Bytes a `Block` holds.
pub const BLOCK_BYTES: usize = 128;

/// Block slots: one per tracepoint whose programs read blocks. Another program can interrupt
/// one on the same CPU (a softirq's), but a program never interrupts itself (the kernel's
/// recursion guard), and set_state's tail call runs after it, not inside it.
pub const BLOCK_SEND_RESET: u32 = 0;
pub const BLOCK_SET_STATE: u32 = 1;

/// Per-CPU room for `Block`s.
#[map]
static BLOCKS: PerCpuArray<[u64; BLOCK_BYTES / 8]> = PerCpuArray::with_max_entries(2, 0);

/// The first `BLOCK_BYTES` of a tracepoint's record or of a kernel struct, read with one helper
/// call: several fields then cost one call instead of one each (a call costs about as much as
/// everything else a field takes).
pub struct Block(*const u8);

impl Block {
    /// Reads `BLOCK_BYTES` at `src` into block slot `slot`.
    #[inline(always)]
    pub fn read(slot: u32, src: u64) -> Option<Block> {
        let buf = BLOCKS.get_ptr_mut(slot)?;
        let bytes = unsafe { &mut *(buf as *mut [u8; BLOCK_BYTES]) };
        unsafe { bpf_probe_read_kernel_buf(src as *const u8, bytes) }.ok()?;
        Some(Block(buf as *const u8))
    }

    /// The `T` at `offset` (its natural alignment, as BTF and tracefs give offsets); `None`
    /// past the block (then read the field alone) or when the field is absent.
    #[inline(always)]
    pub fn get<T: Copy>(&self, offset: u32) -> Option<T> {
        // Loaded afresh for each field: otherwise the compiler reuses one field's checked
        // pointer for a neighbour's, past what the verifier can follow.
        let offset = unsafe { core::ptr::read_volatile(&offset) } as usize;
        if offset > BLOCK_BYTES - core::mem::size_of::<T>() {
            return None;
        }
        Some(unsafe { core::ptr::read(self.0.add(offset) as *const T) })
    }

    /// The `T` at `offset` of the struct at `base` this block was read from: from the block,
    /// or, past it, read alone.
    #[inline(always)]
    pub fn get_or_read<T: Copy>(&self, base: u64, offset: u32) -> Option<T> {
        self.get(offset).or_else(|| kernel(base, offset))
    }
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

/// One call of sock:inet_sock_set_state, as set_state.rs and conn_end.rs read it: from the
/// classic tracepoint's record (every field a helper call), or from the raw tracepoint's
/// arguments (sk, oldstate, newstate: plain loads) and the socket's own members at offsets
/// from BTF. Userspace attaches one of the two (capture::start).
pub trait StateChange: EbpfContext {
    /// (oldstate, newstate).
    fn states(&self, cfg: &Config) -> Option<(u32, u32)>;
    /// The `struct sock *`.
    fn sock(&self, cfg: &Config) -> Option<u64>;
    /// IPPROTO_* of the socket.
    fn protocol(&self, cfg: &Config, sk: u64) -> Option<u16>;
    /// (sport, dport) in host order, this socket's side first.
    fn ports(&self, cfg: &Config, sk: u64) -> (u16, u16);
    /// The socket's flow, this socket's side as the source.
    fn flow(&self, cfg: &Config, sk: u64) -> Flow;
    /// The flow and the socket's network namespace, as reported with an event.
    #[inline(always)]
    fn flow_and_netns(&self, cfg: &Config, sk: u64) -> (Flow, u32) {
        (self.flow(cfg, sk), netns_of(cfg, sk))
    }
    /// `struct tcp_sock`'s `bytes_received` (or, `received` false, `bytes_sent`).
    #[inline(always)]
    fn tcp_bytes(&self, cfg: &Config, sk: u64, received: bool) -> Option<u64> {
        kernel(sk, if received { cfg.conn.tcp_bytes_received } else { cfg.conn.tcp_bytes_sent })
    }
    /// The task running now, as a connect's owner.
    #[inline(always)]
    fn current_task(&self) -> Task {
        current_task()
    }
}

impl StateChange for TracePointContext {
    #[inline(always)]
    fn states(&self, cfg: &Config) -> Option<(u32, u32)> {
        let f = &cfg.set_state;
        // oldstate and newstate are neighbours in every kernel's record: one read for both.
        if f.newstate == f.oldstate.wrapping_add(4) {
            let both: [i32; 2] = field(self, f.oldstate)?;
            Some((both[0] as u32, both[1] as u32))
        } else {
            let old: i32 = field(self, f.oldstate)?;
            let new: i32 = field(self, f.newstate)?;
            Some((old as u32, new as u32))
        }
    }

    #[inline(always)]
    fn sock(&self, cfg: &Config) -> Option<u64> {
        field(self, cfg.set_state.skaddr)
    }

    #[inline(always)]
    fn protocol(&self, cfg: &Config, _sk: u64) -> Option<u16> {
        field(self, cfg.set_state.protocol)
    }

    #[inline(always)]
    fn ports(&self, cfg: &Config, _sk: u64) -> (u16, u16) {
        (field(self, cfg.set_state.sport).unwrap_or(0), field(self, cfg.set_state.dport).unwrap_or(0))
    }

    #[inline(always)]
    fn flow(&self, cfg: &Config, _sk: u64) -> Flow {
        sock_flow(self, &cfg.set_state)
    }
}

impl StateChange for RawTracePointContext {
    #[inline(always)]
    fn states(&self, _cfg: &Config) -> Option<(u32, u32)> {
        // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate).
        Some((self.arg::<u64>(1) as u32, self.arg::<u64>(2) as u32))
    }

    #[inline(always)]
    fn sock(&self, _cfg: &Config) -> Option<u64> {
        let sk: u64 = self.arg(0);
        (sk != 0).then_some(sk)
    }

    #[inline(always)]
    fn protocol(&self, cfg: &Config, sk: u64) -> Option<u16> {
        kernel(sk, cfg.sock.sk_protocol)
    }

    #[inline(always)]
    fn ports(&self, cfg: &Config, sk: u64) -> (u16, u16) {
        let s = &cfg.sock;
        let sport: u16 = kernel(sk, s.inet_sport).unwrap_or(0);
        let dport: u16 = kernel(sk, s.skc_dport).unwrap_or(0);
        (u16::from_be(sport), u16::from_be(dport))
    }

    /// From one read of the socket's head (`struct sock_common`: the addresses, the peer's
    /// port, the family and the namespace) plus the local port and the namespace's number:
    /// three helper calls instead of eight, once per refused attempt in a flood.
    #[inline(always)]
    fn flow_and_netns(&self, cfg: &Config, sk: u64) -> (Flow, u32) {
        let Some(head) = Block::read(BLOCK_SET_STATE, sk) else {
            return (self.flow(cfg, sk), netns_of(cfg, sk));
        };
        let s = &cfg.sock;
        // Each member past the head (none on the kernels seen) is read alone.
        let family: u16 = head.get_or_read(sk, s.skc_family).unwrap_or(0);
        let dport = u16::from_be(head.get_or_read(sk, s.skc_dport).unwrap_or(0));
        let sport = u16::from_be(kernel::<u16>(sk, s.inet_sport).unwrap_or(0));
        let mut flow = Flow { family, sport, dport, ..Flow::default() };
        if family == AF_INET6 {
            flow.saddr = words_to_bytes(head.get_or_read(sk, s.skc_v6_rcv_saddr).unwrap_or([0; 4]));
            flow.daddr = words_to_bytes(head.get_or_read(sk, s.skc_v6_daddr).unwrap_or([0; 4]));
        } else if family == AF_INET {
            flow.saddr = words_to_bytes([head.get_or_read(sk, s.skc_rcv_saddr).unwrap_or(0), 0, 0, 0]);
            flow.daddr = words_to_bytes([head.get_or_read(sk, s.skc_daddr).unwrap_or(0), 0, 0, 0]);
        }
        let net: u64 = head.get_or_read(sk, cfg.offsets.sock_skc_net).unwrap_or(0);
        (flow, kernel(net, cfg.offsets.net_ns_inum).unwrap_or(0))
    }

    #[inline(always)]
    fn flow(&self, cfg: &Config, sk: u64) -> Flow {
        let s = &cfg.sock;
        let family: u16 = kernel(sk, s.skc_family).unwrap_or(0);
        let (sport, dport) = self.ports(cfg, sk);
        let mut flow = Flow { family, sport, dport, ..Flow::default() };
        if family == AF_INET6 {
            flow.saddr = kernel(sk, s.skc_v6_rcv_saddr).unwrap_or([0; 16]);
            flow.daddr = kernel(sk, s.skc_v6_daddr).unwrap_or([0; 16]);
        } else if family == AF_INET {
            let d: [u8; 4] = kernel(sk, s.skc_daddr).unwrap_or([0; 4]);
            let l: [u8; 4] = kernel(sk, s.skc_rcv_saddr).unwrap_or([0; 4]);
            flow.saddr[..4].copy_from_slice(&l);
            flow.daddr[..4].copy_from_slice(&d);
        }
        flow
    }
}

/// An address read as 32-bit words (4-byte aligned in a block), in memory order. A
/// reinterpretation, not a byte copy: the compiler keeps words as words, where copying bytes
/// into a `[u8; 16]` costs a load and a store per byte wherever the flow goes next.
#[inline(always)]
pub fn words_to_bytes(words: [u32; 4]) -> [u8; 16] {
    // SAFETY: same size, and every bit pattern is a valid [u8; 16].
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

/// The offsets the `tp_btf` program loads socket and task members at. A read-only global,
/// frozen after userspace set it (`EbpfLoader::override_global`), so the verifier knows each
/// value as a constant: a load through a typed pointer must have a constant offset, which it
/// checks against the member there. The placeholder (all `FIELD_ABSENT`) is never loaded:
/// capture::start loads the program only with every offset known.
#[unsafe(no_mangle)]
static TRACER_BTF_OFFSETS: BtfOffsets = BtfOffsets::ABSENT;

/// An offset from `TRACER_BTF_OFFSETS` (volatile: the compiler must not fold the placeholder).
#[inline(always)]
fn btf_offset(field: &u32) -> usize {
    unsafe { core::ptr::read_volatile(field) as usize }
}

/// The `T` at `offset` of the object `base` points to: one load instruction, which the
/// verifier turns into a load that cannot fault (`base` is a typed kernel pointer).
#[inline(always)]
unsafe fn load<T: Copy>(base: *const u8, offset: usize) -> T {
    unsafe { core::ptr::read_volatile(base.add(offset) as *const T) }
}

/// Per CPU, where a typed socket pointer is stored and read back as a plain number: the
/// verifier allows no arithmetic on a typed pointer but adding an offset, and the attempt
/// table hashes the socket's address; it does not follow a pointer through map memory.
/// One slot per program that does it, so that one interrupting another (a softirq's) does
/// not overwrite the number between the other's store and load.
#[map]
static SOCK_NUMBER: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// `SOCK_NUMBER`'s slots.
pub const SOCK_NUMBER_SET_STATE: u32 = 0;
pub const SOCK_NUMBER_TCP_CONNECT: u32 = 1;

/// The address the typed pointer `sk` holds, as a number (through `SOCK_NUMBER`'s `slot`).
#[inline(always)]
pub fn sock_number(slot: u32, sk: *const u8) -> Option<u64> {
    let cell = SOCK_NUMBER.get_ptr_mut(slot)?;
    unsafe {
        core::ptr::write_volatile(cell as *mut *const u8, sk);
        Some(core::ptr::read_volatile(cell))
    }
}

/// The typed `struct sock *` of a BTF tracepoint on inet_sock_set_state (its first argument).
#[inline(always)]
fn btf_sock(ctx: &BtfTracePointContext) -> Option<*const u8> {
    let sk: *const u8 = ctx.arg(0);
    (!sk.is_null()).then_some(sk)
}

/// The socket as `struct tcp_sock *`, whose `inet_sock` part holds the local port (the typed
/// `struct sock *` reaches no member past `struct sock`). None for other protocols.
#[inline(always)]
fn btf_tcp(ctx: &BtfTracePointContext) -> Option<*const u8> {
    let sk = btf_sock(ctx)?;
    let tcp = unsafe { aya_ebpf::helpers::generated::bpf_skc_to_tcp_sock(sk as *mut _) } as *const u8;
    (!tcp.is_null()).then_some(tcp)
}

/// (sport, dport) in host order, from a typed `struct tcp_sock *`.
#[inline(always)]
fn btf_ports(tcp: *const u8) -> (u16, u16) {
    let o = &TRACER_BTF_OFFSETS.sock;
    let sport: u16 = unsafe { load(tcp, btf_offset(&o.inet_sport)) };
    let dport: u16 = unsafe { load(tcp, btf_offset(&o.skc_dport)) };
    (u16::from_be(sport), u16::from_be(dport))
}

/// An IPv6 address as four word loads.
#[inline(always)]
fn btf_addr_words(sk: *const u8, offset: usize) -> [u32; 4] {
    unsafe { [load(sk, offset), load(sk, offset + 4), load(sk, offset + 8), load(sk, offset + 12)] }
}

impl StateChange for BtfTracePointContext {
    #[inline(always)]
    fn states(&self, _cfg: &Config) -> Option<(u32, u32)> {
        // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate).
        Some((self.arg::<u64>(1) as u32, self.arg::<u64>(2) as u32))
    }

    #[inline(always)]
    fn sock(&self, _cfg: &Config) -> Option<u64> {
        sock_number(SOCK_NUMBER_SET_STATE, btf_sock(self)?)
    }

    #[inline(always)]
    fn protocol(&self, _cfg: &Config, _sk: u64) -> Option<u16> {
        let sk = btf_sock(self)?;
        Some(unsafe { load(sk, btf_offset(&TRACER_BTF_OFFSETS.sock.sk_protocol)) })
    }

    #[inline(always)]
    fn ports(&self, _cfg: &Config, _sk: u64) -> (u16, u16) {
        match btf_tcp(self) {
            Some(tcp) => btf_ports(tcp),
            None => (0, 0),
        }
    }

    #[inline(always)]
    fn flow(&self, _cfg: &Config, _sk: u64) -> Flow {
        let o = &TRACER_BTF_OFFSETS.sock;
        let Some(tcp) = btf_tcp(self) else { return Flow::default() };
        let family: u16 = unsafe { load(tcp, btf_offset(&o.skc_family)) };
        let (sport, dport) = btf_ports(tcp);
        let mut flow = Flow { family, sport, dport, ..Flow::default() };
        if family == AF_INET6 {
            flow.saddr = words_to_bytes(btf_addr_words(tcp, btf_offset(&o.skc_v6_rcv_saddr)));
            flow.daddr = words_to_bytes(btf_addr_words(tcp, btf_offset(&o.skc_v6_daddr)));
        } else if family == AF_INET {
            flow.saddr = words_to_bytes([unsafe { load(tcp, btf_offset(&o.skc_rcv_saddr)) }, 0, 0, 0]);
            flow.daddr = words_to_bytes([unsafe { load(tcp, btf_offset(&o.skc_daddr)) }, 0, 0, 0]);
        }
        flow
    }

    #[inline(always)]
    fn tcp_bytes(&self, _cfg: &Config, _sk: u64, received: bool) -> Option<u64> {
        let tcp = btf_tcp(self)?;
        let o = &TRACER_BTF_OFFSETS;
        Some(unsafe { load(tcp, btf_offset(if received { &o.tcp_bytes_received } else { &o.tcp_bytes_sent })) })
    }

    /// From the task's own members (one helper call, for the task, instead of three). Before
    /// 5.11 there is no helper that returns the task as a typed pointer: the three then (the
    /// verifier drops the branch the frozen flag rules out, and with it the call it would
    /// refuse as unknown).
    #[inline(always)]
    fn current_task(&self) -> Task {
        let t = &TRACER_BTF_OFFSETS.task;
        if btf_offset(&t.from_task_btf) == 0 {
            return current_task();
        }
        let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task_btf() } as *const u8;
        let mut owner = Task::default();
        if task.is_null() {
            return owner;
        }
        unsafe {
            owner.pid = load(task, btf_offset(&t.tgid));
            owner.tid = load(task, btf_offset(&t.pid));
            let comm = btf_offset(&t.comm);
            let words: [u64; 2] = [load(task, comm), load(task, comm + 8)];
            owner.comm = core::mem::transmute::<[u64; 2], [u8; TASK_COMM_LEN]>(words);
            let cred: *const u8 = load(task, btf_offset(&t.cred));
            if !cred.is_null() {
                owner.uid = load(cred, btf_offset(&t.cred_uid));
            }
        }
        owner
    }

    #[inline(always)]
    fn flow_and_netns(&self, cfg: &Config, sk: u64) -> (Flow, u32) {
        let flow = self.flow(cfg, sk);
        let Some(sock) = btf_sock(self) else { return (flow, 0) };
        let net: *const u8 = unsafe { load(sock, btf_offset(&TRACER_BTF_OFFSETS.sock_skc_net)) };
        if net.is_null() {
            return (flow, 0);
        }
        (flow, unsafe { load(net, btf_offset(&TRACER_BTF_OFFSETS.net_ns_inum)) })
    }
}
