//! Userspace measurements: listeners and their accept queues via sock_diag (in each network
//! namespace), their owners via /proc, and the ListenOverflows counters. This is the I/O edge:
//! it reads the clock and /proc, and hands the engine plain events.

pub mod after_connect;
pub mod cgroup;
pub mod netns;
pub mod owners;
pub mod sockdiag;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::net::SocketAddr;

use crate::event::{Event, EventBody, FlowAddr, Queue, Target, TaskInfo};

#[allow(unused_imports)] // the capture loop's entry point; used by tests until then
pub use netns::netns_inode_of_pid;
use netns::{own_netns_inode, NetnsRegistry};
use after_connect::{parse_port_range, Measurement};
use owners::OwnerCache;
use sockdiag::{tcp_match_rank, tcp_state_name, DiagSocket, TCP_CLOSE_WAIT, TCP_ESTABLISHED};

/// Where a network namespace's local port range is (answers for the reader's namespace).
const PORT_RANGE_PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, so userspace and kernel
/// timestamps compare directly.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// One listener found by sock_diag, before its owner is looked up.
struct FoundListener {
    netns: u32,
    target: Target,
    queue: Queue,
    inode: u64,
}

/// Measures listeners, queues and overflow counters in every network namespace. Keeps its
/// netlink sockets, namespace handles and owner answers between calls.
pub struct Enricher {
    namespaces: NetnsRegistry,
    diag_sockets: HashMap<u32, DiagSocket>,
    owners: OwnerCache,
    /// Last TcpExt ListenOverflows value read per namespace.
    overflow_counters: HashMap<u32, u64>,
    own_netns: Option<u32>,
}

impl Default for Enricher {
    fn default() -> Self {
        Enricher::new()
    }
}

impl Enricher {
    pub fn new() -> Enricher {
        Enricher {
            namespaces: NetnsRegistry::new(),
            diag_sockets: HashMap::new(),
            owners: OwnerCache::new(),
            overflow_counters: HashMap::new(),
            own_netns: own_netns_inode(),
        }
    }

    /// Every TCP and Unix listener in every network namespace now, as ListenerSeen events
    /// (target = the listener's own address, wildcards included; task = owner, or pid 0 when
    /// no process holds it).
    pub fn snapshot_listeners(&mut self) -> Vec<Event> {
        self.namespaces.refresh();
        self.forget_gone_namespaces();
        let mut found = Vec::new();
        for netns in self.namespaces.inodes() {
            found.extend(self.listeners_in(netns));
        }
        // tracer's own listener (--metrics) is not an upstream anyone meant. (Unit tests look
        // for their own listeners: there the process is the test, not tracer.)
        let me = if cfg!(test) { 0 } else { std::process::id() };
        self.listener_events(found).into_iter().filter(|e| e.task.pid != me).collect()
    }

    /// The listener serving `target` in namespace `netns` now, as a ListenerSeen event whose
    /// target is the one asked about. TCP: a listener on exactly that address, else a wildcard
    /// one (0.0.0.0, or [::] unless V6ONLY) on the port. Unix: the path (`@name` abstract).
    pub fn probe_target(&mut self, netns: u32, target: &Target) -> Option<Event> {
        let socket = self.diag_socket(netns)?;
        let result = match target {
            Target::Tcp(addr) => socket.tcp_listeners().map(|listeners| {
                listeners
                    .iter()
                    .filter_map(|l| Some((tcp_match_rank(l, *addr)?, l)))
                    .min_by_key(|(rank, _)| *rank)
                    .map(|(_, l)| (l.queue, u64::from(l.inode)))
            }),
            Target::Unix(path) => socket.unix_listeners().map(|listeners| {
                listeners.iter().find(|l| &l.path == path).map(|l| (l.queue, u64::from(l.inode)))
            }),
        };
        let (queue, inode) = match result {
            Ok(found) => found?,
            Err(e) => {
                log::debug!("sock_diag in netns {netns}: {e}");
                self.diag_sockets.remove(&netns);
                return None;
            }
        };
        let found = FoundListener { netns, target: target.clone(), queue, inode };
        self.listener_events(vec![found]).pop()
    }

