//! Conclusion: an attempt's facts, gathered from everything correlated to it, turned into a
//! cause through the one rule table (`rules::classify_tcp` / `classify_unix`), with the
//! evidence that proves it; then handed to `aggregation`.

use std::collections::BTreeMap;

use crate::event::{Event, Queue, Target};

use super::aggregation::{FindingKey, SAMPLE_SLACK_NS};
use super::attempt::{self, fuller, AttemptKey, Close, FlowKey};
use super::correlation::START_SLACK_NS;
use super::engine::Engine;
use super::output::{AttemptRecord, Outcome};
use super::rules::{classify_tcp, errno_name, Cause, RejectKind, TcpFacts};

/// Evidence labels that are not kernel events but the engine's own bookkeeping.
pub(super) const LABEL_DELAYED: &str = "delayed then connected";
pub(super) const LABEL_PENDING_AT_END: &str = "pending at end";
pub(super) const LABEL_NO_CLOSE_SEEN: &str = "pending, no close seen";
pub(super) const LABEL_EVICTED: &str = "pending when dropped from tracking (memory bound)";
pub(super) const LABEL_LISTEN_OVERFLOWS: &str = "ListenOverflows";
pub(super) const LABEL_SOCK_DIAG_FULL: &str = "attempts while sock_diag saw the queue full";
pub(super) const LABEL_LISTENER_PRESENT: &str = "attempts to a live local listener";
/// Evidence label of a Unix connect whose listener's queue the kernel read full.
pub const LABEL_UNIX_PEER_FULL: &str = "unix_stream_connect: peer queue full";

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


impl Engine {

    // ---- conclusion -----------------------------------------------------------------------

    pub(super) fn conclude_tcp(&mut self, key: &AttemptKey, why: ConcludeWhy) {
        self.conclude_tcp_before(key, why, u64::MAX);
    }

    /// Concludes an attempt; packets going to its target that were seen after its close (up
    /// to the grace period, and before `cutoff_ns`) and that no later attempt claimed are
    /// its late evidence (see `flow_evidence`).
    pub(super) fn conclude_tcp_before(&mut self, key: &AttemptKey, why: ConcludeWhy, cutoff_ns: u64) {
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

    pub(super) fn conclude_unix(&mut self, ev: &Event, path: &str, errno: i32, cause: Cause) {
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


}
