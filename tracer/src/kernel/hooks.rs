//! The hook registry: every kernel program tracer has, in one table. Per program: the hook it
//! attaches to (a tracepoint, or a kernel function), its layout variants (the tracepoint field
//! layouts, or the function prototypes a program was written for), whether tracer can run
//! without it, and the causes it proves.
//!
//! Everything else reads this table: `kernel::facts` resolves the tracepoint layouts,
//! `capture` loads and attaches the programs, `doctor` says what each serves and which causes
//! tracer will see, and the `tracing:` line and the summary's hook list name what attached.
//! This module imports neither `capture` nor `doctor`: both point here.

use std::sync::OnceLock;

use tracer_common::{Config, FN_ACCEPT, FN_CONN_REQUEST, FN_TCP_CONNECT, FN_UNIX_CONNECT, FN_UNIX_PEER};

use crate::explain::Cause;
use crate::event::KindCounts;

/// One kernel program (or, for a function, the family of programs written for it).
pub struct HookSpec {
    pub hook: Hook,
    /// tracer refuses to run without it.
    pub required: bool,
    /// The causes its events prove (alone or with others); empty for the listener timeline.
    pub proves: &'static [Cause],
    /// What it proves, in words (doctor).
    pub serves: &'static str,
}

pub enum Hook {
    Tracepoint(TracepointHook),
    Function(FunctionHook),
}

/// A classic tracepoint: fields read at the offsets its tracefs format file gives.
pub struct TracepointHook {
    pub category: &'static str,
    pub name: &'static str,
    /// Function name in tracer-ebpf.
    pub program: &'static str,
    /// Tried in order; the first whose required fields all match is used.
    pub layouts: Vec<Layout>,
    /// The hooked kernel function that does this program's work when it attaches (the
    /// tracepoint is then not attached at all).
    pub replaced_by: Option<&'static str>,
}

impl TracepointHook {
    /// `category:name`, as the hook lists, doctor and `available` closures name it.
    pub fn full_name(&self) -> String {
        format!("{}:{}", self.category, self.name)
    }
}

/// A hooked kernel function: fentry/fexit with the variant written for its prototype, else
/// kprobe/kretprobe, else nothing (the tracepoints then serve its causes).
pub struct FunctionHook {
    pub function: &'static str,
    /// Its `FN_*` bit in `Config.fn_hooks.active` (the tracepoint programs then skip its work).
    pub bit: u32,
    /// Without this hook, which tracepoints serve the same cause.
    pub fallback: &'static str,
    /// One fentry/fexit program per prototype it was written for.
    pub trampolines: &'static [Trampoline],
    /// kprobe program, kretprobe program (if any); used for any prototype whose leading
    /// arguments match `kprobe_args`.
    pub kprobe: (&'static str, Option<&'static str>),
    pub kprobe_args: &'static [&'static str],
}

/// An fentry/fexit program and the prototype (parameter types) it reads.
pub struct Trampoline {
    pub params: &'static [&'static str],
    pub program: &'static str,
    pub fexit: bool,
}

/// A field layout a tracepoint may have; kernels changed some (tcp_send_reset in 6.10).
pub struct Layout {
    /// Said in doctor's notes when this layout is not the first one.
    pub label: &'static str,
    pub fields: Vec<FieldSpec>,
}

/// Where a format field's offset goes in `Config`.
pub type Slot = fn(&mut Config) -> &mut u32;

/// One field tracer reads: its name in the format file, where its offset goes, whether the
/// tracepoint is useless without it, and the size tracer reads (None: any size).
pub struct FieldSpec {
    pub name: &'static str,
    pub slot: Slot,
    pub required: bool,
    pub size: Option<u32>,
}

impl HookSpec {
    pub fn tracepoint(&self) -> Option<&TracepointHook> {
        match &self.hook {
            Hook::Tracepoint(t) => Some(t),
            Hook::Function(_) => None,
        }
    }

    pub fn function(&self) -> Option<&FunctionHook> {
        match &self.hook {
            Hook::Function(f) => Some(f),
            Hook::Tracepoint(_) => None,
        }
    }

    /// The name `doctor`'s `available` closure is asked with: `category:name` for a
    /// tracepoint, `fn:function` for a function hook.
    pub fn key(&self) -> String {
        match &self.hook {
            Hook::Tracepoint(t) => t.full_name(),
            Hook::Function(f) => format!("fn:{}", f.function),
        }
    }
}

