//! Why the listener went away: the story of a dead listener (or a stale / missing Unix socket)
//! told as a short timeline: who listened (parent, unit, backlog), the death and its cause
//! (exit code, signal and sender, OOM kill, unlink of the socket file), the window of refusals,
//! and the recovery with the outage's length, or "still down". Pure: built from events.
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventBody, TaskInfo, Target};

use super::listeners::Episode;
use super::Map;

/// One line of a finding's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Monotonic ns (rendered as RFC 3339 by the report).
    pub at_ns: u64,
    /// `listen`, `bind`, `signal`, `oom_kill`, `exit`, `close`, `unlink`, `refused`,
    /// `recovered`, `still_down`.
    pub what: String,
    pub pid: u32,
    pub comm: String,
    pub detail: String,
}

#[derive(Clone, Debug, Default)]
struct ProcFacts {
    comm: String,
    ppid: Option<u32>,
    cgroup: Option<String>,
    unit: Option<String>,
    exit: Option<(u64, i32)>,
    /// (ts, signal, sender)
    signals: Vec<(u64, i32, TaskInfo)>,
    oom_ns: Option<u64>,
}

/// What the kernel and /proc said about listener owners and socket files.
#[derive(Clone, Debug, Default)]
pub struct Lifecycle {
    procs: Map<u32, ProcFacts>,
    /// Insertion order of `procs`, to bound it.
    order: VecDeque<u32>,
    unlinks: Map<String, Vec<(u64, TaskInfo)>>,
    /// listen() backlog by listening socket.
    backlogs: Map<u64, u32>,
    max: usize,
}

