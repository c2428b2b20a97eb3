//! After the connect: upstream connections that existed and ended without a response, and
//! connects that found no local port. Nginx's side of a connection (the socket tracer saw
//! connect, owned by the worker) says how it ended; the upstream's side, when this host has
//! it, says who closed it and whether that process was dying. The two are joined by the flow,
//! after a grace period for the other CPU's record, and concluded through
//! `rules::classify_after_connect`.

use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::event::{ConnEnd, Event, EventBody, FlowAddr, TaskInfo, Target};

use super::aggregation::AfterConnect;
use super::attempt::{AttemptKey, FlowEvidenceKind, FlowKey};
use super::buffer::KeyedBuffer;
use super::engine::Engine;
use super::evidence::{Evidence, EvidenceCounts};
use super::output::{AttemptRecord, ConnectionFacts, Death, DeathHow, Outcome, PortsFacts, ProcessRef};
use super::rules::{classify_after_connect, Cause, ConnFacts};
use super::timeline::signal_name;
use super::Map;

/// How long Nginx's side waits for the upstream's side and for tracer's measurements (the
/// holder of a connection Nginx gave up on, the ports in use) before it is concluded.
const AFTER_GRACE_NS: u64 = 1_000_000_000;
/// A fatal signal this long before a process closes a socket is why it closes it.
const SIGNAL_BEFORE_CLOSE_NS: u64 = 30_000_000_000;
/// Process names of Nginx workers (the read timeouts are Nginx's: another client's close
/// keeps today's verdict).
const NGINX_COMMS: &[&str] = &["nginx", "openresty"];
/// Slack for Nginx's timers: re-arming a timer that would move by less than 300 ms keeps
/// the old one (NGX_TIMER_LAZY_DELAY), so a read timeout can fire up to 300 ms early. A close
/// before 90% of the timeout minus this cannot be the timeout.
const READ_TIMEOUT_SLACK_MS: u64 = 300;

/// Nginx's side of one connection (or one connect without a port), waiting to conclude.
#[derive(Clone, Debug)]
struct NginxSide {
    first_ns: u64,
    last_ns: u64,
    netns: u32,
    sock: u64,
    client: TaskInfo,
    flow: FlowAddr,
    start_ns: u64,
    facts: ConnFacts,
    sk_err: i32,
    sent: u64,
    received: u64,
    idle_before_fin_ns: Option<u64>,
}

/// The upstream's side of a connection as its closer left it.
#[derive(Clone, Debug)]
struct UpstreamSide {
    ts_ns: u64,
    closer: Option<TaskInfo>,
    end: ConnEnd,
    exit_code: i32,
    signal: Option<crate::event::FatalSignal>,
    sent: u64,
    received: u64,
    unread_bytes: u32,
}

pub(super) struct AfterState {
    /// Nginx's sides by (socket, connect time), in arrival order.
    nginx: Map<(u64, u64), NginxSide>,
    order: VecDeque<(u64, u64)>,
    /// Upstream sides by the flow as Nginx sees it, oldest evicted first.
    upstream: KeyedBuffer<FlowAddr, UpstreamSide>,
    /// Holders of connections Nginx gave up on, by Nginx's flow: (holder, state, in queue).
    holders: Map<FlowAddr, (TaskInfo, Option<String>, bool)>,
    /// Ports in use per (netns, target), latest measurement.
    ports: Map<(u32, SocketAddr), PortsFacts>,
}

impl AfterState {
    pub(super) fn new(max: usize) -> AfterState {
        AfterState {
            nginx: Map::default(),
            order: VecDeque::new(),
            upstream: KeyedBuffer::new(max),
            holders: Map::default(),
            ports: Map::default(),
        }
    }
}

