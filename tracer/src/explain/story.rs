//! Story: who listened on a finding's target, told relative to the failures; the address the
//! clients may have meant; and the dead listener's timeline. The words live here, apart from
//! the logic that concludes and aggregates.

use std::collections::BTreeSet;

use crate::event::Target;

use super::aggregation::FindingState;
use super::engine::Engine;
use super::listeners::{self, Episode};
use super::output::ProcessRef;
use super::rules::{self, Cause};
use super::timeline::{self, TimelineEntry};

impl Engine {
    /// The listener's story for dead-listener causes (empty for the others).
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

    /// Who listened on the target, told relative to the failures.
    pub(super) fn listener_story(&self, cause: Cause, target: &Target, netns: u32, st: &FindingState) -> ListenerStory {
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
    pub(super) fn wrong_address_hint(
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

/// Listener facts for a finding.
pub(super) struct ListenerStory {
    pub(super) listener: Option<ProcessRef>,
    pub(super) note: String,
    pub(super) closed_ns: Option<u64>,
}

impl ListenerStory {
    pub(super) fn none(note: &str) -> ListenerStory {
        ListenerStory { listener: None, note: note.to_string(), closed_ns: None }
    }
}

/// "1.2 s before the first failed attempt" / "300 ms after the first failed attempt".
pub(super) fn relative(ts_ns: u64, first_ns: u64) -> String {
    if ts_ns == 0 {
        return "before tracing started".to_string();
    }
    if ts_ns <= first_ns {
        format!("{} before the first failed attempt", duration(first_ns - ts_ns))
    } else {
        format!("{} after the first failed attempt", duration(ts_ns - first_ns))
    }
}

pub(super) fn after_last(ts_ns: u64, last_ns: u64) -> String {
    format!("{} after the last failed attempt", duration(ts_ns.saturating_sub(last_ns)))
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
