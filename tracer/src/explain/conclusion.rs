//! Conclusion: an attempt's facts, gathered from everything correlated to it, turned into a
//! cause through the one rule table (`rules::classify_tcp` / `classify_unix`), with the
//! evidence that proves it; then handed to `aggregation`.

use crate::event::{Event, Queue, Target};

use super::aggregation::{FindingKey, FindingState, SAMPLE_SLACK_NS};
use super::attempt::{self, fuller, Attempt, AttemptKey, Close, FlowEvidenceKind, FlowKey};
use super::correlation::{IcmpSeen, START_SLACK_NS};
use super::engine::Engine;
use super::evidence::{Evidence, EvidenceCounts};
use super::listeners::Episode;
use super::output::{AttemptRecord, Outcome};
use super::repeats::Exemplar;
use super::rules::{classify_tcp, Cause, RejectKind, TcpFacts};

/// Why an attempt is being concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum ConcludeWhy {
    /// Its close is older than the grace period (or everything ends and it has closed).
    Closed,
    /// `finish()` while it still waited.
    EndOfTracing,
    /// No event for it for too long: its close was lost.
    Silent,
    /// The table was full.
    Evicted,
}

/// What was measured around one TCP attempt besides its own events, in its window
/// (`from`..`to`: its start to its end plus the grace period).
struct Surroundings {
    from: u64,
    to: u64,
    /// The ICMP error this host sent about it.
    icmp: Option<IcmpSeen>,
    /// How much the netns' ListenOverflows counter rose meanwhile.
    overflow_rise: u64,
    /// The fullest queue sock_diag saw full on the target meanwhile.
    sampled_full: Option<Queue>,
    /// Who listened on the target meanwhile.
    listener: Option<Episode>,
}

impl Engine {
    pub(super) fn conclude_tcp(&mut self, key: &AttemptKey, why: ConcludeWhy) {
        self.conclude_tcp_before(key, why, u64::MAX);
    }

    /// Concludes an attempt: its facts through the rule table, its record to the findings.
    /// Packets going to its target seen after its close (up to the grace period, and before
    /// `cutoff_ns`) that no later attempt claimed are its late evidence (see `flow_evidence`).
    pub(super) fn conclude_tcp_before(&mut self, key: &AttemptKey, why: ConcludeWhy, cutoff_ns: u64) {
        let Some(mut a) = self.attempts.remove(key) else { return };
        for fk in std::iter::once(FlowKey::of(&a.flow)).chain(a.nat_flow.as_ref().map(FlowKey::of)) {
            if self.attempt_by_flow.get(&fk) == Some(key) {
                self.attempt_by_flow.remove(&fk);
            }
        }
        self.claim_late_evidence(&mut a, cutoff_ns);
        self.remember_concluded(a.end_ns(), *key, if a.start_known { a.start_ns } else { 0 });
        // Only an exemplar (capture marked it, or counts already wait for it) is copied for
        // its repeats.
        let exemplar = self.repeats.is_held(key);
        let exemplar = self.classify_and_aggregate(a, why, exemplar);
        self.exemplar_concluded(key, exemplar);
    }

    /// Turns a concluded attempt into its record and adds it to its finding. For an
    /// `exemplar` that failed with a finding, what the kernel's counted repeats of it need.
    fn classify_and_aggregate(&mut self, mut a: Attempt, why: ConcludeWhy, exemplar: bool) -> Option<Exemplar> {
        let around = self.surroundings(&a);
        let facts = tcp_facts(&a, &around, self.opts.local_refusals_unseen);
        let (cause, reject) = classify_tcp(&facts)?;
        let outcome = match a.close {
            Some(Close::Delayed { .. }) => Outcome::Delayed,
            Some(Close::Failed { .. }) => Outcome::Failed,
            None => Outcome::Pending,
        };
        // A late connection is a symptom only of a full backlog; elsewhere it is just a slow start.
        if outcome == Outcome::Delayed && cause != Cause::BacklogFull {
            return None;
        }
        // The attempt ends here: its client and evidence move to its record.
        let record = AttemptRecord {
            ts_ns: a.end_ns(),
            start_ns: a.start_ns,
            cause,
            target: Target::Tcp(a.flow.dst),
            netns: a.netns,
            sock: a.key.sock,
            client: std::mem::take(&mut a.client),
            evidence: tcp_evidence(&mut a, &around, &facts, cause, outcome, why),
            outcome,
            errno: a.sk_err(),
            count: 1,
        };
        let fkey: FindingKey = (cause, record.target.clone(), a.netns);
        self.aggregate(&fkey, &record, |st| add_tcp_attempt(st, &a, around.sampled_full, around.listener, cause, reject));
        if cause == Cause::BacklogFull {
            let (serving, _) = self.listener_place(a.netns, a.flow.dst, a.nat_flow.map(|f| f.dst));
            self.count_overflow_rises_once(&fkey, serving, around.from, around.to);
        }
        let exemplar = (exemplar && outcome == Outcome::Failed).then(|| Exemplar::of(fkey, &record, &a, reject));
        self.push_ready(record);
        exemplar
    }

