//! Types shared by the kernel programs (`tracer-ebpf`) and userspace (`tracer`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes these bytes into the ring
//! buffer or reads them from the config map, and userspace reads or writes the same layout.
//! Field order is chosen so no implicit padding exists (explicit `_pad` fields instead).
#![no_std]

/// Stable event kinds. The numbers are part of the wire format between the two halves; never
/// renumber, only append.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A TCP attempt left SYN_SENT for CLOSE: it failed (refused, reset, timed out, or the
    /// client gave up). `TcpEvent.sk_err` holds the socket error at that moment.
    TcpAttemptFailed = 1,
    /// A SYN was retransmitted by a socket in SYN_SENT: nobody answered (yet).
    TcpSynRetransmit = 2,
    /// A SYN_SENT socket that had retransmitted reached ESTABLISHED: it was delayed, not lost.
    TcpAttemptDelayed = 3,
    /// The kernel answered a segment with an RST from no socket (`tcp:tcp_send_reset` with a
    /// NULL sk): nothing listens on the flow's `sport` (the flow is reversed to client->target).
    TcpRstSentNoSocket = 4,
    /// An skb was freed with one of the interesting drop reasons (`skb:kfree_skb`); `reason`
    /// holds the raw kernel value, named in userspace from BTF.
    SkbDropped = 5,
    /// The kernel sent an ICMP error (`icmp:icmp_send`); `reason` = type << 8 | code.
    IcmpSent = 6,
    /// A TCP socket entered LISTEN (in `listen()`, process context: the owner is current).
    TcpListenStart = 7,
    /// A TCP listener closed. `header.task` is the recorded owner, `actor` who closed it.
    TcpListenStop = 8,
    /// `connect()` on an AF_UNIX socket returned an error (`UnixEvent.errno`).
    UnixConnectFailed = 9,
    /// `bind()` on an AF_UNIX socket with a path (who created the socket file).
    UnixBind = 10,
    /// A SYN_SENT socket received an RST (`tcp:tcp_receive_reset`).
    TcpRstReceived = 11,
    /// A SYN reached a listener whose accept queue was full (seen in `tcp_conn_request`, by
    /// fentry or kprobe): the SYN is dropped. `flow` is the SYN's (client -> listener),
    /// `queue_*` the listener's queue, `listener` its owner when known, `header.sock` the
    /// listener socket.
    TcpListenOverflow = 12,
    /// A connection was accepted (`inet_csk_accept` returned it, fexit or kretprobe).
    /// `start_ns` = when it reached ESTABLISHED on the listener's queue, `header.ts_ns` = when
    /// accept() took it; `flow` client -> listener; `header.task` the accepting task;
    /// `queue_*` the listener's queue right after.
    TcpAccepted = 13,
    /// A process that owns a listener exited (`sched:sched_process_exit`, whole group dead).
    /// `ProcessEvent.code` is the raw `task->exit_code` (status << 8 | signal).
    ProcessExit = 14,
    /// A fatal signal was generated for a listener's owner (`signal:signal_generate`);
    /// `code` = signal number, `actor` = the sender.
    SignalGenerated = 15,
    /// The OOM killer chose a listener's owner (`oom:mark_victim`).
    OomVictim = 16,
    /// A watched Unix socket path was unlinked (`unlink`/`unlinkat`); `task` = who.
    UnixUnlink = 17,
    /// A Unix connect found the listener's queue full (EAGAIN): its queue as the kernel read
    /// it (function hooks on `unix_find_other` + `unix_stream_connect`), in
    /// `UnixEvent.queue_*`; emitted right before the `UnixConnectFailed` it explains.
    UnixPeerQueue = 18,
    /// An established TCP connection ended abnormally (`ConnEndEvent`): the peer closed before
    /// any byte came back, a reset ended it, or this side closed before a byte went one way.
    /// Healthy closes (bytes both ways) are never sent.
    TcpConnEnded = 19,
}

impl EventKind {
    pub const ALL: [EventKind; 19] = [
        EventKind::TcpAttemptFailed,
        EventKind::TcpSynRetransmit,
        EventKind::TcpAttemptDelayed,
        EventKind::TcpRstSentNoSocket,
        EventKind::SkbDropped,
        EventKind::IcmpSent,
        EventKind::TcpListenStart,
        EventKind::TcpListenStop,
        EventKind::UnixConnectFailed,
        EventKind::UnixBind,
        EventKind::TcpRstReceived,
        EventKind::TcpListenOverflow,
        EventKind::TcpAccepted,
        EventKind::ProcessExit,
        EventKind::SignalGenerated,
        EventKind::OomVictim,
        EventKind::UnixUnlink,
        EventKind::UnixPeerQueue,
        EventKind::TcpConnEnded,
    ];

    pub fn from_u32(v: u32) -> Option<EventKind> {
        Self::ALL.iter().copied().find(|k| *k as u32 == v)
    }
}

/// Number of slots in the per-CPU counter arrays indexed by `EventKind as u32`.
pub const KIND_SLOTS: u32 = 32;

pub const TASK_COMM_LEN: usize = 16;
pub const UNIX_PATH_MAX: usize = 108;

/// A task as seen by the kernel at one moment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Task {
    /// Process id (tgid in kernel terms).
    pub pid: u32,
    /// Thread id (pid in kernel terms).
    pub tid: u32,
    pub uid: u32,
    pub _pad: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

/// The header every event starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// `EventKind as u32`.
    pub kind: u32,
    /// Network namespace inode of the socket (0 when unknown).
    pub netns: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event happened.
    pub ts_ns: u64,
    /// Kernel address of the `struct sock` the event is about; the identity of a connection
    /// attempt (0 when the event has no socket, e.g. a drop of an orphaned skb).
    pub sock: u64,
    /// For attempt events: the socket's owner recorded in process context at connect time.
    /// For listener events: the listener's owner recorded at listen time.
    /// For syscall events (Unix): the calling task.
    /// For packet events with no socket: whatever task was current (not meaningful).
    pub task: Task,
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// The address family of a socket-based TCP tracepoint that has no `family` field (before
/// 5.11's tcp tracepoints gained one), from its `saddr_v6` field: the kernel fills it with the
/// IPv4-mapped form (::ffff:a.b.c.d) for an AF_INET socket and with the socket's own IPv6
/// address otherwise.
#[inline(always)]
pub fn family_of_saddr_v6(saddr_v6: &[u8; 16]) -> u16 {
    let mut mapped = saddr_v6[10] == 0xff && saddr_v6[11] == 0xff;
    let mut i = 0;
    while i < 10 {
        mapped &= saddr_v6[i] == 0;
        i += 1;
    }
    if mapped {
        AF_INET
    } else {
        AF_INET6
    }
}

