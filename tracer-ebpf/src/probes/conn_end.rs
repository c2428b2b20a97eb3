//! After the connect, on sock:inet_sock_set_state: an established connection that ends
//! without a response. Each side of a healthy connection leaves ESTABLISHED once, with bytes
//! counted both ways, so healthy traffic costs two reads of the socket's byte counters here
//! and sends nothing. Sent:
//! - ESTABLISHED -> CLOSE_WAIT with nothing received, on a connection tracer saw connect
//!   (Nginx's socket): the upstream's FIN came before any response byte;
//! - ESTABLISHED -> FIN_WAIT1 with nothing sent or nothing received: this side closed first
//!   (the upstream before answering, or Nginx giving up), in process context, so the closer,
//!   its exit code (it may be dying) and the last fatal signal sent to it are read here;
//! - ESTABLISHED or CLOSE_WAIT -> CLOSE: a reset, received (sk_err set) or sent by a local
//!   close with unread data / SO_LINGER 0 (sk_err 0, the closer is current).
//!
//! A program of its own, tail-called by set_state (`CONN_END`) for these transitions only: the
//! verifier checks it apart from set_state, which older verifiers (6.1's) could not do for
//! the two together in reasonable time.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, generated::bpf_jiffies64},
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use tracer_common::{AttemptState, ConnEndEvent, EventKind, CONN_LOCAL_FIN, CONN_PEER_FIN, CONN_RESET};

use crate::{
    attempts,
    maps::{config, emit_with, SIGNALS},
    read::{current_task, kernel, StateChange},
};

/// Tail-called by `tracer_set_state` (the classic tracepoint).
#[tracepoint]
pub fn tracer_conn_end(ctx: TracePointContext) -> u32 {
    let _ = try_conn_end(&ctx);
    0
}

/// Tail-called by `tracer_set_state_raw` (a tail call keeps the program type).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn tracer_conn_end_raw(ctx: RawTracePointContext) -> i32 {
    let _ = try_conn_end(&ctx);
    0
}

/// Tail-called by `tracer_set_state_btf`.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tracer_conn_end_btf(ctx: BtfTracePointContext) -> i32 {
    let _ = try_conn_end(&ctx);
    0
}

/// Runs for every transition out of ESTABLISHED and for CLOSE_WAIT -> CLOSE of a TCP socket
/// (set_state has checked both before the tail call).
#[inline(always)]
fn try_conn_end<C: StateChange>(ctx: &C) -> Option<()> {
    let cfg = config()?;
    let (old, new) = ctx.states(cfg)?;
    let sk = ctx.sock(cfg)?;
    let protocol = ctx.protocol(cfg, sk)?;
    if protocol as u32 != cfg.enums.ipproto_tcp {
        return None;
    }
    let c = &cfg.conn;
    let e = &cfg.enums;
    let established = old == e.tcp_established;
    let (how, sent, received) = if established && new == c.tcp_close_wait {
        // The FIN takes one sequence number, which bytes_received counts: 1 is no data.
        let received: u64 = kernel(sk, c.tcp_bytes_received)?;
        if received > 1 {
            return None;
        }
        (CONN_PEER_FIN, kernel(sk, c.tcp_bytes_sent).unwrap_or(0), 0)
    } else if established && new == c.tcp_fin_wait1 {
        let sent: u64 = kernel(sk, c.tcp_bytes_sent).unwrap_or(0);
        let received: u64 = kernel(sk, c.tcp_bytes_received).unwrap_or(0);
        if sent != 0 && received != 0 {
            attempts::forget(cfg, sk);
            return None;
        }
        (CONN_LOCAL_FIN, sent, received)
    } else if new == e.tcp_close && (established || old == c.tcp_close_wait) {
        let received = kernel::<u64>(sk, c.tcp_bytes_received).unwrap_or(0);
        // After the peer's FIN, one of the bytes counted is that FIN.
        let received = if old == c.tcp_close_wait { received.saturating_sub(1) } else { received };
        (CONN_RESET, kernel(sk, c.tcp_bytes_sent).unwrap_or(0), received)
    } else {
        return None;
    };

    // Nginx's side: a connection tracer saw connect. The ports tell it from a later socket
    // that reuses the same address.
    // Every connection's record is removed when it ends (here and in set_state), so a record
    // marked established belongs to this connection, not to an earlier user of the address.
    let found = attempts::find_way(cfg, sk);
    let attempt: Option<AttemptState> = found.map(|(_, a)| unsafe { *a }).filter(|a| a.established_ns != 0);
    if how == CONN_PEER_FIN && attempt.is_none() {
        // A client that connected to a server here and left without a word: not ours.
        return None;
    }
    if how != CONN_PEER_FIN {
        // Nothing more will be asked of this connection: its record goes (the table is
        // emptied only by these removes).
        if let Some((tag, _)) = found {
            attempts::release(tag);
        }
    }
    let sk_err: i32 = kernel(sk, cfg.offsets.sock_sk_err).unwrap_or(0);
    // A local close or abort runs in the closer's process context; a reset received does not.
    let local = how == CONN_LOCAL_FIN || (how == CONN_RESET && sk_err == 0);
    let now = unsafe { bpf_ktime_get_ns() };
    let (flow, netns) = ctx.flow_and_netns(cfg, sk);
    emit_with(EventKind::TcpConnEnded as u32, |ev: &mut ConnEndEvent| {
        ev.header.kind = EventKind::TcpConnEnded as u32;
        ev.header.netns = netns;
        ev.header.ts_ns = now;
        ev.header.sock = sk;
        ev.flow = flow;
        ev.how = how;
        ev.after_fin = (old == c.tcp_close_wait) as u32;
        ev.sk_err = sk_err;
        ev.bytes_sent = sent;
        ev.bytes_received = received;
        ev.jiffies = unsafe { bpf_jiffies64() };
        ev.rcv_tstamp = kernel(sk, c.tcp_rcv_tstamp).unwrap_or(0);
        ev.lrcvtime = kernel(sk, c.icsk_lrcvtime).unwrap_or(0);
        if let Some(a) = attempt {
            ev.client_side = 1;
            ev.header.task = a.owner;
            ev.start_ns = a.start_ns;
            ev.established_ns = a.established_ns;
        }
        if local {
            let actor = current_task();
            if attempt.is_none() {
                ev.header.task = actor;
            }
            ev.actor = actor;
            let task = unsafe { bpf_get_current_task() };
            ev.exit_code = kernel(task, cfg.lifecycle.task_exit_code).unwrap_or(0);
            let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
            if let Some(m) = unsafe { SIGNALS.get(&tgid) } {
                ev.signal = m.signal;
                ev.signal_ts_ns = m.ts_ns;
                ev.signal_oom = m.oom;
                ev.sender = m.sender;
            }
            if how == CONN_RESET {
                let rcv_nxt: u32 = kernel(sk, c.tcp_rcv_nxt).unwrap_or(0);
                let copied: u32 = kernel(sk, c.tcp_copied_seq).unwrap_or(rcv_nxt);
                ev.unread_bytes = rcv_nxt.wrapping_sub(copied);
            }
        }
    });
    Some(())
}
