//! Repeats: refused attempts the kernel counted instead of sending (`TcpAttemptRepeats`).
//! Each count stands for attempts identical to an exemplar the kernel did send in full, so
//! they take the exemplar's verdict: they join its finding, n at once, as soon as both the
//! exemplar's conclusion and the count are known, whichever comes last. A finding's count
//! stays the number of real attempts; counts whose exemplar never concludes with a finding
//! are counted lost (as `TcpAttemptFailed` records), never dropped silently.

use std::collections::VecDeque;

use tracer_common::EventKind;

use crate::event::{Event, FlowAddr, RecordKind};

use super::aggregation::FindingKey;
use super::attempt::{Attempt, AttemptKey};
use super::engine::Engine;
use super::evidence::Evidence;
use super::output::AttemptRecord;
use super::rules::RejectKind;
use super::Map;

/// How long (event time) counted repeats wait for their exemplar to conclude. It closed
/// before them and concludes a grace period (~300 ms) after its close: this is generous.
pub(super) const HOLD_NS: u64 = 10_000_000_000;

/// Bound on the exemplars remembered (besides `max_tracked`): without repeats (an older
/// kernel) every refused attempt would be one, kept for nothing.
pub(super) const MAX_EXEMPLARS: usize = 65_536;

/// A concluded failed attempt with a finding, as its repeats copy it.
#[derive(Clone, Debug)]
pub(super) struct Exemplar {
    fkey: FindingKey,
    record: AttemptRecord,
    /// Its own share of its finding's counters beyond its record (see `add_tcp_attempt`).
    resets_sent: u64,
    netfilter_drops: u64,
    syn_retransmits: u64,
    reject: Option<RejectKind>,
}

impl Exemplar {
    pub(super) fn of(fkey: FindingKey, record: &AttemptRecord, a: &Attempt, reject: Option<RejectKind>) -> Exemplar {
        Exemplar {
            fkey,
            record: record.clone(),
            resets_sent: a.resets_sent_to_target,
            netfilter_drops: a.netfilter_drops,
            syn_retransmits: a.syn_retransmits as u64,
            reject,
        }
    }

    /// The record of `n` repeats of it, the last one closed at `ts_ns`. A ListenOverflows
    /// rise is its finding's once, not each attempt's: repeats do not multiply it.
    fn repeats_record(&self, n: u64, ts_ns: u64) -> AttemptRecord {
        let mut r = self.record.clone();
        r.evidence = self
            .record
            .evidence
            .iter()
            .filter(|(e, _)| **e != Evidence::ListenOverflows)
            .map(|(e, c)| (e.clone(), c.saturating_mul(n)))
            .collect();
        r.ts_ns = ts_ns;
        r.start_ns = ts_ns;
        r.count = n;
        r
    }
}

/// Adds `more`, a record of repeats, to `r`, an earlier one of the same exemplar's.
fn absorb(r: &mut AttemptRecord, more: &AttemptRecord) {
    for (e, c) in more.evidence.iter() {
        r.evidence.add_to(e, c);
    }
    r.count = r.count.saturating_add(more.count);
    r.ts_ns = r.ts_ns.max(more.ts_ns);
}

/// An exemplar remembered: its place in `exemplar_order` and when it was last used.
#[derive(Clone, Debug)]
struct Remembered {
    seq: u64,
    used_ns: u64,
    exemplar: Exemplar,
}

/// Repeats counted for an exemplar that has not concluded yet.
#[derive(Clone, Copy, Debug)]
struct Held {
    count: u64,
    /// The latest repeat's close.
    last_ns: u64,
    /// Its place in `held_order` (a key held again later gets a new one).
    seq: u64,
}

/// The exemplars remembered and the repeats waiting for theirs, each bounded, the least
/// recently used out first.
pub(super) struct Repeats {
    max_held: usize,
    max_exemplars: usize,
    seq: u64,
    exemplars: Map<AttemptKey, Remembered>,
    /// (when last used as of its entry, seq, key), oldest first; entries of a key remembered
    /// again since are stale.
    exemplar_order: VecDeque<(u64, u64, AttemptKey)>,
    held: Map<AttemptKey, Held>,
    /// Per exemplar, the record of its repeats counted since the last report: one line per
    /// exemplar and report however often the counts come (a flood's come every drain).
    unreported: Map<AttemptKey, AttemptRecord>,
    /// (when the first count arrived, seq, key), oldest first; entries whose key was taken
    /// since are stale.
    held_order: VecDeque<(u64, u64, AttemptKey)>,
}