/// A TCP flow, oriented client -> target whenever the kernel side knows the orientation.
/// IPv4 addresses are stored in the first 4 bytes of `saddr`/`daddr`, network byte order.
/// Aligned to 8 (it sits at 8-byte offsets everywhere anyway), so the kernel compares two
/// flows as five words (`Flow::same_as`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flow {
    /// AF_INET or AF_INET6 (UAPI constants).
    pub family: u16,
    /// Host byte order.
    pub sport: u16,
    /// Host byte order.
    pub dport: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Payload of every TCP / packet event kind. The frequent kinds send only a prefix of it
/// (`PacketEvent`, `AttemptEvent`): a record's cost in the kernel is mostly the ring's cache
/// lines it writes (measured in `cargo xtask bench`: a reset event of 104 bytes instead of 200
/// costs 300 ns less), so the fields those kinds carry come first. Userspace reads any prefix
/// into a zeroed `TcpEvent` (capture/decode.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpEvent {
    pub header: EventHeader,
    pub flow: Flow,
    /// Raw kernel value: skb_drop_reason for `SkbDropped` (or `DROP_SITE_FLAG | site` on
    /// kernels without drop reasons), sk_rst_reason for
    /// `TcpRstSentNoSocket` (when the tracepoint has it), type<<8|code for `IcmpSent`.
    pub reason: u32,
    /// For skb events: 1 when the flow was parsed from packet headers (orientation is that of
    /// the packet, not necessarily client->target).
    pub from_packet: u32,
    // ---- end of `PacketEvent` ----
    /// `sk->sk_err` when a SYN_SENT attempt closed (positive errno, 0 = closed by its owner).
    pub sk_err: i32,
    /// SYN retransmits seen for this attempt so far.
    pub syn_retransmits: u32,
    /// 1 when this attempt received an RST while in SYN_SENT; `RST_FROM_NO_SOCKET_HERE` when
    /// this host's stack sent it from no socket (then `reason` is that reset's).
    pub rst_received: u32,
    /// 1 when `queue_len`/`queue_max` are valid.
    pub queue_known: u32,
    /// When the attempt (or listener) started, `bpf_ktime_get_ns()`; 0 when unknown.
    pub start_ns: u64,
    /// A refused attempt whose repeats the kernel counts instead of sending (`RepeatSlot`):
    /// `repeat_class(cpu, slot, generation)`; 0 for an attempt sent alone.
    pub repeat_class: u64,
    /// The final count of the repeats of the class this one displaced from its slot (the
    /// same CPU and slot, the generation before).
    pub repeats_before: u32,
    pub _pad_repeats: u32,
    // ---- end of `AttemptEvent` ----
    /// Accept queue of the local listener on the target port, read in the kernel at the time
    /// of the event (`sk_ack_backlog`, `sk_max_ack_backlog`); valid when `queue_known` = 1.
    pub queue_len: u32,
    pub queue_max: u32,
    /// The task current when the event fired (e.g. who closed a listener).
    pub actor: Task,
    /// Listener owner at the time of the event (for SYN retransmits to a known local listener).
    pub listener: Task,
}

impl Flow {
    /// Whether two flows are the same, compared as five words (the kernel side). Written as
    /// one OR of differences: a chain of `==` is merged by the compiler into a call of a
    /// byte-by-byte memcmp.
    #[inline(always)]
    pub fn same_as(&self, other: &Flow) -> bool {
        // SAFETY: 40 bytes, aligned to 8, every bit pattern a valid u64.
        let (a, b) = unsafe { (&*(self as *const Flow as *const [u64; 5]), &*(other as *const Flow as *const [u64; 5])) };
        (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) == 0
    }
}

/// `rst_received` of a failed attempt's record (`AttemptEvent`, `TcpEvent`): an RST reached
/// it in SYN_SENT, and this host's stack sent that RST because no socket took the attempt's
/// SYN (tcp_send_reset from no socket). The kernel joined the two: the reset was stashed
/// (`StashedReset`) and the attempt's close claimed it, so it is not sent as an event of its
/// own; `reason` then holds its sk_rst_reason. (1: an RST came, from wherever.)
pub const RST_FROM_NO_SOCKET_HERE: u32 = 2;

/// A reset this host's stack sent from no socket, kept per CPU (probes/send_reset.rs) until
/// the refused attempt's close on that CPU claims it (its proof then travels in the attempt's
/// record: one event per refused connect instead of two), or the next such reset on the CPU
/// takes its place (it is sent as an event first). Userspace sends on the ones left held too
/// long (capture::Capture::drain).
///
/// Held while `seq != claimed`. The claim writes only `claimed`, and only after checking that
/// `seq` did not move: a reset stashed meanwhile (a softirq interrupting a close that runs in
/// process context) is never taken for the claimed one nor cleared by its claim; at worst the
/// claimed reset is also sent on its own, once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StashedReset {
    /// Oriented client -> target (the refused segment's own direction).
    pub flow: Flow,
    pub ts_ns: u64,
    /// sk_rst_reason, or u32::MAX when the tracepoint has none.
    pub reason: u32,
    /// Counts the resets stashed on this CPU; written last.
    pub seq: u32,
    /// The `seq` of the last one claimed.
    pub claimed: u32,
    pub _pad: u32,
}

impl StashedReset {
    /// Whether the reset waits to be claimed or sent.
    #[inline(always)]
    pub fn held(&self) -> bool {
        self.seq != self.claimed
    }
}

/// Slots per CPU for counting repeated refusals (`RepeatSlot`); a power of two.
pub const REPEAT_SLOTS: u32 = 64;
/// Words of a `RepeatSlot`'s key.
pub const REPEAT_KEY_WORDS: usize = 8;

/// Refused attempts counted in the kernel instead of sent (probes/set_state.rs), per CPU and
/// slot. A flood of refused connects is one owner hitting one dead target over and over: the
/// first attempt of a kind is sent in full (the exemplar, with the class of its slot), and the
/// ones identical to it in everything that decides a verdict (the key: namespace, target,
/// owner, SYN retransmits, and this host's reset from no socket with its reason) are
/// counted here for `Config.repeat_window_ns`, then the next one is sent in full again.
/// Userspace reads `tally` (capture/repeats.rs) and hands the engine the growth.
///
/// Only the programs of the slot's own CPU write it, and `busy` keeps a run that interrupts
/// another (a softirq's close over a process-context one) out: it sends its attempt alone.
/// `tally` is one word, so userspace never reads a count with another generation's number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RepeatSlot {
    pub key: [u64; REPEAT_KEY_WORDS],
    /// `generation << 32 | repeats counted since the exemplar`. Generation 0: never used.
    pub tally: u64,
    /// When the exemplar was sent.
    pub exemplar_ns: u64,
    /// When the last repeat closed.
    pub last_ns: u64,
    pub busy: u32,
    pub _pad: u32,
}

