//! What is known about listeners: who listened where, from when to when, and how full their
//! accept queues were. Fed by TcpListenStart/Stop, UnixBind and ListenerSeen.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use crate::event::{Queue, Target, TaskInfo};

/// Listen periods kept per address (older ones are forgotten).
const EPISODES_PER_TARGET: usize = 8;
/// Queue samples kept per address.
const SAMPLES_PER_TARGET: usize = 32;

/// How a listen period became known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// listen() seen by the kernel hook.
    Listen,
    /// bind() of a Unix socket path (its close is not traced).
    Bind,
    /// A sock_diag snapshot (it existed then; its start is unknown).
    Snapshot,
}

/// One period during which a listener existed on an address.
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    /// pid 0 when the owner could not be found.
    pub owner: TaskInfo,
    pub start_ns: u64,
    pub stop_ns: Option<u64>,
    /// Who closed it, when it was not the owner itself.
    pub closed_by: Option<TaskInfo>,
    pub sock: u64,
    pub source: Source,
}

impl Episode {
    /// A listener seen starting at `start_ns` (0: before tracing started), still open.
    pub fn open(owner: &TaskInfo, start_ns: u64, sock: u64, source: Source) -> Episode {
        Episode { owner: owner.clone(), start_ns, stop_ns: None, closed_by: None, sock, source }
    }

    pub fn is_current(&self) -> bool {
        self.stop_ns.is_none()
    }

    /// Whether it existed at some moment of [from, to].
    pub fn overlaps(&self, from: u64, to: u64) -> bool {
        self.start_ns <= to && self.stop_ns.is_none_or(|stop| stop >= from)
    }
}

#[derive(Clone, Debug, Default)]
pub struct ListenerState {
    pub episodes: VecDeque<Episode>,
    /// (ts, queue) measured by sock_diag.
    pub samples: VecDeque<(u64, Queue)>,
    pub last_change_ns: u64,
}

impl ListenerState {
    fn has_current(&self) -> bool {
        self.episodes.iter().any(Episode::is_current)
    }

    fn push_episode(&mut self, ep: Episode) {
        if self.episodes.len() >= EPISODES_PER_TARGET {
            self.episodes.pop_front();
        }
        self.episodes.push_back(ep);
    }
}

pub type ListenerKey = (u32, Target);

#[derive(Debug, Default)]
pub struct Listeners {
    map: BTreeMap<ListenerKey, ListenerState>,
    max_entries: usize,
}

/// Unix socket paths live in the filesystem, shared across network namespaces; abstract names
/// ('@...') belong to one namespace.
pub fn listener_key(netns: u32, target: &Target) -> ListenerKey {
    match target {
        Target::Unix(p) if !p.starts_with('@') => (0, target.clone()),
        _ => (netns, target.clone()),
    }
}

fn netns_matches(a: u32, b: u32) -> bool {
    a == b || a == 0 || b == 0
}