impl Engine {
    pub(super) fn after_connect_event(&mut self, ev: &Event) {
        let max = self.opts.max_tracked;
        match &ev.body {
            EventBody::TcpAttemptFailed { flow, start_ns, .. } => {
                let facts = ConnFacts { no_local_port: true, ..ConnFacts::default() };
                self.keep_nginx_side(ev, *flow, (*start_ns).max(1), facts, 0, 0, 0, None);
            }
            EventBody::TcpConnEnded { flow, end, client_side: true, after_fin, sk_err, bytes_sent, bytes_received, start_ns, idle_before_fin_ns, .. } => {
                let facts = ConnFacts {
                    fin_before_response: *end == ConnEnd::PeerFin,
                    reset: *end == ConnEnd::Reset && *sk_err != 0 && !*after_fin,
                    reset_after_fin: *end == ConnEnd::Reset && *sk_err != 0 && *after_fin,
                    nginx_closed: *end == ConnEnd::LocalFin,
                    nginx_received: *bytes_received,
                    nginx_sent: *bytes_sent,
                    ..ConnFacts::default()
                };
                self.keep_nginx_side(ev, *flow, *start_ns, facts, *sk_err, *bytes_sent, *bytes_received, *idle_before_fin_ns);
            }
            EventBody::TcpConnEnded { flow, end, closer, exit_code, signal, bytes_sent, bytes_received, unread_bytes, .. } => {
                let side = UpstreamSide {
                    ts_ns: ev.ts_ns,
                    closer: closer.clone(),
                    end: *end,
                    exit_code: *exit_code,
                    signal: signal.clone(),
                    sent: *bytes_sent,
                    received: *bytes_received,
                    unread_bytes: *unread_bytes,
                };
                self.after.upstream.push(flow.reversed(), side);
            }
            EventBody::ConnHolder { flow, state, in_queue } => {
                if self.after.holders.len() >= max {
                    self.after.holders.clear();
                }
                self.after.holders.insert(*flow, (ev.task.clone(), state.clone(), *in_queue));
            }
            EventBody::PortsInUse { target, range, by_state } => {
                if self.after.ports.len() >= max {
                    self.after.ports.clear();
                }
                let facts = PortsFacts { range: [range.0, range.1], held: by_state.clone() };
                self.after.ports.insert((ev.netns, *target), facts);
            }
            _ => {}
        }
    }

    /// Keeps Nginx's side of a connection; a later record of the same connection (the FIN,
    /// then the reset after it) adds to the same facts.
    #[allow(clippy::too_many_arguments)]
    fn keep_nginx_side(
        &mut self,
        ev: &Event,
        flow: FlowAddr,
        start_ns: u64,
        facts: ConnFacts,
        sk_err: i32,
        sent: u64,
        received: u64,
        idle_before_fin_ns: Option<u64>,
    ) {
        let key = (ev.sock, start_ns);
        if let Some(n) = self.after.nginx.get_mut(&key) {
            let f = &mut n.facts;
            f.fin_before_response |= facts.fin_before_response;
            f.reset |= facts.reset;
            f.reset_after_fin |= facts.reset_after_fin;
            f.nginx_closed |= facts.nginx_closed;
            f.nginx_received = f.nginx_received.max(facts.nginx_received);
            f.nginx_sent = f.nginx_sent.max(facts.nginx_sent);
            n.last_ns = ev.ts_ns;
            n.sk_err = if sk_err != 0 { sk_err } else { n.sk_err };
            n.sent = n.sent.max(sent);
            n.received = n.received.max(received);
            n.idle_before_fin_ns = idle_before_fin_ns.or(n.idle_before_fin_ns);
            return;
        }
        if self.after.order.len() >= self.opts.max_tracked {
            if let Some(old) = self.after.order.pop_front() {
                self.after.nginx.remove(&old);
            }
        }
        self.after.order.push_back(key);
        self.after.nginx.insert(
            key,
            NginxSide {
                first_ns: ev.ts_ns,
                last_ns: ev.ts_ns,
                netns: ev.netns,
                sock: ev.sock,
                client: ev.task.clone(),
                flow,
                start_ns: if start_ns > 1 { start_ns } else { ev.ts_ns },
                facts,
                sk_err,
                sent,
                received,
                idle_before_fin_ns,
            },
        );
    }

    /// Concludes Nginx's sides older than the grace period (all of them with `now_ns` =
    /// u64::MAX).
    pub(super) fn conclude_after_connect(&mut self, now_ns: u64) {
        while let Some(key) = self.after.order.front().copied() {
            let due = match self.after.nginx.get(&key) {
                Some(n) => n.last_ns.saturating_add(AFTER_GRACE_NS) < now_ns,
                None => true,
            };
            if !due {
                break;
            }
            self.after.order.pop_front();
            if let Some(n) = self.after.nginx.remove(&key) {
                self.conclude_connection(n);
            }
        }
    }