/// The class an exemplar names in `TcpEvent.repeat_class` (never 0: generations start at 1).
#[inline(always)]
pub const fn repeat_class(cpu: u32, slot: u32, generation: u32) -> u64 {
    (cpu as u64) << 40 | (slot as u64) << 32 | generation as u64
}

/// (cpu, slot, generation) of a `repeat_class`.
pub const fn repeat_class_parts(class: u64) -> (u32, u32, u32) {
    ((class >> 40) as u32, (class >> 32) as u32 & 0xff, class as u32)
}

/// The prefix of `TcpEvent` a packet event sends (`TcpRstSentNoSocket`, `SkbDropped`,
/// `IcmpSent`): one per refused or dropped connection in a flood.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PacketEvent {
    pub header: EventHeader,
    pub flow: Flow,
    pub reason: u32,
    pub from_packet: u32,
}

/// The prefix of `TcpEvent` an attempt's end sends (`TcpAttemptFailed`, `TcpAttemptDelayed`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AttemptEvent {
    pub header: EventHeader,
    pub flow: Flow,
    pub reason: u32,
    pub from_packet: u32,
    pub sk_err: i32,
    pub syn_retransmits: u32,
    pub rst_received: u32,
    pub queue_known: u32,
    pub start_ns: u64,
    pub repeat_class: u64,
    pub repeats_before: u32,
    pub _pad_repeats: u32,
}

// The prefixes are `TcpEvent`'s own first fields, byte for byte.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<PacketEvent>() == offset_of!(TcpEvent, sk_err));
    assert!(offset_of!(PacketEvent, reason) == offset_of!(TcpEvent, reason));
    assert!(offset_of!(PacketEvent, from_packet) == offset_of!(TcpEvent, from_packet));
    assert!(size_of::<AttemptEvent>() == offset_of!(TcpEvent, queue_len));
    assert!(offset_of!(AttemptEvent, sk_err) == offset_of!(TcpEvent, sk_err));
    assert!(offset_of!(AttemptEvent, syn_retransmits) == offset_of!(TcpEvent, syn_retransmits));
    assert!(offset_of!(AttemptEvent, rst_received) == offset_of!(TcpEvent, rst_received));
    assert!(offset_of!(AttemptEvent, queue_known) == offset_of!(TcpEvent, queue_known));
    assert!(offset_of!(AttemptEvent, start_ns) == offset_of!(TcpEvent, start_ns));
    assert!(offset_of!(AttemptEvent, repeat_class) == offset_of!(TcpEvent, repeat_class));
    assert!(offset_of!(AttemptEvent, repeats_before) == offset_of!(TcpEvent, repeats_before));
    assert!(size_of::<PacketEvent>() % 8 == 0 && size_of::<AttemptEvent>() % 8 == 0 && size_of::<TcpEvent>() % 8 == 0);
};

/// Payload of Unix socket events.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnixEvent {
    pub header: EventHeader,
    /// Positive errno returned by connect() (0 for `UnixBind`).
    pub errno: i32,
    /// Length of the valid bytes in `path` (abstract sockets start with a NUL byte).
    pub path_len: u32,
    pub path: [u8; UNIX_PATH_MAX],
    pub _pad: [u8; 4],
    /// `UnixPeerQueue`: the listener's queue (`sk_receive_queue.qlen`, `sk_max_ack_backlog`).
    pub queue_len: u32,
    pub queue_max: u32,
}

impl Default for UnixEvent {
    fn default() -> Self {
        UnixEvent {
            header: EventHeader::default(),
            errno: 0,
            path_len: 0,
            path: [0; UNIX_PATH_MAX],
            _pad: [0; 4],
            queue_len: 0,
            queue_max: 0,
        }
    }
}

/// Marks a tracepoint field absent on this kernel (the program then skips it).
pub const FIELD_ABSENT: u32 = u32::MAX;

/// Offsets (bytes from the start of the tracepoint record) of the fields a classic tracepoint
/// program reads, taken from `/sys/kernel/tracing/events/<cat>/<name>/format` at start-up.
/// `FIELD_ABSENT` for a field this kernel's tracepoint does not have.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpSockFields {
    pub skaddr: u32,
    pub skbaddr: u32,
    pub oldstate: u32,
    pub newstate: u32,
    pub state: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub protocol: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
    pub reason: u32,
}

impl TpSockFields {
    pub const ABSENT: TpSockFields = TpSockFields {
        skaddr: FIELD_ABSENT,
        skbaddr: FIELD_ABSENT,
        oldstate: FIELD_ABSENT,
        newstate: FIELD_ABSENT,
        state: FIELD_ABSENT,
        sport: FIELD_ABSENT,
        dport: FIELD_ABSENT,
        family: FIELD_ABSENT,
        protocol: FIELD_ABSENT,
        saddr: FIELD_ABSENT,
        daddr: FIELD_ABSENT,
        saddr_v6: FIELD_ABSENT,
        daddr_v6: FIELD_ABSENT,
        reason: FIELD_ABSENT,
    };
}

/// `skb:kfree_skb` fields. A kernel has `reason` (5.17 and later) or, before, only
/// `location`: the return address into the function that dropped the skb, which the program
/// compares with the `DropSites` ranges.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpKfreeSkbFields {
    pub skbaddr: u32,
    pub protocol: u32,
    pub reason: u32,
    pub location: u32,
}

/// The kernel functions whose drops explain a refused or unanswered connect on kernels
/// without drop reasons (before 5.17), indexed like `DropSites.ranges`: a netfilter verdict
/// (`nf_hook_slow` frees what a rule dropped or rejected) and the TCP receive paths (a SYN
/// they free was answered with a reset from no socket, or discarded).
pub const DROP_SITE_FUNCTIONS: [&str; 3] = ["nf_hook_slow", "tcp_v4_rcv", "tcp_v6_rcv"];

/// `TcpEvent.reason` of an `SkbDropped` found by its drop site instead of a drop reason:
/// this bit or'ed with the index into `DROP_SITE_FUNCTIONS` (drop reasons are small enum
/// values, far below it).
pub const DROP_SITE_FLAG: u32 = 1 << 31;

