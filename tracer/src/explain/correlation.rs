//! Correlation: which attempt an event belongs to. Socket events find their attempt by
//! (socket, flow); socket-less evidence (resets, drops, ICMP errors) by flow or addresses,
//! waiting in bounded buffers when it comes first; and the bookkeeping that keeps late
//! events of concluded attempts from opening new ones.

use std::collections::hash_map::Entry;
use std::net::IpAddr;

use crate::event::{Event, EventBody, FlowAddr, Target};

use super::attempt::{drop_reason_name, rst_reason_name, Attempt, AttemptKey, Close, FlowEvidence, FlowEvidenceKind, FlowKey};
use super::conclusion::ConcludeWhy;
use super::engine::Engine;
use super::output::RuleFacts;

/// An ICMP error this host sent; matched to an attempt by addresses, and by ports when the
/// kernel could read them from the offending packet (0 when unknown).
#[derive(Clone, Debug)]
pub(super) struct IcmpSeen {
    pub(super) ts_ns: u64,
    pub(super) icmp_type: u8,
    pub(super) code: u8,
    pub(super) ports: (u16, u16),
}

impl IcmpSeen {
    /// Whether this ICMP can be about `flow`: ports unknown, or the same ports either way round.
    pub(super) fn ports_match(&self, flow: &FlowAddr) -> bool {
        let (a, b) = self.ports;
        (a == 0 && b == 0)
            || (a, b) == (flow.src.port(), flow.dst.port())
            || (a, b) == (flow.dst.port(), flow.src.port())
    }
}

