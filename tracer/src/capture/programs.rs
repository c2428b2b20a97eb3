//! The compatibility table: every kernel program, the hook it attaches to, whether tracer can
//! run without it, and what it proves. `Capture::start` attaches what this kernel offers and
//! reports the rest with the reason; `doctor` prints the same table without attaching.

/// How tracer reaches the kernel. Only tracepoints exist today; the function-hook backend
/// (fentry, then kprobe) plugs in here and is chosen per hook at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Classic tracepoints, fields at offsets read from tracefs format files.
    Tracepoints,
    /// Function hooks (fentry/fexit, else kprobe/kretprobe) where they load, per function,
    /// and the tracepoints for everything else (capture/fhooks.rs).
    FunctionHooks,
}

impl Backend {
    pub fn describe(&self) -> &'static str {
        match self {
            Backend::Tracepoints => "tracepoints",
            Backend::FunctionHooks => "function-hooks+tracepoints",
        }
    }
}

pub struct ProgramSpec {
    /// Function name in tracer-ebpf.
    pub program: &'static str,
    pub category: &'static str,
    pub tracepoint: &'static str,
    /// tracer refuses to run without it.
    pub required: bool,
    /// What it proves, in words.
    pub serves: &'static str,
}

impl ProgramSpec {
    pub fn hook(&self) -> String {
        format!("{}:{}", self.category, self.tracepoint)
    }
}

pub const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec {
        program: "tracer_set_state",
        category: "sock",
        tracepoint: "inet_sock_set_state",
        required: true,
        serves: "who connects where (owner at connect time), failed attempts, listeners opening and closing",
    },
    ProgramSpec {
        program: "tracer_retrans",
        category: "tcp",
        tracepoint: "tcp_retransmit_skb",
        required: false,
        serves: "unanswered SYNs and the listener's accept queue at that moment (backlog_full, firewall_drop, no_response)",
    },
    ProgramSpec {
        program: "tracer_rst_recv",
        category: "tcp",
        tracepoint: "tcp_receive_reset",
        required: false,
        serves: "RSTs reaching a connecting socket (refusals)",
    },
    ProgramSpec {
        program: "tracer_rst_send",
        category: "tcp",
        tracepoint: "tcp_send_reset",
        required: false,
        serves: "RSTs this host sends because no socket listens (dead_listener)",
    },
    ProgramSpec {
        program: "tracer_kfree_skb",
        category: "skb",
        tracepoint: "kfree_skb",
        required: false,
        serves: "packets dropped as NO_SOCKET, NETFILTER_DROP or TCP_LISTEN_OVERFLOW (firewall_drop, firewall_reject, dead_listener)",
    },
    ProgramSpec {
        program: "tracer_icmp_send",
        category: "icmp",
        tracepoint: "icmp_send",
        required: false,
        serves: "ICMP unreachables this host sends (firewall_reject with icmp)",
    },
    ProgramSpec {
        program: "tracer_conn_enter",
        category: "syscalls",
        tracepoint: "sys_enter_connect",
        required: false,
        serves: "Unix socket connects: the path",
    },
    ProgramSpec {
        program: "tracer_conn_exit",
        category: "syscalls",
        tracepoint: "sys_exit_connect",
        required: false,
        serves: "Unix socket connect errors (unix_missing, unix_stale, unix_backlog_full, unix_permission_denied)",
    },
    ProgramSpec {
        program: "tracer_proc_exit",
        category: "sched",
        tracepoint: "sched_process_exit",
        required: false,
        serves: "listener owners exiting, with code or signal (listener timeline)",
    },
    ProgramSpec {
        program: "tracer_sig_gen",
        category: "signal",
        tracepoint: "signal_generate",
        required: false,
        serves: "fatal signals to listener owners and their sender (listener timeline)",
    },
    ProgramSpec {
        program: "tracer_oom",
        category: "oom",
        tracepoint: "mark_victim",
        required: false,
        serves: "OOM kills of listener owners (listener timeline)",
    },
    ProgramSpec {
        program: "tracer_unlinkat",
        category: "syscalls",
        tracepoint: "sys_enter_unlinkat",
        required: false,
        serves: "Unix socket files deleted, and by whom (listener timeline)",
    },
    ProgramSpec {
        program: "tracer_unlink",
        category: "syscalls",
        tracepoint: "sys_enter_unlink",
        required: false,
        serves: "Unix socket files deleted, and by whom (listener timeline)",
    },
    ProgramSpec {
        program: "tracer_bind",
        category: "syscalls",
        tracepoint: "sys_enter_bind",
        required: false,
        serves: "who created a Unix socket file (listener of unix_stale)",
    },
];
