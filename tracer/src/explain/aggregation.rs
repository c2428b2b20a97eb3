//! Aggregation: concluded attempts summed into findings per (cause, target, netns), and a
//! finding's current state told as a `Finding` (its words come from `story` and `rules`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::event::{Queue, Target, TaskInfo};

use super::attempt::{fuller, SynOverflow};
use super::engine::Engine;
use super::evidence::{Evidence, EvidenceCounts};
use super::output::{clients_include_a_proxy, AttemptRecord, Finding, Outcome, ProcessRef, Update};
use super::cause_words::{ListenerFacts, Wording};
use super::rules::Cause;
use super::{timeline, words};

/// sock_diag samples are taken periodically: one shortly before an attempt still describes it.
pub(super) const SAMPLE_SLACK_NS: u64 = 1_000_000_000;

pub(super) type FindingKey = (Cause, Target, u32);

/// Aggregate of the attempts of one finding.
#[derive(Clone, Debug)]
pub(super) struct FindingState {
    pub(super) count: u64,
    pub(super) delayed: u64,
    pub(super) pending: u64,
    pub(super) clients: BTreeSet<ProcessRef>,
    pub(super) uids: BTreeSet<u32>,
    pub(super) evidence: EvidenceCounts,
    pub(super) first_seen_ns: u64,
    pub(super) last_seen_ns: u64,
    pub(super) fullest_queue: Option<Queue>,
    /// The listener's queue at SYN-time overflows (tcp_conn_request), latest few.
    pub(super) syn_overflows: VecDeque<SynOverflow>,
    /// The listener on the target as the kernel read it at a SYN retransmit (latest).
    pub(super) kernel_listener: Option<TaskInfo>,
    pub(super) syn_retransmits: u64,
    pub(super) resets_sent: u64,
    pub(super) netfilter_drops: u64,
    pub(super) rejected_by_reset: u64,
    pub(super) rejected_by_icmp: u64,
    /// After-connect causes and ports_exhausted: the latest failure's facts.
    pub(super) after: Option<AfterConnect>,
    /// The real backend behind the target (NAT), the latest seen.
    pub(super) backend: Option<std::net::SocketAddr>,
    /// Firewall causes: the rule named for the latest attempt that had one.
    pub(super) rule: Option<super::output::RuleFacts>,
}

/// The facts of an after-connect failure (or a connect that found no local port), kept per
/// finding: the latest one's.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct AfterConnect {
    pub(super) upstream_process: Option<ProcessRef>,
    pub(super) death: Option<super::output::Death>,
    pub(super) connection: super::output::ConnectionFacts,
    pub(super) ports: Option<super::output::PortsFacts>,
}

impl FindingState {
    pub(super) fn new(first_seen_ns: u64) -> FindingState {
        FindingState {
            count: 0,
            delayed: 0,
            pending: 0,
            clients: BTreeSet::new(),
            uids: BTreeSet::new(),
            evidence: EvidenceCounts::new(),
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
            after: None,
            backend: None,
            rule: None,
        }
    }
}