/// Address ranges `[start, end)` of the `DROP_SITE_FUNCTIONS` in the running kernel, from
/// /proc/kallsyms at start-up (a function ends where the next symbol starts); `[0, 0]` for a
/// function not found. All zero on kernels with drop reasons.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropSites {
    pub ranges: [[u64; 2]; DROP_SITE_FUNCTIONS.len()],
}

/// `syscalls:sys_enter_connect` / `sys_enter_bind` (fd, address, length) and the `ret` of the
/// matching exit tracepoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpSyscallFields {
    pub fd: u32,
    pub addr: u32,
    pub addrlen: u32,
    pub ret: u32,
}

/// Kernel struct member offsets (bytes) read from `/sys/kernel/btf/vmlinux`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sock`: `sk_err` (int).
    pub sock_sk_err: u32,
    /// `struct sock`: `sk_ack_backlog` (u32).
    pub sock_sk_ack_backlog: u32,
    /// `struct sock`: `sk_max_ack_backlog` (u32).
    pub sock_sk_max_ack_backlog: u32,
    /// `struct sock`: `__sk_common.skc_net` (possible_net_t, whose first member is `struct net *`).
    pub sock_skc_net: u32,
    /// `struct net`: `ns.inum` (unsigned int).
    pub net_ns_inum: u32,
    /// `struct sk_buff`: `sk`, `head`, `network_header` (u16), `transport_header` (u16).
    pub skb_sk: u32,
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    /// `struct task_struct`: `nsproxy` (pointer), and `struct nsproxy`: `net_ns` (pointer):
    /// the calling task's network namespace, for syscall events that have no socket at hand.
    pub task_nsproxy: u32,
    pub nsproxy_net_ns: u32,
    /// `struct sk_buff`: `protocol` (__be16), for kfree_skb's raw tracepoint (the classic
    /// record carries it); `FIELD_ABSENT` when not found (the classic tracepoint serves then).
    pub skb_protocol: u32,
}

/// Enum values read from BTF (never constants: they are renumbered between kernels).
/// `FIELD_ABSENT` where the running kernel does not have the value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelEnums {
    pub tcp_established: u32,
    pub tcp_syn_sent: u32,
    pub tcp_close: u32,
    pub tcp_listen: u32,
    /// skb_drop_reason values that are forwarded to userspace.
    pub drop_no_socket: u32,
    pub drop_netfilter_drop: u32,
    pub drop_tcp_listen_overflow: u32,
    /// IPPROTO_TCP (UAPI; kept here so the kernel side has one source for every number).
    pub ipproto_tcp: u32,
}

/// Everything the kernel programs need to know about the running kernel. Userspace writes it
/// into the single slot of the `CONFIG` array map before any program is attached; a program
/// that finds no config does nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// `sock:inet_sock_set_state`.
    pub set_state: TpSockFields,
    /// `tcp:tcp_retransmit_skb`.
    pub retransmit: TpSockFields,
    /// `tcp:tcp_receive_reset`.
    pub receive_reset: TpSockFields,
    /// `tcp:tcp_send_reset`.
    pub send_reset: TpSockFields,
    /// `icmp:icmp_send` (skbaddr, saddr, daddr as u8[4]; type in `state`, code in `reason`).
    pub icmp_send: TpSockFields,
    pub kfree_skb: TpKfreeSkbFields,
    pub connect_enter: TpSyscallFields,
    pub connect_exit: TpSyscallFields,
    pub bind_enter: TpSyscallFields,
    pub offsets: KernelOffsets,
    pub enums: KernelEnums,
    /// 1 to emit aya-log debug lines from the kernel programs.
    pub debug: u32,
    pub _pad: u32,
    /// For the function-hook backend (fentry/fexit, kprobe/kretprobe).
    pub fn_hooks: FnHookConfig,
    /// Listener lifecycle: process exits, signals, OOM kills, socket-file unlinks. Appended.
    pub lifecycle: LifecycleConfig,
    /// After the connect: how established connections end. Appended.
    pub conn: ConnConfig,
    /// The socket's own members, for the raw tracepoint on inet_sock_set_state. Appended.
    pub sock: SockFields,
    /// Where `skb:kfree_skb` drops come from on kernels without drop reasons. Appended.
    pub drop_sites: DropSites,
    /// Random, per run: keys the hash that places sockets in the attempt table. Appended.
    pub attempt_seed: u64,
    /// What set_state does for each (oldstate, newstate): `transitions[old * TCP_STATE_SLOTS +
    /// new]`, one of `transition::*`. Built by `Config::transition_table` whenever userspace
    /// writes the config. Appended.
    pub transitions: [u8; TCP_STATE_SLOTS * TCP_STATE_SLOTS],
    /// How long one refused attempt sent in full stands for the identical ones after it on
    /// its CPU, which the kernel only counts (`RepeatSlot`); 0: every attempt is sent.
    /// Appended.
    pub repeat_window_ns: u64,
    /// The task members the `tp_btf` program loads to record a connect's owner. Appended.
    pub task: TaskFields,
}

/// `struct task_struct`: `pid`, `tgid` (int), `comm` (char[16]), `cred` (pointer); `struct
/// cred`: `uid` (kuid_t, a u32). `FIELD_ABSENT` where BTF lacks one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskFields {
    pub pid: u32,
    pub tgid: u32,
    pub comm: u32,
    pub cred: u32,
    pub cred_uid: u32,
    /// 1 where the kernel has `bpf_get_current_task_btf` (5.11+): the members above are loaded
    /// through the task it returns. 0 (5.10): the ids, name and uid come from their own helpers.
    pub from_task_btf: u32,
}

impl TaskFields {
    pub const ABSENT: TaskFields =
        TaskFields { pid: FIELD_ABSENT, tgid: FIELD_ABSENT, comm: FIELD_ABSENT, cred: FIELD_ABSENT, cred_uid: FIELD_ABSENT, from_task_btf: 0 };

    pub fn complete(&self) -> bool {
        [self.pid, self.tgid, self.comm, self.cred, self.cred_uid].iter().all(|o| *o != FIELD_ABSENT)
    }
}

/// TCP states are enum values below this (the last in 6.x, TCP_BOUND_INACTIVE, is 13); the
/// transition table has a row and a column per value.
pub const TCP_STATE_SLOTS: usize = 16;

