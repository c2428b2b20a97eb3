//! The `Engine`: its state, and the public entry points (`push`, `tick`, `finish`,
//! `findings`). Each event kind goes to a named step in `correlation` (counted repeats to
//! `repeats`); concluding is in `conclusion`, findings in `aggregation`, the words in `story`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};

use crate::event::{Event, EventBody, RecordKind, Queue, Target};

use super::aggregation::{FindingKey, FindingState};
use super::aggregation::accept_wait_bucket;
use super::attempt::{Attempt, AttemptKey, FlowEvidence, FlowKey, ReasonNames};
use super::buffer::KeyedBuffer;
use super::conclusion::ConcludeWhy;
use super::correlation::{IcmpSeen, OverflowRise, TCP_RTO_MAX_NS};
use super::listeners::Listeners;
use super::output::{AttemptRecord, EngineOptions, NginxReadTimeout, Update};
use super::rules::classify_unix;
use super::timeline;
use super::Map;

pub struct Engine {
    pub(super) opts: EngineOptions,
    pub(super) attempts: Map<AttemptKey, Attempt>,
    /// Open attempts by flow, for socket-less evidence.
    pub(super) attempt_by_flow: Map<FlowKey, AttemptKey>,
    /// Socket-less evidence no tracked attempt has claimed yet.
    pub(super) flow_buffer: KeyedBuffer<FlowKey, FlowEvidence>,
    /// ICMP errors sent by this host, by address pair, until an attempt claims them.
    pub(super) icmp_buffer: KeyedBuffer<(IpAddr, IpAddr), IcmpSeen>,
    pub(super) overflows: VecDeque<OverflowRise>,
    pub(super) listeners: Listeners,
    /// Attempts concluded recently: late events for them must not open a new attempt.
    /// (end, key, start_ns); the set maps each key to the start of the attempt concluded last.
    pub(super) recently_concluded: VecDeque<(u64, AttemptKey, u64)>,
    pub(super) recently_concluded_set: Map<AttemptKey, u64>,
    /// Addresses seen as the source of our clients' attempts: addresses of this host.
    pub(super) local_ips: BTreeSet<IpAddr>,
    pub(super) findings: BTreeMap<FindingKey, FindingState>,
    pub(super) changed: BTreeSet<FindingKey>,
    /// Concluded attempts not yet returned by tick()/finish() (bounded; oldest dropped).
    pub(super) ready: VecDeque<AttemptRecord>,
    pub(super) lost: BTreeMap<RecordKind, u64>,
    /// Exits, signals, OOM kills, unlinks and owners' facts, for dead-listener timelines.
    pub(super) lifecycle: timeline::Lifecycle,
    /// Per listener (address, netns): how long accepted connections waited in its accept
    /// queue, as a histogram (bucket label -> count). Function-hook backend only.
    pub(super) accept_waits: BTreeMap<(Target, u32), BTreeMap<&'static str, u64>>,
    /// The kernel's own accept-wait histograms per listener (absolute totals, replaced on
    /// each reading), bucket i = ACCEPT_WAIT_BUCKETS[i].
    pub(super) accept_wait_totals: BTreeMap<(Target, u32), [u64; 5]>,
    /// Unix listeners' queues read in the kernel at EAGAIN connects: (ts, netns, path, queue).
    pub(super) unix_peer_queues: VecDeque<(u64, u32, String, Queue)>,
    /// After the connect: Nginx's and the upstream's sides of connections that ended badly.
    pub(super) after: super::after_connect::AfterState,
    /// The addresses of this host's network namespaces (which one serves a target).
    pub(super) book: super::namespaces::AddressBook,
    pub(super) reason_names: ReasonNames,
    /// Refused attempts the kernel counted instead of sending, and the exemplars they copy.
    pub(super) repeats: super::repeats::Repeats,
    /// Nginx's read timeout per (netns, target), in ms (the smallest when several Nginx
    /// configure one): facts from the configurations, set by `set_read_timeouts`.
    pub(super) read_timeouts: Map<(u32, Target), u64>,
}

impl Engine {
    pub fn new(opts: EngineOptions) -> Engine {
        let max = opts.max_tracked.max(1);
        Engine {
            opts: EngineOptions { max_tracked: max, ..opts },
            attempts: Map::default(),
            attempt_by_flow: Map::default(),
            flow_buffer: KeyedBuffer::new(max),
            icmp_buffer: KeyedBuffer::new(max),
            overflows: VecDeque::new(),
            listeners: Listeners::new(max),
            recently_concluded: VecDeque::new(),
            recently_concluded_set: Map::default(),
            local_ips: BTreeSet::new(),
            findings: BTreeMap::new(),
            changed: BTreeSet::new(),
            ready: VecDeque::new(),
            lost: BTreeMap::new(),
            lifecycle: timeline::Lifecycle::new(max),
            accept_waits: BTreeMap::new(),
            unix_peer_queues: VecDeque::new(),
            accept_wait_totals: BTreeMap::new(),
            after: super::after_connect::AfterState::new(max),
            book: Default::default(),
            reason_names: ReasonNames::default(),
            repeats: super::repeats::Repeats::new(max),
            read_timeouts: Map::default(),
        }
    }

    /// Replaces the read timeouts the running Nginx configure (given again whenever their
    /// configurations are read: at start, and when a master starts, reloads or exits). A
    /// connection Nginx closed clearly before its target's timeout was not a timeout.
    pub fn set_read_timeouts(&mut self, timeouts: Vec<NginxReadTimeout>) {
        self.read_timeouts.clear();
        for t in timeouts {
            // Several Nginx (or blocks) for one target: the smallest, so that a close after it
            // is never taken for a client abort.
            let ms = self.read_timeouts.entry((t.netns, t.target)).or_insert(t.timeout_ms);
            *ms = (*ms).min(t.timeout_ms);
        }
    }