/// The table, in attach order: function hooks first (the tracepoint programs are told which
/// work they took over), then the tracepoints.
pub fn registry() -> &'static [HookSpec] {
    static REGISTRY: OnceLock<Vec<HookSpec>> = OnceLock::new();
    REGISTRY.get_or_init(build)
}

/// The tracepoints of the registry, in order.
pub fn tracepoints() -> impl Iterator<Item = (&'static HookSpec, &'static TracepointHook)> {
    registry().iter().filter_map(|s| s.tracepoint().map(|t| (s, t)))
}

/// The hooked kernel functions of the registry, in order.
pub fn functions() -> impl Iterator<Item = (&'static HookSpec, &'static FunctionHook)> {
    registry().iter().filter_map(|s| s.function().map(|f| (s, f)))
}

/// The names of the hooked kernel functions (whose BTF prototypes start-up reads).
pub fn function_names() -> Vec<&'static str> {
    functions().map(|(_, f)| f.function).collect()
}

/// Whether skb:kfree_skb is attached as a raw tracepoint (`tracer_kfree_skb_raw`): its reason
/// argument exists since 5.17 (the classic record's `reason`), and the raw program reads the
/// skb's protocol itself, at its offset from BTF. capture::start attaches by it; doctor reports it.
pub fn kfree_skb_raw(config: &Config) -> bool {
    config.kfree_skb.reason != tracer_common::FIELD_ABSENT && config.offsets.skb_protocol != tracer_common::FIELD_ABSENT
}

/// The `FN_*` bit of the hooked kernel function `function` (0 when it is not in the table).
pub fn function_bit(function: &str) -> u32 {
    functions().find(|(_, f)| f.function == function).map_or(0, |(_, f)| f.bit)
}

/// The registry keys (`HookSpec::key`) of the hooks that prove `cause`.
pub fn proving(cause: Cause) -> Vec<String> {
    registry().iter().filter(|s| s.proves.contains(&cause)).map(HookSpec::key).collect()
}

// ---- the table ---------------------------------------------------------------------------

fn req(name: &'static str, size: u32, slot: Slot) -> FieldSpec {
    FieldSpec { name, slot, required: true, size: Some(size) }
}

fn opt(name: &'static str, size: u32, slot: Slot) -> FieldSpec {
    FieldSpec { name, slot, required: false, size: Some(size) }
}

/// The label of kfree_skb's layout without drop reasons (before 5.17).
pub const DROP_SITE_LAYOUT: &str = "drop sites instead of drop reasons (before 5.17): the `location` of each drop, in /proc/kallsyms";

/// Sizes tracer reads. Pointers are 8 bytes: tracer supports 64-bit kernels only.
const PTR: u32 = 8;
const INT: u32 = 4;
const U16: u32 = 2;
const V4: u32 = 4;
const V6: u32 = 16;
/// `sizeof(struct sockaddr_in6)`: tracepoints that store addresses as sockaddr images.
const SOCKADDR_IN6: u32 = 28;
/// Syscall tracepoint arguments are stored as longs whatever their C type.
const SYSCALL_ARG: u32 = 8;

const SOCK: &str = "struct sock *";

/// The standard address block of TCP tracepoints (TP_STORE_ADDR_PORTS), all required.
macro_rules! addr_ports {
    ($group:ident) => {
        vec![
            req("sport", U16, |c| &mut c.$group.sport),
            req("dport", U16, |c| &mut c.$group.dport),
            // Absent before 5.11: the kernel programs then take it from saddr_v6.
            opt("family", U16, |c| &mut c.$group.family),
            req("saddr", V4, |c| &mut c.$group.saddr),
            req("daddr", V4, |c| &mut c.$group.daddr),
            req("saddr_v6", V6, |c| &mut c.$group.saddr_v6),
            req("daddr_v6", V6, |c| &mut c.$group.daddr_v6),
        ]
    };
}

/// kfree_skb's packet: the skb and its ethertype, in every layout.
fn skb_packet() -> Vec<FieldSpec> {
    vec![req("skbaddr", PTR, |c| &mut c.kfree_skb.skbaddr), req("protocol", U16, |c| &mut c.kfree_skb.protocol)]
}