/// What `sock:inet_sock_set_state` does for one state change (`Config.transitions`). The
/// program fires ten times per healthy proxied request, and a test of each transition it cares
/// about against the config costs dozens of instructions on each: one table load decides.
pub mod transition {
    /// None of tracer's business (most of a healthy connection's changes).
    pub const NONE: u8 = 0;
    /// CLOSE -> SYN_SENT, inside connect(): the owner is recorded.
    pub const CONNECT: u8 = 1;
    /// SYN_SENT -> anything: the attempt succeeded, failed, or was given up.
    pub const SYN_SENT_LEFT: u8 = 2;
    /// ESTABLISHED -> CLOSE_WAIT: the peer's FIN; a failure only if no byte came first.
    pub const PEER_FIN: u8 = 3;
    /// ESTABLISHED -> FIN_WAIT1: this side closed; a failure only if a byte count is 0.
    pub const LOCAL_FIN: u8 = 4;
    /// ESTABLISHED or CLOSE_WAIT -> CLOSE: a reset; straight to the after-connect program.
    pub const RESET: u8 = 5;
    /// CLOSE_WAIT -> LAST_ACK: the normal end of a connection the peer closed first.
    pub const LAST_ACK: u8 = 6;
    /// SYN_RECV -> ESTABLISHED while inet_csk_accept is hooked: a child joins the accept queue.
    pub const QUEUED: u8 = 7;
    /// CLOSE -> LISTEN (listen()) and LISTEN -> CLOSE (the listener's close).
    pub const LISTEN_START: u8 = 8;
    pub const LISTEN_STOP: u8 = 9;
}

impl Config {
    /// The action for one state change under this config: the rules set_state applied as a
    /// chain of tests before there was a table (kept here, where a unit test reads them).
    pub fn transition_action(&self, old: u32, new: u32) -> u8 {
        use transition::*;
        let e = &self.enums;
        let c = &self.conn;
        if self.conn.enabled != 0 {
            // The end of an established connection: each side leaves ESTABLISHED once.
            if old == e.tcp_established {
                return if new == c.tcp_close_wait {
                    PEER_FIN
                } else if new == c.tcp_fin_wait1 {
                    LOCAL_FIN
                } else if new == e.tcp_close {
                    RESET
                } else {
                    NONE
                };
            }
            if old == c.tcp_close_wait && new == e.tcp_close {
                return RESET;
            }
            if old == c.tcp_close_wait && new == c.tcp_last_ack {
                return LAST_ACK;
            }
        }
        if old == e.tcp_syn_sent {
            SYN_SENT_LEFT
        } else if old == e.tcp_close && new == e.tcp_syn_sent {
            // With tcp_connect hooked, its program records the owner instead.
            if self.fn_hooks.active & FN_TCP_CONNECT != 0 { NONE } else { CONNECT }
        } else if old == e.tcp_close && new == e.tcp_listen {
            LISTEN_START
        } else if old == e.tcp_listen && new == e.tcp_close {
            LISTEN_STOP
        } else if old == self.fn_hooks.tcp_syn_recv && new == e.tcp_established && self.fn_hooks.active & FN_ACCEPT != 0 {
            QUEUED
        } else {
            NONE
        }
    }

    /// The transition table for this config; `Err(state)` names a TCP state this kernel
    /// numbers too high for the table.
    pub fn transition_table(&self) -> Result<[u8; TCP_STATE_SLOTS * TCP_STATE_SLOTS], u32> {
        let e = &self.enums;
        let states = [
            e.tcp_established,
            e.tcp_syn_sent,
            e.tcp_close,
            e.tcp_listen,
            self.conn.tcp_close_wait,
            self.conn.tcp_fin_wait1,
            self.conn.tcp_last_ack,
            self.fn_hooks.tcp_syn_recv,
        ];
        if let Some(&s) = states.iter().find(|&&s| s != FIELD_ABSENT && s as usize >= TCP_STATE_SLOTS) {
            return Err(s);
        }
        let mut table = [transition::NONE; TCP_STATE_SLOTS * TCP_STATE_SLOTS];
        for old in 0..TCP_STATE_SLOTS {
            for new in 0..TCP_STATE_SLOTS {
                table[old * TCP_STATE_SLOTS + new] = self.transition_action(old as u32, new as u32);
            }
        }
        Ok(table)
    }
}

/// `struct sock` members (from BTF) that the raw tracepoint on inet_sock_set_state reads
/// instead of the classic tracepoint's record: its arguments are only (sk, oldstate, newstate),
/// read without a helper call, which is what makes it cheaper on the ten state changes of
/// every healthy connection. `FIELD_ABSENT` where BTF lacks one: the classic tracepoint is
/// used then.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockFields {
    /// `sk_protocol` (u16 since 5.6).
    pub sk_protocol: u32,
    /// `__sk_common.skc_family` (u16).
    pub skc_family: u32,
    /// `__sk_common.skc_dport` (__be16, the peer's port), and `struct inet_sock`'s
    /// `inet_sport` (__be16, the local port; not `skc_num`, which the move to CLOSE has
    /// already zeroed when the port is released, as the classic tracepoint's `sport` is not).
    pub skc_dport: u32,
    pub inet_sport: u32,
    /// `__sk_common.skc_daddr` and `skc_rcv_saddr` (__be32).
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    /// `__sk_common.skc_v6_daddr` and `skc_v6_rcv_saddr` (struct in6_addr).
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
}

impl SockFields {
    pub const ABSENT: SockFields = SockFields {
        sk_protocol: FIELD_ABSENT,
        skc_family: FIELD_ABSENT,
        skc_dport: FIELD_ABSENT,
        inet_sport: FIELD_ABSENT,
        skc_daddr: FIELD_ABSENT,
        skc_rcv_saddr: FIELD_ABSENT,
        skc_v6_daddr: FIELD_ABSENT,
        skc_v6_rcv_saddr: FIELD_ABSENT,
    };

    /// Every member found: the raw tracepoint can stand in for the classic one.
    pub fn complete(&self) -> bool {
        [
            self.sk_protocol,
            self.skc_family,
            self.skc_dport,
            self.inet_sport,
            self.skc_daddr,
            self.skc_rcv_saddr,
            self.skc_v6_daddr,
            self.skc_v6_rcv_saddr,
        ]
        .iter()
        .all(|o| *o != FIELD_ABSENT)
    }
}

/// The socket members the `tp_btf` program on inet_sock_set_state loads directly, as a
/// read-only global (`TRACER_BTF_OFFSETS`) that userspace sets before load: the verifier then
/// knows each offset as a constant and lets the program load the member through the typed
/// socket pointer, a load instruction where the raw tracepoint makes a helper call per read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BtfOffsets {
    pub sock: SockFields,
    /// `struct sock`: `__sk_common.skc_net` (`struct net *`); `struct net`: `ns.inum`.
    pub sock_skc_net: u32,
    pub net_ns_inum: u32,
    /// `struct tcp_sock`: `bytes_received`, `bytes_sent` (u64).
    pub tcp_bytes_received: u32,
    pub tcp_bytes_sent: u32,
    /// The connect's owner, from the current task.
    pub task: TaskFields,
}