    /// Takes the buffered packets going to `a`'s target seen after its close, within the
    /// grace period and before `cutoff_ns`, that a later attempt on the same ports does not own.
    fn claim_late_evidence(&mut self, a: &mut Attempt, cutoff_ns: u64) {
        let Some(close) = a.close else { return };
        let fk = FlowKey::of(&a.flow);
        let mut until = close.ts_ns().saturating_add(self.opts.grace_ns).min(cutoff_ns);
        // A later attempt on the same ports owns what was seen from its start on.
        if let Some(next) = self.attempt_by_flow.get(&fk).and_then(|k| self.attempts.get(k)) {
            if next.start_ns > close.ts_ns() {
                until = until.min(next.start_ns.saturating_sub(START_SLACK_NS));
            }
        }
        // A closed SYN_SENT socket sends nothing more: a refused or dropped segment going to
        // the target after the close is a later attempt's on the same ports, even one whose
        // own events are not read yet (tests: a_reused_ports_reset_...). A named rule is
        // measured after the drop it names, and answers to the client may come late.
        let late: Vec<u64> = self
            .flow_buffer
            .get(&fk)
            .filter(|(_, e)| e.ts_ns > close.ts_ns() && e.ts_ns <= until)
            .filter(|(_, e)| matches!(e.kind, FlowEvidenceKind::RuleNamed(_)) || !a.goes_to_target(&e.flow))
            .map(|(seq, _)| seq)
            .collect();
        for seq in late {
            if let Some(e) = self.flow_buffer.remove(&fk, seq) {
                a.apply_flow_evidence(&e);
            }
        }
    }

    /// What was measured around `a` during its window.
    fn surroundings(&mut self, a: &Attempt) -> Surroundings {
        // The listener lives where the (translated) target is served: maybe another namespace.
        let (netns, target) = self.listener_place(a.netns, a.flow.dst, a.nat_flow.map(|f| f.dst));
        let (from, to) = (a.start_ns, a.end_ns().saturating_add(self.opts.grace_ns));
        let icmp = self.claim_icmp(a, to);
        let overflow_rise = self.overflows.iter().filter(|o| o.during(netns, from, to)).map(|o| o.delta).sum();
        // A wildcard listener only covers the target when the target is an address of this host.
        let wildcards = match &target {
            Target::Tcp(t) => self.is_local_ip(t.ip()),
            Target::Unix(_) => false,
        };
        let sampled_full = self
            .listeners
            .samples_during(netns, &target, wildcards, from.saturating_sub(SAMPLE_SLACK_NS), to)
            .into_iter()
            .filter(|q| q.is_full())
            .fold(None, |acc: Option<Queue>, q| Some(fuller(acc, q)));
        let listener = self.listeners.listener_during(netns, &target, wildcards, from, to).cloned();
        Surroundings { from, to, icmp, overflow_rise, sampled_full, listener }
    }

    /// One ListenOverflows rise may explain many attempts: it is added to the finding once.
    fn count_overflow_rises_once(&mut self, fkey: &FindingKey, netns: u32, from: u64, to: u64) {
        let mut rise = 0;
        for o in self.overflows.iter_mut().filter(|o| !o.counted && o.during(netns, from, to)) {
            o.counted = true;
            rise += o.delta;
        }
        if rise > 0 {
            if let Some(st) = self.findings.get_mut(fkey) {
                st.evidence.add(Evidence::ListenOverflows, rise);
            }
        }
    }

