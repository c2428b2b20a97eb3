//! PURE explanation engine: decoded events in, findings out. Never touches the kernel, the
//! clock or /proc; the same events always give the same findings.
//!
//! - `attempt`: one TCP connection attempt (keyed by socket + flow) and its evidence;
//! - `listeners`: who listened where and when, and how full their queues were;
//! - `rules`: THE verdict table, with each cause's detail and fix text beside it;
//! - this file: the `Engine` that matches events to attempts, concludes them after a grace
//!   period and aggregates them into findings per (cause, target, netns).

mod attempt;
mod buffer;
mod listeners;
mod timeline;
pub mod rules;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod fn_tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventBody, FlowAddr, Queue, Target, TaskInfo};

pub use attempt::{SynOverflow, LABEL_SYN_OVERFLOW};
use attempt::{drop_reason_name, fuller, Attempt, AttemptKey, Close, FlowEvidence, FlowEvidenceKind, FlowKey};
use buffer::KeyedBuffer;
use listeners::{Episode, Listeners};
pub use rules::Cause;
pub use timeline::TimelineEntry;
use rules::{classify_tcp, classify_unix, errno_name, ListenerFacts, RejectKind, TcpFacts, Wording};
pub use rules::{is_proxy_comm, PROXY_COMMS};

/// Tuning of the engine. All times are CLOCK_MONOTONIC nanoseconds, like event timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    /// How long after an attempt's close late evidence (from other CPUs) is still awaited.
    pub grace_ns: u64,
    /// How long socket-less evidence and measurements are kept waiting for their attempt.
    pub evidence_ttl_ns: u64,
    /// Bound on tracked attempts, buffered evidence and known listeners (each).
    pub max_tracked: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { grace_ns: 300_000_000, evidence_ttl_ns: 120_000_000_000, max_tracked: 200_000 }
    }
}

/// A process named in a finding.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    pub comm: String,
}

impl ProcessRef {
    pub fn of(t: &TaskInfo) -> ProcessRef {
        ProcessRef { pid: t.pid, comm: t.comm.clone() }
    }
}

impl std::fmt::Display for ProcessRef {
    /// `gunicorn (pid 700)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {})", self.comm, self.pid)
    }
}

/// How a concluded attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It never connected.
    Failed,
    /// It connected, late (after SYN retransmits).
    Delayed,
    /// It was still waiting (SYN_SENT) when tracing ended or it stopped being tracked.
    Pending,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Failed => "failed",
            Outcome::Delayed => "delayed",
            Outcome::Pending => "pending",
        }
    }
}

/// One concluded attempt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttemptRecord {
    /// When it failed / connected (for pending ones: its last sign of life).
    pub ts_ns: u64,
    /// When it started (connect()), as well as known.
    pub start_ns: u64,
    pub cause: Cause,
    pub target: Target,
    pub netns: u32,
    pub sock: u64,
    /// The socket's owner at connect time (TCP) or the caller of connect() (Unix).
    pub client: TaskInfo,
    pub evidence: BTreeMap<String, u64>,
    pub outcome: Outcome,
    /// Unix: connect()'s errno; TCP: the socket error at close (0 when none).
    pub errno: i32,
}

/// Everything known about one cause of failure on one target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub cause: Cause,
    pub target: Target,
    pub netns: u32,
    /// Distinct attempts (failed + delayed + pending).
    pub count: u64,
    /// Of `count`: attempts that connected late (backlog only).
    pub delayed: u64,
    /// Of `count`: attempts still waiting at the end.
    pub pending: u64,
    pub clients: Vec<ProcessRef>,
    /// uids of the clients (unix_permission_denied).
    pub uids: Vec<u32>,
    pub listener: Option<ProcessRef>,
    pub listener_note: String,
    /// When the listener named by `listener_note` closed (monotonic ns), for wall-clock display.
    pub listener_closed_ns: Option<u64>,
    /// Backlog causes: the fullest accept queue measured.
    pub queue: Option<Queue>,
    pub hint: Option<String>,
    pub evidence: BTreeMap<String, u64>,
    pub detail: String,
    pub fix: String,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Backlog causes, function-hook backend: how long the connections the listener did
    /// accept had waited in its queue (bucket in ms -> count; empty when not measured).
    pub accept_wait_ms: BTreeMap<String, u64>,
    /// Backlog causes, function-hook backend: the listener's queue at each SYN that
    /// tcp_conn_request dropped on it (the latest few; the evidence counts them all).
    pub syn_overflows: Vec<SynOverflow>,
    /// dead_listener / unix_missing / unix_stale: the listener's story (who listened, how it
    /// died, the refusals, the recovery or "still down"), in time order.
    pub timeline: Vec<TimelineEntry>,
}

/// What changed in a `tick`/`finish`.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    Attempt(AttemptRecord),
    /// A finding opened or changed (its current state).
    Finding(Finding),
}

/// Evidence labels that are not kernel events but the engine's own bookkeeping.
const LABEL_DELAYED: &str = "delayed then connected";
const LABEL_PENDING_AT_END: &str = "pending at end";
const LABEL_NO_CLOSE_SEEN: &str = "pending, no close seen";
const LABEL_EVICTED: &str = "pending when dropped from tracking (memory bound)";
const LABEL_LISTEN_OVERFLOWS: &str = "ListenOverflows";
const LABEL_SOCK_DIAG_FULL: &str = "attempts while sock_diag saw the queue full";
const LABEL_LISTENER_PRESENT: &str = "attempts to a live local listener";

/// An ICMP error this host sent; matched to an attempt by addresses, and by ports when the
/// kernel could read them from the offending packet (0 when unknown).
#[derive(Clone, Debug)]
struct IcmpSeen {
    ts_ns: u64,
    icmp_type: u8,
    code: u8,
    ports: (u16, u16),
}

impl IcmpSeen {
    /// Whether this ICMP can be about `flow`: ports unknown, or the same ports either way round.
    fn ports_match(&self, flow: &FlowAddr) -> bool {
        let (a, b) = self.ports;
        (a == 0 && b == 0)
            || (a, b) == (flow.src.port(), flow.dst.port())
            || (a, b) == (flow.dst.port(), flow.src.port())
    }
}

