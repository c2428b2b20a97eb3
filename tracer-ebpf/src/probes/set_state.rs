//! sock:inet_sock_set_state: the life of TCP connection attempts and listeners.
//!
//! CLOSE->SYN_SENT happens inside connect() (process context): the owner is recorded here, so
//! failures that arrive later in softirq context are attributed to it, not to whatever task
//! the softirq interrupted.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use aya_log_ebpf::debug;
use tracer_common::{
    transition, AttemptEvent, EventKind, Flow, ListenerKey, ListenerState, QueuedChild, TcpEvent, RST_FROM_NO_SOCKET_HERE,
    TCP_STATE_SLOTS,
};

use crate::{
    attempts, repeats,
    maps::{bump, config, emit_with, CONN_END, LISTENERS, QUEUED},
    read::{current_task, kernel, netns_of, StateChange},
};

/// The classic tracepoint: fields from its record (tracefs formats).
#[tracepoint]
pub fn tracer_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_set_state(&ctx);
    0
}

/// The raw tracepoint: the same work from (sk, oldstate, newstate) and the socket's members
/// (BTF), without a helper call per field. Preferred where BTF has those members.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn tracer_set_state_raw(ctx: RawTracePointContext) -> i32 {
    let _ = try_set_state(&ctx);
    0
}

/// The BTF tracepoint: as the raw one, and the socket's members loaded through its typed
/// pointer (read::TRACER_BTF_OFFSETS), not read by a helper call each. Preferred where it loads.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tracer_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    let _ = try_set_state(&ctx);
    0
}