fn with(mut head: Vec<FieldSpec>, tail: Vec<FieldSpec>) -> Vec<FieldSpec> {
    head.extend(tail);
    head
}

/// A tracepoint with one layout.
fn standard(fields: Vec<FieldSpec>) -> Vec<Layout> {
    vec![Layout { label: "standard", fields }]
}

fn tp(
    category: &'static str,
    name: &'static str,
    program: &'static str,
    required: bool,
    proves: &'static [Cause],
    serves: &'static str,
    layouts: Vec<Layout>,
) -> HookSpec {
    HookSpec {
        hook: Hook::Tracepoint(TracepointHook { category, name, program, layouts, replaced_by: None }),
        required,
        proves,
        serves,
    }
}

/// A tracepoint whose work `function`'s hook does when it attaches.
fn replaced_by(function: &'static str, mut spec: HookSpec) -> HookSpec {
    if let Hook::Tracepoint(t) = &mut spec.hook {
        t.replaced_by = Some(function);
    }
    spec
}

fn func(proves: &'static [Cause], serves: &'static str, hook: FunctionHook) -> HookSpec {
    HookSpec { hook: Hook::Function(hook), required: false, proves, serves }
}

const UNIX_CAUSES: &[Cause] =
    &[Cause::UnixMissing, Cause::UnixStale, Cause::UnixBacklogFull, Cause::UnixPermissionDenied];

