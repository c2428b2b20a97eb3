//! The words of a finding's story: who listened (`listener_note`), what the clients may have
//! meant (`hint`), and durations told relative to the failures. Only text here; the facts
//! come typed from `story`.

use crate::event::Target;

use super::output::ProcessRef;
use super::story::{ListenerSituation, Neighbour, Return, UnixNow};

/// A named process (`gunicorn (pid 700)`), or what to say when tracer could not name it.
fn who(p: &Option<ProcessRef>) -> String {
    match p {
        Some(p) => p.to_string(),
        None => "a process tracer could not name".to_string(),
    }
}

/// The `listener_note` of a finding.
pub(super) fn listener_note(s: &ListenerSituation) -> String {
    match s {
        ListenerSituation::UnixNeverBound => "no bind() of this path seen since tracing started".into(),
        ListenerSituation::UnixBound { owner, bound_ns, first_ns, now } => {
            let when = match bound_ns {
                None => "was seen listening on this path".to_string(),
                Some(ts) => format!("bound this path {}", relative(*ts, *first_ns)),
            };
            let tail = match now {
                UnixNow::NameFree => "; nothing is bound to the name now",
                UnixNow::FileGone => "; the file is gone now",
                UnixNow::NotAccepting => "; nothing accepts on it now",
                UnixNow::Untold => "",
            };
            format!("{} {when}{tail}", who(owner))
        }
        ListenerSituation::PresentUnnamed => "a listener is present here (its owner could not be named)".into(),
        ListenerSituation::CounterOnly => {
            "no listener seen by tracer on this port; the kernel's ListenOverflows counter rose".into()
        }
        ListenerSituation::Listens(owner) => format!("{} listens here", who(owner)),
        ListenerSituation::Closed { owner, stop_ns, first_ns, closed_by, back } => {
            let mut note = format!("{} listened here and closed {}", who(owner), relative(*stop_ns, *first_ns));
            if let Some(actor) = closed_by {
                note.push_str(&format!(" (closed by {actor})"));
            }
            if let Some(r) = back {
                note.push_str(&format!("; {} listens here again since {}", who(&r.owner), after_last(r)));
            }
            note
        }
        ListenerSituation::NoneDuring(r) => {
            format!("no listener during the failures; {} listens here since {}", who(&r.owner), after_last(r))
        }
        ListenerSituation::NoSocketFound(owner) => {
            format!("{} listens on this port (but the kernel found no socket for these attempts)", who(owner))
        }
        ListenerSituation::NeverSeen => "no listener seen on this port since tracing started".into(),
    }
}

/// "the same process gunicorn (pid 700) listens on 127.0.0.1:8001; is proxy_pass pointing at
/// the wrong port?"
pub(super) fn hint(n: &Neighbour) -> String {
    let same = if n.same_process { "the same process " } else { "" };
    let owner = &n.owner;
    match (&n.at, &n.wanted) {
        (Target::Tcp(a), Target::Tcp(w)) if a.port() == w.port() => format!(
            "{same}{owner} listens on {a} only, not on {}; is proxy_pass (or `localhost`) pointing at the wrong address family?",
            w.ip()
        ),
        (Target::Tcp(a), _) => format!("{same}{owner} listens on {a}; is proxy_pass pointing at the wrong port?"),
        (Target::Unix(p), _) => format!("{same}{owner} bound {p}; is proxy_pass pointing at the wrong path?"),
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

fn after_last(r: &Return) -> String {
    format!("{} after the last failed attempt", duration(r.after_last_ns))
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