    pub(super) fn conclude_unix(&mut self, ev: &Event, path: &str, errno: i32, cause: Cause) {
        let target = Target::Unix(path.to_string());
        let mut evidence = EvidenceCounts::new();
        evidence.set(Evidence::ConnectErrno(errno), 1);
        // The listener's queue as the kernel read it during this very connect.
        let kernel_queue = match cause {
            Cause::UnixBacklogFull => self.claim_unix_peer_queue(ev, path),
            _ => None,
        };
        if kernel_queue.is_some() {
            evidence.set(Evidence::UnixPeerQueueFull, 1);
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
            count: 1,
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

    /// The listener's queue the kernel read at this Unix connect's EAGAIN (latest, within
    /// the sample slack), taken from the waiting ones.
    fn claim_unix_peer_queue(&mut self, ev: &Event, path: &str) -> Option<Queue> {
        let from = ev.ts_ns.saturating_sub(SAMPLE_SLACK_NS);
        let i = self
            .unix_peer_queues
            .iter()
            .rposition(|(ts, ns, p, _)| *ts >= from && *ts <= ev.ts_ns && *ns == ev.netns && p == path)?;
        self.unix_peer_queues.remove(i).map(|(_, _, _, q)| q)
    }
}

/// The rule table's input for one attempt.
fn tcp_facts(a: &Attempt, around: &Surroundings, local_refusals_unseen: bool) -> TcpFacts {
    TcpFacts {
        local_refusals_unseen,
        netfilter_drop: a.netfilter_drops > 0,
        rst_received: a.rst_received,
        sk_err: a.sk_err(),
        local_no_socket: a.no_socket_to_target > 0,
        queue_full: a.kernel_queue_full_samples > 0
            || a.listen_overflow_drops > 0
            || a.syn_overflows > 0
            || around.sampled_full.is_some(),
        listen_overflows_rose: around.overflow_rise > 0,
        local_listener: a.kernel_listener.is_some() || around.listener.is_some(),
        icmp_sent: around.icmp.is_some(),
        syn_retransmits: a.syn_retransmits,
    }
}

/// What proves an attempt's verdict: its own events, what was measured around it, and how
/// it ended.
fn tcp_evidence(
    a: &mut Attempt,
    around: &Surroundings,
    facts: &TcpFacts,
    cause: Cause,
    outcome: Outcome,
    why: ConcludeWhy,
) -> EvidenceCounts {
    let mut evidence = a.take_evidence();
    if let Some(i) = &around.icmp {
        evidence.add(Evidence::IcmpSent { icmp_type: i.icmp_type, code: i.code }, 1);
    }
    if cause == Cause::BacklogFull {
        if around.overflow_rise > 0 {
            evidence.set(Evidence::ListenOverflows, around.overflow_rise);
        }
        if around.sampled_full.is_some() {
            evidence.set(Evidence::SockDiagQueueFull, 1);
        }
        if facts.local_listener {
            evidence.set(Evidence::LiveListener, 1);
        }
    }
    let ending = match (outcome, why) {
        (Outcome::Delayed, _) => Some(Evidence::DelayedThenConnected),
        (Outcome::Pending, ConcludeWhy::Silent) => Some(Evidence::PendingNoCloseSeen),
        (Outcome::Pending, ConcludeWhy::Evicted) => Some(Evidence::PendingWhenEvicted),
        (Outcome::Pending, _) => Some(Evidence::PendingAtEnd),
        (Outcome::Failed, _) => None,
    };
    if let Some(e) = ending {
        evidence.set(e, 1);
    }
    evidence
}

/// Adds what one TCP attempt knew beyond its record to its finding.
fn add_tcp_attempt(
    st: &mut FindingState,
    a: &Attempt,
    sampled_full: Option<Queue>,
    listener: Option<Episode>,
    cause: Cause,
    reject: Option<RejectKind>,
) {
    st.syn_retransmits += a.syn_retransmits as u64;
    if let Some(nat) = a.nat_flow {
        st.backend = Some(nat.dst);
    }
    st.resets_sent += a.resets_sent_to_target;
    st.netfilter_drops += a.netfilter_drops;
    if matches!(cause, Cause::FirewallDrop | Cause::FirewallReject) && a.firewall_rule.is_some() {
        st.rule = a.firewall_rule.clone();
    }
    match reject {
        Some(RejectKind::TcpReset) => st.rejected_by_reset += 1,
        Some(RejectKind::Icmp) => st.rejected_by_icmp += 1,
        None => {}
    }
    if cause != Cause::BacklogFull {
        return;
    }
    if let Some(q) = a.fullest_queue.into_iter().chain(sampled_full).fold(None, |acc, q| Some(fuller(acc, q))) {
        st.fullest_queue = Some(fuller(st.fullest_queue, q));
    }
    for o in &a.overflow_samples {
        if st.syn_overflows.len() >= attempt::MAX_OVERFLOW_SAMPLES {
            st.syn_overflows.pop_front();
        }
        st.syn_overflows.push_back(o.clone());
    }
    if let Some(l) = a.kernel_listener.clone().or_else(|| listener.map(|e| e.owner)) {
        if l.pid != 0 || st.kernel_listener.is_none() {
            st.kernel_listener = Some(l);
        }
    }
}