fn build() -> Vec<HookSpec> {
    use Cause::*;
    vec![
        func(
            &[],
            "who connects where: the attempt's owner as the SYN leaves",
            FunctionHook {
                function: "tcp_connect",
                bit: FN_TCP_CONNECT,
                fallback: "sock:inet_sock_set_state CLOSE->SYN_SENT",
                trampolines: &[Trampoline { params: &[SOCK], program: "tracer_fe_tcp_connect", fexit: false }],
                kprobe: ("tracer_kp_tcp_connect", None),
                kprobe_args: &[SOCK],
            },
        ),
        func(
            &[BacklogFull],
            "who accepts from which listener, and how long each connection waited in the accept queue",
            FunctionHook {
                function: "inet_csk_accept",
                bit: FN_ACCEPT,
                fallback: "no tracepoint measures accept-queue waits: not measured",
                trampolines: &[
                    // before 6.10
                    Trampoline { params: &[SOCK, "int", "int *", "bool"], program: "tracer_fx_accept4", fexit: true },
                    // 6.10 and later
                    Trampoline { params: &[SOCK, "struct proto_accept_arg *"], program: "tracer_fx_accept2", fexit: true },
                ],
                kprobe: ("tracer_kp_accept", Some("tracer_kr_accept")),
                kprobe_args: &[SOCK],
            },
        ),
        func(
            &[BacklogFull],
            "SYNs hitting a full accept queue, with the queue length and maximum at that moment (backlog_full)",
            FunctionHook {
                function: "tcp_conn_request",
                bit: FN_CONN_REQUEST,
                fallback: "tcp:tcp_retransmit_skb (the queue read at SYN retransmits) and ListenOverflows",
                trampolines: &[Trampoline {
                    params: &["struct request_sock_ops *", "struct tcp_request_sock_ops *", SOCK, "struct sk_buff *"],
                    program: "tracer_fe_conn_request",
                    fexit: false,
                }],
                kprobe: ("tracer_kp_conn_request", None),
                kprobe_args: &["struct request_sock_ops *", "struct tcp_request_sock_ops *", SOCK, "struct sk_buff *"],
            },
        ),
        func(
            UNIX_CAUSES,
            "Unix socket connects: the error and the path (unix_missing, unix_stale, unix_backlog_full, unix_permission_denied)",
            FunctionHook {
                function: "unix_stream_connect",
                bit: FN_UNIX_CONNECT,
                fallback: "syscalls:sys_enter_connect + sys_exit_connect",
                trampolines: &[Trampoline {
                    params: &["struct socket *", "struct sockaddr *", "int", "int"],
                    program: "tracer_fx_unix_connect",
                    fexit: true,
                }],
                kprobe: ("tracer_kp_unix_connect", Some("tracer_kr_unix_connect")),
                kprobe_args: &["struct socket *", "struct sockaddr *", "int"],
            },
        ),
        func(
            &[UnixBacklogFull],
            "the listener a Unix connect reaches: its queue length and maximum when the connect fails with EAGAIN (unix_backlog_full)",
            FunctionHook {
                function: "unix_find_other",
                bit: FN_UNIX_PEER,
                fallback: "the listener's queue from a sock_diag snapshot",
                trampolines: &[
                    // 5.19 .. 6.12
                    Trampoline {
                        params: &["struct net *", "struct sockaddr_un *", "int", "int"],
                        program: "tracer_fx_unix_peer4",
                        fexit: true,
                    },
                    // later (a `flags` argument)
                    Trampoline {
                        params: &["struct net *", "struct sockaddr_un *", "int", "int", "int"],
                        program: "tracer_fx_unix_peer5",
                        fexit: true,
                    },
                ],
                // Only the return value is read: a kretprobe alone.
                kprobe: ("tracer_kr_unix_peer", None),
                kprobe_args: &[],
            },
        ),
        tp(
            "sock",
            "inet_sock_set_state",
            "tracer_set_state",
            true,
            &[
                DeadListener,
                BacklogFull,
                RemoteRefused,
                RefusedUnattributed,
                NoResponse,
                PortsExhausted,
                UpstreamKilled,
                UpstreamReset,
                UpstreamClosed,
                KeepaliveRace,
                UpstreamTimeout,
            ],
            "TCP attempts failing (SYN_SENT->CLOSE with the socket error), connections ending before a response (FIN or reset with the kernel's byte counters), listeners opening/closing: remote_refused, refused_unattributed, dead_listener, no_response, ports_exhausted and the after-connect causes",
            standard(with(
                vec![
                    req("skaddr", PTR, |c| &mut c.set_state.skaddr),
                    req("oldstate", INT, |c| &mut c.set_state.oldstate),
                    req("newstate", INT, |c| &mut c.set_state.newstate),
                    req("protocol", U16, |c| &mut c.set_state.protocol),
                ],
                addr_ports!(set_state),
            )),
        ),
        tp(
            "tcp",
            "tcp_retransmit_skb",
            "tracer_retrans",
            false,
            &[BacklogFull, FirewallDrop, NoResponse],
            "SYN retransmits (nobody answers): backlog_full (queue read from the listener), firewall_drop, no_response",
            standard(with(
                vec![
                    opt("skbaddr", PTR, |c| &mut c.retransmit.skbaddr),
                    req("skaddr", PTR, |c| &mut c.retransmit.skaddr),
                    req("state", INT, |c| &mut c.retransmit.state),
                ],
                addr_ports!(retransmit),
            )),
        ),
        tp(
            "tcp",
            "tcp_receive_reset",
            "tracer_rst_recv",
            false,
            &[FirewallReject, RemoteRefused],
            "RSTs received by connecting sockets: remote_refused, firewall_reject (tcp reset)",
            standard(with(vec![req("skaddr", PTR, |c| &mut c.receive_reset.skaddr)], addr_ports!(receive_reset))),
        ),
        tp(
            "tcp",
            "tcp_send_reset",
            "tracer_rst_send",
            false,
            &[DeadListener],
            "RSTs this host sends because no socket matched: dead_listener (tells it from firewall_reject)",
            vec![
                Layout {
                    label: "sport/dport/saddr fields",
                    fields: with(
                        vec![
                            opt("skbaddr", PTR, |c| &mut c.send_reset.skbaddr),
                            req("skaddr", PTR, |c| &mut c.send_reset.skaddr),
                            opt("state", INT, |c| &mut c.send_reset.state),
                            opt("reason", INT, |c| &mut c.send_reset.reason),
                        ],
                        addr_ports!(send_reset),
                    ),
                },
                // Since 6.10 the addresses are `struct sockaddr_in6`-sized images of a
                // sockaddr_in/sockaddr_in6 (family, port, address) in saddr/daddr, and
                // sport/dport/family/saddr_v6/daddr_v6 do not exist. The kernel programs see
                // this layout as: family == FIELD_ABSENT while saddr != FIELD_ABSENT.
                Layout {
                    label: "addresses as sockaddr images in saddr/daddr (no sport/dport/family fields)",
                    fields: vec![
                        opt("skbaddr", PTR, |c| &mut c.send_reset.skbaddr),
                        req("skaddr", PTR, |c| &mut c.send_reset.skaddr),
                        opt("state", INT, |c| &mut c.send_reset.state),
                        opt("reason", INT, |c| &mut c.send_reset.reason),
                        req("saddr", SOCKADDR_IN6, |c| &mut c.send_reset.saddr),
                        req("daddr", SOCKADDR_IN6, |c| &mut c.send_reset.daddr),
                    ],
                },
            ],
        ),
        tp(
            "skb",
            "kfree_skb",
            "tracer_kfree_skb",
            false,
            &[DeadListener, FirewallDrop, FirewallReject],
            "packets dropped with a reason: NO_SOCKET (dead_listener), NETFILTER_DROP (firewall_drop, firewall_reject), TCP_LISTEN_OVERFLOW (backlog_full); before 5.17, by the function that dropped them: nf_hook_slow (firewall_drop, firewall_reject), tcp_v4_rcv/tcp_v6_rcv (dead_listener)",
            vec![
                Layout { label: "drop reasons", fields: with(skb_packet(), vec![req("reason", INT, |c| &mut c.kfree_skb.reason)]) },
                // Before 5.17: no reason, the caller's address instead, matched against the
                // drop sites start-up resolves through /proc/kallsyms (facts::drop_sites).
                Layout {
                    label: DROP_SITE_LAYOUT,
                    fields: with(skb_packet(), vec![req("location", PTR, |c| &mut c.kfree_skb.location)]),
                },
            ],
        ),
        tp(
            "icmp",
            "icmp_send",
            "tracer_icmp_send",
            false,
            &[FirewallReject],
            "ICMP errors this host sends: firewall_reject (with icmp port-unreachable)",
            standard(vec![
                req("skbaddr", PTR, |c| &mut c.icmp_send.skbaddr),
                req("type", INT, |c| &mut c.icmp_send.state),
                req("code", INT, |c| &mut c.icmp_send.reason),
                req("saddr", V4, |c| &mut c.icmp_send.saddr),
                req("daddr", V4, |c| &mut c.icmp_send.daddr),
                opt("sport", U16, |c| &mut c.icmp_send.sport),
                opt("dport", U16, |c| &mut c.icmp_send.dport),
            ]),
        ),
        replaced_by("unix_stream_connect", tp(
            "syscalls",
            "sys_enter_connect",
            "tracer_conn_enter",
            false,
            UNIX_CAUSES,
            "connect() calls (the Unix socket path asked for): unix_missing, unix_stale, unix_backlog_full, unix_permission_denied",
            standard(vec![
                req("fd", SYSCALL_ARG, |c| &mut c.connect_enter.fd),
                req("uservaddr", SYSCALL_ARG, |c| &mut c.connect_enter.addr),
                req("addrlen", SYSCALL_ARG, |c| &mut c.connect_enter.addrlen),
            ]),
        )),
        replaced_by("unix_stream_connect", tp(
            "syscalls",
            "sys_exit_connect",
            "tracer_conn_exit",
            false,
            UNIX_CAUSES,
            "connect() results (errno): unix_missing (ENOENT), unix_stale (ECONNREFUSED), unix_backlog_full (EAGAIN), unix_permission_denied (EACCES)",
            standard(vec![req("ret", SYSCALL_ARG, |c| &mut c.connect_exit.ret)]),
        )),
        tp(
            "sched",
            "sched_process_exit",
            "tracer_proc_exit",
            false,
            &[],
            "a listener's owner exiting, with its exit code or signal (listener timeline)",
            standard(vec![
                req("pid", INT, |c| &mut c.lifecycle.exit_pid),
                opt("group_dead", 1, |c| &mut c.lifecycle.exit_group_dead),
            ]),
        ),
        tp(
            "signal",
            "signal_generate",
            "tracer_sig_gen",
            false,
            &[UpstreamKilled],
            "fatal signals sent to a listener's owner or to any process, and by whom (listener timeline; how an upstream worker was killed)",
            standard(vec![
                req("sig", INT, |c| &mut c.lifecycle.sig_sig),
                req("pid", INT, |c| &mut c.lifecycle.sig_pid),
                req("comm", 16, |c| &mut c.lifecycle.sig_comm),
            ]),
        ),
        tp(
            "oom",
            "mark_victim",
            "tracer_oom",
            false,
            &[],
            "the OOM killer choosing a listener's owner (listener timeline)",
            standard(vec![req("pid", INT, |c| &mut c.lifecycle.oom_pid)]),
        ),
        tp(
            "syscalls",
            "sys_enter_unlinkat",
            "tracer_unlinkat",
            false,
            &[],
            "a Unix socket file deleted, and by whom (unix_missing timeline)",
            standard(vec![req("pathname", SYSCALL_ARG, |c| &mut c.lifecycle.unlinkat_pathname)]),
        ),
        tp(
            "syscalls",
            "sys_enter_unlink",
            "tracer_unlink",
            false,
            &[],
            "a Unix socket file deleted, and by whom (unix_missing timeline)",
            standard(vec![req("pathname", SYSCALL_ARG, |c| &mut c.lifecycle.unlink_pathname)]),
        ),
        tp(
            "syscalls",
            "sys_enter_bind",
            "tracer_bind",
            false,
            &[],
            "bind() of Unix socket paths: who created a socket file (unix listener history)",
            standard(vec![
                req("fd", SYSCALL_ARG, |c| &mut c.bind_enter.fd),
                req("umyaddr", SYSCALL_ARG, |c| &mut c.bind_enter.addr),
                req("addrlen", SYSCALL_ARG, |c| &mut c.bind_enter.addrlen),
            ]),
        ),
    ]
}