impl BtfOffsets {
    /// What the object holds until userspace sets it (never loaded so: the program is
    /// loaded only with every offset known).
    pub const ABSENT: BtfOffsets = BtfOffsets {
        sock: SockFields::ABSENT,
        sock_skc_net: FIELD_ABSENT,
        net_ns_inum: FIELD_ABSENT,
        tcp_bytes_received: FIELD_ABSENT,
        tcp_bytes_sent: FIELD_ABSENT,
        task: TaskFields::ABSENT,
    };

    /// From the kernel facts userspace hands the other programs.
    pub fn of(config: &Config) -> BtfOffsets {
        BtfOffsets {
            sock: config.sock,
            sock_skc_net: config.offsets.sock_skc_net,
            net_ns_inum: config.offsets.net_ns_inum,
            tcp_bytes_received: config.conn.tcp_bytes_received,
            tcp_bytes_sent: config.conn.tcp_bytes_sent,
            task: config.task,
        }
    }

    /// Every member found.
    pub fn complete(&self) -> bool {
        self.sock.complete()
            && self.task.complete()
            && [self.sock_skc_net, self.net_ns_inum, self.tcp_bytes_received, self.tcp_bytes_sent].iter().all(|o| *o != FIELD_ABSENT)
    }
}

/// What the after-connect checks read (`probes/set_state.rs`, `ConnEndEvent`), from BTF.
/// `FIELD_ABSENT` where this kernel lacks a member (then the check that needs it is off).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnConfig {
    /// TCP states (enum values from BTF).
    pub tcp_close_wait: u32,
    pub tcp_fin_wait1: u32,
    /// `struct tcp_sock`: `bytes_sent` and `bytes_received` (u64).
    pub tcp_bytes_sent: u32,
    pub tcp_bytes_received: u32,
    /// `struct tcp_sock`: `rcv_tstamp` (u32 jiffies: the last ACK received, which is the peer's
    /// FIN on a connection the peer closed), and `inet_connection_sock.icsk_ack.lrcvtime`
    /// (u32 jiffies: the last data received).
    pub tcp_rcv_tstamp: u32,
    pub icsk_lrcvtime: u32,
    /// 1 when the after-connect checks are on.
    pub enabled: u32,
    /// `struct tcp_sock`: `rcv_nxt` and `copied_seq` (u32 sequence numbers): their difference
    /// is the data received but never read by the application. tcp_close frees the receive
    /// queue before it resets, but leaves these two as they were.
    pub tcp_rcv_nxt: u32,
    pub tcp_copied_seq: u32,
    /// TCP state LAST_ACK: CLOSE_WAIT -> LAST_ACK is the normal end of a connection the peer
    /// closed first, where the attempt's record is let go.
    pub tcp_last_ack: u32,
}

impl ConnConfig {
    pub const ABSENT: ConnConfig = ConnConfig {
        tcp_close_wait: FIELD_ABSENT,
        tcp_fin_wait1: FIELD_ABSENT,
        tcp_bytes_sent: FIELD_ABSENT,
        tcp_bytes_received: FIELD_ABSENT,
        tcp_rcv_tstamp: FIELD_ABSENT,
        icsk_lrcvtime: FIELD_ABSENT,
        enabled: 0,
        tcp_rcv_nxt: FIELD_ABSENT,
        tcp_copied_seq: FIELD_ABSENT,
        tcp_last_ack: FIELD_ABSENT,
    };
}

/// `ConnEndEvent.how`: the peer's FIN arrived while this side had received no byte.
pub const CONN_PEER_FIN: u32 = 1;
/// `ConnEndEvent.how`: the connection went straight to CLOSE: a reset, received (`sk_err` set)
/// or sent by this side's close/abort (`sk_err` 0, `actor` the closer).
pub const CONN_RESET: u32 = 2;
/// `ConnEndEvent.how`: this side closed (FIN) before a byte went one way or the other.
pub const CONN_LOCAL_FIN: u32 = 3;

/// Payload of `TcpConnEnded`. `header.task` is the connect()'s owner when `client_side` = 1
/// (the socket is an attempt tracer saw start), else the task current at the event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnEndEvent {
    pub header: EventHeader,
    /// This socket's view: saddr/sport local, daddr/dport the peer.
    pub flow: Flow,
    /// `CONN_*`.
    pub how: u32,
    /// 1 when the socket is a connection tracer saw being connected (an Nginx-side socket).
    pub client_side: u32,
    /// 1 when the connection was in CLOSE_WAIT (the peer's FIN had come) at the reset.
    pub after_fin: u32,
    /// `sk->sk_err` at the event (positive errno).
    pub sk_err: i32,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Client side: connect() (`bpf_ktime_get_ns`), 0 when unknown; `established_ns` non-zero
    /// once it connected (a marker).
    pub start_ns: u64,
    pub established_ns: u64,
    /// `bpf_jiffies64()` at the event, and the socket's `rcv_tstamp` / `lrcvtime` (jiffies).
    pub jiffies: u64,
    pub rcv_tstamp: u32,
    pub lrcvtime: u32,
    /// Local close/abort (process context): the closer's `task->exit_code` (non-zero when the
    /// closer is exiting by a signal or an exit status), and the last fatal signal generated
    /// for it (`signal` 0 when none): number, when, by whom, and 1 when the OOM killer chose it.
    pub exit_code: i32,
    pub signal: i32,
    pub signal_ts_ns: u64,
    pub signal_oom: u32,
    /// Local abort: bytes received but never read by the application (`rcv_nxt - copied_seq`;
    /// a close with unread data is what makes the kernel send a reset).
    pub unread_bytes: u32,
    /// The task current at a local close/abort (zero otherwise).
    pub actor: Task,
    pub sender: Task,
}

/// The last fatal signal generated for a thread (LRU hash keyed by the target's tid), read
/// when that thread's sockets close as it dies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SignalMemo {
    pub ts_ns: u64,
    pub signal: i32,
    /// 1: chosen by the OOM killer (`oom:mark_victim`).
    pub oom: u32,
    pub sender: Task,
}

/// Tracepoint field offsets (and one BTF offset) for the listener-lifecycle programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LifecycleConfig {
    /// `sched:sched_process_exit`: `pid`, `group_dead` (absent before 5.x: then pid == tgid).
    pub exit_pid: u32,
    pub exit_group_dead: u32,
    /// `signal:signal_generate`: `sig`, `pid` (the target), `result`.
    pub sig_sig: u32,
    pub sig_pid: u32,
    pub sig_comm: u32,
    /// `oom:mark_victim`: `pid`.
    pub oom_pid: u32,
    /// `syscalls:sys_enter_unlinkat` / `sys_enter_unlink`: `pathname`.
    pub unlinkat_pathname: u32,
    pub unlink_pathname: u32,
    /// `struct task_struct`: `exit_code` (int), from BTF.
    pub task_exit_code: u32,
    pub _pad: u32,
}