    fn conclude_connection(&mut self, n: NginxSide) {
        // A connect the attempt rules already concluded (it connected late, after SYN
        // retransmits at a full queue) is explained by that finding, whatever came after.
        if self.recently_concluded_set.get(&AttemptKey::new(n.sock, &n.flow)) == Some(&n.start_ns) {
            return;
        }
        // The latest upstream side of this flow since the connect (a flow's ports come back).
        let upstream = self
            .after
            .upstream
            .get(&n.flow)
            .rev()
            .map(|(_, u)| u)
            .find(|u| u.ts_ns + AFTER_GRACE_NS >= n.start_ns)
            .cloned();
        let mut facts = n.facts;
        let death = upstream.as_ref().and_then(death_of);
        facts.upstream_died = death.is_some();
        facts.handshake_overflow = self.flow_buffer.get(&FlowKey::of(&n.flow)).any(|(_, e)| {
            e.ts_ns + AFTER_GRACE_NS >= n.start_ns
                && matches!(&e.kind, FlowEvidenceKind::Dropped { reason } if &**reason == "TCP_LISTEN_OVERFLOW")
        });
        let holder = self.after.holders.get(&n.flow).cloned();
        facts.never_accepted = matches!(holder, Some((_, _, true)));
        facts.closed_before_read_timeout = self.closed_before_read_timeout(&n);
        let Some(cause) = classify_after_connect(&facts) else { return };
        let upstream_process = match (&upstream, &holder) {
            (Some(UpstreamSide { closer: Some(c), .. }), _) => Some(ProcessRef::of(c)),
            (_, Some((h, _, false))) if h.pid != 0 => Some(ProcessRef::of(h)),
            _ => None,
        };
        let end_ns = match (&upstream, cause) {
            (Some(u), Cause::UpstreamKilled | Cause::UpstreamReset | Cause::UpstreamClosed) => u.ts_ns.min(n.first_ns),
            _ => n.first_ns,
        };
        let connection = ConnectionFacts {
            after_ms: end_ns.saturating_sub(n.start_ns) / 1_000_000,
            idle_ms: (cause == Cause::KeepaliveRace).then_some(n.idle_before_fin_ns.map(|ns| ns / 1_000_000)).flatten(),
            nginx_sent: n.sent,
            nginx_received: n.received,
            upstream_sent: upstream.as_ref().map(|u| u.sent),
            upstream_received: upstream.as_ref().map(|u| u.received),
            reset_reason: (cause == Cause::UpstreamReset).then(|| reset_reason(upstream.as_ref())),
            upstream_state: match &holder {
                Some((_, _, true)) => Some("in accept queue".to_string()),
                Some((_, state, false)) => state.clone(),
                None => None,
            }
            .filter(|_| cause == Cause::UpstreamTimeout),
        };
        let target = Target::Tcp(n.flow.dst);
        let ports = (cause == Cause::PortsExhausted).then(|| self.after.ports.get(&(n.netns, n.flow.dst)).cloned()).flatten();
        let record = AttemptRecord {
            ts_ns: n.first_ns,
            start_ns: n.start_ns,
            cause,
            target: target.clone(),
            netns: n.netns,
            sock: n.sock,
            client: n.client.clone(),
            evidence: evidence_of(&facts, upstream.as_ref(), death.as_ref()),
            outcome: Outcome::Failed,
            errno: if cause == Cause::PortsExhausted { 99 } else { n.sk_err },
            count: 1,
        };
        let after = AfterConnect { upstream_process, death, connection, ports };
        // A backlog finding keeps its own facts (its queue, its listener).
        let after = (cause != Cause::BacklogFull).then_some(after);
        self.aggregate(&(cause, target, n.netns), &record, |st| st.after = after.or(st.after.take()));
        self.push_ready(record);
    }

    /// Whether Nginx closed this connection clearly before the read timeout it applies to the
    /// target (false when the timeout is unknown: no configuration names the target, or the
    /// client is not Nginx). Measured from the connect to Nginx's close.
    fn closed_before_read_timeout(&self, n: &NginxSide) -> bool {
        if !n.facts.nginx_closed || !NGINX_COMMS.contains(&n.client.comm.as_str()) {
            return false;
        }
        let target = Target::Tcp(n.flow.dst);
        let timeout_ms = self.read_timeouts.get(&(n.netns, target.clone())).or_else(|| self.read_timeouts.get(&(0, target)));
        let Some(&timeout_ms) = timeout_ms else { return false };
        let lasted_ms = n.first_ns.saturating_sub(n.start_ns) / 1_000_000;
        lasted_ms.saturating_add(READ_TIMEOUT_SLACK_MS) < timeout_ms.saturating_mul(9) / 10
    }
}

