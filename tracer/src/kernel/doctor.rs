//! `tracer doctor`: what this kernel offers, what tracer will use, and therefore which causes
//! of a 502 it will see. Reads BTF, tracefs and /proc only; attaches nothing. It may mount
//! tracefs (and says so), as tracer itself would.

use std::io::Write;

use tracer_common::{Config, KernelEnums, KernelOffsets, FIELD_ABSENT};

use super::btf::{KernelBtf, VMLINUX_BTF};
use super::facts::{
    fentry_availability, kernel_release, kprobes_availability, local_refusals_visible, privileges, tracepoint_config, Availability,
    TracepointInfo,
};
use super::hooks::{BackendChoice, FnHookOutcome, FnHookPlan, SetStateVia};
use super::tracefs::locate_or_mount_tracefs;
use crate::explain::Cause;

/// Loads (never attaches) each function hook, as `diagnose` would pick it: capture's
/// `probe_function_hooks`, handed in so that doctor, below capture, never imports it.
pub type FnHookProbe<'a> = &'a dyn Fn(&Config, &FnHookPlan<'_>) -> anyhow::Result<Vec<FnHookOutcome>>;

/// The backend v1 uses.
pub const BACKEND: &str = "tracepoints (classic, fields from tracefs formats)";

/// Writes the report; returns whether tracer can run here.
pub fn doctor_report(w: &mut impl Write, probe_function_hooks: FnHookProbe<'_>) -> anyhow::Result<bool> {
    let mut blockers: Vec<String> = Vec::new();
    let release = kernel_release();
    writeln!(w, "tracer doctor")?;
    writeln!(w, "kernel:      {release}")?;

    // BTF: offsets and enum values for the kernel programs.
    let mut kernel_values: Option<(KernelOffsets, KernelEnums)> = None;
    // How sock:inet_sock_set_state can be hooked, from the members BTF gives.
    let mut set_state = SetStateVia::Classic;
    // Whether the BTF tracepoint reaches the connecting task as a typed pointer (5.11+).
    let mut task_btf = false;
    match KernelBtf::load() {
        Ok(btf) => match (btf.offsets(), btf.enums()) {
            (Ok(offsets), Ok(enums)) => {
                let mut facts = super::facts::empty_config(offsets, enums);
                super::facts::btf_members(&btf, &mut facts);
                set_state = SetStateVia::best_for(&facts);
                task_btf = facts.task.from_task_btf != 0;
                writeln!(w, "BTF:         ok ({VMLINUX_BTF})")?;
                let names = btf.names();
                writeln!(
                    w,
                    "             {} drop reasons, {} RST reasons; struct sock: sk_err at {}, sk_ack_backlog at {}, sk_max_ack_backlog at {}",
                    names.drop_reason_count(),
                    names.rst_reason_count(),
                    offsets.sock_sk_err,
                    offsets.sock_sk_ack_backlog,
                    offsets.sock_sk_max_ack_backlog
                )?;
                kernel_values = Some((offsets, enums));
            }
            (Err(e), _) | (_, Err(e)) => {
                writeln!(w, "BTF:         unusable: {e:#}")?;
                blockers.push(format!("{e:#}"));
            }
        },
        Err(e) => {
            writeln!(w, "BTF:         missing: {e:#}")?;
            blockers.push(format!("{e:#}"));
        }
    }

    let tracefs = match locate_or_mount_tracefs() {
        Ok(m) => {
            let how = if m.mounted_now { "mounted by doctor" } else { "already mounted" };
            writeln!(w, "tracefs:     {} ({how})", m.path.display())?;
            Some(m.path)
        }
        Err(e) => {
            writeln!(w, "tracefs:     missing: {e:#}")?;
            blockers.push(format!("{e:#}"));
            None
        }
    };

    let p = privileges();
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    writeln!(
        w,
        "privileges:  euid {}, CAP_BPF {}, CAP_PERFMON {}, CAP_SYS_ADMIN {}, CAP_NET_ADMIN {}",
        p.euid,
        yes_no(p.cap_bpf),
        yes_no(p.cap_perfmon),
        yes_no(p.cap_sys_admin),
        yes_no(p.cap_net_admin)
    )?;
    if !p.can_load_tracepoints() {
        blockers.push("loading tracepoint programs needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN): run tracer as root".to_string());
    }
    if !p.cap_sys_admin {
        writeln!(
            w,
            "             without CAP_SYS_ADMIN, listeners in other network namespaces are not measured"
        )?;
    }

    // Tracepoints: their formats do not depend on BTF; placeholder kernel values are enough
    // to tell which are usable when BTF failed.
    let (tp_config, tracepoints): (Option<tracer_common::Config>, Vec<TracepointInfo>) = match &tracefs {
        Some(path) => {
            let (offsets, enums) = kernel_values.unwrap_or((KernelOffsets::default(), absent_enums()));
            let (config, tracepoints) = tracepoint_config(path, offsets, enums);
            (Some(config), tracepoints)
        }
        None => (None, Vec::new()),
    };
    writeln!(w)?;
    writeln!(w, "tracepoints:")?;
    if tracepoints.is_empty() {
        writeln!(w, "  (not read: no tracefs)")?;
    }
    for tp in &tracepoints {
        let state = if tp.available {
            "available".to_string()
        } else {
            format!("missing ({})", tp.why_not.as_deref().unwrap_or("unknown"))
        };
        writeln!(w, "  {:<30} {state}", tp.full_name())?;
        writeln!(w, "  {:<30} serves: {}", "", tp.serves)?;
        for note in &tp.notes {
            writeln!(w, "  {:<30} note: {note}", "")?;
        }
        if tp.category == "syscalls" && tp.available {
            writeln!(w, "  {:<30} note: {SYSCALLS_ON_DEMAND}", "")?;
        }
        if tp.full_name() == SET_STATE {
            let how = match set_state {
                SetStateVia::Btf => {
                    let loaded = match task_btf {
                        true => "the socket's and the connecting task's members loaded directly at offsets from BTF, which the verifier knows as constants",
                        false => "the socket's members loaded directly at offsets from BTF, which the verifier knows as constants, the connecting task's ids, name and uid from their helpers (no bpf_get_current_task_btf before 5.11)",
                    };
                    format!("attached as a BTF tracepoint (tp_btf): {loaded}; where the kernel refuses that program, as a raw tracepoint (raw_tp)")
                }
                SetStateVia::Raw => "attached as a raw tracepoint (raw_tp): its arguments read without a helper call, the socket's members at offsets from BTF (BTF lacks a member the BTF tracepoint loads)".into(),
                SetStateVia::Classic => "attached as the classic tracepoint (BTF lacks a socket member the raw tracepoint reads)".into(),
            };
            writeln!(w, "  {:<30} note: {how}", "")?;
        }
        if tp.full_name() == "tcp:tcp_send_reset" && tp.available {
            // Since 6.10 (the rework that gave it `reason`) it fires for resets sent with no
            // socket: only then can a refused connect's close claim its reset (send_reset.rs).
            let from_no_socket = tp_config.as_ref().is_some_and(|c| c.send_reset.reason != FIELD_ABSENT);
            let how = match from_no_socket {
                true => "fires for resets sent from no socket: a refused connect's reset joins its attempt in the kernel, and the identical refusals after the first each second are counted there, not sent one by one (`--each-attempt` sends each)",
                false => "fires only for resets sent from a socket on this kernel (before 6.10): a dead listener is proved by the NO_SOCKET drop, and each refused connect is sent on its own",
            };
            writeln!(w, "  {:<30} note: {how}", "")?;
        }
        if tp.full_name() == "skb:kfree_skb" && tp.available {
            let raw = tp_config.as_ref().is_some_and(super::hooks::kfree_skb_raw);
            let how = match raw {
                true => "attached as a raw tracepoint (raw_tp): the drop reason read without a helper call, the skb's protocol at its offset from BTF",
                false => "attached as the classic tracepoint (no drop reason in this kernel, or BTF lacks sk_buff.protocol)",
            };
            writeln!(w, "  {:<30} note: {how}", "")?;
        }
    }
    if tracefs.is_some() && !tracepoints.iter().any(|t| t.available) {
        blockers.push("none of the tracepoints tracer uses is available".to_string());
    }

    writeln!(w)?;
    writeln!(w, "kprobes:     {}", availability_text(&kprobes_availability(tracefs.as_deref(), &release)))?;
    writeln!(w, "fentry:      {}", availability_text(&fentry_availability()))?;
    // Function hooks: each loaded (not attached) to see what this kernel accepts.
    let mut any_function_hook = false;
    let mut hooked_functions: Vec<&'static str> = Vec::new();
    writeln!(w)?;
    writeln!(w, "function hooks (fentry/fexit, else kprobe/kretprobe; each loaded to test, none attached):")?;
    match super::facts::probe_kernel() {
        Ok(facts) => {
            let plan = FnHookPlan { choice: BackendChoice::Auto, set_state: None, functions: &facts.functions, kprobes: &facts.kprobes };
            match probe_function_hooks(&facts.config, &plan) {
                Ok(outcomes) => {
                    for o in outcomes {
                        any_function_hook |= o.active.is_some();
                        if o.active.is_some() {
                            hooked_functions.push(o.function);
                        }
                        writeln!(w, "  {}", o.line())?;
                        writeln!(w, "  {:<22} prototype: {}", "", o.prototype)?;
                        writeln!(w, "  {:<22} serves: {}", "", o.serves)?;
                    }
                }
                Err(e) => writeln!(w, "  not tried: {e:#}")?,
            }
        }
        Err(e) => writeln!(w, "  not tried: {e:#}")?,
    }
    writeln!(w)?;
    if any_function_hook {
        writeln!(w, "backend:     function hooks where they load (above), {BACKEND} for the rest")?;
    } else {
        writeln!(w, "backend:     {BACKEND}")?;
    }

    writeln!(w)?;
    writeln!(w, "what tracer will therefore see:")?;
    // tcp_send_reset reports the resets this host sends from no socket only since its 6.10
    // rework (the one that gave it `reason`): before, it proves nothing about a dead listener,
    // the one cause that reads it (hooks::proving).
    let no_socket_resets = tp_config.is_some_and(|c| c.send_reset.reason != FIELD_ABSENT);
    // "fn:NAME": the function hook on NAME loads here.
    let available = |name: &str| {
        (name != SEND_RESET || no_socket_resets)
            && (tracepoints.iter().any(|t| t.available && t.full_name() == name)
                || name.strip_prefix("fn:").is_some_and(|f| hooked_functions.contains(&f)))
    };
    let drops = DropFacts {
        listen_overflow_reason: kernel_values.map(|(_, e)| e.drop_tcp_listen_overflow != FIELD_ABSENT).unwrap_or(false),
        by_site: tp_config.is_some_and(|c| c.kfree_skb.location != FIELD_ABSENT),
        local_refusals_visible: tp_config.is_some_and(|c| local_refusals_visible(&c, &tracepoints)),
    };
    for row in cause_visibility(&available, drops) {
        writeln!(w, "  {:<23} {:<8} {}", row.cause.as_str(), row.seen.word(), row.how)?;
    }

    writeln!(w)?;
    if blockers.is_empty() {
        writeln!(w, "tracer can run here.")?;
    } else {
        writeln!(w, "tracer cannot run here:")?;
        for b in &blockers {
            writeln!(w, "  - {b}")?;
        }
    }
    Ok(blockers.is_empty())
}

fn availability_text(a: &Availability) -> String {
    match a {
        Availability::Yes => "yes".to_string(),
        Availability::No(why) => format!("no ({why})"),
        Availability::Unknown(why) => format!("unknown ({why})"),
    }
}

fn absent_enums() -> KernelEnums {
    KernelEnums {
        tcp_established: FIELD_ABSENT,
        tcp_syn_sent: FIELD_ABSENT,
        tcp_close: FIELD_ABSENT,
        tcp_listen: FIELD_ABSENT,
        drop_no_socket: FIELD_ABSENT,
        drop_netfilter_drop: FIELD_ABSENT,
        drop_tcp_listen_overflow: FIELD_ABSENT,
        ipproto_tcp: FIELD_ABSENT,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Yes,
    Partly,
    No,
}

impl Seen {
    pub fn word(self) -> &'static str {
        match self {
            Seen::Yes => "seen",
            Seen::Partly => "partly",
            Seen::No => "not seen",
        }
    }
}

/// How well one cause of a 502 is seen with the available hooks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CauseVisibility {
    pub cause: Cause,
    pub seen: Seen,
    pub how: String,
}