/// The two addresses of a packet in a fixed order (an ICMP may be about either direction).
fn address_pair(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// A rise of TcpExtListenOverflows in a netns.
#[derive(Clone, Debug)]
struct OverflowRise {
    ts_ns: u64,
    netns: u32,
    delta: u64,
    /// Already added to a finding's evidence (one rise may match many attempts).
    counted: bool,
}

/// An ICMP may precede the attempt's first event slightly (it is sent while the SYN leaves).
const ICMP_SLACK_NS: u64 = 1_000_000_000;
/// sock_diag samples are taken periodically: one shortly before an attempt still describes it.
const SAMPLE_SLACK_NS: u64 = 1_000_000_000;
/// Evidence buffered before an attempt's first event must not predate its connect() by more.
const START_SLACK_NS: u64 = 10_000_000;
/// TCP's longest retransmit interval (TCP_RTO_MAX): an open attempt silent for longer than
/// this plus the evidence TTL lost its close event.
const TCP_RTO_MAX_NS: u64 = 120_000_000_000;
/// Bound on remembered local addresses (used to decide what a wildcard listener covers).
const MAX_LOCAL_IPS: usize = 1024;

type FindingKey = (Cause, Target, u32);

/// Aggregate of the attempts of one finding.
#[derive(Clone, Debug)]
struct FindingState {
    count: u64,
    delayed: u64,
    pending: u64,
    clients: BTreeSet<ProcessRef>,
    uids: BTreeSet<u32>,
    evidence: BTreeMap<String, u64>,
    first_seen_ns: u64,
    last_seen_ns: u64,
    fullest_queue: Option<Queue>,
    /// The listener's queue at SYN-time overflows (tcp_conn_request), latest few.
    syn_overflows: VecDeque<SynOverflow>,
    /// The listener on the target as the kernel read it at a SYN retransmit (latest).
    kernel_listener: Option<TaskInfo>,
    syn_retransmits: u64,
    resets_sent: u64,
    netfilter_drops: u64,
    rejected_by_reset: u64,
    rejected_by_icmp: u64,
}

impl FindingState {
    fn new(first_seen_ns: u64) -> FindingState {
        FindingState {
            count: 0,
            delayed: 0,
            pending: 0,
            clients: BTreeSet::new(),
            uids: BTreeSet::new(),
            evidence: BTreeMap::new(),
            first_seen_ns,
            last_seen_ns: first_seen_ns,
            fullest_queue: None,
            syn_overflows: VecDeque::new(),
            kernel_listener: None,
            syn_retransmits: 0,
            resets_sent: 0,
            netfilter_drops: 0,
            rejected_by_reset: 0,
            rejected_by_icmp: 0,
        }
    }
}

/// Why an attempt is being concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ConcludeWhy {
    /// Its close is older than the grace period (or everything ends and it has closed).
    Closed,
    /// `finish()` while it still waited.
    EndOfTracing,
    /// No event for it for too long: its close was lost.
    Silent,
    /// The table was full.
    Evicted,
}

pub struct Engine {
    opts: EngineOptions,
    attempts: HashMap<AttemptKey, Attempt>,
    /// Open attempts by flow, for socket-less evidence.
    attempt_by_flow: HashMap<FlowKey, AttemptKey>,
    /// Socket-less evidence no tracked attempt has claimed yet.
    flow_buffer: KeyedBuffer<FlowKey, FlowEvidence>,
    /// ICMP errors sent by this host, by address pair, until an attempt claims them.
    icmp_buffer: KeyedBuffer<(IpAddr, IpAddr), IcmpSeen>,
    overflows: VecDeque<OverflowRise>,
    listeners: Listeners,
    /// Attempts concluded recently: late events for them must not open a new attempt.
    /// (end, key, start_ns); the set maps each key to the start of the attempt concluded last.
    recently_concluded: VecDeque<(u64, AttemptKey, u64)>,
    recently_concluded_set: HashMap<AttemptKey, u64>,
    /// Addresses seen as the source of our clients' attempts: addresses of this host.
    local_ips: BTreeSet<IpAddr>,
    findings: BTreeMap<FindingKey, FindingState>,
    changed: BTreeSet<FindingKey>,
    /// Concluded attempts not yet returned by tick()/finish() (bounded; oldest dropped).
    ready: VecDeque<AttemptRecord>,
    lost: BTreeMap<String, u64>,
    /// Exits, signals, OOM kills, unlinks and owners' facts, for dead-listener timelines.
    lifecycle: timeline::Lifecycle,
    /// Per listener (address, netns): how long accepted connections waited in its accept
    /// queue, as a histogram (bucket label -> count). Function-hook backend only.
    accept_waits: BTreeMap<(Target, u32), BTreeMap<&'static str, u64>>,
    /// The kernel's own accept-wait histograms per listener (absolute totals, replaced on
    /// each reading), bucket i = ACCEPT_WAIT_BUCKETS[i].
    accept_wait_totals: BTreeMap<(Target, u32), [u64; 5]>,
    /// Unix listeners' queues read in the kernel at EAGAIN connects: (ts, netns, path, queue).
    unix_peer_queues: VecDeque<(u64, u32, String, Queue)>,
}

impl Engine {
    pub fn new(opts: EngineOptions) -> Engine {
        let max = opts.max_tracked.max(1);
        Engine {
            opts: EngineOptions { max_tracked: max, ..opts },
            attempts: HashMap::new(),
            attempt_by_flow: HashMap::new(),
            flow_buffer: KeyedBuffer::new(max),
            icmp_buffer: KeyedBuffer::new(max),
            overflows: VecDeque::new(),
            listeners: Listeners::new(max),
            recently_concluded: VecDeque::new(),
            recently_concluded_set: HashMap::new(),
            local_ips: BTreeSet::new(),
            findings: BTreeMap::new(),
            changed: BTreeSet::new(),
            ready: VecDeque::new(),
            lost: BTreeMap::new(),
            lifecycle: timeline::Lifecycle::new(max),
            accept_waits: BTreeMap::new(),
            unix_peer_queues: VecDeque::new(),
            accept_wait_totals: BTreeMap::new(),
        }
    }