impl Listeners {
    pub fn new(max_entries: usize) -> Listeners {
        Listeners { map: BTreeMap::new(), max_entries: max_entries.max(1) }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    fn state_mut(&mut self, key: ListenerKey, ts_ns: u64) -> &mut ListenerState {
        let st = self.map.entry(key).or_default();
        st.last_change_ns = st.last_change_ns.max(ts_ns);
        st
    }

    pub fn listen_start(&mut self, netns: u32, addr: SocketAddr, owner: &TaskInfo, sock: u64, ts_ns: u64) {
        let st = self.state_mut((netns, Target::Tcp(addr)), ts_ns);
        // The same socket seen again (e.g. listen() called twice): keep one period.
        if sock != 0 && st.episodes.iter().any(|e| e.is_current() && e.sock == sock) {
            return;
        }
        // A snapshot of it arrived before its listen() event: that period is this one.
        if let Some(e) = st.episodes.iter_mut().find(|e| e.is_current() && e.source == Source::Snapshot) {
            e.owner = owner.clone();
            e.sock = sock;
            e.source = Source::Listen;
            e.start_ns = e.start_ns.min(ts_ns);
            return;
        }
        st.push_episode(Episode::open(owner, ts_ns, sock, Source::Listen));
        self.bound();
    }

    pub fn listen_stop(
        &mut self,
        netns: u32,
        addr: SocketAddr,
        owner: &TaskInfo,
        actor: &TaskInfo,
        sock: u64,
        ts_ns: u64,
    ) {
        let st = self.state_mut((netns, Target::Tcp(addr)), ts_ns);
        let closed_by = (actor.pid != 0 && actor.pid != owner.pid).then(|| actor.clone());
        // Which current period ends: the same socket, else the same owner, else the oldest.
        let idx = st
            .episodes
            .iter()
            .position(|e| e.is_current() && sock != 0 && e.sock == sock)
            .or_else(|| st.episodes.iter().position(|e| e.is_current() && owner.pid != 0 && e.owner.pid == owner.pid))
            .or_else(|| st.episodes.iter().position(Episode::is_current));
        match idx {
            Some(i) => {
                let e = &mut st.episodes[i];
                e.stop_ns = Some(ts_ns);
                e.closed_by = closed_by;
                if e.owner.pid == 0 {
                    e.owner = owner.clone();
                }
            }
            // It listened since before tracing started.
            None => st.push_episode(Episode {
                stop_ns: Some(ts_ns),
                closed_by,
                ..Episode::open(owner, 0, sock, Source::Listen)
            }),
        }
        self.bound();
    }

    pub fn unix_bind(&mut self, netns: u32, path: &str, owner: &TaskInfo, ts_ns: u64) {
        let key = listener_key(netns, &Target::Unix(path.to_string()));
        let st = self.state_mut(key, ts_ns);
        // Unix closes are not traced: a new bind of the path replaces the previous one.
        for e in st.episodes.iter_mut().filter(|e| e.is_current()) {
            e.stop_ns = Some(ts_ns);
        }
        st.push_episode(Episode::open(owner, ts_ns, 0, Source::Bind));
        self.bound();
    }

    /// A sock_diag snapshot: a listener exists on `target` now with this queue.
    pub fn seen(&mut self, netns: u32, target: &Target, queue: Queue, owner: &TaskInfo, ts_ns: u64, ttl_ns: u64) {
        let st = self.state_mut(listener_key(netns, target), ts_ns);
        if st.samples.len() >= SAMPLES_PER_TARGET {
            st.samples.pop_front();
        }
        st.samples.push_back((ts_ns, queue));
        while st.samples.front().is_some_and(|(t, _)| t.saturating_add(ttl_ns) < ts_ns) {
            st.samples.pop_front();
        }
        if st.has_current() {
            if owner.pid != 0 {
                if let Some(e) = st.episodes.iter_mut().find(|e| e.is_current() && e.owner.pid == 0) {
                    e.owner = owner.clone();
                }
            }
        } else {
            st.push_episode(Episode::open(owner, ts_ns, 0, Source::Snapshot));
        }
        self.bound();
    }

    /// States whose address covers `target` in `netns`: the exact address, and for TCP, when
    /// `wildcards` (the target is an address of this host), the wildcard listeners on the same
    /// port (0.0.0.0:P for IPv4, [::]:P for both families). An iterator, not a list: this runs
    /// several times for every concluded attempt.
    pub fn covering(&self, netns: u32, target: &Target, wildcards: bool) -> impl Iterator<Item = &ListenerState> {
        let (tcp, unix) = match target {
            Target::Tcp(a) => (Some(*a), None),
            Target::Unix(_) => (None, self.map.get(&listener_key(netns, target))),
        };
        let candidates: [Option<SocketAddr>; 3] = match tcp {
            Some(a) if wildcards => [
                Some(a),
                (a.is_ipv4() && !a.ip().is_unspecified()).then(|| SocketAddr::new(IpAddr::from([0u8; 4]), a.port())),
                (!a.ip().is_unspecified() || a.is_ipv4()).then(|| SocketAddr::new(IpAddr::from([0u16; 8]), a.port())),
            ],
            _ => [tcp, None, None],
        };
        let candidates = move || candidates.into_iter().flatten().map(Target::Tcp);
        // Namespace unknown: any namespace may hold it.
        let anywhere = (tcp.is_some() && netns == 0).then(|| {
            self.map.iter().filter(move |((_, t), _)| candidates().any(|c| c == *t)).map(|(_, st)| st)
        });
        // Direct lookups otherwise. Namespace 0 = measured without knowing its namespace.
        let mut direct: [Option<&ListenerState>; 6] = [None; 6];
        if tcp.is_some() && netns != 0 {
            for (i, t) in candidates().enumerate() {
                direct[2 * i] = self.map.get(&(netns, t.clone()));
                direct[2 * i + 1] = self.map.get(&(0, t));
            }
        }
        unix.into_iter().chain(anywhere.into_iter().flatten()).chain(direct.into_iter().flatten())
    }

    /// A listener that existed on `target` at some moment of [from, to] (latest started first).
    pub fn listener_during(
        &self,
        netns: u32,
        target: &Target,
        wildcards: bool,
        from: u64,
        to: u64,
    ) -> Option<&Episode> {
        self.covering(netns, target, wildcards)
            .flat_map(|st| st.episodes.iter())
            .filter(|e| e.overlaps(from, to))
            .max_by_key(|e| (e.owner.pid != 0, e.start_ns))
    }

    /// The current listener on `target`, if any (one with a known owner preferred).
    pub fn current(&self, netns: u32, target: &Target, wildcards: bool) -> Option<&Episode> {
        self.covering(netns, target, wildcards)
            .flat_map(|st| st.episodes.iter())
            .filter(|e| e.is_current())
            .max_by_key(|e| (e.owner.pid != 0, e.start_ns))
    }

    /// The most recently closed listen period on `target` that ended at or before `before`.
    pub fn last_closed_before(&self, netns: u32, target: &Target, wildcards: bool, before: u64) -> Option<&Episode> {
        self.covering(netns, target, wildcards)
            .flat_map(|st| st.episodes.iter())
            .filter(|e| e.stop_ns.is_some_and(|s| s <= before))
            .max_by_key(|e| e.stop_ns)
    }

    /// The most recent period on `target` of any kind (for Unix paths: the last bind).
    pub fn latest(&self, netns: u32, target: &Target) -> Option<&Episode> {
        self.covering(netns, target, false)
            .flat_map(|st| st.episodes.iter())
            .max_by_key(|e| e.start_ns)
    }

    /// Every known listening period on `target` (exact key), oldest first.
    pub fn episodes(&self, netns: u32, target: &Target) -> Vec<&Episode> {
        let mut v: Vec<&Episode> =
            self.covering(netns, target, false).flat_map(|st| st.episodes.iter()).collect();
        v.sort_by_key(|e| e.start_ns);
        v
    }

    /// Queue samples on `target` measured within [from, to].
    pub fn samples_during(&self, netns: u32, target: &Target, wildcards: bool, from: u64, to: u64) -> Vec<Queue> {
        self.covering(netns, target, wildcards)
            .flat_map(|st| st.samples.iter())
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, q)| *q)
            .collect()
    }

    /// Current listeners the client may have meant instead of `target`: for TCP, other ports
    /// on the same address (or wildcard listeners in the same netns); for Unix, other bound
    /// paths in the same directory. (address, owner).
    pub fn neighbours(&self, netns: u32, target: &Target) -> Vec<(Target, &Episode)> {
        let mut out = Vec::new();
        for ((ns, t), st) in &self.map {
            if t == target {
                continue;
            }
            let related = match (target, t) {
                (Target::Tcp(want), Target::Tcp(have)) => {
                    let other_port = have.port() != want.port()
                        && (have.ip() == want.ip()
                            || (have.ip().is_unspecified() && (have.is_ipv6() || want.is_ipv4())));
                    // The same port on the other address family's loopback: proxy_pass to
                    // `localhost` trying [::1] while the upstream binds 127.0.0.1 only.
                    let other_family = have.port() == want.port()
                        && have.is_ipv4() != want.is_ipv4()
                        && have.ip().is_loopback()
                        && want.ip().is_loopback();
                    netns_matches(*ns, netns) && (other_port || other_family)
                }
                (Target::Unix(want), Target::Unix(have)) => {
                    parent_dir(want) == parent_dir(have) && !want.starts_with('@') && !have.starts_with('@')
                }
                _ => false,
            };
            if !related {
                continue;
            }
            if let Some(e) = st.episodes.iter().filter(|e| e.is_current()).max_by_key(|e| e.start_ns) {
                out.push((t.clone(), e));
            }
        }
        out
    }

    /// Forgets queue samples older than the evidence TTL.
    pub fn expire(&mut self, now_ns: u64, ttl_ns: u64) {
        for st in self.map.values_mut() {
            while st.samples.front().is_some_and(|(t, _)| t.saturating_add(ttl_ns) < now_ns) {
                st.samples.pop_front();
            }
        }
    }

    /// Keeps the table under its bound: forgets addresses with no current listener first,
    /// least recently changed first, then any.
    fn bound(&mut self) {
        if self.map.len() <= self.max_entries {
            return;
        }
        let target_len = self.max_entries - self.max_entries / 16;
        let mut order: Vec<(bool, u64, ListenerKey)> =
            self.map.iter().map(|(k, st)| (st.has_current(), st.last_change_ns, k.clone())).collect();
        order.sort();
        for (_, _, k) in order.into_iter().take(self.map.len() - target_len) {
            self.map.remove(&k);
        }
    }
}

fn parent_dir(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[..i],
        None => "",
    }
}