// Registry keys (`HookSpec::key`) the rules below read; a test checks each is in the
// registry, and that each cause reads exactly the hooks the registry says prove it.
const SET_STATE: &str = "sock:inet_sock_set_state";
const RETRANSMIT: &str = "tcp:tcp_retransmit_skb";
const RECEIVE_RESET: &str = "tcp:tcp_receive_reset";
const SEND_RESET: &str = "tcp:tcp_send_reset";
const ICMP_SEND: &str = "icmp:icmp_send";
const KFREE_SKB: &str = "skb:kfree_skb";
const SIGNAL: &str = "signal:signal_generate";
/// When tracer attaches the syscall tracepoints (run/mod.rs `available_tracepoints`).
const SYSCALLS_ON_DEMAND: &str = "attached only when needed (an enabled syscall tracepoint slows every syscall on the host): with --unix, when no Nginx runs, or once an Nginx configures a unix: upstream; never with --port alone";

const CONNECT_ENTER: &str = "syscalls:sys_enter_connect";
const CONNECT_EXIT: &str = "syscalls:sys_exit_connect";
const FN_CONN_REQUEST: &str = "fn:tcp_conn_request";
const FN_ACCEPT: &str = "fn:inet_csk_accept";
const FN_UNIX_CONNECT: &str = "fn:unix_stream_connect";
const FN_UNIX_PEER: &str = "fn:unix_find_other";