impl Engine {

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
    pub(super) fn accept_wait_histogram(&self, key: &(Target, u32)) -> BTreeMap<String, u64> {
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

    /// Adds one concluded attempt (or `r.count` identical ones) to its finding.
    pub(super) fn aggregate(&mut self, key: &FindingKey, r: &AttemptRecord, extra: impl FnOnce(&mut FindingState)) {
        let st = self.findings.entry(key.clone()).or_insert_with(|| FindingState::new(r.start_ns));
        st.count += r.count;
        match r.outcome {
            Outcome::Delayed => st.delayed += r.count,
            Outcome::Pending => st.pending += r.count,
            Outcome::Failed => {}
        }
        if !has_client(&st.clients, &r.client) {
            st.clients.insert(ProcessRef::of(&r.client));
        }
        for (e, n) in r.evidence.iter() {
            // Counted once per finding in conclude_tcp, not per attempt.
            if *e != Evidence::ListenOverflows {
                st.evidence.add_to(e, n);
            }
        }
        st.first_seen_ns = st.first_seen_ns.min(r.start_ns);
        st.last_seen_ns = st.last_seen_ns.max(r.ts_ns);
        extra(st);
        self.changed.insert(key.clone());
    }

    pub(super) fn push_ready(&mut self, r: AttemptRecord) {
        // Bounded when tick() is not called for a long time; findings stay complete.
        if self.ready.len() >= self.opts.max_tracked {
            self.ready.pop_front();
        }
        self.ready.push_back(r);
    }


    pub(super) fn drain_updates(&mut self) -> Vec<Update> {
        for r in self.repeats.take_unreported() {
            self.push_ready(r);
        }
        // Unix attempts conclude as they come, TCP ones after their grace: report in time order.
        self.ready.make_contiguous().sort_by_key(|r| r.ts_ns);
        let changed = std::mem::take(&mut self.changed);
        let mut out = Vec::with_capacity(self.ready.len() + changed.len());
        out.extend(self.ready.drain(..).map(Update::Attempt));
        for key in changed {
            if let Some(st) = self.findings.get(&key) {
                out.push(Update::Finding(self.snapshot(&key, st)));
            }
        }
        out
    }

    // ---- findings -------------------------------------------------------------------------

    /// A finding's current state, told: its facts, the listener's story and the words.
    pub(super) fn snapshot(&self, key: &FindingKey, st: &FindingState) -> Finding {
        let (cause, target, netns) = (key.0, &key.1, key.2);
        // The listener's side: the namespace that serves the target, behind NAT the backend.
        let (place_netns, place) = self.finding_place(netns, target, st.backend);
        let uids: Vec<u32> = st.uids.iter().copied().collect();
        let queue = self.finding_queue(cause, &place, place_netns, st);
        let about = self.listener_situation(cause, &place, place_netns, st);
        let listener = about.listener().cloned();
        let listener_unit = listener.as_ref().and_then(|l| self.lifecycle.unit_of(l.pid));
        let wording = Wording {
            listener: listener.as_ref().map(|l| ListenerFacts { comm: &l.comm, pid: l.pid, unit: listener_unit }),
            proxy_client: clients_include_a_proxy(&st.clients),
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
            upstream_process: st.after.as_ref().and_then(|a| a.upstream_process.as_ref()),
            death: st.after.as_ref().and_then(|a| a.death.as_ref()),
            connection: st.after.as_ref().map(|a| &a.connection),
            ports: st.after.as_ref().and_then(|a| a.ports.as_ref()),
            rule: st.rule.as_ref(),
        };
        let hint = match cause {
            Cause::DeadListener | Cause::UnixMissing | Cause::UnixStale => {
                self.neighbour(&place, place_netns, st, listener.as_ref()).map(|n| words::hint(&n))
            }
            _ => None,
        };
        let (detail, mut fix) = (cause.detail(&wording), cause.fix(&wording));
        let timeline = self.timeline(cause, &place, place_netns, st);
        if let Some(more) = timeline::fix_addendum(&timeline, listener_unit) {
            fix = format!("{fix} {more}");
        }
        let accept_wait_ms = match cause {
            Cause::BacklogFull => self.accept_wait_histogram(&(target.clone(), netns)),
            _ => BTreeMap::new(),
        };
        let mut syn_overflows: Vec<SynOverflow> = st.syn_overflows.iter().cloned().collect();
        syn_overflows.sort_by_key(|o| o.ts_ns);
        Finding {
            cause,
            target: target.clone(),
            netns,
            count: st.count,
            delayed: st.delayed,
            pending: st.pending,
            clients: st.clients.iter().cloned().collect(),
            uids,
            listener_note: words::listener_note(&about),
            listener_closed_ns: about.closed_ns(),
            listener,
            queue,
            hint,
            evidence: st.evidence.clone(),
            detail,
            fix,
            first_seen_ns: st.first_seen_ns,
            last_seen_ns: st.last_seen_ns,
            timeline,
            accept_wait_ms,
            syn_overflows,
            upstream_process: st.after.as_ref().and_then(|a| a.upstream_process.clone()),
            death: st.after.as_ref().and_then(|a| a.death.clone()),
            connection: st.after.as_ref().map(|a| a.connection.clone()),
            ports: st.after.as_ref().and_then(|a| a.ports.clone()),
            backend: st.backend,
            rule: st.rule.clone(),
        }
    }

    /// Backlog causes: the fullest queue measured during the attempts, else by sock_diag
    /// around them (samples measured after the attempts concluded still describe them).
    fn finding_queue(&self, cause: Cause, target: &Target, netns: u32, st: &FindingState) -> Option<Queue> {
        if !matches!(cause, Cause::BacklogFull | Cause::UnixBacklogFull) {
            return None;
        }
        st.fullest_queue.or_else(|| {
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
        })
    }


}

/// Whether `task` is among `clients` already (without building its `ProcessRef`, which copies
/// its name: most attempts of a finding come from clients it knows).
fn has_client(clients: &BTreeSet<ProcessRef>, task: &TaskInfo) -> bool {
    // The smallest ProcessRef of this pid (an empty String does not allocate).
    let first_of_pid = ProcessRef { pid: task.pid, comm: String::new() };
    clients.range(first_of_pid..).take_while(|c| c.pid == task.pid).any(|c| c.comm == task.comm)
}

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