impl Repeats {
    pub(super) fn new(max: usize) -> Repeats {
        Repeats {
            max_held: max.max(1),
            max_exemplars: max.clamp(1, MAX_EXEMPLARS),
            seq: 0,
            exemplars: Map::default(),
            exemplar_order: VecDeque::new(),
            held: Map::default(),
            held_order: VecDeque::new(),
            unreported: Map::default(),
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The exemplar of `key`, used now (`ts_ns`).
    fn use_exemplar(&mut self, key: &AttemptKey, ts_ns: u64) -> Option<&Exemplar> {
        let r = self.exemplars.get_mut(key)?;
        r.used_ns = r.used_ns.max(ts_ns);
        Some(&r.exemplar)
    }

    /// Remembers `ex`, concluded at `ts_ns`, as the exemplar of `key` (the least recently
    /// used one forgotten past the bound).
    fn remember(&mut self, key: AttemptKey, ex: Exemplar, ts_ns: u64) {
        let seq = self.next_seq();
        self.exemplars.insert(key, Remembered { seq, used_ns: ts_ns, exemplar: ex });
        self.exemplar_order.push_back((ts_ns, seq, key));
        while self.exemplar_order.len() > self.max_exemplars {
            let Some((_, old_seq, old)) = self.exemplar_order.pop_front() else { break };
            if self.exemplars.get(&old).is_some_and(|r| r.seq == old_seq) {
                self.exemplars.remove(&old);
            }
        }
    }

    /// Forgets the exemplars unused since before `now_ns - ttl_ns`; one used since goes to
    /// the back of the order, as of its last use.
    fn expire_exemplars(&mut self, now_ns: u64, ttl_ns: u64) {
        let old = |ts: u64| ts.saturating_add(ttl_ns) < now_ns;
        while self.exemplar_order.front().is_some_and(|(ts, _, _)| old(*ts)) {
            let Some((_, seq, key)) = self.exemplar_order.pop_front() else { break };
            match self.exemplars.get(&key) {
                Some(r) if r.seq == seq && old(r.used_ns) => {
                    self.exemplars.remove(&key);
                }
                Some(r) if r.seq == seq => self.exemplar_order.push_back((r.used_ns, seq, key)),
                _ => {}
            }
        }
    }

    fn forget(&mut self, key: &AttemptKey) {
        self.exemplars.remove(key);
    }

    /// Adds `count` repeats ending at `ts_ns` to those held for `key`. Returns how many
    /// repeats were pushed out past the bound (lost).
    fn hold(&mut self, key: AttemptKey, count: u64, ts_ns: u64) -> u64 {
        if let Some(h) = self.held.get_mut(&key) {
            h.count = h.count.saturating_add(count);
            h.last_ns = h.last_ns.max(ts_ns);
            return 0;
        }
        let seq = self.next_seq();
        self.held.insert(key, Held { count, last_ns: ts_ns, seq });
        self.held_order.push_back((ts_ns, seq, key));
        let mut lost = 0;
        while self.held_order.len() > self.max_held {
            lost += self.pop_oldest_held();
        }
        lost
    }

    /// Whether repeats (or capture's mark) wait for the attempt of `key`: then it is an
    /// exemplar.
    pub(super) fn is_held(&self, key: &AttemptKey) -> bool {
        self.held.contains_key(key)
    }

    fn take_held(&mut self, key: &AttemptKey) -> Option<Held> {
        self.held.remove(key)
    }

    /// Drops the oldest entry of `held_order`; the repeats it still held (0 when stale).
    fn pop_oldest_held(&mut self) -> u64 {
        let Some((_, seq, key)) = self.held_order.pop_front() else { return 0 };
        match self.held.get(&key) {
            Some(h) if h.seq == seq => self.held.remove(&key).map_or(0, |h| h.count),
            _ => 0,
        }
    }

    /// Drops the repeats held since before `now_ns - HOLD_NS`; how many they were.
    fn expire_held(&mut self, now_ns: u64) -> u64 {
        let mut lost = 0;
        while self.held_order.front().is_some_and(|(since, _, _)| since.saturating_add(HOLD_NS) < now_ns) {
            lost += self.pop_oldest_held();
        }
        lost
    }

    /// Drops everything held; how many repeats that was.
    fn take_all_held(&mut self) -> u64 {
        self.held_order.clear();
        self.held.drain().map(|(_, h)| h.count).sum()
    }

    /// Repeats waiting for their exemplar.
    pub(super) fn held_len(&self) -> usize {
        self.held.len()
    }

    /// The records of the repeats counted since the last report, taken.
    pub(super) fn take_unreported(&mut self) -> Vec<AttemptRecord> {
        self.unreported.drain().map(|(_, r)| r).collect()
    }
}

impl Engine {
    /// `TcpAttemptRepeats`: joins its exemplar's finding at once when the exemplar concluded
    /// with one, waits for it while it may still conclude, else is lost.
    /// A count of 0 is capture's mark that the attempt of this key is an exemplar (it follows
    /// the attempt's own event): held, empty, so that its conclusion remembers it. Only marked
    /// attempts are remembered: where the kernel counts nothing (`--each-attempt`, an older
    /// kernel, refusals proved otherwise) no failed attempt pays for a copy of its record.
    pub(super) fn attempt_repeats_event(&mut self, ev: &Event, flow: &FlowAddr, count: u64) {
        let key = AttemptKey::new(ev.sock, flow);
        if count == 0 {
            let lost = self.repeats.hold(key, 0, ev.ts_ns);
            return self.lose_repeats(lost);
        }
        // A tracked attempt of this key is the newest exemplar (socket and ports are reused):
        // its repeats wait for it, whatever an older one of the same key concluded.
        if !self.attempts.contains_key(&key) {
            if let Some(ex) = self.repeats.use_exemplar(&key, ev.ts_ns).cloned() {
                return self.apply_repeats(key, &ex, count, ev.ts_ns);
            }
            if self.recently_concluded_set.contains_key(&key) {
                return self.lose_repeats(count);
            }
        }
        let lost = self.repeats.hold(key, count, ev.ts_ns);
        self.lose_repeats(lost);
    }

    /// An attempt of `key` just concluded, as `exemplar` when it failed with a finding: the
    /// repeats held for it join that finding, or are lost when there is none.
    pub(super) fn exemplar_concluded(&mut self, key: &AttemptKey, exemplar: Option<Exemplar>) {
        let held = self.repeats.take_held(key);
        let Some(ex) = exemplar.filter(|_| held.is_some()) else {
            self.repeats.forget(key);
            return self.lose_repeats(held.map_or(0, |h| h.count));
        };
        let concluded_ns = ex.record.ts_ns;
        if let Some(h) = held.filter(|h| h.count > 0) {
            self.apply_repeats(*key, &ex, h.count, h.last_ns);
        }
        self.repeats.remember(*key, ex, concluded_ns);
    }

    /// Held repeats whose exemplar did not conclude in time are lost; exemplars unused for
    /// the evidence TTL are forgotten (a repeat of theirs later is held, then lost).
    pub(super) fn expire_repeats(&mut self, now_ns: u64) {
        let lost = self.repeats.expire_held(now_ns);
        self.lose_repeats(lost);
        self.repeats.expire_exemplars(now_ns, self.opts.evidence_ttl_ns);
    }

    /// At the end, after every attempt concluded: what is still held never saw its exemplar.
    pub(super) fn lose_all_held_repeats(&mut self) {
        let lost = self.repeats.take_all_held();
        self.lose_repeats(lost);
    }

    /// `n` repeats of `ex`, the last closed at `ts_ns`, added to its finding as `ex` was.
    fn apply_repeats(&mut self, key: AttemptKey, ex: &Exemplar, n: u64, ts_ns: u64) {
        let record = ex.repeats_record(n, ts_ns);
        self.aggregate(&ex.fkey, &record, |st| {
            st.resets_sent = st.resets_sent.saturating_add(ex.resets_sent.saturating_mul(n));
            st.netfilter_drops = st.netfilter_drops.saturating_add(ex.netfilter_drops.saturating_mul(n));
            st.syn_retransmits = st.syn_retransmits.saturating_add(ex.syn_retransmits.saturating_mul(n));
            match ex.reject {
                Some(RejectKind::TcpReset) => st.rejected_by_reset += n,
                Some(RejectKind::Icmp) => st.rejected_by_icmp += n,
                None => {}
            }
        });
        match self.repeats.unreported.get_mut(&key) {
            Some(r) => absorb(r, &record),
            None => {
                self.repeats.unreported.insert(key, record);
            }
        }
    }

    fn lose_repeats(&mut self, n: u64) {
        if n > 0 {
            *self.lost.entry(RecordKind(EventKind::TcpAttemptFailed)).or_insert(0) += n;
        }
    }
}
