//! One TCP connection attempt (a socket in SYN_SENT) and the evidence matched to it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::event::{FlowAddr, Queue, TaskInfo};

use super::evidence::{Evidence, EvidenceCounts};
use super::output::RuleFacts;
use super::rules::{drop_meaning, DropMeaning};
use super::ProcessRef;

/// Identity of an attempt: the kernel socket address plus its flow (socket memory is reused,
/// so the address alone could merge two attempts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptKey {
    pub sock: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl AttemptKey {
    pub fn new(sock: u64, flow: &FlowAddr) -> AttemptKey {
        AttemptKey { sock, src: flow.src, dst: flow.dst }
    }
}

/// A flow with its two endpoints in a fixed order, so a packet and its answer share one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey(SocketAddr, SocketAddr);

impl FlowKey {
    pub fn of(flow: &FlowAddr) -> FlowKey {
        if flow.src <= flow.dst {
            FlowKey(flow.src, flow.dst)
        } else {
            FlowKey(flow.dst, flow.src)
        }
    }
}

/// Evidence about a flow from an event that has no socket (the packet's socket is gone or
/// never existed): matched to attempts by flow.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowEvidence {
    pub ts_ns: u64,
    /// As the event gave it: client->target for resets, the packet's direction for drops.
    pub flow: FlowAddr,
    pub kind: FlowEvidenceKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FlowEvidenceKind {
    /// tcp_send_reset with no socket: nothing listened on `flow.dst`. The reason's name
    /// without the SK_RST_REASON_ prefix (`NO_SOCKET` when the kernel gave none).
    ResetFromNoSocket { reason: Arc<str> },
    /// kfree_skb with a drop reason (name without the SKB_DROP_REASON_ prefix).
    Dropped { reason: Arc<str> },
    /// tcp_conn_request found the listener's accept queue full when this SYN arrived (the
    /// kernel drops it there, with no drop reason): the queue as read then, and its owner.
    SynOverflow { queue: Queue, listener: Option<TaskInfo> },
    /// The netfilter rule that dropped a packet of this flow, read from the ruleset of the
    /// namespace of the drop (enrich).
    RuleNamed(RuleFacts),
}

/// One SYN dropped by tcp_conn_request on a full accept queue: when, the queue then, and
/// the listener's owner when known.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SynOverflow {
    pub ts_ns: u64,
    pub queue: Queue,
    pub listener: Option<ProcessRef>,
}

/// Bound on the overflow samples kept per attempt and per finding.
pub const MAX_OVERFLOW_SAMPLES: usize = 16;

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// SYN_SENT -> CLOSE with this socket error (0: closed by its owner).
    Failed { ts_ns: u64, sk_err: i32 },
    /// SYN_SENT -> ESTABLISHED after retransmits.
    Delayed { ts_ns: u64 },
}

impl Close {
    pub fn ts_ns(&self) -> u64 {
        match *self {
            Close::Failed { ts_ns, .. } | Close::Delayed { ts_ns } => ts_ns,
        }
    }
}

/// One attempt being followed.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub key: AttemptKey,
    pub flow: FlowAddr,
    pub netns: u32,
    /// The socket's owner recorded at connect time.
    pub client: TaskInfo,
    /// connect() time when the kernel told us; else the first event's time.
    pub start_ns: u64,
    pub start_known: bool,
    pub last_event_ns: u64,
    pub close: Option<Close>,
    pub syn_retransmits: u32,
    pub rst_received: bool,
    /// Accept queue samples read in the kernel at SYN retransmits.
    pub kernel_queue_full_samples: u64,
    pub fullest_queue: Option<Queue>,
    /// The local listener on the target, as read in the kernel at a SYN retransmit.
    pub kernel_listener: Option<TaskInfo>,
    pub netfilter_drops: u64,
    /// Resets / NO_SOCKET drops for packets going TO the target: nothing listened there.
    pub no_socket_to_target: u64,
    pub resets_sent_to_target: u64,
    pub listen_overflow_drops: u64,
    /// SYNs of this attempt dropped by tcp_conn_request on a full accept queue.
    pub syn_overflows: u64,
    /// The listener's queue at each of them (the first few).
    pub overflow_samples: Vec<SynOverflow>,
    /// What the socket-less events matched to it proved.
    pub flow_evidence: EvidenceCounts,
    /// The flow after NAT (the real backend as destination), when conntrack showed one.
    pub nat_flow: Option<FlowAddr>,
    /// The netfilter rule named for a drop of this attempt's packets (the latest).
    pub firewall_rule: Option<RuleFacts>,
}

