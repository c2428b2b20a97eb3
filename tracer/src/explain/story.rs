//! Story: who listened on a finding's target, relative to its failures; the live listener
//! the clients may have meant; and the dead listener's timeline. This file finds the facts
//! (typed); `words` tells them.

use std::collections::BTreeSet;

use crate::event::Target;

use super::aggregation::FindingState;
use super::engine::Engine;
use super::listeners::{self, Episode};
use super::output::ProcessRef;
use super::rules::{self, Cause};
use super::timeline::{self, TimelineEntry};

/// Who listened on a finding's target, as far as tracer saw, relative to the failures.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum ListenerSituation {
    /// Unix: no bind() of the path seen.
    UnixNeverBound,
    /// Unix: the latest bind() of the path (`bound_ns` None: only seen in a snapshot).
    UnixBound { owner: Option<ProcessRef>, bound_ns: Option<u64>, first_ns: u64, now: UnixNow },
    /// A listener was present during the failures; its owner could not be named.
    PresentUnnamed,
    /// No listener seen; the verdict rests on the kernel's ListenOverflows counter alone.
    CounterOnly,
    /// This listener (None: unnamed) listened during the failures.
    Listens(Option<ProcessRef>),
    /// The listener closed (at `stop_ns`, by `closed_by` when known); maybe one came back.
    Closed {
        owner: Option<ProcessRef>,
        stop_ns: u64,
        first_ns: u64,
        closed_by: Option<ProcessRef>,
        back: Option<Return>,
    },
    /// No listener during the failures; one listens since.
    NoneDuring(Return),
    /// One listens on the port, yet the kernel found no socket for these attempts.
    NoSocketFound(Option<ProcessRef>),
    /// No listener on the port seen since tracing started.
    NeverSeen,
}

/// What a Unix socket's name is now, for the dead-listener causes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum UnixNow {
    /// An abstract name: nothing is bound to it now.
    NameFree,
    /// The socket file is gone.
    FileGone,
    /// The socket file is there; nothing accepts on it.
    NotAccepting,
    /// Not a dead-listener cause: nothing to say.
    Untold,
}

/// A listener that came after the failures: who, and how long after the last one.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Return {
    pub(super) owner: Option<ProcessRef>,
    pub(super) after_last_ns: u64,
}

impl ListenerSituation {
    /// The listener the finding names (the one that listened, or closed).
    pub(super) fn listener(&self) -> Option<&ProcessRef> {
        match self {
            ListenerSituation::UnixBound { owner, .. }
            | ListenerSituation::Listens(owner)
            | ListenerSituation::Closed { owner, .. } => owner.as_ref(),
            _ => None,
        }
    }

    /// When the named listener closed.
    pub(super) fn closed_ns(&self) -> Option<u64> {
        match self {
            ListenerSituation::Closed { stop_ns, .. } => Some(*stop_ns),
            _ => None,
        }
    }
}

/// A live listener the clients may have meant instead of the target.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Neighbour {
    pub(super) owner: ProcessRef,
    /// The same process that listened on the target last.
    pub(super) same_process: bool,
    pub(super) at: Target,
    pub(super) wanted: Target,
}

/// The owner of an episode, when tracer could name it.
fn named(e: &Episode) -> Option<ProcessRef> {
    (e.owner.pid != 0).then(|| ProcessRef::of(&e.owner))
}

