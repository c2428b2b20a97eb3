//! Decoded events: what the explanation engine consumes.
//!
//! `capture` turns the raw `#[repr(C)]` records from the ring buffer into these values (kernel
//! enum numbers already resolved to names through BTF); `enrich` adds facts it measured in
//! userspace (listeners seen through sock_diag, ListenOverflows counters) as events of the same
//! stream, so the engine has one ordered input and stays pure. These types serialize, so unit
//! tests can replay recorded streams.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tracer_common::EventKind;

/// A task (process) as recorded by the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskInfo {
    pub pid: u32,
    #[serde(default)]
    pub tid: u32,
    #[serde(default)]
    pub uid: u32,
    pub comm: String,
}

/// A TCP flow, oriented client -> target when known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FlowAddr {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl FlowAddr {
    pub fn reversed(&self) -> FlowAddr {
        FlowAddr { src: self.dst, dst: self.src }
    }
}

/// The upstream a client tried to reach.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Target {
    Tcp(SocketAddr),
    /// A Unix socket path; abstract names are written with a leading '@'.
    Unix(String),
}

impl fmt::Display for Target {
    /// `127.0.0.1:8000`, `[::1]:8000`, `unix:/run/app.sock`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "{a}"),
            Target::Unix(p) => write!(f, "unix:{p}"),
        }
    }
}

/// An accept queue measurement: current length and maximum (the listen backlog).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queue {
    pub len: u32,
    pub max: u32,
}

impl Queue {
    /// The kernel's own test (`sk_acceptq_is_full`): full when len > max; a queue at exactly
    /// its maximum also refuses the next connection, so treat len >= max as full.
    pub fn is_full(&self) -> bool {
        self.len >= self.max
    }
}

/// A kind of kernel record (the wire enum's variant), as counted emitted or lost. Its name
/// (`TcpAttemptFailed`) is what the JSON `lost_events` keys and the metrics' `kind` label show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordKind(pub EventKind);

/// Records per kind (kinds with none left out), summed over CPUs.
pub type KindCounts = std::collections::BTreeMap<RecordKind, u64>;

impl RecordKind {
    /// The stable name: the variant's (`TcpAttemptFailed`).
    pub fn name(self) -> String {
        format!("{:?}", self.0)
    }

    /// The kind of this name, if there is one.
    pub fn from_name(name: &str) -> Option<RecordKind> {
        EventKind::ALL.iter().map(|&k| RecordKind(k)).find(|k| k.name() == name)
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Ordered by name, as reports list them.
impl Ord for RecordKind {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(&other.name())
    }
}

impl PartialOrd for RecordKind {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Serialize for RecordKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for RecordKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        RecordKind::from_name(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown event kind {name:?}")))
    }
}

/// How an established connection ended abnormally (`tracer_common::CONN_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnEnd {
    /// The peer's FIN came before any byte had been received.
    PeerFin,
    /// Straight to CLOSE: a reset received (`sk_err` set) or sent by this side's close.
    Reset,
    /// This side closed before a byte went one way or the other.
    LocalFin,
}

/// The last fatal signal generated for a process, as the kernel recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FatalSignal {
    pub signal: i32,
    pub ts_ns: u64,
    pub sender: TaskInfo,
    /// The OOM killer chose the process.
    #[serde(default)]
    pub oom: bool,
}

/// The network namespace that serves `ip` for a client in `netns`, given the namespaces that
/// hold `ip` on an interface (`holders`): the client's own for loopback or an address of its
/// own, else the one namespace that holds it. None when none does (another host, or a Service
/// address translated by NAT) or several do (the same private range in isolated networks):
/// then no namespace can be named. The engine and enrich both place addresses by this rule.
pub fn serving_namespace(netns: u32, ip: std::net::IpAddr, holders: impl IntoIterator<Item = u32>) -> Option<u32> {
    if ip.is_loopback() || ip.is_unspecified() {
        return Some(netns);
    }
    let mut holders = holders.into_iter();
    let first = holders.next()?;
    let mut only = Some(first);
    for h in holders {
        if h == netns {
            return Some(netns);
        }
        if h != first {
            only = None;
        }
    }
    if first == netns {
        return Some(netns);
    }
    only
}