// ---- what start-up made of the table ------------------------------------------------------

/// One hook's state after start-up, for the `tracing:` line, the summary and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookState {
    /// `fentry:tcp_connect`, `tcp:tcp_send_reset`, or a function's bare name when inactive.
    pub hook: String,
    pub active: bool,
    pub why_not: Option<String>,
}

/// What capture publishes about itself: which hooks run, and what the kernel programs emitted
/// and lost, per event kind. Metrics and `top` read this; they never see `capture`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureHealth {
    pub hooks: Vec<HookState>,
    /// Events emitted per kind (kinds with none left out), summed over CPUs.
    pub emitted: KindCounts,
    /// Events lost per kind (the ring buffer was full, or the kernel skipped a program run
    /// because another BPF program was running on that CPU), summed over CPUs.
    pub lost: KindCounts,
    /// Connection attempts and connections whose owner the kernel's table holds now (None
    /// when the counter cannot be read).
    pub attempt_records: Option<u64>,
}

impl CaptureHealth {
    pub fn hooks_active(&self) -> usize {
        self.hooks.iter().filter(|h| h.active).count()
    }
}

/// Which backend the user allows (`--backend`, or TRACER_BACKEND).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// Function hooks where they load, tracepoints for the rest (the default).
    Auto,
    /// Like `Auto` without trying fentry/fexit: kprobes or tracepoints (tests the fallback).
    Kprobes,
    /// Tracepoints only: the function hooks are not even tried.
    Tracepoints,
}