    /// Feed one event (events come roughly in ts order; evidence for a flow may arrive up to
    /// grace_ns AFTER the attempt's close event).
    pub fn push(&mut self, ev: &Event) {
        match &ev.body {
            EventBody::TcpAttemptFailed { flow, sk_err, syn_retransmits, rst_received, start_ns } => {
                if let Some(a) = self.attempt_mut(ev, flow, *start_ns) {
                    a.syn_retransmits = a.syn_retransmits.max(*syn_retransmits);
                    a.rst_received |= *rst_received;
                    if a.close.is_none() {
                        a.close = Some(Close::Failed { ts_ns: ev.ts_ns, sk_err: *sk_err });
                    }
                }
            }
            EventBody::TcpSynRetransmit { flow, syn_retransmits, queue, listener } => {
                if let Some(a) = self.attempt_mut(ev, flow, 0) {
                    // The kernel's running count when it has one (a duplicate delivery then
                    // changes nothing), else one more than seen.
                    a.syn_retransmits = if *syn_retransmits > 0 {
                        a.syn_retransmits.max(*syn_retransmits)
                    } else {
                        a.syn_retransmits + 1
                    };
                    if let Some(q) = queue {
                        a.note_queue(*q);
                    }
                    if let Some(l) = listener {
                        if l.pid != 0 || a.kernel_listener.is_none() {
                            a.kernel_listener = Some(l.clone());
                        }
                    }
                }
            }
            EventBody::TcpAttemptDelayed { flow, syn_retransmits, start_ns } => {
                if let Some(a) = self.attempt_mut(ev, flow, *start_ns) {
                    a.syn_retransmits = a.syn_retransmits.max(*syn_retransmits);
                    if a.close.is_none() {
                        a.close = Some(Close::Delayed { ts_ns: ev.ts_ns });
                    }
                }
            }
            EventBody::TcpRstReceived { flow } => {
                if let Some(a) = self.attempt_mut(ev, flow, 0) {
                    a.rst_received = true;
                }
            }
            EventBody::TcpRstSentNoSocket { flow, reason } => self.flow_evidence(FlowEvidence {
                ts_ns: ev.ts_ns,
                flow: *flow,
                kind: FlowEvidenceKind::ResetFromNoSocket { reason: reason.clone() },
            }),
            EventBody::SkbDropped { flow, reason } => {
                // A drop without parsed addresses cannot be matched to anything.
                if let Some(flow) = flow {
                    self.flow_evidence(FlowEvidence {
                        ts_ns: ev.ts_ns,
                        flow: *flow,
                        kind: FlowEvidenceKind::Dropped { reason: drop_reason_name(reason) },
                    })
                }
            }
            EventBody::IcmpSent { flow, icmp_type, code } => {
                self.icmp_buffer.push(
                    address_pair(flow.src.ip(), flow.dst.ip()),
                    IcmpSeen {
                        ts_ns: ev.ts_ns,
                        icmp_type: *icmp_type,
                        code: *code,
                        ports: (flow.src.port(), flow.dst.port()),
                    },
                );
            }
            EventBody::TcpListenStart { addr, .. } => {
                self.lifecycle.push(ev);
                self.listeners.listen_start(ev.netns, *addr, &ev.task, ev.sock, ev.ts_ns)
            }
            EventBody::TcpListenStop { addr, actor } => {
                self.listeners.listen_stop(ev.netns, *addr, &ev.task, actor, ev.sock, ev.ts_ns)
            }
            EventBody::UnixConnectFailed { path, errno } => {
                if let Some(cause) = classify_unix(*errno, path) {
                    self.conclude_unix(ev, path, *errno, cause);
                }
            }
            EventBody::UnixBind { path } => self.listeners.unix_bind(ev.netns, path, &ev.task, ev.ts_ns),
            EventBody::ListenerSeen { target, queue } => {
                self.listeners.seen(ev.netns, target, *queue, &ev.task, ev.ts_ns, self.opts.evidence_ttl_ns)
            }
            EventBody::ListenOverflows { delta } => {
                if *delta > 0 {
                    if self.overflows.len() >= self.opts.max_tracked {
                        self.overflows.pop_front();
                    }
                    self.overflows.push_back(OverflowRise {
                        ts_ns: ev.ts_ns,
                        netns: ev.netns,
                        delta: *delta,
                        counted: false,
                    });
                }
            }
            EventBody::Lost { kind, count } => *self.lost.entry(kind.clone()).or_insert(0) += count,
            EventBody::ProcessExit { .. }
            | EventBody::SignalGenerated { .. }
            | EventBody::OomKilled
            | EventBody::UnixUnlink { .. }
            | EventBody::ProcessInfo { .. } => self.lifecycle.push(ev),
            EventBody::UnixPeerQueue { path, queue } => {
                // Kept until the failure it precedes concludes (bounded).
                if self.unix_peer_queues.len() >= 1024 {
                    self.unix_peer_queues.pop_front();
                }
                self.unix_peer_queues.push_back((ev.ts_ns, ev.netns, path.clone(), *queue));
            }
            EventBody::TcpListenOverflow { flow, queue, listener, .. } => {
                // Without the SYN's addresses it cannot be tied to an attempt; the
                // ListenOverflows counter tells the same story then.
                if let Some(flow) = flow {
                    self.flow_evidence(FlowEvidence {
                        ts_ns: ev.ts_ns,
                        flow: *flow,
                        kind: FlowEvidenceKind::SynOverflow { queue: *queue, listener: listener.clone() },
                    })
                }
            }
            EventBody::AcceptWaitTotals { listener, counts } => {
                let key = (Target::Tcp(*listener), ev.netns);
                if self.accept_wait_totals.contains_key(&key) || self.accept_wait_totals.len() < self.opts.max_tracked {
                    self.accept_wait_totals.insert(key, *counts);
                }
            }
            EventBody::TcpAccepted { flow, wait_ns, .. } => {
                let key = (Target::Tcp(flow.dst), ev.netns);
                if !self.accept_waits.contains_key(&key) && self.accept_waits.len() >= self.opts.max_tracked {
                    return;
                }
                let h = self.accept_waits.entry(key).or_default();
                *h.entry(accept_wait_bucket(*wait_ns)).or_insert(0) += 1;
            }
        }
    }

    /// Conclude attempts whose close is older than now_ns - grace_ns; returns what changed
    /// (for `watch`).
    pub fn tick(&mut self, now_ns: u64) -> Vec<Update> {
        self.expire(now_ns);
        let horizon = now_ns.saturating_sub(self.opts.grace_ns);
        let silent_after = self.opts.evidence_ttl_ns.saturating_add(TCP_RTO_MAX_NS);
        let mut due: Vec<(u64, AttemptKey, ConcludeWhy)> = self
            .attempts
            .values()
            .filter_map(|a| match a.close {
                Some(c) if c.ts_ns() < horizon => Some((c.ts_ns(), a.key, ConcludeWhy::Closed)),
                None if a.last_event_ns.saturating_add(silent_after) < now_ns => {
                    Some((a.last_event_ns, a.key, ConcludeWhy::Silent))
                }
                _ => None,
            })
            .collect();
        due.sort();
        for (_, key, why) in due {
            self.conclude_tcp(&key, why);
        }
        self.drain_updates()
    }

    /// Conclude everything (end of `diagnose`), including attempts still pending (in SYN_SENT
    /// with retransmits): they are classified too and counted as pending.
    pub fn finish(&mut self) -> Vec<Update> {
        let mut all: Vec<(u64, AttemptKey, ConcludeWhy)> = self
            .attempts
            .values()
            .map(|a| {
                let why = if a.close.is_some() { ConcludeWhy::Closed } else { ConcludeWhy::EndOfTracing };
                (a.end_ns(), a.key, why)
            })
            .collect();
        all.sort();
        for (_, key, why) in all {
            self.conclude_tcp(&key, why);
        }
        self.drain_updates()
    }