impl LifecycleConfig {
    pub const ABSENT: LifecycleConfig = LifecycleConfig {
        exit_pid: FIELD_ABSENT,
        exit_group_dead: FIELD_ABSENT,
        sig_sig: FIELD_ABSENT,
        sig_pid: FIELD_ABSENT,
        sig_comm: FIELD_ABSENT,
        oom_pid: FIELD_ABSENT,
        unlinkat_pathname: FIELD_ABSENT,
        unlink_pathname: FIELD_ABSENT,
        task_exit_code: FIELD_ABSENT,
        _pad: 0,
    };
}

/// Payload of process lifecycle events (exit, signal, OOM). `header.task` is the process the
/// event is about (the listener's owner); `actor` who acted (the signal's sender).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEvent {
    pub header: EventHeader,
    /// ProcessExit: raw exit_code; SignalGenerated: the signal number; OomVictim: 0.
    pub code: i32,
    pub _pad: u32,
    pub actor: Task,
}

/// `FnHookConfig.active` bits: which function hooks are attached, so the tracepoint programs
/// leave their part of the work to them (or start the bookkeeping they need).
/// `tcp_connect` records the attempt's owner (set_state then skips CLOSE->SYN_SENT).
pub const FN_TCP_CONNECT: u32 = 1;
/// `inet_csk_accept` is hooked: set_state records when children reach ESTABLISHED.
pub const FN_ACCEPT: u32 = 2;
/// `tcp_conn_request` is hooked.
pub const FN_CONN_REQUEST: u32 = 4;
/// `unix_stream_connect` is hooked.
pub const FN_UNIX_CONNECT: u32 = 8;
/// `unix_find_other` is hooked (the peer of a Unix connect, for its queue).
pub const FN_UNIX_PEER: u32 = 16;

/// Kernel facts only the function hooks need, read from BTF like the rest.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FnHookConfig {
    /// `struct sock`: `__sk_common.skc_num` (u16, the local port in host order).
    pub sock_skc_num: u32,
    /// `struct sock`: `__sk_common.skc_family` (u16).
    pub sock_skc_family: u32,
    /// TCP_SYN_RECV (enum value from BTF).
    pub tcp_syn_recv: u32,
    /// `FN_*` bits of the function hooks attached (written after attach).
    pub active: u32,
    /// `struct sock`: `sk_receive_queue.qlen` (u32): a Unix listener's queue length.
    pub sock_rcvq_len: u32,
    pub _pad: u32,
}

/// Key of the kernel's accept-wait histograms (per-CPU LRU hash `ACCEPT_WAITS`): a listener
/// address, as the accepted connections' local address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AcceptWaitKey {
    pub netns: u32,
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    /// IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}

/// Accept-wait histogram buckets: < 1 ms, < 10 ms, < 100 ms, < 1 s, the rest.
pub const ACCEPT_WAIT_SLOTS: usize = 5;
/// Upper bounds (ns) of the first four buckets (units of time, not kernel numbers).
pub const ACCEPT_WAIT_BOUNDS_NS: [u64; 4] = [1_000_000, 10_000_000, 100_000_000, 1_000_000_000];

/// A child socket that reached ESTABLISHED on a listener's accept queue (LRU hash keyed by
/// the child's `struct sock *`), until accept() takes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct QueuedChild {
    pub start_ns: u64,
    pub netns: u32,
    pub _pad: u32,
    /// Oriented client -> listener.
    pub flow: Flow,
}

/// Attempt state kept in the kernel (`ATTEMPTS`, a table keyed by `struct sock *`) from
/// connect until the attempt fails or its connection ends, so failures are attributed to the
/// owner recorded in process context. The socket's namespace and ports are read from the
/// socket when something is reported, not stored here (less work on every healthy connect).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AttemptState {
    pub owner: Task,
    pub start_ns: u64,
    pub syn_retransmits: u32,
    pub rst_received: u32,
    /// Non-zero once the attempt reached ESTABLISHED (a marker, not a time): the entry then
    /// stays until the connection ends, so that an abnormal end is charged to its owner.
    pub established_ns: u64,
    /// The socket's address mixed with `start_ns` and the owner's ids: a record written by
    /// two connects at once does not match it (attempts.rs).
    pub check: u64,
}

impl AttemptState {
    /// The check word this record carries for socket `sk`: the socket's address mixed with the
    /// fields a connect writes once (its start and the owner's ids). The attempt table takes
    /// no lock, so two connects on two CPUs may write one way at once; a record mixed from the
    /// two does not match either's check, and is never taken for either.
    #[inline(always)]
    pub fn check_for(&self, sk: u64) -> u64 {
        sk ^ self.start_ns ^ (((self.owner.pid as u64) << 32) | self.owner.tid as u64)
    }
}

/// The set of the attempt table that holds socket `sk`: a multiplicative hash of its address,
/// keyed with a random per-run `seed` so that no one outside can aim sockets at one set.
#[inline(always)]
pub fn attempt_set(seed: u64, sk: u64) -> u32 {
    ((sk ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - ATTEMPT_SETS.trailing_zeros())) as u32
}

/// Key of the kernel's listener table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub netns: u32,
    pub port: u16,
    pub family: u16,
}

/// Value of the kernel's listener table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ListenerState {
    pub sock: u64,
    pub owner: Task,
    pub start_ns: u64,
}

/// Per-CPU counter slots (index into the `COUNTERS` per-CPU array): 0..KIND_SLOTS are events
/// emitted per kind, `LOST_BASE + kind` events lost because the ring buffer was full.
pub const LOST_BASE: u32 = KIND_SLOTS;
/// The attempt records held (each CPU adds its inserts and subtracts its removes, as
/// wrapping u64s: the sum over CPUs is the count).
pub const ATTEMPT_RECORDS_HELD: u32 = KIND_SLOTS * 2;
pub const COUNTER_SLOTS: u32 = KIND_SLOTS * 2 + 1;

