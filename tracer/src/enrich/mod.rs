//! Userspace measurements: listeners and their accept queues via sock_diag (in each network
//! namespace), their owners via /proc, and the ListenOverflows counters. This is the I/O edge:
//! it reads the clock and /proc, and hands the engine plain events.

pub mod addrs;
pub mod after_connect;
pub mod cgroup;
pub mod drop_rule;
pub mod firewall;
pub mod conntrack;
pub mod nat;
pub mod netns;
pub mod nftrace;
pub mod owners;
pub mod rawnl;
pub mod ruleset;
pub mod sockdiag;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::event::{Event, EventBody, FlowAddr, Queue, Target, TaskInfo};

#[allow(unused_imports)] // the capture loop's entry point; used by tests until then
pub use netns::netns_inode_of_pid;
use netns::{own_netns_inode, NetnsRegistry};
use after_connect::{parse_port_range, Measurement};
use nat::ADDRESSES_EVERY_NS;
use owners::OwnerCache;
use rawnl::NlSocket;
use sockdiag::{tcp_match_rank, tcp_state_name, DiagSocket, TCP_CLOSE_WAIT, TCP_ESTABLISHED};

/// Where a network namespace's local port range is (answers for the reader's namespace).
const PORT_RANGE_PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";
/// An address dump answers at once; the timeout only keeps a wedged kernel from hanging tracer.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(1);
/// A conntrack lookup is made while events wait: it must never hold the feed for long.
const CONNTRACK_TIMEOUT: Duration = Duration::from_millis(200);

/// Datagrams of destroy events read per namespace per lookup (the rest wait, or are dropped
/// by the kernel when the socket is full: a lookup is then simply not answered).
const MAX_DESTROY_DATAGRAMS: usize = 64;
/// Translated flows remembered from destroy events.
const MAX_RECENT_TRANSLATIONS: usize = 4096;