    /// Feed one event (events come roughly in ts order; evidence for a flow may arrive up to
    /// grace_ns AFTER the attempt's close event).
    pub fn push(&mut self, ev: &Event) {
        if ev.connect_found_no_local_port().is_some() {
            return self.after_connect_event(ev);
        }
        match &ev.body {
            EventBody::TcpAttemptFailed { .. }
            | EventBody::TcpSynRetransmit { .. }
            | EventBody::TcpAttemptDelayed { .. }
            | EventBody::TcpRstReceived { .. } => self.attempt_event(ev),
            EventBody::TcpAttemptRepeats { flow, count } => self.attempt_repeats_event(ev, flow, *count),
            EventBody::TcpRstSentNoSocket { .. }
            | EventBody::SkbDropped { .. }
            | EventBody::IcmpSent { .. }
            | EventBody::TcpListenOverflow { .. }
            | EventBody::FirewallRule { .. } => self.socketless_event(ev),
            EventBody::TcpListenStart { addr, .. } => {
                self.lifecycle.push(ev);
                self.listeners.listen_start(ev.netns, *addr, &ev.task, ev.sock, ev.ts_ns)
            }
            EventBody::TcpListenStop { addr, actor } => {
                self.listeners.listen_stop(ev.netns, *addr, &ev.task, actor, ev.sock, ev.ts_ns)
            }
            EventBody::UnixBind { path } => self.listeners.unix_bind(ev.netns, path, &ev.task, ev.ts_ns),
            EventBody::ListenerSeen { target, queue } => {
                self.listeners.seen(ev.netns, target, *queue, &ev.task, ev.ts_ns, self.opts.evidence_ttl_ns)
            }
            EventBody::UnixConnectFailed { path, errno } => {
                if let Some(cause) = classify_unix(*errno, path) {
                    self.conclude_unix(ev, path, *errno, cause);
                }
            }
            EventBody::UnixPeerQueue { path, queue } => self.keep_unix_peer_queue(ev, path, *queue),
            EventBody::ListenOverflows { delta } => self.keep_overflow_rise(ev, *delta),
            EventBody::AcceptWaitTotals { listener, counts } => {
                let key = (Target::Tcp(*listener), ev.netns);
                if self.accept_wait_totals.contains_key(&key) || self.accept_wait_totals.len() < self.opts.max_tracked {
                    self.accept_wait_totals.insert(key, *counts);
                }
            }
            EventBody::TcpAccepted { flow, wait_ns, .. } => self.count_accept_wait(ev, flow.dst, *wait_ns),
            EventBody::Lost { kind, count } => *self.lost.entry(*kind).or_insert(0) += count,
            EventBody::TcpConnEnded { .. } | EventBody::PortsInUse { .. } | EventBody::ConnHolder { .. } => {
                self.after_connect_event(ev)
            }
            EventBody::NatMapping { .. } | EventBody::NetnsAddresses { .. } => self.namespace_event(ev),
            EventBody::ProcessExit { .. }
            | EventBody::SignalGenerated { .. }
            | EventBody::OomKilled
            | EventBody::UnixUnlink { .. }
            | EventBody::ProcessInfo { .. } => self.lifecycle.push(ev),
        }
    }

    /// A Unix listener's queue read at an EAGAIN connect: kept until the failure it precedes
    /// concludes (bounded).
    fn keep_unix_peer_queue(&mut self, ev: &Event, path: &str, queue: Queue) {
        if self.unix_peer_queues.len() >= 1024 {
            self.unix_peer_queues.pop_front();
        }
        self.unix_peer_queues.push_back((ev.ts_ns, ev.netns, path.to_string(), queue));
    }

    /// A rise of the netns' ListenOverflows counter: kept for the attempts of its moment.
    fn keep_overflow_rise(&mut self, ev: &Event, delta: u64) {
        if delta == 0 {
            return;
        }
        if self.overflows.len() >= self.opts.max_tracked {
            self.overflows.pop_front();
        }
        self.overflows.push_back(OverflowRise { ts_ns: ev.ts_ns, netns: ev.netns, delta, counted: false });
    }

    /// One accepted connection's wait in its listener's queue, into that listener's histogram.
    fn count_accept_wait(&mut self, ev: &Event, listener: SocketAddr, wait_ns: u64) {
        let key = (Target::Tcp(listener), ev.netns);
        if !self.accept_waits.contains_key(&key) && self.accept_waits.len() >= self.opts.max_tracked {
            return;
        }
        let h = self.accept_waits.entry(key).or_default();
        *h.entry(accept_wait_bucket(wait_ns)).or_insert(0) += 1;
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
        self.expire_repeats(now_ns);
        self.conclude_after_connect(now_ns);
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
        self.lose_all_held_repeats();
        self.conclude_after_connect(u64::MAX);
        self.drain_updates()
    }


    pub fn lost_events(&self) -> BTreeMap<RecordKind, u64> {
        self.lost.clone()
    }

    /// Attempts currently followed (open, or closed and waiting out the grace period).
    pub fn tracked_attempts(&self) -> usize {
        self.attempts.len()
    }

    /// Socket-less evidence, ICMP errors, counter rises and counted repeats waiting for an
    /// attempt, plus known listener addresses: everything else that grows with traffic.
    pub fn buffered_evidence(&self) -> usize {
        self.flow_buffer.len()
            + self.icmp_buffer.len()
            + self.overflows.len()
            + self.listeners.len()
            + self.repeats.held_len()
    }
}