impl Engine {
    pub(super) fn timeline(&self, cause: Cause, target: &Target, netns: u32, st: &FindingState) -> Vec<TimelineEntry> {
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

    /// Who listened on the target, relative to the failures.
    pub(super) fn listener_situation(&self, cause: Cause, target: &Target, netns: u32, st: &FindingState) -> ListenerSituation {
        match target {
            Target::Unix(path) => self.unix_situation(cause, path, target, netns, st.first_seen_ns),
            Target::Tcp(_) if cause == Cause::BacklogFull => self.backlog_situation(target, netns, st),
            Target::Tcp(_) => self.tcp_situation(cause, target, netns, st),
        }
    }

    fn unix_situation(&self, cause: Cause, path: &str, target: &Target, netns: u32, first_ns: u64) -> ListenerSituation {
        let Some(bind) = self.listeners.latest(netns, target) else {
            return ListenerSituation::UnixNeverBound;
        };
        // An abstract name (`@name`) is no file: it goes away with its socket.
        let now = match (cause, rules::is_abstract(path)) {
            (Cause::UnixMissing | Cause::UnixStale, true) => UnixNow::NameFree,
            (Cause::UnixMissing, false) => UnixNow::FileGone,
            (Cause::UnixStale, false) => UnixNow::NotAccepting,
            _ => UnixNow::Untold,
        };
        let bound_ns = (bind.source != listeners::Source::Snapshot).then_some(bind.start_ns);
        ListenerSituation::UnixBound { owner: named(bind), bound_ns, first_ns, now }
    }

    /// The listener whose queue was full: as the kernel read it, else as tracer saw it.
    fn backlog_situation(&self, target: &Target, netns: u32, st: &FindingState) -> ListenerSituation {
        let (first, last) = (st.first_seen_ns, st.last_seen_ns);
        let wildcards = self.wildcards_cover(target);
        let during = self.listeners.listener_during(netns, target, wildcards, first, last);
        let live = st
            .kernel_listener
            .clone()
            .filter(|t| t.pid != 0)
            .map(|t| ProcessRef::of(&t))
            .or_else(|| during.and_then(named))
            .or_else(|| self.listeners.current(netns, target, wildcards).and_then(named));
        match live {
            Some(p) => ListenerSituation::Listens(Some(p)),
            None if st.kernel_listener.is_some() || during.is_some() => ListenerSituation::PresentUnnamed,
            None => ListenerSituation::CounterOnly,
        }
    }

    fn tcp_situation(&self, cause: Cause, target: &Target, netns: u32, st: &FindingState) -> ListenerSituation {
        let (first, last) = (st.first_seen_ns, st.last_seen_ns);
        let wildcards = self.wildcards_cover(target);
        let current = self.listeners.current(netns, target, wildcards);
        if cause != Cause::DeadListener {
            if let Some(c) = current.filter(|c| c.start_ns <= last) {
                return ListenerSituation::Listens(named(c));
            }
        }
        let back = current
            .filter(|c| c.start_ns > last)
            .map(|c| Return { owner: named(c), after_last_ns: c.start_ns.saturating_sub(last) });
        match self.listeners.last_closed_before(netns, target, wildcards, last) {
            Some(e) => ListenerSituation::Closed {
                owner: named(e),
                stop_ns: e.stop_ns.unwrap_or(last),
                first_ns: first,
                closed_by: e.closed_by.as_ref().map(ProcessRef::of),
                back,
            },
            None => match (back, current) {
                (Some(r), _) => ListenerSituation::NoneDuring(r),
                // The kernel found no socket although one is known: another netns or address
                // binding.
                (None, Some(c)) => ListenerSituation::NoSocketFound(named(c)),
                (None, None) => ListenerSituation::NeverSeen,
            },
        }
    }

    /// A live listener the clients may have meant (same address, other port; same
    /// directory, other path); the clients' own listeners (nginx on :80) are not it.
    pub(super) fn neighbour(&self, target: &Target, netns: u32, st: &FindingState, last_owner: Option<&ProcessRef>) -> Option<Neighbour> {
        let clients_pids: BTreeSet<u32> = st.clients.iter().map(|c| c.pid).collect();
        let clients_comms: BTreeSet<&str> = st.clients.iter().map(|c| c.comm.as_str()).collect();
        let want_port = match target {
            Target::Tcp(a) => a.port(),
            Target::Unix(_) => 0,
        };
        let (at, e) = self
            .listeners
            .neighbours(netns, target)
            .into_iter()
            .filter(|(_, e)| {
                e.owner.pid != 0 && !clients_pids.contains(&e.owner.pid) && !clients_comms.contains(e.owner.comm.as_str())
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
        let owner = ProcessRef::of(&e.owner);
        let same_process = last_owner.is_some_and(|o| o.pid == owner.pid);
        Some(Neighbour { owner, same_process, at, wanted: target.clone() })
    }
}