    /// Current findings, sorted by count desc then target.
    pub fn findings(&self) -> Vec<Finding> {
        let mut out: Vec<Finding> = self.findings.iter().map(|(k, st)| self.snapshot(k, st)).collect();
        out.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.target.cmp(&b.target))
                .then_with(|| a.cause.cmp(&b.cause))
                .then_with(|| a.netns.cmp(&b.netns))
        });
        out
    }

    /// Accept-queue wait histograms per listener address (function-hook backend).
    pub fn accept_waits(&self) -> BTreeMap<(Target, u32), BTreeMap<String, u64>> {
        let keys: BTreeSet<&(Target, u32)> = self.accept_waits.keys().chain(self.accept_wait_totals.keys()).collect();
        keys.into_iter().map(|k| (k.clone(), self.accept_wait_histogram(k))).collect()
    }

    /// One listener's accept-wait histogram: per-connection events plus the kernel's totals.
    fn accept_wait_histogram(&self, key: &(Target, u32)) -> BTreeMap<String, u64> {
        let mut h: BTreeMap<String, u64> = BTreeMap::new();
        if let Some(events) = self.accept_waits.get(key) {
            for (b, n) in events {
                *h.entry(b.to_string()).or_insert(0) += n;
            }
        }
        if let Some(totals) = self.accept_wait_totals.get(key) {
            for (b, n) in ACCEPT_WAIT_BUCKETS.iter().zip(totals) {
                if *n > 0 {
                    *h.entry(b.to_string()).or_insert(0) += n;
                }
            }
        }
        h
    }

    pub fn lost_events(&self) -> BTreeMap<String, u64> {
        self.lost.clone()
    }

    /// Attempts currently followed (open, or closed and waiting out the grace period).
    pub fn tracked_attempts(&self) -> usize {
        self.attempts.len()
    }

    /// Socket-less evidence, ICMP errors and counter rises waiting for an attempt, plus known
    /// listener addresses: everything else that grows with traffic.
    pub fn buffered_evidence(&self) -> usize {
        self.flow_buffer.len() + self.icmp_buffer.len() + self.overflows.len() + self.listeners.len()
    }

    // ---- matching -------------------------------------------------------------------------

    /// The attempt an event of socket `ev.sock` on `flow` belongs to, created on first sight.
    /// None for late events of an attempt already concluded.
    fn attempt_mut(&mut self, ev: &Event, flow: &FlowAddr, start_ns: u64) -> Option<&mut Attempt> {
        let key = AttemptKey::new(ev.sock, flow);
        // Socket memory and ephemeral ports are both reused: in a flood the same (socket, flow)
        // comes back within a fraction of a second. An event of an attempt that started after
        // the one known under this key is a new attempt, not a late event of the old one.
        let newer = |known_start: u64| start_ns != 0 && known_start != 0 && start_ns > known_start;
        if let Some(a) = self.attempts.get(&key) {
            if a.close.is_some() && a.start_known && newer(a.start_ns) {
                // Evidence from the new attempt's start on is the new attempt's.
                self.conclude_tcp_before(&key, ConcludeWhy::Closed, start_ns.saturating_sub(START_SLACK_NS));
            }
        }
        if !self.attempts.contains_key(&key) {
            if let Some(&known_start) = self.recently_concluded_set.get(&key) {
                if !newer(known_start) {
                    return None;
                }
                self.recently_concluded_set.remove(&key);
            }
            if self.attempts.len() >= self.opts.max_tracked {
                self.evict_oldest();
            }
            let mut a = Attempt::new(key, *flow, ev.netns, ev.task.clone(), ev.ts_ns);
            a.set_start(start_ns);
            if self.local_ips.len() < MAX_LOCAL_IPS {
                self.local_ips.insert(flow.src.ip());
            }
            // Evidence that arrived before the attempt's first event (on loopback the reset
            // and the drop fire before the client socket hears of them).
            let fk = FlowKey::of(flow);
            let not_before = if a.start_known { a.start_ns.saturating_sub(START_SLACK_NS) } else { 0 };
            for e in self.flow_buffer.take_all(&fk) {
                // Older evidence on the same ports belongs to an earlier connection.
                if e.ts_ns >= not_before {
                    a.apply_flow_evidence(&e);
                }
            }
            self.attempt_by_flow.insert(fk, key);
            self.attempts.insert(key, a);
        }
        let a = self.attempts.get_mut(&key)?;
        a.set_client(&ev.task);
        a.set_start(start_ns);
        a.touch(ev.ts_ns);
        Some(a)
    }

    /// Socket-less evidence: to its attempt if one is followed, else buffered for one to come.
    fn flow_evidence(&mut self, e: FlowEvidence) {
        let fk = FlowKey::of(&e.flow);
        if let Some(a) = self.attempt_by_flow.get(&fk).and_then(|k| self.attempts.get_mut(k)) {
            // A packet going to the target after the attempt closed was sent by a later
            // attempt on the same ports (a closed SYN_SENT socket sends nothing more): it
            // waits for that one. Answers going to the client may still arrive late.
            let to_target = e.flow.src == a.flow.src && e.flow.dst == a.flow.dst;
            let after_close = a.close.is_some_and(|c| e.ts_ns > c.ts_ns());
            if !(to_target && after_close) {
                a.apply_flow_evidence(&e);
                return;
            }
        }
        self.flow_buffer.push(fk, e);
    }

    /// Claims the ICMP error this host sent for attempt `a`: addresses match (either
    /// orientation) and it was sent during the attempt; the one closest to its end wins.
    fn claim_icmp(&mut self, a: &Attempt, to_ns: u64) -> Option<IcmpSeen> {
        let (from, end) = (a.start_ns.saturating_sub(ICMP_SLACK_NS), a.end_ns());
        let best = self
            .icmp_buffer
            .get(&address_pair(a.flow.src.ip(), a.flow.dst.ip()))
            .into_iter()
            .filter(|(_, i)| i.ts_ns >= from && i.ts_ns <= to_ns && i.ports_match(&a.flow))
            // Prefer one sent before the close (it caused it), closest to it.
            .min_by_key(|(_, i)| (i.ts_ns > end, i.ts_ns.abs_diff(end)))
            .map(|(seq, _)| seq)?;
        self.icmp_buffer.remove(best)
    }

    /// Whether `ip` is an address of this host, as far as the engine can tell: loopback, or
    /// the source address of one of our clients' attempts.
    fn is_local_ip(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || ip.is_unspecified() || self.local_ips.contains(&ip)
    }

    /// Whether wildcard listeners (0.0.0.0:P, [::]:P) of this host cover `target`: only when
    /// the target is an address of this host.
    fn wildcards_cover(&self, target: &Target) -> bool {
        match target {
            Target::Tcp(a) => self.is_local_ip(a.ip()),
            Target::Unix(_) => false,
        }
    }

    // ---- conclusion -----------------------------------------------------------------------

    fn conclude_tcp(&mut self, key: &AttemptKey, why: ConcludeWhy) {
        self.conclude_tcp_before(key, why, u64::MAX);
    }

    /// Concludes an attempt; packets going to its target that were seen after its close (up
    /// to the grace period, and before `cutoff_ns`) and that no later attempt claimed are
    /// its late evidence (see `flow_evidence`).
    fn conclude_tcp_before(&mut self, key: &AttemptKey, why: ConcludeWhy, cutoff_ns: u64) {
        let Some(mut a) = self.attempts.remove(key) else { return };
        let fk = FlowKey::of(&a.flow);
        if self.attempt_by_flow.get(&fk) == Some(key) {
            self.attempt_by_flow.remove(&fk);
        }
        if let Some(close) = a.close {
            let mut until = close.ts_ns().saturating_add(self.opts.grace_ns).min(cutoff_ns);
            // A later attempt on the same ports owns what was seen from its start on.
            if let Some(next) = self.attempt_by_flow.get(&fk).and_then(|k| self.attempts.get(k)) {
                if next.start_ns > close.ts_ns() {
                    until = until.min(next.start_ns.saturating_sub(START_SLACK_NS));
                }
            }
            let late: Vec<u64> = self
                .flow_buffer
                .get(&fk)
                .into_iter()
                .filter(|(_, e)| e.ts_ns > close.ts_ns() && e.ts_ns <= until)
                .map(|(seq, _)| seq)
                .collect();
            for seq in late {
                if let Some(e) = self.flow_buffer.remove(seq) {
                    a.apply_flow_evidence(&e);
                }
            }
        }
        self.remember_concluded(a.end_ns(), *key, if a.start_known { a.start_ns } else { 0 });

        let target = Target::Tcp(a.flow.dst);
        let (from, to) = (a.start_ns, a.end_ns().saturating_add(self.opts.grace_ns));
        let icmp = self.claim_icmp(&a, to);
        let overflow_rise: u64 = self
            .overflows
            .iter()
            .filter(|o| (o.netns == a.netns || o.netns == 0 || a.netns == 0) && o.ts_ns >= from && o.ts_ns <= to)
            .map(|o| o.delta)
            .sum();
        // A wildcard listener only covers the target when the target is an address of this host.
        let wildcards = self.is_local_ip(a.flow.dst.ip());
        let sampled_full = self
            .listeners
            .samples_during(a.netns, &target, wildcards, from.saturating_sub(SAMPLE_SLACK_NS), to)
            .into_iter()
            .filter(|q| q.is_full())
            .fold(None, |acc: Option<Queue>, q| Some(fuller(acc, q)));
        let listener_episode = self.listeners.listener_during(a.netns, &target, wildcards, from, to).cloned();

        let facts = TcpFacts {
            netfilter_drop: a.netfilter_drops > 0,
            rst_received: a.rst_received,
            sk_err: a.sk_err(),
            local_no_socket: a.no_socket_to_target > 0,
            queue_full: a.kernel_queue_full_samples > 0
                || a.listen_overflow_drops > 0
                || a.syn_overflows > 0
                || sampled_full.is_some(),
            listen_overflows_rose: overflow_rise > 0,
            local_listener: a.kernel_listener.is_some() || listener_episode.is_some(),
            icmp_sent: icmp.is_some(),
            syn_retransmits: a.syn_retransmits,
        };
        let Some((cause, reject)) = classify_tcp(&facts) else { return };
        let outcome = match (a.close, why) {
            (Some(Close::Delayed { .. }), _) => Outcome::Delayed,
            (Some(Close::Failed { .. }), _) => Outcome::Failed,
            (None, _) => Outcome::Pending,
        };
        // A late connection is a symptom only of a full backlog; elsewhere it is just a slow start.
        if outcome == Outcome::Delayed && cause != Cause::BacklogFull {
            return;
        }

        let mut evidence = a.evidence_labels();
        if let Some(i) = &icmp {
            *evidence.entry(format!("icmp:icmp_send {}/{}", i.icmp_type, i.code)).or_insert(0) += 1;
        }
        if cause == Cause::BacklogFull {
            if overflow_rise > 0 {
                evidence.insert(LABEL_LISTEN_OVERFLOWS.into(), overflow_rise);
            }
            if sampled_full.is_some() {
                evidence.insert(LABEL_SOCK_DIAG_FULL.into(), 1);
            }
            if facts.local_listener {
                evidence.insert(LABEL_LISTENER_PRESENT.into(), 1);
            }
        }
        match (outcome, why) {
            (Outcome::Delayed, _) => {
                evidence.insert(LABEL_DELAYED.into(), 1);
            }
            (Outcome::Pending, ConcludeWhy::Silent) => {
                evidence.insert(LABEL_NO_CLOSE_SEEN.into(), 1);
            }
            (Outcome::Pending, ConcludeWhy::Evicted) => {
                evidence.insert(LABEL_EVICTED.into(), 1);
            }
            (Outcome::Pending, _) => {
                evidence.insert(LABEL_PENDING_AT_END.into(), 1);
            }
            _ => {}
        }

        let record = AttemptRecord {
            ts_ns: a.end_ns(),
            start_ns: a.start_ns,
            cause,
            target: target.clone(),
            netns: a.netns,
            sock: a.key.sock,
            client: a.client.clone(),
            evidence,
            outcome,
            errno: a.sk_err(),
        };
        let fkey: FindingKey = (cause, target, a.netns);
        let queue = a.fullest_queue.into_iter().chain(sampled_full).fold(None, |acc, q| Some(fuller(acc, q)));
        self.aggregate(&fkey, &record, |st| {
            st.syn_retransmits += a.syn_retransmits as u64;
            st.resets_sent += a.resets_sent_to_target;
            st.netfilter_drops += a.netfilter_drops;
            match reject {
                Some(RejectKind::TcpReset) => st.rejected_by_reset += 1,
                Some(RejectKind::Icmp) => st.rejected_by_icmp += 1,
                None => {}
            }
            if cause == Cause::BacklogFull {
                if let Some(q) = queue {
                    st.fullest_queue = Some(fuller(st.fullest_queue, q));
                }
                for o in &a.overflow_samples {
                    if st.syn_overflows.len() >= attempt::MAX_OVERFLOW_SAMPLES {
                        st.syn_overflows.pop_front();
                    }
                    st.syn_overflows.push_back(o.clone());
                }
                if let Some(l) = a.kernel_listener.clone().or_else(|| listener_episode.map(|e| e.owner)) {
                    if l.pid != 0 || st.kernel_listener.is_none() {
                        st.kernel_listener = Some(l);
                    }
                }
            }
        });
        // One ListenOverflows rise may explain many attempts: add it to the finding once.
        if cause == Cause::BacklogFull {
            let mut rise = 0;
            for o in self.overflows.iter_mut() {
                if !o.counted
                    && (o.netns == a.netns || o.netns == 0 || a.netns == 0)
                    && o.ts_ns >= from
                    && o.ts_ns <= to
                {
                    o.counted = true;
                    rise += o.delta;
                }
            }
            if rise > 0 {
                if let Some(st) = self.findings.get_mut(&fkey) {
                    *st.evidence.entry(LABEL_LISTEN_OVERFLOWS.into()).or_insert(0) += rise;
                }
            }
        }
        self.push_ready(record);
    }

    fn conclude_unix(&mut self, ev: &Event, path: &str, errno: i32, cause: Cause) {
        let target = Target::Unix(path.to_string());
        let mut evidence = BTreeMap::new();
        evidence.insert(format!("connect() {}", errno_name(errno)), 1);
        // The listener's queue as the kernel read it during this very connect.
        let mut kernel_queue: Option<Queue> = None;
        if cause == Cause::UnixBacklogFull {
            let from = ev.ts_ns.saturating_sub(SAMPLE_SLACK_NS);
            if let Some(i) = self
                .unix_peer_queues
                .iter()
                .rposition(|(ts, ns, p, _)| *ts >= from && *ts <= ev.ts_ns && *ns == ev.netns && p == path)
            {
                let (_, _, _, q) = self.unix_peer_queues.remove(i).expect("index from rposition");
                kernel_queue = Some(q);
                evidence.insert(LABEL_UNIX_PEER_FULL.to_string(), 1);
            }
        }
        let record = AttemptRecord {
            ts_ns: ev.ts_ns,
            start_ns: ev.ts_ns,
            cause,
            target: target.clone(),
            netns: ev.netns,
            sock: ev.sock,
            client: ev.task.clone(),
            evidence,
            outcome: Outcome::Failed,
            errno,
        };
        let queue = if cause == Cause::UnixBacklogFull {
            self.listeners
                .samples_during(ev.netns, &target, false, ev.ts_ns.saturating_sub(SAMPLE_SLACK_NS), ev.ts_ns)
                .into_iter()
                .chain(kernel_queue)
                .fold(None, |acc, q| Some(fuller(acc, q)))
        } else {
            None
        };
        let uid = ev.task.uid;
        self.aggregate(&(cause, target, ev.netns), &record, |st| {
            if cause == Cause::UnixPermissionDenied {
                st.uids.insert(uid);
            }
            if let Some(q) = queue {
                st.fullest_queue = Some(fuller(st.fullest_queue, q));
            }
        });
        self.push_ready(record);
    }

    /// Adds one concluded attempt to its finding.
    fn aggregate(&mut self, key: &FindingKey, r: &AttemptRecord, extra: impl FnOnce(&mut FindingState)) {
        let st = self.findings.entry(key.clone()).or_insert_with(|| FindingState::new(r.start_ns));
        st.count += 1;
        match r.outcome {
            Outcome::Delayed => st.delayed += 1,
            Outcome::Pending => st.pending += 1,
            Outcome::Failed => {}
        }
        st.clients.insert(ProcessRef::of(&r.client));
        for (label, n) in &r.evidence {
            // Counted once per finding in conclude_tcp, not per attempt.
            if label != LABEL_LISTEN_OVERFLOWS {
                *st.evidence.entry(label.clone()).or_insert(0) += n;
            }
        }
        st.first_seen_ns = st.first_seen_ns.min(r.start_ns);
        st.last_seen_ns = st.last_seen_ns.max(r.ts_ns);
        extra(st);
        self.changed.insert(key.clone());
    }

    fn push_ready(&mut self, r: AttemptRecord) {
        // Bounded when tick() is not called for a long time; findings stay complete.
        if self.ready.len() >= self.opts.max_tracked {
            self.ready.pop_front();
        }
        self.ready.push_back(r);
    }

    fn remember_concluded(&mut self, ts_ns: u64, key: AttemptKey, start_ns: u64) {
        self.recently_concluded_set.insert(key, start_ns);
        self.recently_concluded.push_back((ts_ns, key, start_ns));
        while self.recently_concluded.len() > self.opts.max_tracked {
            self.forget_concluded();
        }
    }

    /// Forgets the oldest concluded attempt (unless its key was concluded again since).
    fn forget_concluded(&mut self) {
        if let Some((_, k, start)) = self.recently_concluded.pop_front() {
            if self.recently_concluded_set.get(&k) == Some(&start) {
                self.recently_concluded_set.remove(&k);
            }
        }
    }

    /// Concludes the least recently active sixteenth of the table to make room.
    fn evict_oldest(&mut self) {
        let n = (self.opts.max_tracked / 16).max(1);
        let mut by_age: Vec<(u64, AttemptKey)> = self.attempts.values().map(|a| (a.last_event_ns, a.key)).collect();
        by_age.sort();
        for (_, key) in by_age.into_iter().take(n) {
            let why = if self.attempts[&key].close.is_some() { ConcludeWhy::Closed } else { ConcludeWhy::Evicted };
            self.conclude_tcp(&key, why);
        }
    }

    fn expire(&mut self, now_ns: u64) {
        let ttl = self.opts.evidence_ttl_ns;
        let old = |ts: u64| ts.saturating_add(ttl) < now_ns;
        self.flow_buffer.expire(|e| old(e.ts_ns));
        self.icmp_buffer.expire(|i| old(i.ts_ns));
        self.overflows.retain(|o| !old(o.ts_ns));
        self.listeners.expire(now_ns, ttl);
        while self.recently_concluded.front().is_some_and(|(ts, _, _)| old(*ts)) {
            self.forget_concluded();
        }
    }

    fn drain_updates(&mut self) -> Vec<Update> {
        let mut records: Vec<AttemptRecord> = self.ready.drain(..).collect();
        // Unix attempts conclude as they come, TCP ones after their grace: report in time order.
        records.sort_by_key(|r| r.ts_ns);
        let mut out: Vec<Update> = records.into_iter().map(Update::Attempt).collect();
        let changed = std::mem::take(&mut self.changed);
        for key in changed {
            if let Some(st) = self.findings.get(&key) {
                out.push(Update::Finding(self.snapshot(&key, st)));
            }
        }
        out
    }

    // ---- findings -------------------------------------------------------------------------

    fn snapshot(&self, key: &FindingKey, st: &FindingState) -> Finding {
        let (cause, target, netns) = (key.0, &key.1, key.2);
        let uids: Vec<u32> = st.uids.iter().copied().collect();
        let queue = match cause {
            Cause::BacklogFull | Cause::UnixBacklogFull => st.fullest_queue.or_else(|| {
                // Samples measured after the attempts concluded still describe them.
                self.listeners
                    .samples_during(
                        netns,
                        target,
                        self.wildcards_cover(target),
                        st.first_seen_ns.saturating_sub(SAMPLE_SLACK_NS),
                        st.last_seen_ns.saturating_add(SAMPLE_SLACK_NS),
                    )
                    .into_iter()
                    .fold(None, |acc, q| Some(fuller(acc, q)))
            }),
            _ => None,
        };
        let about = self.listener_story(cause, target, netns, st);
        let proxy_client = clients_include_a_proxy(&st.clients);
        let listener_unit = about.listener.as_ref().and_then(|l| self.lifecycle.unit_of(l.pid));
        let wording = Wording {
            listener: about.listener.as_ref().map(|l| ListenerFacts { comm: &l.comm, pid: l.pid, unit: listener_unit }),
            proxy_client,
            target: Some(target),
            count: st.count,
            delayed: st.delayed,
            pending: st.pending,
            syn_retransmits: st.syn_retransmits,
            resets_sent: st.resets_sent,
            netfilter_drops: st.netfilter_drops,
            rejected_by_reset: st.rejected_by_reset,
            rejected_by_icmp: st.rejected_by_icmp,
            queue,
            uids: &uids,
        };
        let hint = match cause {
            Cause::DeadListener | Cause::UnixMissing | Cause::UnixStale => {
                self.wrong_address_hint(target, netns, st, about.listener.as_ref())
            }
            _ => None,
        };
        let (detail, mut fix) = (cause.detail(&wording), cause.fix(&wording));
        let timeline = self.timeline(cause, target, netns, st);
        if let Some(more) = timeline::fix_addendum(&timeline, listener_unit) {
            fix = format!("{fix} {more}");
        }
        Finding {
            cause,
            target: target.clone(),
            netns,
            count: st.count,
            delayed: st.delayed,
            pending: st.pending,
            clients: st.clients.iter().cloned().collect(),
            uids,
            listener: about.listener,
            listener_note: about.note,
            listener_closed_ns: about.closed_ns,
            queue,
            hint,
            evidence: st.evidence.clone(),
            detail,
            fix,
            first_seen_ns: st.first_seen_ns,
            last_seen_ns: st.last_seen_ns,
            timeline,
            accept_wait_ms: match cause {
                Cause::BacklogFull => self.accept_wait_histogram(&(target.clone(), netns)),
                _ => BTreeMap::new(),
            },
            syn_overflows: {
                let mut v: Vec<SynOverflow> = st.syn_overflows.iter().cloned().collect();
                v.sort_by_key(|o| o.ts_ns);
                v
            },
        }
    }

    /// The listener's story for dead-listener causes (empty for the others).
    fn timeline(&self, cause: Cause, target: &Target, netns: u32, st: &FindingState) -> Vec<TimelineEntry> {
        if !matches!(cause, Cause::DeadListener | Cause::UnixMissing | Cause::UnixStale) {
            return Vec::new();
        }
        let (first, last) = (st.first_seen_ns, st.last_seen_ns);
        let (dead, recovered) = match target {
            Target::Tcp(_) => {
                let wildcards = self.wildcards_cover(target);
                let dead = self.listeners.last_closed_before(netns, target, wildcards, last);
                let after = dead.and_then(|d| d.stop_ns).unwrap_or(0);
                let recovered = self.listeners.current(netns, target, wildcards).filter(|c| c.start_ns > after.max(first));
                (dead, recovered)
            }
            Target::Unix(_) => {
                let binds = self.listeners.episodes(netns, target);
                let dead = binds.iter().rev().find(|e| e.start_ns <= first).copied();
                let recovered = binds.iter().rev().find(|e| e.start_ns > last).copied();
                (dead, recovered)
            }
        };
        let clients = st.clients.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ");
        timeline::build(
            &self.lifecycle,
            &timeline::Story {
                target,
                dead,
                recovered,
                first_failure_ns: first,
                last_failure_ns: last,
                count: st.count,
                clients,
            },
        )
    }

    /// Who listened on the target, told relative to the failures.
    fn listener_story(&self, cause: Cause, target: &Target, netns: u32, st: &FindingState) -> ListenerStory {
        let (first, last) = (st.first_seen_ns, st.last_seen_ns);
        let named = |e: &Episode| (e.owner.pid != 0).then(|| ProcessRef::of(&e.owner));
        let who = |e: &Episode| match named(e) {
            Some(p) => p.to_string(),
            None => "a process tracer could not name".to_string(),
        };
        if let Target::Unix(path) = target {
            let Some(bind) = self.listeners.latest(netns, target) else {
                return ListenerStory::none("no bind() of this path seen since tracing started");
            };
            let when = if bind.source == listeners::Source::Snapshot {
                "was seen listening on this path".to_string()
            } else {
                format!("bound this path {}", relative(bind.start_ns, first))
            };
            // An abstract name (`@name`) is no file: it goes away with its socket.
            let tail = match (cause, rules::is_abstract(path)) {
                (Cause::UnixMissing | Cause::UnixStale, true) => "; nothing is bound to the name now",
                (Cause::UnixMissing, false) => "; the file is gone now",
                (Cause::UnixStale, false) => "; nothing accepts on it now",
                _ => "",
            };
            return ListenerStory {
                listener: named(bind),
                note: format!("{} {when}{tail}", who(bind)),
                closed_ns: None,
            };
        }
        let wildcards = self.wildcards_cover(target);
        if cause == Cause::BacklogFull {
            let live = st
                .kernel_listener
                .clone()
                .filter(|t| t.pid != 0)
                .map(|t| ProcessRef::of(&t))
                .or_else(|| self.listeners.listener_during(netns, target, wildcards, first, last).and_then(named))
                .or_else(|| self.listeners.current(netns, target, wildcards).and_then(named));
            let seen_unnamed = st.kernel_listener.is_some()
                || self.listeners.listener_during(netns, target, wildcards, first, last).is_some();
            return match live {
                Some(p) => ListenerStory { note: format!("{p} listens here"), listener: Some(p), closed_ns: None },
                None if seen_unnamed => {
                    ListenerStory::none("a listener is present here (its owner could not be named)")
                }
                // The verdict then rests on the kernel's ListenOverflows counter alone.
                None => ListenerStory::none(
                    "no listener seen by tracer on this port; the kernel's ListenOverflows counter rose",
                ),
            };
        }
        let closed = self.listeners.last_closed_before(netns, target, wildcards, last);
        let current = self.listeners.current(netns, target, wildcards);
        if cause != Cause::DeadListener {
            if let Some(c) = current.filter(|c| c.start_ns <= last) {
                return ListenerStory { listener: named(c), note: format!("{} listens here", who(c)), closed_ns: None };
            }
        }
        let again = |note: &mut String| {
            if let Some(c) = current.filter(|c| c.start_ns > last) {
                note.push_str(&format!("; {} listens here again since {}", who(c), after_last(c.start_ns, last)));
            }
        };
        match closed {
            Some(e) => {
                let stop = e.stop_ns.unwrap_or(last);
                let mut note = format!("{} listened here and closed {}", who(e), relative(stop, first));
                if let Some(actor) = &e.closed_by {
                    note.push_str(&format!(" (closed by {})", ProcessRef::of(actor)));
                }
                again(&mut note);
                ListenerStory { listener: named(e), note, closed_ns: Some(stop) }
            }
            None => {
                let mut note = "no listener seen on this port since tracing started".to_string();
                if let Some(c) = current {
                    if c.start_ns > last {
                        note = format!(
                            "no listener during the failures; {} listens here since {}",
                            who(c),
                            after_last(c.start_ns, last)
                        );
                    } else {
                        // The kernel found no socket although one is known: another netns or
                        // address binding; say what is known.
                        note = format!(
                            "{} listens on this port (but the kernel found no socket for these attempts)",
                            who(c)
                        );
                    }
                }
                ListenerStory { listener: None, note, closed_ns: None }
            }
        }
    }

    /// "the same process gunicorn (pid 700) listens on 127.0.0.1:8001": a live listener the
    /// clients may have meant (same address, other port; same directory, other path).
    fn wrong_address_hint(
        &self,
        target: &Target,
        netns: u32,
        st: &FindingState,
        last_owner: Option<&ProcessRef>,
    ) -> Option<String> {
        let clients_pids: BTreeSet<u32> = st.clients.iter().map(|c| c.pid).collect();
        let clients_comms: BTreeSet<&str> = st.clients.iter().map(|c| c.comm.as_str()).collect();
        let want_port = match target {
            Target::Tcp(a) => a.port(),
            Target::Unix(_) => 0,
        };
        let want_tcp = match target {
            Target::Tcp(a) => Some(*a),
            Target::Unix(_) => None,
        };
        let best = self
            .listeners
            .neighbours(netns, target)
            .into_iter()
            // The clients' own listeners (nginx on :80) are not what they meant.
            .filter(|(_, e)| {
                e.owner.pid != 0
                    && !clients_pids.contains(&e.owner.pid)
                    && !clients_comms.contains(e.owner.comm.as_str())
            })
            .min_by_key(|(t, e)| {
                let same_pid = last_owner.is_some_and(|o| o.pid == e.owner.pid);
                let same_comm = last_owner.is_some_and(|o| o.comm == e.owner.comm);
                let distance = match t {
                    Target::Tcp(a) => a.port().abs_diff(want_port),
                    Target::Unix(_) => 0,
                };
                (!same_pid, !same_comm, distance, t.clone())
            })?;
        let (addr, e) = best;
        let owner = ProcessRef::of(&e.owner);
        let same = if last_owner.is_some_and(|o| o.pid == owner.pid) { "the same process " } else { "" };
        Some(match addr {
            Target::Tcp(a) if Some(a.port()) == want_tcp.map(|w| w.port()) => format!(
                "{same}{owner} listens on {a} only, not on {}; is proxy_pass (or `localhost`) pointing at the wrong address family?",
                want_tcp.map(|w| w.ip().to_string()).unwrap_or_default()
            ),
            Target::Tcp(a) => format!("{same}{owner} listens on {a}; is proxy_pass pointing at the wrong port?"),
            Target::Unix(p) => format!("{same}{owner} bound {p}; is proxy_pass pointing at the wrong path?"),
        })
    }
}