/// The last address book measured for one namespace.
struct AddressBook {
    addrs: Vec<IpAddr>,
    /// Event time of the last try (measured or not).
    tried_ns: u64,
    measured: bool,
}

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
    /// rtnetlink sockets (address dumps) and ctnetlink sockets (conntrack), per namespace.
    route_sockets: HashMap<u32, NlSocket>,
    conntrack_sockets: HashMap<u32, NlSocket>,
    address_books: HashMap<u32, AddressBook>,
    /// Per namespace, a socket subscribed to conntrack's destroy events, and the translated
    /// flows they told of lately (by arrival, oldest first; bounded).
    conntrack_listeners: HashMap<u32, NlSocket>,
    recent_translations: std::collections::VecDeque<(u32, FlowAddr, SocketAddr)>,
    /// Event time of the last /proc rescan for namespaces asked for by a NAT lookup.
    namespaces_rescanned_ns: Option<u64>,
    /// Per namespace, the netfilter ruleset last read and a socket to ask its generation.
    rulesets: HashMap<u32, drop_rule::ReadRuleset>,
    nftables_sockets: HashMap<u32, NlSocket>,
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
            route_sockets: HashMap::new(),
            conntrack_sockets: HashMap::new(),
            address_books: HashMap::new(),
            conntrack_listeners: HashMap::new(),
            recent_translations: std::collections::VecDeque::new(),
            namespaces_rescanned_ns: None,
            rulesets: HashMap::new(),
            nftables_sockets: HashMap::new(),
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

    /// Every listener of namespace `netns` now, as ListenerSeen events (see `snapshot_listeners`).
    pub fn listeners_seen_in(&mut self, netns: u32) -> Vec<Event> {
        let found = self.listeners_in(netns);
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
        self.route_sockets.retain(|netns, _| live.contains(netns));
        self.conntrack_sockets.retain(|netns, _| live.contains(netns));
        self.address_books.retain(|netns, _| live.contains(netns));
        self.conntrack_listeners.retain(|netns, _| live.contains(netns));
        self.rulesets.retain(|netns, _| live.contains(netns));
        self.nftables_sockets.retain(|netns, _| live.contains(netns));
    }

    /// The address book of every namespace now, as NetnsAddresses events (start-up).
    pub fn snapshot_addresses(&mut self, ts_ns: u64) -> Vec<Event> {
        self.namespaces.refresh();
        self.forget_gone_namespaces();
        self.namespaces.inodes().into_iter().filter_map(|netns| self.measure_addresses(netns, ts_ns)).collect()
    }

    /// The address books of namespaces found since the last call that have none yet (call
    /// after a /proc rescan, e.g. `poll_overflows`).
    pub fn addresses_of_new_namespaces(&mut self, ts_ns: u64) -> Vec<Event> {
        let new: Vec<u32> = self.namespaces.inodes().into_iter().filter(|n| !self.address_books.contains_key(n)).collect();
        new.into_iter().filter_map(|netns| self.measure_addresses(netns, ts_ns)).collect()
    }

    /// Namespace `netns`'s address book when it has never been tried (a namespace first seen
    /// in an event); a namespace that could not be measured is tried again after
    /// `ADDRESSES_EVERY_NS`.
    pub fn addresses_if_unknown(&mut self, netns: u32, ts_ns: u64) -> Option<Event> {
        if netns == 0 {
            return None;
        }
        match self.address_books.get(&netns) {
            Some(book) if book.measured || ts_ns.saturating_sub(book.tried_ns) < ADDRESSES_EVERY_NS => None,
            _ => self.measure_addresses(netns, ts_ns),
        }
    }

    /// `NetnsAddresses`: the addresses configured in namespace `netns` (an rtnetlink dump on a
    /// socket made inside it), remembered for `is_local_anywhere`.
    pub fn measure_addresses(&mut self, netns: u32, ts_ns: u64) -> Option<Event> {
        self.listen_to_conntrack(netns);
        let previous = self.address_books.remove(&netns);
        let mut book = AddressBook { addrs: previous.map(|b| b.addrs).unwrap_or_default(), tried_ns: ts_ns, measured: false };
        let result = self.route_socket(netns).map(|socket| addrs::dump_addresses(socket));
        let event = match result {
            Some(Ok(addrs)) => {
                book.addrs = addrs.clone();
                book.measured = true;
                Some(Event { ts_ns, netns, sock: 0, task: TaskInfo::default(), body: EventBody::NetnsAddresses { addrs } })
            }
            Some(Err(e)) => {
                log::debug!("address dump in netns {netns}: {e}");
                self.route_sockets.remove(&netns);
                None
            }
            None => None,
        };
        self.address_books.insert(netns, book);
        event
    }

    /// The namespace that serves `ip` for a client in `netns`: its own (loopback, or an address
    /// of its own), else the one namespace of this host that has it. None when no namespace
    /// here has it (another host, or a translated Service address), or several do.
    pub fn serving_netns(&self, netns: u32, ip: IpAddr) -> Option<u32> {
        let holders = self.address_books.iter().filter(|(_, b)| b.addrs.contains(&ip)).map(|(n, _)| *n);
        crate::event::serving_namespace(netns, ip, holders)
    }

    /// Whether `ip` is configured in any namespace measured so far.
    pub fn is_local_anywhere(&self, ip: IpAddr) -> bool {
        self.address_books.values().any(|b| b.addrs.contains(&ip))
    }

    /// Where `flow` (dialled by a client in `netns`) was address-translated to, when its
    /// destination is configured in no namespace (a Service address, a published port). The
    /// address books that may be stale are measured again first (a container's address may
    /// be newer than its namespace); those measurements come first in the result, then a
    /// NatMapping (in the client's `netns`) when conntrack knows a translation.
    ///
    /// Conntrack is asked in the client's namespace (DNAT on its output: docker's published
    /// ports and kube-proxy on the host), then in tracer's own (the host's: DNAT of a pod's
    /// packets as they enter the host).
    pub fn nat_mapping(&mut self, netns: u32, flow: FlowAddr, ts_ns: u64) -> Vec<Event> {
        let mut events = Vec::new();
        if self.is_local_anywhere(flow.dst.ip()) {
            return events;
        }
        events.extend(self.refresh_stale_address_books(ts_ns));
        if self.is_local_anywhere(flow.dst.ip()) || !conntrack::conntrack_present() {
            return events;
        }
        self.read_destroy_events();
        let mut places = vec![netns];
        if let Some(own) = self.own_netns.filter(|own| *own != netns) {
            places.push(own);
        }
        for place in places {
            let remembered = self.recent_translations.iter().rev().find(|(n, f, _)| *n == place && *f == flow).map(|(_, _, b)| *b);
            if let Some(backend) = remembered {
                let body = EventBody::NatMapping { flow, backend };
                events.push(Event { ts_ns, netns, sock: 0, task: TaskInfo::default(), body });
                break;
            }
            let Some(socket) = self.conntrack_socket(place) else { continue };
            match conntrack::backend_of(socket, flow) {
                Ok(Some(backend)) => {
                    let body = EventBody::NatMapping { flow, backend };
                    events.push(Event { ts_ns, netns, sock: 0, task: TaskInfo::default(), body });
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    // EOPNOTSUPP and the like: no conntrack here; a timeout: a new socket
                    // next time (a late reply must not be read as the next answer).
                    log::debug!("conntrack in netns {place}: {e}");
                    self.conntrack_sockets.remove(&place);
                }
            }
        }
        events
    }

    /// Subscribes to namespace `netns`'s conntrack destroy events (once; not when the kernel
    /// has no conntrack, so that nothing makes it load the modules).
    fn listen_to_conntrack(&mut self, netns: u32) {
        if self.conntrack_listeners.contains_key(&netns) || !conntrack::conntrack_present() {
            return;
        }
        let protocol = netlink_sys::protocols::NETLINK_NETFILTER;
        let group = conntrack::NFNLGRP_CONNTRACK_DESTROY;
        let socket = if Some(netns) == self.own_netns {
            NlSocket::subscribe_in(None, protocol, group)
        } else {
            let Some(handle) = self.namespaces.handle(netns) else { return };
            NlSocket::subscribe_in(Some(handle), protocol, group)
        };
        match socket {
            Ok(s) => {
                self.conntrack_listeners.insert(netns, s);
            }
            Err(e) => log::debug!("no conntrack events for netns {netns}: {e}"),
        }
    }

    /// Keeps the translated flows of the destroy events waiting on every subscription.
    fn read_destroy_events(&mut self) {
        for (netns, socket) in &mut self.conntrack_listeners {
            for payload in socket.drain(conntrack::DESTROY_EVENT, MAX_DESTROY_DATAGRAMS) {
                if let Some((flow, backend)) = conntrack::destroyed_translation(&payload) {
                    if self.recent_translations.len() >= MAX_RECENT_TRANSLATIONS {
                        self.recent_translations.pop_front();
                    }
                    self.recent_translations.push_back((*netns, flow, backend));
                }
            }
        }
    }

    /// Measures again the address books older than `ADDRESSES_EVERY_NS`, and those of the
    /// namespaces that appeared since (one /proc rescan per `ADDRESSES_EVERY_NS` at most).
    fn refresh_stale_address_books(&mut self, ts_ns: u64) -> Vec<Event> {
        let rescan_due = self.namespaces_rescanned_ns.is_none_or(|t| ts_ns.saturating_sub(t) >= ADDRESSES_EVERY_NS || ts_ns < t);
        if rescan_due {
            self.namespaces_rescanned_ns = Some(ts_ns);
            self.namespaces.refresh();
            self.forget_gone_namespaces();
        }
        let stale: Vec<u32> = self
            .namespaces
            .inodes()
            .into_iter()
            .filter(|n| self.address_books.get(n).is_none_or(|b| ts_ns.saturating_sub(b.tried_ns) >= ADDRESSES_EVERY_NS || ts_ns < b.tried_ns))
            .collect();
        stale.into_iter().filter_map(|netns| self.measure_addresses(netns, ts_ns)).collect()
    }

    fn route_socket(&mut self, netns: u32) -> Option<&mut NlSocket> {
        let protocol = netlink_sys::protocols::NETLINK_ROUTE;
        Self::netlink_socket(&mut self.route_sockets, &mut self.namespaces, self.own_netns, netns, protocol, ROUTE_TIMEOUT)
    }

    fn conntrack_socket(&mut self, netns: u32) -> Option<&mut NlSocket> {
        let protocol = netlink_sys::protocols::NETLINK_NETFILTER;
        Self::netlink_socket(&mut self.conntrack_sockets, &mut self.namespaces, self.own_netns, netns, protocol, CONNTRACK_TIMEOUT)
    }

    /// The socket of `protocol` in namespace `netns`, created on first use (entering another
    /// namespace needs CAP_SYS_ADMIN; without it that namespace is not measured).
    fn netlink_socket<'a>(
        sockets: &'a mut HashMap<u32, NlSocket>,
        namespaces: &mut NetnsRegistry,
        own_netns: Option<u32>,
        netns: u32,
        protocol: isize,
        timeout: Duration,
    ) -> Option<&'a mut NlSocket> {
        if !sockets.contains_key(&netns) {
            let socket = if Some(netns) == own_netns {
                NlSocket::new_here(protocol, timeout)
            } else {
                NlSocket::new_in(namespaces.handle_or_named(netns)?, protocol, timeout)
            };
            match socket {
                Ok(s) => {
                    sockets.insert(netns, s);
                }
                Err(e) => {
                    log::debug!("no netlink socket (protocol {protocol}) for netns {netns}: {e}");
                    return None;
                }
            }
        }
        sockets.get_mut(&netns)
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