/// One event, kernel-made or measured by tracer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds (the kernel's `bpf_ktime_get_ns`).
    pub ts_ns: u64,
    /// Network namespace inode (0 when unknown).
    #[serde(default)]
    pub netns: u32,
    /// Kernel address of the socket: the identity of one connection attempt or listener.
    #[serde(default)]
    pub sock: u64,
    /// See `tracer_common::EventHeader::task`: the owner recorded at connect/listen time for
    /// socket events, the caller for syscall events.
    pub task: TaskInfo,
    pub body: EventBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventBody {
    /// SYN_SENT -> CLOSE. `sk_err` is the positive errno on the socket (111 refused, 110 timed
    /// out, 113 host unreachable ...), 0 when its owner closed it before the kernel gave up.
    TcpAttemptFailed { flow: FlowAddr, sk_err: i32, syn_retransmits: u32, rst_received: bool, start_ns: u64 },
    /// Refused attempts the kernel counted instead of sending: `count` more attempts identical to
    /// the exemplar (its owner, target, namespace, socket error and proof: this host's reset from
    /// no socket), the exemplar being the attempt of socket `Event::sock` with flow `flow` sent in
    /// full before them. `Event::ts_ns` is the last one's close.
    TcpAttemptRepeats { flow: FlowAddr, count: u64 },
    /// A SYN retransmit by a SYN_SENT socket. `queue`/`listener`: the local listener on the
    /// destination port as read in the kernel at that moment, when tracer knows it.
    TcpSynRetransmit { flow: FlowAddr, syn_retransmits: u32, queue: Option<Queue>, listener: Option<TaskInfo> },
    /// SYN_SENT -> ESTABLISHED after at least one SYN retransmit.
    TcpAttemptDelayed { flow: FlowAddr, syn_retransmits: u32, start_ns: u64 },
    /// The attempt's socket received an RST while in SYN_SENT.
    TcpRstReceived { flow: FlowAddr },
    /// This host's TCP stack answered with an RST because no socket matched: nothing listens
    /// on `flow.dst` (flow oriented client -> target). `reason`: kernel sk_rst_reason name.
    TcpRstSentNoSocket { flow: FlowAddr, reason: Option<Arc<str>> },
    /// A packet freed with a drop reason tracer watches (`NO_SOCKET`, `NETFILTER_DROP`,
    /// `TCP_LISTEN_OVERFLOW`). `flow` in the packet's own direction.
    SkbDropped { flow: Option<FlowAddr>, reason: Arc<str> },
    /// This host sent an ICMP error (e.g. nft `reject with icmp`). Ports are unknown (0); the
    /// addresses are those of the offending packet (`src` = who sent it).
    IcmpSent { flow: FlowAddr, icmp_type: u8, code: u8 },
    /// A TCP socket entered LISTEN on `addr`; `task` is the process that called listen().
    TcpListenStart {
        addr: SocketAddr,
        /// The accept queue's maximum (listen()'s backlog, capped by net.core.somaxconn).
        #[serde(default)]
        backlog: Option<u32>,
    },
    /// A TCP listener on `addr` closed; `task` is its recorded owner, `actor` who closed it.
    TcpListenStop { addr: SocketAddr, actor: TaskInfo },
    /// connect() on an AF_UNIX socket failed with `errno` (positive).
    UnixConnectFailed { path: String, errno: i32 },
    /// bind() of an AF_UNIX socket to `path` (who created the socket file).
    UnixBind { path: String },
    /// A listener's owner (`task`) exited; `code` is the kernel's raw exit_code
    /// (status << 8 | terminating signal).
    ProcessExit { code: i32 },
    /// A fatal signal was generated for `task` (a listener's owner) by `sender`.
    SignalGenerated { signal: i32, sender: TaskInfo },
    /// The OOM killer chose `task` (a listener's owner).
    OomKilled,
    /// `task` unlinked the Unix socket file `path` of a listener.
    UnixUnlink { path: String },
    /// A Unix connect to `path` failed with EAGAIN: the listener's queue as the kernel read it
    /// then (function hooks on unix_find_other and unix_stream_connect).
    UnixPeerQueue { path: String, queue: Queue },
    /// Measured by tracer (/proc) when a listener appears: its owner's parent, cgroup and
    /// systemd unit.
    ProcessInfo { ppid: u32, cgroup: Option<String>, unit: Option<String> },
    /// Measured by tracer (sock_diag + /proc): a listener exists on `target` now, owned by
    /// `task` (pid 0 when the owner could not be found), with this accept queue.
    ListenerSeen { target: Target, queue: Queue },
    /// Measured by tracer: TcpExtListenOverflows rose by `delta` in `netns` since last read.
    ListenOverflows { delta: u64 },
    /// The kernel lost `count` events of `kind` (ring buffer full); reported, never silent.
    Lost { kind: RecordKind, count: u64 },
    /// A SYN reached a listener whose accept queue was full (`tcp_conn_request`, function-hook
    /// backend): the kernel drops it. `flow` client -> listener (None when the packet could not
    /// be parsed), `listen` the listener's port, `listener` its owner when tracer saw it listen.
    TcpListenOverflow { flow: Option<FlowAddr>, port: u16, queue: Queue, listener: Option<TaskInfo> },
    /// accept() took a connection that had waited `wait_ns` on the listener's queue (from
    /// ESTABLISHED to accept). `flow` client -> listener; `task` of the event is the acceptor;
    /// `queue` the listener's queue right after.
    TcpAccepted { flow: FlowAddr, wait_ns: u64, queue: Option<Queue> },
    /// The kernel's accept-wait histogram of the listener on `listener` so far (absolute
    /// counts per bucket: < 1 ms, < 10 ms, < 100 ms, < 1 s, the rest), read from its map.
    AcceptWaitTotals { listener: std::net::SocketAddr, counts: [u64; 5] },
    /// An established connection ended abnormally. `flow` is this socket's view (src local).
    /// `client_side`: tracer saw the socket connect, and `task` is its owner (an Nginx
    /// worker); otherwise `task` is whoever was current. `closer`: the task that closed or
    /// aborted the socket (process context), with its `exit_code` (non-zero when it was
    /// dying) and the last fatal `signal` sent to it.
    TcpConnEnded {
        flow: FlowAddr,
        end: ConnEnd,
        client_side: bool,
        /// The reset came after the peer's FIN (CLOSE_WAIT): this side wrote on a connection
        /// the peer had already closed.
        after_fin: bool,
        sk_err: i32,
        bytes_sent: u64,
        bytes_received: u64,
        start_ns: u64,
        established_ns: u64,
        /// How long the connection had been idle (no data received) when the peer's FIN
        /// came, and how long ago that FIN came (from the socket's jiffies; None if unknown).
        idle_before_fin_ns: Option<u64>,
        since_fin_ns: Option<u64>,
        closer: Option<TaskInfo>,
        exit_code: i32,
        signal: Option<FatalSignal>,
        /// A local abort: bytes received but never read (why the kernel reset it).
        #[serde(default)]
        unread_bytes: u32,
    },
    /// Measured by tracer (/proc/sys and sock_diag in `netns`) when a connect found no free
    /// local port: the netns's `ip_local_port_range` and the sockets towards `target` by TCP
    /// state (`ESTABLISHED`, `TIME_WAIT`...).
    PortsInUse { target: SocketAddr, range: (u16, u16), by_state: std::collections::BTreeMap<String, u64> },
    /// Measured by tracer (sock_diag + /proc) when a connection ended with no response: `task`
    /// holds the accepted end of `flow` (client -> upstream); `state` is its /proc state then
    /// (`R (running)`, `S (sleeping)`, `D (disk sleep)`...), `in_queue` true when no process
    /// had accepted it yet.
    ConnHolder { flow: FlowAddr, state: Option<String>, in_queue: bool },
    /// Measured by tracer (conntrack, in `netns`): the connection `flow` (as the client dialled
    /// it) was address-translated (DNAT: a Service, a published port) to `backend`.
    NatMapping { flow: FlowAddr, backend: SocketAddr },
    /// Measured by tracer: the addresses configured in network namespace `netns` (the
    /// interfaces' own addresses), so a target address can be placed in the namespace that
    /// serves it.
    NetnsAddresses { addrs: Vec<std::net::IpAddr> },
    /// Measured by tracer (the ruleset of `netns`, the namespace where a packet of `flow` was
    /// dropped with NETFILTER_DROP; `flow` in the packet's direction): the netfilter rules that
    /// dropped or rejected it. `certain`: exactly one rule could have and its match is sure;
    /// otherwise they are candidates. How to reach `netns` (both None: tracer's own): its
    /// `ip netns` name (then `enter_pid` is None), else `enter_pid`, a process in it
    /// (`nsenter --net=/proc/PID/ns/net`).
    FirewallRule {
        flow: FlowAddr,
        rules: Vec<NamedRule>,
        certain: bool,
        enter_pid: Option<u32>,
        #[serde(default)]
        netns_name: Option<String>,
    },
}