impl BackendChoice {
    pub fn parse(s: &str) -> Result<BackendChoice, String> {
        match s {
            "auto" | "functions" | "fentry" => Ok(BackendChoice::Auto),
            "kprobes" | "kprobe" => Ok(BackendChoice::Kprobes),
            "tracepoints" | "tracepoint" => Ok(BackendChoice::Tracepoints),
            _ => Err(format!("'{s}' is not a backend (use auto, kprobes or tracepoints)")),
        }
    }
}

/// How sock:inet_sock_set_state is hooked, best first (`--set-state-hook`): a BTF tracepoint
/// (the socket's and the task's members loaded directly at offsets the verifier knows as
/// constants), a raw tracepoint (the arguments without a helper call, each member read by
/// one), the classic tracepoint (every field of its record read by a helper call).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SetStateVia {
    Btf,
    Raw,
    Classic,
}

impl SetStateVia {
    /// The best kind whose members this kernel's BTF gives (the kernel may still refuse the
    /// program: capture then falls back).
    pub fn best_for(config: &tracer_common::Config) -> SetStateVia {
        if tracer_common::BtfOffsets::of(config).complete() {
            SetStateVia::Btf
        } else if config.sock.complete() {
            SetStateVia::Raw
        } else {
            SetStateVia::Classic
        }
    }

    /// `--set-state-hook`'s value.
    pub fn parse(s: &str) -> Result<SetStateChoice, String> {
        Ok(SetStateChoice(match s {
            "auto" => None,
            "tp_btf" => Some(SetStateVia::Btf),
            "raw_tp" => Some(SetStateVia::Raw),
            "tracepoint" => Some(SetStateVia::Classic),
            _ => return Err(format!("'{s}' is not a kind of hook (use auto, tp_btf, raw_tp or tracepoint)")),
        }))
    }