impl Attempt {
    pub fn new(key: AttemptKey, flow: FlowAddr, netns: u32, client: TaskInfo, ts_ns: u64) -> Attempt {
        Attempt {
            key,
            flow,
            netns,
            client,
            start_ns: ts_ns,
            start_known: false,
            last_event_ns: ts_ns,
            close: None,
            syn_retransmits: 0,
            rst_received: false,
            kernel_queue_full_samples: 0,
            fullest_queue: None,
            kernel_listener: None,
            netfilter_drops: 0,
            no_socket_to_target: 0,
            resets_sent_to_target: 0,
            listen_overflow_drops: 0,
            syn_overflows: 0,
            overflow_samples: Vec::new(),
            flow_evidence: EvidenceCounts::new(),
            nat_flow: None,
            firewall_rule: None,
        }
    }

    /// Records the connect() time when an event carries it.
    pub fn set_start(&mut self, start_ns: u64) {
        if start_ns != 0 && (!self.start_known || start_ns < self.start_ns) {
            self.start_ns = start_ns;
            self.start_known = true;
        }
    }

    /// Events of the same socket may carry an owner only later (pid 0 = unknown).
    pub fn set_client(&mut self, task: &TaskInfo) {
        if self.client.pid == 0 && task.pid != 0 {
            self.client = task.clone();
        }
    }

    pub fn touch(&mut self, ts_ns: u64) {
        self.last_event_ns = self.last_event_ns.max(ts_ns);
        if !self.start_known {
            self.start_ns = self.start_ns.min(ts_ns);
        }
    }

    /// The moment the attempt ended (close), or its last sign of life when still open.
    pub fn end_ns(&self) -> u64 {
        self.close.map(|c| c.ts_ns()).unwrap_or(self.last_event_ns)
    }

    pub fn note_queue(&mut self, q: Queue) {
        if q.is_full() {
            self.kernel_queue_full_samples += 1;
        }
        self.fullest_queue = Some(fuller(self.fullest_queue, q));
    }

    /// Whether a packet of `flow` goes from the client to the target (or, after NAT, to the
    /// real backend).
    pub fn goes_to_target(&self, flow: &FlowAddr) -> bool {
        let same = |f: &FlowAddr| flow.src == f.src && flow.dst == f.dst;
        same(&self.flow) || self.nat_flow.as_ref().is_some_and(same)
    }

    /// Adds one socket-less event matched to this attempt by flow.
    pub fn apply_flow_evidence(&mut self, ev: &FlowEvidence) {
        // A reset or NO_SOCKET drop of a packet going to the client (e.g. a late SYN-ACK after
        // the client gave up) says nothing about the target's listener.
        let to_target = self.goes_to_target(&ev.flow);
        let evidence = match &ev.kind {
            FlowEvidenceKind::ResetFromNoSocket { reason } => self.note_reset_sent(reason, to_target),
            FlowEvidenceKind::Dropped { reason } => self.note_drop(reason, to_target),
            FlowEvidenceKind::SynOverflow { queue, listener } => {
                if !to_target {
                    return;
                }
                self.note_syn_overflow(ev.ts_ns, *queue, listener.as_ref())
            }
            // A measurement, not evidence: it names the rule; the drop itself counted.
            FlowEvidenceKind::RuleNamed(rule) => {
                self.firewall_rule = Some(rule.clone());
                return;
            }
        };
        self.flow_evidence.add(evidence, 1);
    }

    fn note_reset_sent(&mut self, reason: &Arc<str>, to_target: bool) -> Evidence {
        if to_target {
            self.no_socket_to_target += 1;
            self.resets_sent_to_target += 1;
        }
        Evidence::ResetSent { reason: reason.clone(), to_client: !to_target }
    }