/// The order of doctor's "what tracer will therefore see" rows.
const SHOWN: [Cause; 17] = [
    Cause::DeadListener,
    Cause::BacklogFull,
    Cause::FirewallDrop,
    Cause::FirewallReject,
    Cause::RemoteRefused,
    Cause::RefusedUnattributed,
    Cause::NoResponse,
    Cause::UnixMissing,
    Cause::UnixStale,
    Cause::UnixBacklogFull,
    Cause::UnixPermissionDenied,
    Cause::PortsExhausted,
    Cause::UpstreamKilled,
    Cause::UpstreamReset,
    Cause::UpstreamClosed,
    Cause::KeepaliveRace,
    Cause::UpstreamTimeout,
];

/// What this kernel's packet drops say, besides which hooks are usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropFacts {
    /// skb_drop_reason has TCP_LISTEN_OVERFLOW (6.15+).
    pub listen_overflow_reason: bool,
    /// skb:kfree_skb has no reasons (before 5.17): drops are known by the function that
    /// dropped them (drop sites from /proc/kallsyms).
    pub by_site: bool,
    /// The kernel can show this host refusing a connection (facts::local_refusals_visible).
    pub local_refusals_visible: bool,
}

/// Per cause: which evidence (KERNEL-NOTES.md) the available hooks give.
/// `available(key)` says whether a hook is usable (`cat:name`, or `fn:function`).
pub fn cause_visibility(available: &dyn Fn(&str) -> bool, drops: DropFacts) -> Vec<CauseVisibility> {
    SHOWN.iter().map(|&cause| visibility(cause, available, drops)).collect()
}