/// Signal names for the UAPI numbers tracer reports (fatal ones).
pub fn signal_name(sig: i32) -> String {
    match sig {
        1 => "SIGHUP".into(),
        2 => "SIGINT".into(),
        3 => "SIGQUIT".into(),
        6 => "SIGABRT".into(),
        7 => "SIGBUS".into(),
        9 => "SIGKILL".into(),
        11 => "SIGSEGV".into(),
        13 => "SIGPIPE".into(),
        15 => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

/// The kernel's raw exit_code: `status << 8` for exit(status), the signal number (low 7 bits)
/// when a signal ended the process.
fn exit_words(code: i32) -> String {
    let sig = code & 0x7f;
    if code < 0 {
        "exited".into()
    } else if sig != 0 {
        format!("killed by {}", signal_name(sig))
    } else {
        format!("exited with code {}", (code >> 8) & 0xff)
    }
}

impl Lifecycle {
    pub fn new(max: usize) -> Lifecycle {
        Lifecycle { max: max.max(16), ..Lifecycle::default() }
    }

    fn proc_mut(&mut self, task: &TaskInfo) -> &mut ProcFacts {
        if !self.procs.contains_key(&task.pid) {
            if self.order.len() >= self.max {
                if let Some(old) = self.order.pop_front() {
                    self.procs.remove(&old);
                }
            }
            self.order.push_back(task.pid);
        }
        let p = self.procs.entry(task.pid).or_default();
        if p.comm.is_empty() && !task.comm.is_empty() {
            p.comm = task.comm.clone();
        }
        p
    }

    /// Takes the events this module cares about; ignores the rest.
    pub fn push(&mut self, ev: &Event) {
        match &ev.body {
            EventBody::ProcessExit { code } => self.proc_mut(&ev.task).exit = Some((ev.ts_ns, *code)),
            EventBody::SignalGenerated { signal, sender } => {
                let p = self.proc_mut(&ev.task);
                if p.signals.len() < 16 {
                    p.signals.push((ev.ts_ns, *signal, sender.clone()));
                }
            }
            EventBody::OomKilled => self.proc_mut(&ev.task).oom_ns = Some(ev.ts_ns),
            EventBody::ProcessInfo { ppid, cgroup, unit } => {
                let p = self.proc_mut(&ev.task);
                p.ppid = Some(*ppid);
                p.cgroup = cgroup.clone();
                p.unit = unit.clone();
            }
            EventBody::UnixUnlink { path } => {
                let v = self.unlinks.entry(path.clone()).or_default();
                if v.len() < 16 {
                    v.push((ev.ts_ns, ev.task.clone()));
                }
            }
            EventBody::TcpListenStart { backlog: Some(b), .. } if ev.sock != 0 => {
                if self.backlogs.len() >= self.max {
                    self.backlogs.clear();
                }
                self.backlogs.insert(ev.sock, *b);
            }
            _ => {}
        }
    }

    /// The systemd unit of a process, when its cgroup named one.
    pub fn unit_of(&self, pid: u32) -> Option<&str> {
        self.procs.get(&pid).and_then(|p| p.unit.as_deref())
    }

    fn origin(&self, e: &Episode) -> String {
        let mut parts = Vec::new();
        if let Some(b) = self.backlogs.get(&e.sock) {
            parts.push(format!("backlog {b}"));
        }
        if let Some(p) = self.procs.get(&e.owner.pid) {
            if let Some(pp) = p.ppid {
                parts.push(format!("parent pid {pp}"));
            }
            match (&p.unit, &p.cgroup) {
                (Some(u), _) => parts.push(format!("unit {u}")),
                (None, Some(c)) => parts.push(format!("cgroup {c}")),
                _ => {}
            }
        }
        parts.join(", ")
    }
}

/// The facts a finding's timeline is built from.
pub struct Story<'a> {
    pub target: &'a Target,
    /// The listener period that ended (or the last one seen, for Unix sockets).
    pub dead: Option<&'a Episode>,
    /// A listener present now that started after `dead` ended.
    pub recovered: Option<&'a Episode>,
    pub first_failure_ns: u64,
    pub last_failure_ns: u64,
    pub count: u64,
    pub clients: String,
}

/// The timeline, in time order.
pub fn build(life: &Lifecycle, s: &Story) -> Vec<TimelineEntry> {
    let mut out = Vec::new();
    let entry = |at_ns: u64, what: &str, t: Option<&TaskInfo>, detail: String| TimelineEntry {
        at_ns,
        what: what.to_string(),
        pid: t.map(|t| t.pid).unwrap_or(0),
        comm: t.map(|t| t.comm.clone()).unwrap_or_default(),
        detail,
    };
    let mut death_ns = None;
    if let Some(e) = s.dead {
        let owner = &e.owner;
        if e.start_ns > 0 && owner.pid != 0 {
            let (what, verb) = match s.target {
                Target::Tcp(a) => ("listen", format!("listens on {a}")),
                Target::Unix(p) => ("bind", format!("binds {p}")),
            };
            let origin = life.origin(e);
            let detail = if origin.is_empty() { verb } else { format!("{verb} ({origin})") };
            out.push(entry(e.start_ns, what, Some(owner), detail));
        }
        let window_end = e.stop_ns.unwrap_or(s.last_failure_ns).max(s.last_failure_ns);
        if let Some(p) = life.procs.get(&owner.pid).filter(|_| owner.pid != 0) {
            for (ts, sig, sender) in &p.signals {
                if *ts >= e.start_ns && *ts <= window_end {
                    // The OOM killer sends its SIGKILL from whatever task hit the limit, often
                    // the victim itself: say who really decided.
                    let by_oom = *sig == 9 && p.oom_ns.is_some_and(|o| o.abs_diff(*ts) < 1_000_000_000);
                    let from = if by_oom {
                        "from the kernel's OOM killer".to_string()
                    } else if sender.pid == owner.pid {
                        "from itself".to_string()
                    } else {
                        format!("from {} (pid {})", sender.comm, sender.pid)
                    };
                    out.push(entry(*ts, "signal", Some(owner), format!("{} {from}", signal_name(*sig))));
                }
            }
            if let Some(ts) = p.oom_ns.filter(|ts| *ts >= e.start_ns && *ts <= window_end) {
                out.push(entry(ts, "oom_kill", Some(owner), "chosen by the kernel's OOM killer".into()));
            }
            if let Some((ts, code)) = p.exit.filter(|(ts, _)| *ts >= e.start_ns && *ts <= window_end) {
                out.push(entry(ts, "exit", Some(owner), exit_words(code)));
                death_ns = Some(ts);
            }
        }
        if let Some(stop) = e.stop_ns {
            let detail = match &e.closed_by {
                Some(by) => format!("listening socket closed by {} (pid {})", by.comm, by.pid),
                None => "listening socket closed".to_string(),
            };
            out.push(entry(stop, "close", Some(owner), detail));
            death_ns = Some(death_ns.map_or(stop, |d: u64| d.min(stop)));
        }
    }
    if let Target::Unix(path) = s.target {
        for (ts, who) in life.unlinks.get(path).into_iter().flatten() {
            if *ts <= s.last_failure_ns {
                out.push(entry(*ts, "unlink", Some(who), format!("socket file {path} deleted")));
                death_ns = Some(death_ns.map_or(*ts, |d: u64| d.max(*ts)));
            }
        }
    }
    out.push(entry(
        s.first_failure_ns,
        "refused",
        None,
        format!(
            "{} failed attempt{} until {:.1} s later; clients: {}",
            s.count,
            if s.count == 1 { "" } else { "s" },
            s.last_failure_ns.saturating_sub(s.first_failure_ns) as f64 / 1e9,
            s.clients
        ),
    ));
    match s.recovered {
        Some(r) => {
            let outage = death_ns.map(|d| format!(" after an outage of {:.1} s", r.start_ns.saturating_sub(d) as f64 / 1e9));
            out.push(entry(
                r.start_ns,
                "recovered",
                Some(&r.owner),
                format!("a new listener is back{}", outage.unwrap_or_default()),
            ));
        }
        None => {
            let down = death_ns.map(|d| format!(" (down for at least {:.1} s)", s.last_failure_ns.saturating_sub(d) as f64 / 1e9));
            let detail = match down {
                Some(down) => format!("no listener since{down}"),
                None => "no listener at the last failed attempt".to_string(),
            };
            out.push(entry(s.last_failure_ns, "still_down", None, detail));
        }
    }
    out.sort_by_key(|e| e.at_ns);
    out
}

/// What the timeline adds to the fix: the cause of death decides the advice.
/// `unit`: the listener's systemd unit when known (its journal is then named exactly).
pub fn fix_addendum(timeline: &[TimelineEntry], unit: Option<&str>) -> Option<String> {
    let find = |what: &str| timeline.iter().find(|e| e.what == what);
    let mut parts = Vec::new();
    if let Some(o) = find("oom_kill") {
        let recycle = if o.comm.contains("gunicorn") { " (`gunicorn --max-requests`)" } else { "" };
        parts.push(format!(
            "The kernel's OOM killer killed {} (pid {}): raise its memory limit (`MemoryMax=` in its unit, or the container's limit) or reduce its memory use, e.g. fewer or recycled workers{recycle}.",
            o.comm, o.pid
        ));
    } else if let Some(sig) = find("signal").filter(|s| !s.detail.contains("from itself")) {
        parts.push(format!(
            "{} (pid {}) got {}: find out why that process killed it (a deploy script, `systemctl stop` with a short timeout, a watchdog).",
            sig.comm, sig.pid, sig.detail
        ));
    } else if let Some(exit) = find("exit") {
        let log = match unit {
            Some(u) => format!("`journalctl -u {}`", super::cause_words::shell_word(u)),
            None => format!("or `journalctl {}`", super::cause_words::shell_word(&format!("_COMM={}", exit.comm))),
        };
        parts.push(format!(
            "{} (pid {}) {}: read its own log ({log}) for the reason, and supervise it with `Restart=always`.",
            exit.comm, exit.pid, exit.detail
        ));
    }
    if let Some(u) = find("unlink") {
        parts.push(format!(
            "{} (pid {}) deleted the socket file while the upstream lived on: stop that cleanup (tmpfiles, a deploy step) or restart the upstream so it binds the path again.",
            u.comm, u.pid
        ));
    }
    if find("recovered").is_some() {
        parts.push("It came back by itself: the requests in the outage window failed; order Nginx after the upstream (`After=`/`Requires=`) or use socket activation so connections wait instead of being refused during restarts.".into());
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::listeners::Source;

    fn task(pid: u32, comm: &str) -> TaskInfo {
        TaskInfo { pid, tid: pid, uid: 0, comm: comm.into() }
    }

    fn ev(ts_ns: u64, t: &TaskInfo, body: EventBody) -> Event {
        Event { ts_ns, netns: 1, sock: 0, task: t.clone(), body }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn sigkill_from_another_process_then_recovery() {
        let g = task(700, "gunicorn");
        let killer = task(900, "kill");
        let mut life = Lifecycle::new(100);
        life.push(&Event { sock: 0xa, ..ev(S, &g, EventBody::TcpListenStart { addr: "127.0.0.1:8000".parse().unwrap(), backlog: Some(128) }) });
        life.push(&ev(S, &g, EventBody::ProcessInfo { ppid: 1, cgroup: Some("/system.slice/gunicorn.service".into()), unit: Some("gunicorn.service".into()) }));
        life.push(&ev(10 * S, &g, EventBody::SignalGenerated { signal: 9, sender: killer.clone() }));
        life.push(&ev(10 * S + 5, &g, EventBody::ProcessExit { code: 9 }));
        let dead = Episode { owner: g.clone(), start_ns: S, stop_ns: Some(10 * S + 10), closed_by: None, sock: 0xa, source: Source::Listen };
        let back = Episode { owner: task(800, "gunicorn"), start_ns: 15 * S, stop_ns: None, closed_by: None, sock: 0xb, source: Source::Listen };
        let target = Target::Tcp("127.0.0.1:8000".parse().unwrap());
        let story = Story { target: &target, dead: Some(&dead), recovered: Some(&back), first_failure_ns: 11 * S, last_failure_ns: 12 * S, count: 3, clients: "nginx (pid 812)".into() };
        let t = build(&life, &story);
        let whats: Vec<&str> = t.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(whats, ["listen", "signal", "exit", "close", "refused", "recovered"]);
        assert_eq!(t[0].detail, "listens on 127.0.0.1:8000 (backlog 128, parent pid 1, unit gunicorn.service)");
        assert_eq!(t[1].detail, "SIGKILL from kill (pid 900)");
        assert_eq!(t[2].detail, "killed by SIGKILL");
        assert_eq!(t[5].pid, 800);
        assert!(t[5].detail.contains("outage of 5.0 s"), "{}", t[5].detail);
        let fix = fix_addendum(&t, None).unwrap();
        assert!(fix.contains("SIGKILL from kill (pid 900)") && fix.contains("After="), "{fix}");
    }

    #[test]
    fn exit_code_oom_and_still_down() {
        let g = task(700, "python3");
        let mut life = Lifecycle::new(100);
        life.push(&ev(2 * S, &g, EventBody::ProcessExit { code: 3 << 8 }));
        let dead = Episode { owner: g.clone(), start_ns: S, stop_ns: Some(2 * S), closed_by: None, sock: 0, source: Source::Listen };
        let target = Target::Tcp("127.0.0.1:8000".parse().unwrap());
        let story = Story { target: &target, dead: Some(&dead), recovered: None, first_failure_ns: 3 * S, last_failure_ns: 4 * S, count: 1, clients: "nginx (pid 1)".into() };
        let t = build(&life, &story);
        assert_eq!(t.iter().find(|e| e.what == "exit").unwrap().detail, "exited with code 3");
        let last = t.last().unwrap();
        assert_eq!(last.what, "still_down");
        assert!(last.detail.contains("at least 2.0 s"), "{}", last.detail);

        life.push(&ev(2 * S - 10, &g, EventBody::OomKilled));
        life.push(&ev(2 * S - 5, &g, EventBody::SignalGenerated { signal: 9, sender: task(0, "swapper") }));
        let t = build(&life, &story);
        assert!(t.iter().any(|e| e.what == "oom_kill"));
        assert_eq!(t.iter().find(|e| e.what == "signal").unwrap().detail, "SIGKILL from the kernel's OOM killer");
        assert!(fix_addendum(&t, None).unwrap().contains("OOM killer"));
    }

    #[test]
    fn unlink_of_a_live_unix_socket_names_who() {
        let g = task(700, "gunicorn");
        let rm = task(901, "rm");
        let mut life = Lifecycle::new(100);
        life.push(&ev(5 * S, &rm, EventBody::UnixUnlink { path: "/run/g.sock".into() }));
        let bound = Episode { owner: g, start_ns: S, stop_ns: None, closed_by: None, sock: 0, source: Source::Bind };
        let target = Target::Unix("/run/g.sock".into());
        let story = Story { target: &target, dead: Some(&bound), recovered: None, first_failure_ns: 6 * S, last_failure_ns: 7 * S, count: 2, clients: "nginx (pid 1)".into() };
        let t = build(&life, &story);
        let whats: Vec<&str> = t.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(whats, ["bind", "unlink", "refused", "still_down"]);
        assert_eq!((t[1].pid, t[1].comm.as_str()), (901, "rm"));
        assert!(fix_addendum(&t, None).unwrap().contains("rm (pid 901) deleted the socket file"));
    }
}