    fn note_drop(&mut self, reason: &Arc<str>, to_target: bool) -> Evidence {
        let meaning = drop_meaning(reason);
        match meaning {
            // Netfilter drops count in either direction: a dropped SYN or a dropped answer.
            Some(DropMeaning::Netfilter) => self.netfilter_drops += 1,
            Some(DropMeaning::NoSocket) if to_target => self.no_socket_to_target += 1,
            Some(DropMeaning::ListenOverflow) => self.listen_overflow_drops += 1,
            _ => {}
        }
        let to_client = !to_target && meaning != Some(DropMeaning::Netfilter);
        Evidence::Dropped { reason: reason.clone(), to_client }
    }

    fn note_syn_overflow(&mut self, ts_ns: u64, queue: Queue, listener: Option<&TaskInfo>) -> Evidence {
        self.syn_overflows += 1;
        if self.overflow_samples.len() < MAX_OVERFLOW_SAMPLES {
            self.overflow_samples.push(SynOverflow {
                ts_ns,
                queue,
                listener: listener.filter(|l| l.pid != 0).map(ProcessRef::of),
            });
        }
        self.fullest_queue = Some(fuller(self.fullest_queue, queue));
        if let Some(l) = listener {
            if l.pid != 0 || self.kernel_listener.is_none() {
                self.kernel_listener = Some(l.clone());
            }
        }
        Evidence::SynOverflow
    }

    /// The socket error it closed with (0 when closed by its owner or still open).
    pub fn sk_err(&self) -> i32 {
        match self.close {
            Some(Close::Failed { sk_err, .. }) => sk_err,
            _ => 0,
        }
    }

    /// What fired, for this attempt alone; taken at its conclusion (its socket-less evidence
    /// moves into the result).
    pub fn take_evidence(&mut self) -> EvidenceCounts {
        let mut e = std::mem::take(&mut self.flow_evidence);
        if self.rst_received {
            e.set(Evidence::ResetReceived, 1);
        }
        if self.syn_retransmits > 0 {
            e.set(Evidence::SynRetransmits, self.syn_retransmits as u64);
        }
        if self.kernel_queue_full_samples > 0 {
            e.set(Evidence::KernelQueueFull, self.kernel_queue_full_samples);
        }
        let sk_err = self.sk_err();
        if sk_err != 0 {
            e.set(Evidence::ConnectErrno(sk_err), 1);
        }
        e
    }
}

/// The fuller of two queue samples (higher len/max; ties: the longer queue).
pub fn fuller(a: Option<Queue>, b: Queue) -> Queue {
    match a {
        None => b,
        Some(a) => {
            // Compare len/max without division: a.len * b.max vs b.len * a.max.
            let (fa, fb) = (a.len as u64 * b.max.max(1) as u64, b.len as u64 * a.max.max(1) as u64);
            if fb > fa || (fb == fa && b.len > a.len) {
                b
            } else {
                a
            }
        }
    }
}

/// Strips the kernel enum prefix from a drop reason name.
pub fn drop_reason_name(reason: &str) -> &str {
    // A prefix compare: `trim_start_matches` builds a substring searcher per call (a twentieth of the
    // engine's instructions in a flood).
    reason.strip_prefix("SKB_DROP_REASON_").unwrap_or(reason)
}

/// Strips the kernel enum prefix from a reset reason name; `NO_SOCKET` when there is none.
pub fn rst_reason_name(reason: Option<&str>) -> &str {
    reason.map(|r| r.strip_prefix("SK_RST_REASON_").unwrap_or(r)).unwrap_or("NO_SOCKET")
}

/// Bound on the reason names kept: the kernel's enums have a few hundred, but a replayed
/// stream may carry any text.
const MAX_REASON_NAMES: usize = 1024;

/// The drop and reset reason names seen, one shared copy of each: every event of a flood
/// carries the same few names, and each attempt's evidence and its finding's hold them.
#[derive(Debug, Default)]
pub struct ReasonNames(HashSet<Arc<str>, ahash::RandomState>);

impl ReasonNames {
    pub fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.0.get(name) {
            return known.clone();
        }
        let name: Arc<str> = name.into();
        if self.0.len() < MAX_REASON_NAMES {
            self.0.insert(name.clone());
        }
        name
    }
}