/// The two addresses of a packet in a fixed order (an ICMP may be about either direction).
pub(super) fn address_pair(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// A rise of TcpExtListenOverflows in a netns.
#[derive(Clone, Debug)]
pub(super) struct OverflowRise {
    pub(super) ts_ns: u64,
    pub(super) netns: u32,
    pub(super) delta: u64,
    /// Already added to a finding's evidence (one rise may match many attempts).
    pub(super) counted: bool,
}

impl OverflowRise {
    /// Whether this rise can be about an attempt in `netns` between `from` and `to` (a netns
    /// of 0 is unknown and matches any).
    pub(super) fn during(&self, netns: u32, from: u64, to: u64) -> bool {
        (self.netns == netns || self.netns == 0 || netns == 0) && self.ts_ns >= from && self.ts_ns <= to
    }
}

/// An ICMP may precede the attempt's first event slightly (it is sent while the SYN leaves).
pub(super) const ICMP_SLACK_NS: u64 = 1_000_000_000;

/// Evidence buffered before an attempt's first event must not predate its connect() by more.
pub(super) const START_SLACK_NS: u64 = 10_000_000;
/// TCP's longest retransmit interval (TCP_RTO_MAX): an open attempt silent for longer than
/// this plus the evidence TTL lost its close event.
pub(super) const TCP_RTO_MAX_NS: u64 = 120_000_000_000;
/// Bound on remembered local addresses (used to decide what a wildcard listener covers).
pub(super) const MAX_LOCAL_IPS: usize = 1024;


impl Engine {
    /// An event of an attempt's own socket: updates its attempt (created on first sight).
    pub(super) fn attempt_event(&mut self, ev: &Event) {
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
            _ => {}
        }
    }

    /// An event with no socket of the attempt (a reset or drop by the stack, an ICMP error, a
    /// SYN-time overflow): matched to its attempt by flow or addresses, or kept until one
    /// claims it. Without parsed addresses it cannot be tied to anything (for overflows, the
    /// ListenOverflows counter tells the same story then).
    pub(super) fn socketless_event(&mut self, ev: &Event) {
        let (flow, kind) = match &ev.body {
            EventBody::TcpRstSentNoSocket { flow, reason } => {
                let reason = self.reason_names.get(rst_reason_name(reason.as_deref()));
                (*flow, FlowEvidenceKind::ResetFromNoSocket { reason })
            }
            EventBody::SkbDropped { flow: Some(flow), reason } => {
                (*flow, FlowEvidenceKind::Dropped { reason: self.reason_names.get(drop_reason_name(reason)) })
            }
            EventBody::FirewallRule { flow, rules, certain, enter_pid, netns_name } => {
                let facts = RuleFacts {
                    netns: ev.netns,
                    rules: rules.clone(),
                    certain: *certain,
                    enter_pid: *enter_pid,
                    netns_name: netns_name.clone(),
                };
                (*flow, FlowEvidenceKind::RuleNamed(facts))
            }
            EventBody::TcpListenOverflow { flow: Some(flow), queue, listener, .. } => {
                (*flow, FlowEvidenceKind::SynOverflow { queue: *queue, listener: listener.clone() })
            }
            EventBody::IcmpSent { flow, icmp_type, code } => {
                let seen = IcmpSeen {
                    ts_ns: ev.ts_ns,
                    icmp_type: *icmp_type,
                    code: *code,
                    ports: (flow.src.port(), flow.dst.port()),
                };
                self.icmp_buffer.push(address_pair(flow.src.ip(), flow.dst.ip()), seen);
                return;
            }
            _ => return,
        };
        self.flow_evidence(FlowEvidence { ts_ns: ev.ts_ns, flow, kind });
    }


    // ---- matching -------------------------------------------------------------------------

    /// The attempt an event of socket `ev.sock` on `flow` belongs to, created on first sight.
    /// None for late events of an attempt already concluded.
    pub(super) fn attempt_mut(&mut self, ev: &Event, flow: &FlowAddr, start_ns: u64) -> Option<&mut Attempt> {
        let key = AttemptKey::new(ev.sock, flow);
        // Socket memory and ephemeral ports are both reused: in a flood the same (socket, flow)
        // comes back within a fraction of a second. An event of an attempt that started after
        // the one known under this key is a new attempt, not a late event of the old one.
        let newer = |known_start: u64| start_ns != 0 && known_start != 0 && start_ns > known_start;
        let followed = match self.attempts.get(&key) {
            None => false,
            Some(a) if a.close.is_some() && a.start_known && newer(a.start_ns) => {
                // Evidence from the new attempt's start on is the new attempt's.
                self.conclude_tcp_before(&key, ConcludeWhy::Closed, start_ns.saturating_sub(START_SLACK_NS));
                false
            }
            Some(_) => true,
        };
        let a = if followed {
            self.attempts.get_mut(&key)?
        } else {
            if let Entry::Occupied(concluded) = self.recently_concluded_set.entry(key) {
                if !newer(*concluded.get()) {
                    return None;
                }
                concluded.remove();
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
            self.attempts.entry(key).or_insert(a)
        };
        a.set_client(&ev.task);
        a.set_start(start_ns);
        a.touch(ev.ts_ns);
        Some(a)
    }

    /// Socket-less evidence: to its attempt if one is followed, else buffered for one to come.
    pub(super) fn flow_evidence(&mut self, e: FlowEvidence) {
        let fk = FlowKey::of(&e.flow);
        if let Some(a) = self.attempt_by_flow.get(&fk).and_then(|k| self.attempts.get_mut(k)) {
            // A packet going to the target after the attempt closed was sent by a later
            // attempt on the same ports (a closed SYN_SENT socket sends nothing more): it
            // waits for that one. Answers going to the client may still arrive late.
            let to_target = a.goes_to_target(&e.flow);
            // A named rule is measured after the drop it names, maybe after the close.
            let named = matches!(e.kind, FlowEvidenceKind::RuleNamed(_));
            let after_close = !named && a.close.is_some_and(|c| e.ts_ns > c.ts_ns());
            if !(to_target && after_close) {
                a.apply_flow_evidence(&e);
                return;
            }
        }
        self.flow_buffer.push(fk, e);
    }

    /// Claims the ICMP error this host sent for attempt `a`: addresses match (either
    /// orientation) and it was sent during the attempt; the one closest to its end wins.
    pub(super) fn claim_icmp(&mut self, a: &Attempt, to_ns: u64) -> Option<IcmpSeen> {
        let (from, end) = (a.start_ns.saturating_sub(ICMP_SLACK_NS), a.end_ns());
        let pair = address_pair(a.flow.src.ip(), a.flow.dst.ip());
        let best = self
            .icmp_buffer
            .get(&pair)
            .filter(|(_, i)| i.ts_ns >= from && i.ts_ns <= to_ns && i.ports_match(&a.flow))
            // Prefer one sent before the close (it caused it), closest to it.
            .min_by_key(|(_, i)| (i.ts_ns > end, i.ts_ns.abs_diff(end)))
            .map(|(seq, _)| seq)?;
        self.icmp_buffer.remove(&pair, best)
    }

    /// Whether `ip` is an address of this host, as far as the engine can tell: loopback, or
    /// the source address of one of our clients' attempts.
    pub(super) fn is_local_ip(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || ip.is_unspecified() || self.local_ips.contains(&ip) || self.book.has(ip)
    }

    /// Whether wildcard listeners (0.0.0.0:P, [::]:P) of this host cover `target`: only when
    /// the target is an address of this host.
    pub(super) fn wildcards_cover(&self, target: &Target) -> bool {
        match target {
            Target::Tcp(a) => self.is_local_ip(a.ip()),
            Target::Unix(_) => false,
        }
    }


    pub(super) fn remember_concluded(&mut self, ts_ns: u64, key: AttemptKey, start_ns: u64) {
        self.recently_concluded_set.insert(key, start_ns);
        self.recently_concluded.push_back((ts_ns, key, start_ns));
        while self.recently_concluded.len() > self.opts.max_tracked {
            self.forget_concluded();
        }
    }

    /// Forgets the oldest concluded attempt (unless its key was concluded again since).
    pub(super) fn forget_concluded(&mut self) {
        if let Some((_, k, start)) = self.recently_concluded.pop_front() {
            if self.recently_concluded_set.get(&k) == Some(&start) {
                self.recently_concluded_set.remove(&k);
            }
        }
    }

    /// Concludes the least recently active sixteenth of the table to make room.
    pub(super) fn evict_oldest(&mut self) {
        let n = (self.opts.max_tracked / 16).max(1);
        let mut by_age: Vec<(u64, AttemptKey)> = self.attempts.values().map(|a| (a.last_event_ns, a.key)).collect();
        by_age.sort();
        for (_, key) in by_age.into_iter().take(n) {
            let why = if self.attempts[&key].close.is_some() { ConcludeWhy::Closed } else { ConcludeWhy::Evicted };
            self.conclude_tcp(&key, why);
        }
    }

    pub(super) fn expire(&mut self, now_ns: u64) {
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
}