/// How the upstream's closer died, if it was dying when it closed: a non-zero exit code, or a
/// fatal signal shortly before.
fn death_of(u: &UpstreamSide) -> Option<Death> {
    let closer = u.closer.as_ref()?;
    let signal = u.signal.as_ref().filter(|s| s.ts_ns <= u.ts_ns && u.ts_ns - s.ts_ns <= SIGNAL_BEFORE_CLOSE_NS);
    if u.exit_code == 0 && signal.is_none() {
        return None;
    }
    // exit_code: status << 8 | terminating signal (| 0x80 for a core dump).
    let terminating = u.exit_code & 0x7f;
    let signo = signal.map(|s| s.signal).unwrap_or(terminating);
    let sender = signal.map(|s| &s.sender).filter(|s| s.pid != 0 && s.pid != closer.pid);
    let how = if signal.is_some_and(|s| s.oom) {
        DeathHow::Oom
    } else if signo != 0 && sender.is_none() && matches!(signo, 4 | 6 | 7 | 8 | 11) {
        // SIGILL, SIGABRT, SIGBUS, SIGFPE, SIGSEGV raised by the process itself.
        DeathHow::Crash
    } else if sender.is_some_and(|s| s.comm == closer.comm) && matches!(signo, 6 | 9) {
        // The same program killing it with SIGABRT/SIGKILL: its master, at the worker timeout
        // (Gunicorn sends SIGABRT, then SIGKILL; uWSGI's harakiri SIGKILL).
        DeathHow::WorkerTimeout
    } else if signo != 0 {
        DeathHow::Signal
    } else {
        DeathHow::Exit
    };
    Some(Death {
        how,
        signal: (signo != 0).then(|| signal_name(signo)),
        sender: sender.map(ProcessRef::of),
        exit_status: (how == DeathHow::Exit).then_some(u.exit_code >> 8),
    })
}

fn reset_reason(u: Option<&UpstreamSide>) -> String {
    match u {
        Some(u) if u.end == ConnEnd::Reset && u.unread_bytes > 0 => format!(
            "closed its socket with {} bytes of the request unread, and a close with unread data resets the connection",
            u.unread_bytes
        ),
        Some(u) if u.end == ConnEnd::Reset => "aborted the connection (a close with SO_LINGER 0, or an abort)".to_string(),
        Some(_) => "closed its socket, and Nginx's next write was answered with a reset".to_string(),
        None => "sent a reset (its end of the connection is not on this host, or was not seen)".to_string(),
    }
}

fn evidence_of(f: &ConnFacts, upstream: Option<&UpstreamSide>, death: Option<&Death>) -> EvidenceCounts {
    let mut e = EvidenceCounts::new();
    let mut set = |k: Evidence, yes: bool| {
        if yes {
            e.set(k, 1);
        }
    };
    set(Evidence::NoLocalPort, f.no_local_port);
    set(Evidence::Dropped { reason: "TCP_LISTEN_OVERFLOW".into(), to_client: false }, f.handshake_overflow);
    set(Evidence::FinBeforeResponse, f.fin_before_response);
    set(Evidence::ResetOnConnection, f.reset);
    set(Evidence::ResetAfterUpstreamFin, f.reset_after_fin);
    set(Evidence::NginxClosedWithoutResponse, f.nginx_closed && f.nginx_received == 0);
    set(Evidence::NeverAccepted, f.never_accepted && f.nginx_closed);
    set(Evidence::ClosedByDyingProcess, death.is_some());
    if let Some(u) = upstream {
        set(Evidence::UpstreamAbort, u.end == ConnEnd::Reset && death.is_none());
        set(Evidence::UpstreamFinBeforeResponse, u.end == ConnEnd::LocalFin && u.sent == 0 && death.is_none());
        if let Some(s) = &u.signal {
            if death.is_some() {
                e.set(if s.oom { Evidence::OomKill } else { Evidence::FatalSignal(s.signal) }, 1);
            }
        }
    }
    e
}