/// The attempt records' table (tracer-ebpf/src/attempts.rs): 65,536 sets of 8 sockets, whose
/// tags are 64 contiguous bytes. 524,288 records (32 MiB) where the hash map it replaced held
/// 262,144 (about 30 MiB): sockets land in sets at random, so the table is kept at twice
/// the most connections it should follow. 50,000 connections leave every set room
/// (`sockets_allocated_in_a_row_spread_over_the_sets`).
pub const ATTEMPT_SETS: u32 = 65_536;
pub const ATTEMPT_WAYS: usize = 8;
/// Records in all: the `ATTEMPTS` array's size.
pub const ATTEMPT_RECORDS: u32 = ATTEMPT_SETS * ATTEMPT_WAYS as u32;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for AttemptState {}
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for ListenerState {}
    unsafe impl aya::Pod for Task {}
    unsafe impl aya::Pod for QueuedChild {}
    unsafe impl aya::Pod for AcceptWaitKey {}
    unsafe impl aya::Pod for SignalMemo {}
    unsafe impl aya::Pod for StashedReset {}
    unsafe impl aya::Pod for RepeatSlot {}
    unsafe impl aya::Pod for BtfOffsets {}
    unsafe impl aya::Pod for TaskFields {}
}

impl Task {
    /// The command name up to its first NUL.
    pub fn comm_bytes(&self) -> &[u8] {
        let end = self.comm.iter().position(|b| *b == 0).unwrap_or(TASK_COMM_LEN);
        &self.comm[..end]
    }
}

impl UnixEvent {
    pub fn path_bytes(&self) -> &[u8] {
        let len = (self.path_len as usize).min(UNIX_PATH_MAX);
        &self.path[..len]
    }
}

// The kernel programs write these types and userspace reads them (ring records, map values,
// the CONFIG slot): a field added, dropped or realigned on one side would be read at the wrong
// offsets on the other. Each size is pinned here, so such a change fails to compile until it is
// made on purpose (and the padding fields stay explicit).
const _: () = assert!(core::mem::size_of::<Task>() == 32);
const _: () = assert!(core::mem::size_of::<EventHeader>() == 56);
const _: () = assert!(core::mem::size_of::<Flow>() == 40);
const _: () = assert!(core::mem::size_of::<StashedReset>() == 64);
const _: () = assert!(core::mem::size_of::<TcpEvent>() == 216);
const _: () = assert!(core::mem::size_of::<RepeatSlot>() == 96);
const _: () = assert!(core::mem::size_of::<UnixEvent>() == 184);
const _: () = assert!(core::mem::size_of::<TpSockFields>() == 56);
const _: () = assert!(core::mem::size_of::<TpKfreeSkbFields>() == 16);
const _: () = assert!(core::mem::size_of::<TpSyscallFields>() == 16);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 48);
const _: () = assert!(core::mem::size_of::<KernelEnums>() == 32);
const _: () = assert!(core::mem::size_of::<Config>() == 912);
const _: () = assert!(core::mem::size_of::<SockFields>() == 32);
const _: () = assert!(core::mem::size_of::<DropSites>() == 48);
const _: () = assert!(core::mem::size_of::<ConnConfig>() == 40);
const _: () = assert!(core::mem::size_of::<ConnEndEvent>() == 248);
const _: () = assert!(core::mem::size_of::<SignalMemo>() == 48);
const _: () = assert!(core::mem::size_of::<LifecycleConfig>() == 40);
const _: () = assert!(core::mem::size_of::<ProcessEvent>() == 96);
const _: () = assert!(core::mem::size_of::<FnHookConfig>() == 24);
const _: () = assert!(core::mem::size_of::<AcceptWaitKey>() == 24);
const _: () = assert!(core::mem::size_of::<QueuedChild>() == 56);
const _: () = assert!(core::mem::size_of::<AttemptState>() == 64);
const _: () = assert!(core::mem::size_of::<ListenerKey>() == 8);
const _: () = assert!(core::mem::size_of::<ListenerState>() == 48);
const _: () = assert!(core::mem::size_of::<EventKind>() == 4);

#[cfg(test)]
mod attempt_table_tests {
    use super::*;

    fn record(pid: u32, tid: u32, start_ns: u64) -> AttemptState {
        AttemptState { owner: Task { pid, tid, ..Task::default() }, start_ns, ..AttemptState::default() }
    }

    #[test]
    fn a_record_mixed_from_two_connects_checks_for_neither() {
        let (sk_a, sk_b) = (0xffff_8881_0a3c_4800u64, 0xffff_8881_0a3c_5100u64);
        let mut a = record(812, 812, 5_000_000_123);
        a.check = a.check_for(sk_a);
        let mut b = record(813, 813, 5_000_000_456);
        b.check = b.check_for(sk_b);
        assert_eq!(a.check, a.check_for(sk_a));
        // B's tag over A's record, and each of A's fields under B's check.
        assert_ne!(a.check, a.check_for(sk_b));
        let mut mixed = a;
        mixed.check = b.check;
        assert_ne!(mixed.check, mixed.check_for(sk_a));
        assert_ne!(mixed.check, mixed.check_for(sk_b));
        let mut mixed = b;
        mixed.start_ns = a.start_ns;
        assert_ne!(mixed.check, mixed.check_for(sk_b));
        let mut mixed = b;
        mixed.owner = a.owner;
        assert_ne!(mixed.check, mixed.check_for(sk_b));
    }

    /// TCP sockets come from one slab, a fixed size apart: 50,000 of them in a row (more
    /// upstream connections than a busy proxy holds) must leave every set a free way.
    #[test]
    fn sockets_allocated_in_a_row_spread_over_the_sets() {
        for seed in [0u64, 0x5eed, 0xdead_beef_0123_4567] {
            let mut per_set = [0u8; ATTEMPT_SETS as usize];
            for i in 0..50_000u64 {
                let set = attempt_set(seed, 0xffff_8881_0000_0000 + i * 2304);
                assert!(set < ATTEMPT_SETS);
                per_set[set as usize] += 1;
            }
            let fullest = per_set.iter().max().copied().unwrap_or(0);
            assert!((fullest as usize) < ATTEMPT_WAYS, "seed {seed:#x}: a set holds {fullest}");
        }
    }
}

#[cfg(test)]
mod family_tests {
    use super::*;

    #[test]
    fn family_from_saddr_v6_on_kernels_without_the_family_field() {
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(family_of_saddr_v6(&mapped), AF_INET);
        let mut loopback6 = [0u8; 16];
        loopback6[15] = 1;
        assert_eq!(family_of_saddr_v6(&loopback6), AF_INET6);
        // fe80::ffff:0:0 style addresses are not the v4-mapped prefix.
        let mut link_local = mapped;
        link_local[0] = 0xfe;
        link_local[1] = 0x80;
        assert_eq!(family_of_saddr_v6(&link_local), AF_INET6);
    }
}