    /// As `--set-state-hook` and `--verbose` name it.
    pub fn name(self) -> &'static str {
        match self {
            SetStateVia::Btf => "tp_btf",
            SetStateVia::Raw => "raw_tp",
            SetStateVia::Classic => "tracepoint",
        }
    }

    /// The program on inet_sock_set_state (`classic` names the classic tracepoint's), and its
    /// after-connect twin (a tail call keeps the program's kind).
    pub fn programs(self, classic: &'static str) -> (&'static str, &'static str) {
        match self {
            SetStateVia::Btf => ("tracer_set_state_btf", "tracer_conn_end_btf"),
            SetStateVia::Raw => ("tracer_set_state_raw", "tracer_conn_end_raw"),
            SetStateVia::Classic => (classic, "tracer_conn_end"),
        }
    }

    /// The next best.
    pub fn fallback(self) -> SetStateVia {
        match self {
            SetStateVia::Btf => SetStateVia::Raw,
            _ => SetStateVia::Classic,
        }
    }
}

/// `--set-state-hook`: a kind, or None for `auto` (the best this kernel takes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetStateChoice(pub Option<SetStateVia>);

/// What start-up needs to decide the function hooks: prototypes from BTF, kprobe support.
pub struct FnHookPlan<'a> {
    pub choice: BackendChoice,
    /// `--set-state-hook`: None for the best kind this kernel takes.
    pub set_state: Option<SetStateVia>,
    pub functions: &'a [(&'static str, Option<super::btf::FnPrototype>)],
    pub kprobes: &'a super::facts::Availability,
}

/// The outcome for one hooked function.
#[derive(Clone, Debug)]
pub struct FnHookOutcome {
    pub function: &'static str,
    /// BTF prototype as C, or why there is none.
    pub prototype: String,
    /// `fentry:tcp_connect`, `kprobe:tcp_conn_request`, ... or None.
    pub active: Option<String>,
    /// The program (variant) serving it, e.g. `tracer_fx_accept4` for the 4-argument prototype.
    pub program: Option<&'static str>,
    /// Why fentry/fexit, then kprobe, were not used.
    pub why_not: Vec<String>,
    pub serves: &'static str,
    pub fallback: &'static str,
}

impl FnHookOutcome {
    pub fn hook_state(&self) -> HookState {
        match &self.active {
            Some(h) => HookState { hook: h.clone(), active: true, why_not: None },
            None => HookState {
                hook: self.function.to_string(),
                active: false,
                why_not: Some(format!("{} -> tracepoints", self.why_not.join("; "))),
            },
        }
    }

    /// One line for `doctor` and the logs: `tcp_connect: fentry:tcp_connect`,
    /// `tcp_connect: kprobe:tcp_connect (program ...; fentry: <why not>)` or
    /// `tcp_conn_request: none (fentry: ...; kprobe: ...) -> tracepoints`.
    pub fn line(&self) -> String {
        let why_not = self.why_not.iter().map(|w| brief(w)).collect::<Vec<_>>().join("; ");
        match (&self.active, self.program) {
            (Some(h), Some(p)) if why_not.is_empty() => format!("{}: {h} (program {p})", self.function),
            (Some(h), Some(p)) => format!("{}: {h} (program {p}; {why_not})", self.function),
            (Some(h), None) => format!("{}: {h}", self.function),
            (None, _) => format!("{}: none ({why_not}) -> tracepoints ({})", self.function, self.fallback),
        }
    }
}