#[inline(always)]
fn try_set_state<C: StateChange>(ctx: &C) -> Option<()> {
    let cfg = config()?;
    let (old, new) = ctx.states(cfg)?;
    // One load decides (Config::transition_action has the rules): most state changes, the
    // handshakes and closes of healthy connections, are none of ours and leave here.
    // Masked, so that the verifier sees the slot inside the table; a state past the table
    // (none exists: userspace checked the states it uses) is turned away after the load,
    // where the compiler cannot use the test to drop the masks.
    let slot = (old as usize & (TCP_STATE_SLOTS - 1)) * TCP_STATE_SLOTS + (new as usize & (TCP_STATE_SLOTS - 1));
    let action = *cfg.transitions.get(slot)?;
    if action == transition::NONE || (old | new) as usize >= TCP_STATE_SLOTS {
        return None;
    }
    let e = &cfg.enums;
    if action == transition::PEER_FIN || action == transition::LOCAL_FIN {
        // A healthy end (bytes came back; or bytes went both ways before this side closed)
        // stops here, after a read or two: only the ends that may be failures pay for the
        // after-connect program (probes/conn_end.rs, a program of its own that checks again
        // and reads the rest).
        //
        // Every record made at connect is let go here or in conn_end, at the connection's first
        // close (FIN_WAIT1, or a reset), or at LAST_ACK after the upstream closed first (the
        // record stays through CLOSE_WAIT: a reset there is a keep-alive race, charged to it).
        let sk = ctx.sock(cfg)?;
        let received = ctx.tcp_bytes(cfg, sk, true)?;
        if action == transition::PEER_FIN {
            // The FIN's own sequence number is counted: more than 1 is data.
            if received > 1 {
                return None;
            }
        } else if received != 0 && ctx.tcp_bytes(cfg, sk, false)? != 0 {
            attempts::forget(cfg, sk);
            return None;
        }
    }
    if action == transition::LAST_ACK {
        attempts::forget(cfg, ctx.sock(cfg)?);
        return None;
    }
    if matches!(action, transition::PEER_FIN | transition::LOCAL_FIN | transition::RESET) {
        unsafe { CONN_END.tail_call(ctx, 0) };
        // Only a failed tail call returns here: the record must still go when the
        // connection is over (it stays through CLOSE_WAIT).
        if action != transition::PEER_FIN {
            attempts::forget(cfg, ctx.sock(cfg)?);
        }
        return None;
    }
    let sk = ctx.sock(cfg)?;
    // The protocol is read only where something is reported: a connect of another protocol
    // that takes TCP's states (MPTCP's own socket) is recorded like a TCP one, costs a
    // record until it ends, and is never reported.
    let tcp = || ctx.protocol(cfg, sk).is_some_and(|p| p as u32 == e.ipproto_tcp);

    if action == transition::CONNECT {
        // (With tcp_connect hooked, its program records the owner instead: no CONNECT then.)
        // The namespace is read when something is reported (the socket is at hand then):
        // two reads fewer on every healthy connect.
        attempts::track(cfg, sk, ctx.current_task(), unsafe { bpf_ktime_get_ns() });
        return Some(());
    }

    if action == transition::SYN_SENT_LEFT {
        // Only attempts that started while tracing are known; the rest are not ours to judge.
        let (tag, entry) = attempts::find_way(cfg, sk)?;
        let attempt = unsafe { *entry };
        if new == e.tcp_established && cfg.conn.enabled != 0 {
            // Kept until the connection ends (every end removes it), so that an abnormal end
            // is charged to its owner. The connect's start is what the findings measure from;
            // this only marks the entry as a connection (a clock read per connection saved).
            unsafe { (*entry).established_ns = attempt.start_ns | 1 };
        } else {
            attempts::release(tag);
        }
        let kind = if new == e.tcp_close {
            EventKind::TcpAttemptFailed
        } else if new == e.tcp_established && attempt.syn_retransmits > 0 {
            EventKind::TcpAttemptDelayed
        } else {
            // Connected at the first try: healthy traffic, nothing to report.
            return None;
        };
        if !tcp() {
            return None;
        }
        let (flow, netns) = ctx.flow_and_netns(cfg, sk);
        // Refused by this host's stack (nothing listens): the reset it sent waits on this CPU.
        // It was sent just before, on this CPU: its time stands for the close's (a clock read
        // fewer per refused connect).
        let mut rst_received = attempt.rst_received;
        let mut reset_reason = 0;
        let mut now = 0;
        if rst_received != 0 && kind == EventKind::TcpAttemptFailed {
            if let Some((reason, ts_ns)) = super::send_reset::claim(&flow) {
                rst_received = RST_FROM_NO_SOCKET_HERE;
                reset_reason = reason;
                now = ts_ns;
            }
        }
        if now == 0 {
            now = unsafe { bpf_ktime_get_ns() };
        }
        // The socket error is not in the key: an attempt that takes a reset in SYN_SENT
        // always closes with ECONNREFUSED (tcp_reset), so it is read only when sent.
        let refusal = repeats::Refusal { netns, flow: &flow, owner: &attempt.owner, syn_retransmits: attempt.syn_retransmits, reset_reason };
        // Proved refused here: identical ones are counted, not sent (repeats.rs).
        let (slot, repeat_class, repeats_before) = match rst_received == RST_FROM_NO_SOCKET_HERE && cfg.repeat_window_ns != 0 {
            true => match repeats::count(cfg, &refusal, now) {
                repeats::Next::Counted => return Some(()),
                repeats::Next::Send { slot, class, repeats_before } => (slot, class, repeats_before),
            },
            false => (core::ptr::null_mut(), 0, 0),
        };
        if rst_received == RST_FROM_NO_SOCKET_HERE {
            // Reported, inside this record: counted with the resets sent.
            bump(EventKind::TcpRstSentNoSocket as u32);
        }
        let sk_err: i32 = if kind == EventKind::TcpAttemptFailed { kernel(sk, cfg.offsets.sock_sk_err).unwrap_or(0) } else { 0 };
        if cfg.debug != 0 {
            debug!(ctx, "attempt left SYN_SENT: sk={:x} new={} sk_err={} retransmits={}", sk, new, sk_err, attempt.syn_retransmits);
        }
        let sent = emit_with(kind as u32, |ev: &mut AttemptEvent| {
            ev.header.kind = kind as u32;
            ev.header.netns = netns;
            ev.header.ts_ns = now;
            ev.header.sock = sk;
            ev.header.task = attempt.owner;
            ev.flow = flow;
            ev.sk_err = sk_err;
            ev.syn_retransmits = attempt.syn_retransmits;
            ev.rst_received = rst_received;
            ev.reason = reset_reason;
            ev.start_ns = attempt.start_ns;
            ev.repeat_class = repeat_class;
            ev.repeats_before = repeats_before;
            // No `actor`: nothing reads it for attempts, and it costs three helper calls.
        });
        repeats::sent(slot, repeat_class, &refusal, now, sent);
        return Some(());
    }

    if action == transition::QUEUED {
        // A child joined a listener's accept queue; inet_csk_accept's hook measures its wait.
        let local = ctx.flow(cfg, sk);
        let flow = Flow { family: local.family, sport: local.dport, dport: local.sport, _pad: 0, saddr: local.daddr, daddr: local.saddr };
        let child = QueuedChild { start_ns: unsafe { bpf_ktime_get_ns() }, netns: netns_of(cfg, sk), _pad: 0, flow };
        let _ = QUEUED.insert(&sk, &child, 0);
        return Some(());
    }

    // A child socket is cloned from its listener and leaves the inherited LISTEN state for
    // SYN_RECV: that is a connection being accepted, not the listener closing. Only
    // CLOSE->LISTEN (listen()) and LISTEN->CLOSE (close/exit) are the listener's life.
    if (action == transition::LISTEN_START || action == transition::LISTEN_STOP) && tcp() {
        let (flow, netns) = ctx.flow_and_netns(cfg, sk);
        let key = ListenerKey { netns, port: flow.sport, family: flow.family };
        let now = unsafe { bpf_ktime_get_ns() };
        let (kind, owner, start_ns) = if action == transition::LISTEN_START {
            // listen() runs in process context: current is the owner.
            let owner = current_task();
            let _ = LISTENERS.insert(&key, &ListenerState { sock: sk, owner, start_ns: now }, 0);
            // Its death, signals and OOM kill are part of the listener's story.
            super::lifecycle::watch_pid(owner.pid);
            (EventKind::TcpListenStart, owner, now)
        } else {
            let known = unsafe { LISTENERS.get(&key) }.copied();
            match known {
                Some(l) if l.sock == sk => {
                    let _ = LISTENERS.remove(&key);
                    (EventKind::TcpListenStop, l.owner, l.start_ns)
                }
                // A listener from before tracing: the closer is the best owner guess we have.
                _ => (EventKind::TcpListenStop, current_task(), 0),
            }
        };
        emit_with(kind as u32, |ev: &mut TcpEvent| {
            ev.header.kind = kind as u32;
            ev.header.netns = netns;
            ev.header.ts_ns = now;
            ev.header.sock = sk;
            ev.header.task = owner;
            ev.flow = flow;
            ev.start_ns = start_ns;
            ev.actor = current_task();
            // listen() stored the backlog before entering LISTEN: the queue's maximum.
            if let Some(max) = kernel::<u32>(sk, cfg.offsets.sock_sk_max_ack_backlog) {
                ev.queue_max = max;
                ev.queue_known = 1;
            }
        });
    }
    Some(())
}