    /// TcpExt ListenOverflows increases per namespace since the last call, as ListenOverflows
    /// events. A namespace's first reading only primes it, so the first call returns nothing.
    pub fn poll_overflows(&mut self) -> Vec<Event> {
        self.namespaces.refresh();
        self.forget_gone_namespaces();
        let mut events = Vec::new();
        for (netns, pid) in self.namespaces.pids() {
            // The pid may have exited since the scan: skip this round, the next scan finds
            // another process of the namespace.
            let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/netstat")) else { continue };
            let Some(value) = netstat_value(&text, "TcpExt", "ListenOverflows") else { continue };
            let previous = self.overflow_counters.insert(netns, value);
            if let Some(previous) = previous {
                // A counter never decreases; if it did, the namespace inode was reused: the
                // new reading primes it again.
                if value > previous {
                    events.push(Event {
                        ts_ns: monotonic_ns(),
                        netns,
                        sock: 0,
                        task: TaskInfo::default(),
                        body: EventBody::ListenOverflows { delta: value - previous },
                    });
                }
            }
        }
        events
    }

    /// Makes measurement `m` (see `after_connect`), as an event at `ts_ns`; None when it
    /// cannot be made (namespace gone, socket gone, no permission).
    pub fn measure(&mut self, m: Measurement, ts_ns: u64) -> Option<Event> {
        match m {
            Measurement::Ports { netns, target } => self.ports_in_use(netns, target, ts_ns),
            Measurement::Holder { netns, flow } => self.conn_holder(netns, flow, ts_ns),
        }
    }

    /// `PortsInUse`: namespace `netns`'s `ip_local_port_range` (read from inside it) and its
    /// TCP sockets towards `target` by state.
    pub fn ports_in_use(&mut self, netns: u32, target: SocketAddr, ts_ns: u64) -> Option<Event> {
        let text = if Some(netns) == self.own_netns {
            fs::read_to_string(PORT_RANGE_PATH)
        } else {
            netns::read_in_netns(self.namespaces.handle(netns)?, PORT_RANGE_PATH)
        };
        let range = match text {
            Ok(text) => parse_port_range(&text)?,
            Err(e) => {
                log::debug!("{PORT_RANGE_PATH} in netns {netns}: {e}");
                return None;
            }
        };
        let connections = match self.diag_socket(netns)?.tcp_connections_to(target) {
            Ok(c) => c,
            Err(e) => {
                log::debug!("sock_diag in netns {netns}: {e}");
                self.diag_sockets.remove(&netns);
                return None;
            }
        };
        let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
        for c in connections {
            *by_state.entry(tcp_state_name(c.state).to_string()).or_default() += 1;
        }
        Some(Event { ts_ns, netns, sock: 0, task: TaskInfo::default(), body: EventBody::PortsInUse { target, range, by_state } })
    }

    /// `ConnHolder`: who holds the upstream's end of `flow` (Nginx's view: src = Nginx,
    /// dst = the upstream) in namespace `netns`, and that process's state. A connection no
    /// process holds yet still waits in the listener's accept queue (`in_queue`). None when
    /// the upstream's socket is gone, or was closed by its process (an orphan: no holder).
    pub fn conn_holder(&mut self, netns: u32, flow: FlowAddr, ts_ns: u64) -> Option<Event> {
        let found = match self.diag_socket(netns)?.tcp_connection(flow.dst, flow.src) {
            Ok(found) => found?,
            Err(e) => {
                log::debug!("sock_diag in netns {netns}: {e}");
                self.diag_sockets.remove(&netns);
                return None;
            }
        };
        if found.inode == 0 {
            // No file: a connection not accepted yet (its child socket in the accept queue is
            // established, or CLOSE_WAIT once Nginx's FIN came), else TIME_WAIT or an orphan
            // its process closed.
            if !matches!(found.state, TCP_ESTABLISHED | TCP_CLOSE_WAIT) {
                return None;
            }
            let body = EventBody::ConnHolder { flow, state: None, in_queue: true };
            return Some(Event { ts_ns, netns, sock: 0, task: TaskInfo::default(), body });
        }
        let inode = u64::from(found.inode);
        // One /proc scan, not cached: connections come and go (the cache is for listeners).
        let task = owners::scan_socket_owners(&HashSet::from([inode])).remove(&inode)?;
        // The kernel's own words for the state (`S (sleeping)`), from a fixed table.
        let state = procfs::process::Process::new(i32::try_from(task.pid).ok()?).and_then(|p| p.status()).ok().map(|s| s.state);
        Some(Event { ts_ns, netns, sock: 0, task, body: EventBody::ConnHolder { flow, state, in_queue: false } })
    }