/// A refusal in one line: its first line, and, for a verifier's log, its last one too (the
/// instruction the verifier stopped at; the first line is often only where it started).
pub fn brief(why: &str) -> String {
    let mut lines = why.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("");
    match lines.last() {
        Some(last) => format!("{first} ... {last}"),
        None => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_one_line_with_the_verifiers_last_word() {
        assert_eq!(brief("fentry: not in BTF"), "fentry: not in BTF");
        let log = "load refused: Invalid argument. Verifier output: arg#0 type is not a struct\n  ; fn x()\n  invalid func unknown#158\n";
        assert_eq!(brief(log), "load refused: Invalid argument. Verifier output: arg#0 type is not a struct ... invalid func unknown#158");
    }

    /// `--set-state-hook` names each kind as `--verbose` does; the kinds fall back best first.
    #[test]
    fn set_state_hook_kinds_parse_and_fall_back_in_order() {
        assert_eq!(SetStateVia::parse("auto"), Ok(SetStateChoice(None)));
        for via in [SetStateVia::Btf, SetStateVia::Raw, SetStateVia::Classic] {
            assert_eq!(SetStateVia::parse(via.name()), Ok(SetStateChoice(Some(via))));
        }
        assert!(SetStateVia::parse("kprobe").unwrap_err().contains("use auto, tp_btf, raw_tp or tracepoint"));
        assert!(SetStateVia::Btf < SetStateVia::Raw && SetStateVia::Raw < SetStateVia::Classic);
        assert_eq!(SetStateVia::Btf.fallback(), SetStateVia::Raw);
        assert_eq!(SetStateVia::Raw.fallback(), SetStateVia::Classic);
        assert_eq!(SetStateVia::Classic.fallback(), SetStateVia::Classic);
        assert_eq!(SetStateVia::Classic.programs("tracer_set_state"), ("tracer_set_state", "tracer_conn_end"));
    }

    #[test]
    fn every_function_has_a_variant_and_a_kprobe_signature() {
        for (_, f) in functions() {
            assert!(!f.trampolines.is_empty());
            for t in f.trampolines {
                assert!(t.params.len() >= f.kprobe_args.len());
                assert_eq!(&t.params[..f.kprobe_args.len()], f.kprobe_args, "{}", f.function);
            }
        }
        assert_eq!(BackendChoice::parse("tracepoints"), Ok(BackendChoice::Tracepoints));
        assert_eq!(BackendChoice::parse("auto"), Ok(BackendChoice::Auto));
        assert_eq!(BackendChoice::parse("kprobes"), Ok(BackendChoice::Kprobes));
        assert!(BackendChoice::parse("ebpf").is_err());
    }

    #[test]
    fn names_programs_and_bits_are_unique_and_one_hook_is_required() {
        let keys: std::collections::BTreeSet<String> = registry().iter().map(HookSpec::key).collect();
        assert_eq!(keys.len(), registry().len());
        let mut programs: Vec<&str> = tracepoints().map(|(_, t)| t.program).collect();
        for (_, f) in functions() {
            programs.extend(f.trampolines.iter().map(|t| t.program));
            programs.extend(std::iter::once(f.kprobe.0).chain(f.kprobe.1));
        }
        let unique: std::collections::BTreeSet<&str> = programs.iter().copied().collect();
        assert_eq!(unique.len(), programs.len(), "{programs:?}");
        let bits: u32 = functions().fold(0, |acc, (_, f)| {
            assert_eq!(acc & f.bit, 0, "{}", f.function);
            acc | f.bit
        });
        assert_eq!(bits.count_ones() as usize, functions().count());
        let required: Vec<String> = registry().iter().filter(|s| s.required).map(HookSpec::key).collect();
        assert_eq!(required, ["sock:inet_sock_set_state"]);
        assert!(tracepoints().all(|(_, t)| !t.layouts.is_empty()));
        for (_, t) in tracepoints() {
            assert!(t.replaced_by.is_none_or(|f| function_bit(f) != 0), "{}", t.full_name());
        }
        assert_eq!(function_bit("unix_stream_connect"), FN_UNIX_CONNECT);
    }

    #[test]
    fn every_cause_is_proved_by_some_hook() {
        for cause in Cause::ALL {
            assert!(!proving(cause).is_empty(), "{cause:?}");
        }
        assert_eq!(proving(Cause::UnixBacklogFull).len(), 4);
    }

    #[test]
    fn inactive_hooks_say_why_and_what_serves_instead() {
        let o = FnHookOutcome {
            function: "tcp_conn_request",
            prototype: String::new(),
            active: None,
            program: None,
            why_not: vec!["fentry: load refused (EPERM)".into(), "kprobes: CONFIG_KPROBES is not set".into()],
            serves: "x",
            fallback: "tcp:tcp_retransmit_skb",
        };
        assert_eq!(
            o.line(),
            "tcp_conn_request: none (fentry: load refused (EPERM); kprobes: CONFIG_KPROBES is not set) -> tracepoints (tcp:tcp_retransmit_skb)"
        );
        assert!(!o.hook_state().active);
    }
}