/// Whether any client is a proxy (`PROXY_COMMS`). No client known: assume one, so nothing is
/// hidden for lack of a name.
fn clients_include_a_proxy<'a>(clients: impl IntoIterator<Item = &'a ProcessRef>) -> bool {
    let mut any = false;
    for c in clients {
        if rules::is_proxy_comm(&c.comm) {
            return true;
        }
        any = true;
    }
    !any
}

impl Finding {
    /// Whether a proxy (Nginx and the like, `PROXY_COMMS`) made these attempts. Findings of
    /// other clients (`logger` on /dev/log) are reported apart, out of the headline.
    pub fn proxy_client(&self) -> bool {
        clients_include_a_proxy(&self.clients)
    }
}

/// Listener facts for a finding.
struct ListenerStory {
    listener: Option<ProcessRef>,
    note: String,
    closed_ns: Option<u64>,
}

impl ListenerStory {
    fn none(note: &str) -> ListenerStory {
        ListenerStory { listener: None, note: note.to_string(), closed_ns: None }
    }
}

/// "1.2 s before the first failed attempt" / "300 ms after the first failed attempt".
fn relative(ts_ns: u64, first_ns: u64) -> String {
    if ts_ns == 0 {
        return "before tracing started".to_string();
    }
    if ts_ns <= first_ns {
        format!("{} before the first failed attempt", duration(first_ns - ts_ns))
    } else {
        format!("{} after the first failed attempt", duration(ts_ns - first_ns))
    }
}

fn after_last(ts_ns: u64, last_ns: u64) -> String {
    format!("{} after the last failed attempt", duration(ts_ns.saturating_sub(last_ns)))
}

/// Evidence label of a Unix connect whose listener's queue the kernel read full.
pub const LABEL_UNIX_PEER_FULL: &str = "unix_stream_connect: peer queue full";

/// The histogram bucket of an accept-queue wait, in milliseconds.
pub const ACCEPT_WAIT_BUCKETS: [&str; 5] = ["<1", "1-10", "10-100", "100-1000", ">=1000"];

pub fn accept_wait_bucket(wait_ns: u64) -> &'static str {
    let ms = wait_ns / 1_000_000;
    match ms {
        0 => ACCEPT_WAIT_BUCKETS[0],
        1..=9 => ACCEPT_WAIT_BUCKETS[1],
        10..=99 => ACCEPT_WAIT_BUCKETS[2],
        100..=999 => ACCEPT_WAIT_BUCKETS[3],
        _ => ACCEPT_WAIT_BUCKETS[4],
    }
}

/// A short human duration: "350 ms", "1.2 s", "2 min 5 s", "1 h 3 min".
pub fn duration(ns: u64) -> String {
    let ms = ns / 1_000_000;
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{} h {} min", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}