/// A netfilter rule (or a base chain's policy) as tracer names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedRule {
    /// nftables family (`inet`, `ip`, `ip6`), table and chain.
    pub family: String,
    pub table: String,
    pub chain: String,
    /// The base chain's hook the packet came through (`output`, `input`...).
    pub hook: String,
    /// The rule's handle (`nft -a`); for a policy, its chain's handle.
    pub handle: u64,
    /// The rule as `nft -a -s list ruleset` prints it, without the handle comment; a
    /// policy: `policy drop`.
    pub text: String,
    /// The base chain's policy dropped it, no rule.
    #[serde(default)]
    pub policy: bool,
    /// The rule as iptables shows it, when an iptables-nft table holds it.
    #[serde(default)]
    pub iptables: Option<IptablesRule>,
}

/// A rule of an iptables-nft table: its iptables table, chain and `-A CHAIN ...` line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IptablesRule {
    pub table: String,
    pub chain: String,
    pub spec: String,
}

impl Event {
    /// A failed TCP connect that closed before any local port was bound: no port (sport 0), no
    /// error on the socket, no SYN sent, no reset: inet_hash_connect found no free port and
    /// connect() returned EADDRNOTAVAIL to its caller only. The target it was for.
    pub fn connect_found_no_local_port(&self) -> Option<SocketAddr> {
        match &self.body {
            EventBody::TcpAttemptFailed { flow, sk_err: 0, syn_retransmits: 0, rst_received: false, .. }
                if flow.src.port() == 0 && flow.dst.port() != 0 =>
            {
                Some(flow.dst)
            }
            _ => None,
        }
    }

    /// The flow a TCP event is about, if any.
    pub fn flow(&self) -> Option<FlowAddr> {
        match &self.body {
            EventBody::TcpAttemptFailed { flow, .. }
            | EventBody::TcpSynRetransmit { flow, .. }
            | EventBody::TcpAttemptDelayed { flow, .. }
            | EventBody::TcpRstReceived { flow }
            | EventBody::TcpAttemptRepeats { flow, .. }
            | EventBody::TcpRstSentNoSocket { flow, .. }
            | EventBody::IcmpSent { flow, .. } => Some(*flow),
            EventBody::SkbDropped { flow, .. } | EventBody::TcpListenOverflow { flow, .. } => *flow,
            EventBody::TcpAccepted { flow, .. } | EventBody::ConnHolder { flow, .. } => Some(*flow),
            EventBody::TcpConnEnded { flow, .. } => Some(*flow),
            _ => None,
        }
    }
}