/// One cause's row: how well the hooks that prove it (hooks::proving) see it here.
fn visibility(cause: Cause, available: &dyn Fn(&str) -> bool, drops: DropFacts) -> CauseVisibility {
    let row = |seen, how: &str| CauseVisibility { cause, seen, how: how.to_string() };
    let listen_overflow_reason = drops.listen_overflow_reason;
    // How a netfilter drop shows: by its reason, or before 5.17 by where it happened.
    let netfilter_drop = if drops.by_site { "drops in nf_hook_slow" } else { "NETFILTER_DROP drops" };
    match cause {
        Cause::DeadListener => match (available(SET_STATE), available(SEND_RESET) || available(KFREE_SKB)) {
            (true, true) if drops.by_site => row(Seen::Yes, "refused attempts, and their SYNs dropped in tcp_v4_rcv/tcp_v6_rcv where this host reset them from no socket (no drop reasons before 5.17: the drop sites come from /proc/kallsyms)"),
            (true, true) => row(Seen::Yes, "refused attempts, and the RST this host sent because no socket listens"),
            (true, false) => row(Seen::Partly, "refused attempts only: not told from a firewall reject or the remote host, so a local refusal reads as refused_unattributed (needs skb:kfree_skb with drop reasons, 5.17+, or its drop sites in a readable /proc/kallsyms, or tcp:tcp_send_reset's resets from no socket, 6.10+)"),
            (false, true) => row(Seen::Partly, "RSTs from no socket, without the attempts they answer (needs sock:inet_sock_set_state)"),
            (false, false) => row(Seen::No, "needs sock:inet_sock_set_state and tcp:tcp_send_reset"),
        },
        Cause::BacklogFull => {
            let overflow = if listen_overflow_reason { "; drops with TCP_LISTEN_OVERFLOW" } else { "" };
            let syn_time = if available(FN_CONN_REQUEST) {
                "; SYN-time overflows seen directly in tcp_conn_request, with the queue and its owner"
            } else {
                ""
            };
            let waits = if available(FN_ACCEPT) { "; accept-queue wait times" } else { "" };
            if available(SET_STATE) && available(RETRANSMIT) {
                row(
                    Seen::Yes,
                    &format!("SYN retransmits with the listener's accept queue read in the kernel{overflow}{syn_time}{waits}; ListenOverflows counters"),
                )
            } else if !syn_time.is_empty() {
                row(Seen::Yes, &format!("{}{waits}; ListenOverflows counters", syn_time.trim_start_matches("; ")))
            } else {
                row(Seen::Partly, "only the ListenOverflows counters and queue snapshots from sock_diag (needs sock:inet_sock_set_state and tcp:tcp_retransmit_skb)")
            }
        }
        Cause::FirewallDrop => match (available(KFREE_SKB), available(RETRANSMIT)) {
            (true, true) => row(Seen::Yes, &format!("{netfilter_drop} of the SYN and its retransmits")),
            (true, false) => row(Seen::Partly, &format!("{netfilter_drop}, without the retransmitting attempt (needs tcp:tcp_retransmit_skb)")),
            (false, true) => row(Seen::Partly, "unanswered SYNs only: not told from a lost or overloaded peer (needs skb:kfree_skb)"),
            (false, false) => row(Seen::No, "needs skb:kfree_skb and tcp:tcp_retransmit_skb"),
        },
        Cause::FirewallReject => {
            let tcp_reset = available(KFREE_SKB) && available(RECEIVE_RESET);
            match (tcp_reset, available(ICMP_SEND)) {
                (true, true) => row(Seen::Yes, &format!("reject with tcp reset ({netfilter_drop} + RST received) and with icmp (ICMP sent)")),
                (true, false) => row(Seen::Partly, &format!("reject with tcp reset ({netfilter_drop} + RST received), and with icmp only by the refused attempt's error (needs icmp:icmp_send for the ICMP itself)")),
                (false, true) => row(Seen::Partly, "reject with icmp only (needs skb:kfree_skb and tcp:tcp_receive_reset for tcp reset)"),
                (false, false) => row(Seen::No, "needs skb:kfree_skb, tcp:tcp_receive_reset, icmp:icmp_send"),
            }
        }
        Cause::RemoteRefused => match (available(SET_STATE), available(RECEIVE_RESET)) {
            (true, _) if !drops.local_refusals_visible => row(Seen::Partly, "refused attempts, but this kernel cannot show a local refusal, so none is called remote: they read refused_unattributed"),
            (true, true) => row(Seen::Yes, "attempts closed with ECONNREFUSED after an RST from the peer"),
            (true, false) => row(Seen::Partly, "attempts closed with ECONNREFUSED, the RST itself not seen (needs tcp:tcp_receive_reset)"),
            (false, _) => row(Seen::No, "needs sock:inet_sock_set_state"),
        },
        Cause::RefusedUnattributed => match (available(SET_STATE), drops.local_refusals_visible) {
            (true, false) => row(Seen::Yes, "every refusal with no local evidence: this kernel has no drop reasons (5.17+), no readable drop sites and no resets from no socket (6.10+), so a dead listener, a firewall reject and a remote refusal all read as this"),
            (true, true) => row(Seen::Yes, "not given here: this kernel shows local refusals, so each refusal gets its own cause"),
            (false, _) => row(Seen::No, "needs sock:inet_sock_set_state"),
        },
        Cause::NoResponse => match (available(SET_STATE), available(RETRANSMIT)) {
            (true, true) => row(Seen::Yes, "attempts that time out after SYN retransmits with no drop, reset or ICMP on this host"),
            (true, false) => row(Seen::Partly, "attempts that time out, without their retransmits (needs tcp:tcp_retransmit_skb)"),
            (false, _) => row(Seen::No, "needs sock:inet_sock_set_state"),
        },
        Cause::PortsExhausted => match available(SET_STATE) {
            true => row(Seen::Yes, "connects that found no free local port (EADDRNOTAVAIL), with the port range and the sockets holding it"),
            false => row(Seen::No, "needs sock:inet_sock_set_state"),
        },
        Cause::UpstreamKilled => match (available(SET_STATE), available(SIGNAL)) {
            (true, true) => row(Seen::Yes, "the upstream's socket closed by its dying process, with the exit code, the signal and its sender"),
            (true, false) => row(Seen::Partly, "the upstream's socket closed by its dying process, with the exit code; not who sent the signal (needs signal:signal_generate)"),
            (false, _) => row(Seen::No, "needs sock:inet_sock_set_state"),
        },
        Cause::UpstreamReset | Cause::UpstreamClosed | Cause::KeepaliveRace | Cause::UpstreamTimeout => {
            let how = match cause {
                Cause::UpstreamReset => "connections reset by a live upstream, with the bytes each side had sent",
                Cause::UpstreamClosed => "connections the upstream closed (FIN) before a response byte",
                Cause::KeepaliveRace => "kept-alive connections Nginx wrote on after the upstream's idle close, with the idle time",
                _ => "connections Nginx closed with no response byte, and the upstream process holding the other end",
            };
            match available(SET_STATE) {
                true => row(Seen::Yes, how),
                false => row(Seen::No, "needs sock:inet_sock_set_state"),
            }
        }
        Cause::UnixMissing | Cause::UnixStale | Cause::UnixBacklogFull | Cause::UnixPermissionDenied => {
            let unix = (available(CONNECT_ENTER) && available(CONNECT_EXIT)) || available(FN_UNIX_CONNECT);
            if !unix {
                return row(Seen::No, "needs syscalls:sys_enter_connect and syscalls:sys_exit_connect");
            }
            let errno = match cause {
                Cause::UnixMissing => "ENOENT: the socket path does not exist",
                Cause::UnixStale => "ECONNREFUSED: a stale socket file, nobody listening",
                Cause::UnixBacklogFull => "EAGAIN: the listener's queue is full",
                _ => "EACCES/EPERM: the caller may not use the socket file",
            };
            let extra = if cause == Cause::UnixBacklogFull && available(FN_UNIX_PEER) { "; the listener's queue read in the kernel" } else { "" };
            row(Seen::Yes, &format!("connect() failing with {errno}{extra}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::hooks;

    #[test]
    fn everything_available_sees_every_cause() {
        let rows = cause_visibility(&|_| true, DropFacts { listen_overflow_reason: true, by_site: false, local_refusals_visible: true });
        assert_eq!(rows.len(), Cause::ALL.len());
        assert!(rows.iter().all(|r| r.seen == Seen::Yes), "{rows:?}");
        assert!(rows[1].how.contains("TCP_LISTEN_OVERFLOW"));
        assert!(rows[1].how.contains("tcp_conn_request"));
    }

    #[test]
    fn function_hooks_alone_see_backlogs_and_unix_errors() {
        let rows = cause_visibility(&|name| name.starts_with("fn:"), NO_DROPS);
        let get = |cause: Cause| rows.iter().find(|r| r.cause == cause).unwrap().clone();
        assert_eq!(get(Cause::BacklogFull).seen, Seen::Yes, "{rows:?}");
        assert!(get(Cause::BacklogFull).how.contains("tcp_conn_request"));
        assert_eq!(get(Cause::UnixMissing).seen, Seen::Yes);
        assert!(get(Cause::UnixBacklogFull).how.contains("queue read in the kernel"));
        // Without any tracepoint, a dead listener is still not seen.
        assert_eq!(get(Cause::DeadListener).seen, Seen::No);
    }

    #[test]
    fn missing_tracepoints_degrade_causes() {
        let rows = cause_visibility(&|name| name == SET_STATE, NO_DROPS);
        let seen = |cause: Cause| rows.iter().find(|r| r.cause == cause).unwrap().seen;
        assert_eq!(seen(Cause::RefusedUnattributed), Seen::Yes);
        assert!(rows[0].how.contains("refused_unattributed"), "{:?}", rows[0]);
        assert_eq!(seen(Cause::DeadListener), Seen::Partly);
        assert_eq!(seen(Cause::BacklogFull), Seen::Partly);
        assert_eq!(seen(Cause::FirewallDrop), Seen::No);
        assert_eq!(seen(Cause::FirewallReject), Seen::No);
        assert_eq!(seen(Cause::RemoteRefused), Seen::Partly);
        assert!(rows.iter().find(|r| r.cause == Cause::RemoteRefused).unwrap().how.contains("refused_unattributed"));
        assert_eq!(seen(Cause::UnixMissing), Seen::No);
        assert_eq!(seen(Cause::UnixStale), Seen::No);
        assert_eq!(seen(Cause::NoResponse), Seen::Partly);
    }

    const NO_DROPS: DropFacts = DropFacts { listen_overflow_reason: false, by_site: false, local_refusals_visible: false };

    #[test]
    fn before_5_17_drops_are_named_by_their_site() {
        // 5.10: kfree_skb by drop site, no icmp_send, no resets from no socket.
        let drops = DropFacts { listen_overflow_reason: false, by_site: true, local_refusals_visible: true };
        let rows = cause_visibility(&|name| name != ICMP_SEND && name != SEND_RESET, drops);
        let get = |cause: Cause| rows.iter().find(|r| r.cause == cause).unwrap().clone();
        assert_eq!(get(Cause::DeadListener).seen, Seen::Yes);
        assert!(get(Cause::DeadListener).how.contains("tcp_v4_rcv"));
        assert!(get(Cause::FirewallDrop).how.starts_with("drops in nf_hook_slow"));
        assert_eq!(get(Cause::FirewallReject).seen, Seen::Partly);
        assert!(get(Cause::RefusedUnattributed).how.starts_with("not given here"));
    }

    /// The rules read exactly the hooks the registry says prove each cause: a hook added to
    /// the registry for a cause, or a rule reading a hook the registry does not list for it,
    /// fails here.
    #[test]
    fn each_cause_reads_the_hooks_the_registry_says_prove_it() {
        for cause in Cause::ALL {
            let asked = std::cell::RefCell::new(std::collections::BTreeSet::new());
            for answer in [true, false] {
                let record = |key: &str| {
                    asked.borrow_mut().insert(key.to_string());
                    answer
                };
                visibility(cause, &record, DropFacts { listen_overflow_reason: true, by_site: false, local_refusals_visible: answer });
            }
            let proving: std::collections::BTreeSet<String> = hooks::proving(cause).into_iter().collect();
            assert_eq!(asked.into_inner(), proving, "{cause:?}");
        }
        let shown: std::collections::BTreeSet<Cause> = SHOWN.into_iter().collect();
        assert_eq!(shown.len(), Cause::ALL.len());
    }

    /// Runs the whole report on this machine; it must not fail, and names every section.
    #[test]
    fn report_on_this_machine() {
        if !nix::unistd::geteuid().is_root() {
            note!("skipped: doctor may need to mount tracefs, which needs root");
            return;
        }
        let mut out = Vec::new();
        // The real probe loads the eBPF object (capture, above this module; the integration
        // suite runs it through `tracer doctor`): here none loads.
        let can_run = doctor_report(&mut out, &|_, _| Ok(Vec::new())).unwrap();
        let text = String::from_utf8(out).unwrap();
        println!("{text}");
        for section in [
            "kernel:",
            "BTF:",
            "tracefs:",
            "privileges:",
            "tracepoints:",
            "kprobes:",
            "fentry:",
            "backend:",
            "what tracer will therefore see:",
        ] {
            assert!(text.contains(section), "missing {section}");
        }
        if std::path::Path::new(VMLINUX_BTF).exists() {
            assert!(can_run, "{text}");
        }
    }
}