    /// The sock_diag socket of namespace `netns`, created on first use.
    fn diag_socket(&mut self, netns: u32) -> Option<&mut DiagSocket> {
        if !self.diag_sockets.contains_key(&netns) {
            let socket = if Some(netns) == self.own_netns {
                DiagSocket::new_here()
            } else {
                // Entering another namespace needs CAP_SYS_ADMIN; without it that namespace
                // is simply not measured.
                DiagSocket::new_in(self.namespaces.handle(netns)?)
            };
            match socket {
                Ok(s) => {
                    self.diag_sockets.insert(netns, s);
                }
                Err(e) => {
                    log::debug!("no sock_diag socket for netns {netns}: {e}");
                    return None;
                }
            }
        }
        self.diag_sockets.get_mut(&netns)
    }

    /// TCP and Unix listeners of one namespace; on a netlink error the socket is dropped (a
    /// new one is made next time) and the namespace skipped.
    fn listeners_in(&mut self, netns: u32) -> Vec<FoundListener> {
        let Some(socket) = self.diag_socket(netns) else { return Vec::new() };
        let result = socket.tcp_listeners().and_then(|tcp| Ok((tcp, socket.unix_listeners()?)));
        match result {
            Ok((tcp, unix)) => tcp
                .into_iter()
                .map(|l| FoundListener {
                    netns,
                    target: Target::Tcp(l.addr),
                    queue: l.queue,
                    inode: u64::from(l.inode),
                })
                .chain(unix.into_iter().map(|l| FoundListener {
                    netns,
                    target: Target::Unix(l.path),
                    queue: l.queue,
                    inode: u64::from(l.inode),
                }))
                .collect(),
            Err(e) => {
                log::debug!("sock_diag in netns {netns}: {e}");
                self.diag_sockets.remove(&netns);
                Vec::new()
            }
        }
    }

    fn listener_events(&mut self, found: Vec<FoundListener>) -> Vec<Event> {
        let inodes: Vec<u64> = found.iter().map(|f| f.inode).collect();
        let owners = self.owners.owners_of(&inodes);
        let ts_ns = monotonic_ns();
        found
            .into_iter()
            .map(|f| Event {
                ts_ns,
                netns: f.netns,
                // Event.sock is a kernel socket address; sock_diag gives only the inode, so 0.
                sock: 0,
                task: owners.get(&f.inode).cloned().unwrap_or_default(),
                body: EventBody::ListenerSeen { target: f.target, queue: f.queue },
            })
            .collect()
    }

    /// Drops sockets and counters of namespaces no process is in any more.
    fn forget_gone_namespaces(&mut self) {
        let live: HashSet<u32> = self.namespaces.inodes().into_iter().collect();
        self.diag_sockets.retain(|netns, _| live.contains(netns));
        self.overflow_counters.retain(|netns, _| live.contains(netns));
    }
}

/// A counter from a /proc/net/netstat text: pairs of lines `TcpExt: Name1 Name2 ...` and
/// `TcpExt: 1 2 ...`.
pub fn netstat_value(text: &str, section: &str, name: &str) -> Option<u64> {
    let prefix = format!("{section}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let index = names.split_whitespace().skip(1).position(|n| n == name);
        if let Some(index) = index {
            return values.split_whitespace().skip(1).nth(index)?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests;
