//! What the engine hands out: concluded attempts, findings and the updates `watch` prints,
//! plus the engine's tuning. Plain data; the engine that fills them is in `engine`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{Queue, Target, TaskInfo};

use super::evidence::EvidenceCounts;
use super::rules::{self, Cause};
use super::{SynOverflow, TimelineEntry};

/// Tuning of the engine. All times are CLOCK_MONOTONIC nanoseconds, like event timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    /// How long after an attempt's close late evidence (from other CPUs) is still awaited.
    pub grace_ns: u64,
    /// How long socket-less evidence and measurements are kept waiting for their attempt.
    pub evidence_ttl_ns: u64,
    /// Bound on tracked attempts, buffered evidence and known listeners (each).
    pub max_tracked: usize,
    /// The kernel cannot show this host refusing a connection (`TcpFacts::local_refusals_unseen`).
    pub local_refusals_unseen: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { grace_ns: 300_000_000, evidence_ttl_ns: 120_000_000_000, max_tracked: 200_000, local_refusals_unseen: false }
    }
}

/// How long an Nginx waits for a target's response (its `proxy_read_timeout`, or the
/// `fastcgi_`/`uwsgi_`/`scgi_`/`grpc_` one), from its configuration: facts the run loop hands
/// the engine (`Engine::set_read_timeouts`) whenever it reads the configurations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NginxReadTimeout {
    /// The network namespace of the Nginx (its workers' sockets); 0: any.
    pub netns: u32,
    pub target: Target,
    pub timeout_ms: u64,
}

/// A process named in a finding.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    pub comm: String,
}

impl ProcessRef {
    pub fn of(t: &TaskInfo) -> ProcessRef {
        ProcessRef { pid: t.pid, comm: t.comm.clone() }
    }
}

impl std::fmt::Display for ProcessRef {
    /// `gunicorn (pid 700)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {})", self.comm, self.pid)
    }
}

/// How a concluded attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It never connected.
    Failed,
    /// It connected, late (after SYN retransmits).
    Delayed,
    /// It was still waiting (SYN_SENT) when tracing ended or it stopped being tracked.
    Pending,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Failed => "failed",
            Outcome::Delayed => "delayed",
            Outcome::Pending => "pending",
        }
    }
}

/// One concluded attempt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttemptRecord {
    /// When it failed / connected (for pending ones: its last sign of life).
    pub ts_ns: u64,
    /// When it started (connect()), as well as known.
    pub start_ns: u64,
    pub cause: Cause,
    pub target: Target,
    pub netns: u32,
    pub sock: u64,
    /// The socket's owner at connect time (TCP) or the caller of connect() (Unix).
    pub client: TaskInfo,
    pub evidence: EvidenceCounts,
    pub outcome: Outcome,
    /// Unix: connect()'s errno; TCP: the socket error at close (0 when none).
    pub errno: i32,
    /// How many attempts this record stands for: 1, or the identical refused attempts the
    /// kernel counted instead of sending (then `evidence` is theirs, summed).
    pub count: u64,
}

/// Everything known about one cause of failure on one target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub cause: Cause,
    pub target: Target,
    pub netns: u32,
    /// Distinct attempts (failed + delayed + pending).
    pub count: u64,
    /// Of `count`: attempts that connected late (backlog only).
    pub delayed: u64,
    /// Of `count`: attempts still waiting at the end.
    pub pending: u64,
    pub clients: Vec<ProcessRef>,
    /// uids of the clients (unix_permission_denied).
    pub uids: Vec<u32>,
    pub listener: Option<ProcessRef>,
    pub listener_note: String,
    /// When the listener named by `listener_note` closed (monotonic ns), for wall-clock display.
    pub listener_closed_ns: Option<u64>,
    /// Backlog causes: the fullest accept queue measured.
    pub queue: Option<Queue>,
    pub hint: Option<String>,
    pub evidence: EvidenceCounts,
    pub detail: String,
    pub fix: String,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Backlog causes, function-hook backend: how long the connections the listener did
    /// accept had waited in its queue (bucket in ms -> count; empty when not measured).
    pub accept_wait_ms: BTreeMap<String, u64>,
    /// Backlog causes, function-hook backend: the listener's queue at each SYN that
    /// tcp_conn_request dropped on it (the latest few; the evidence counts them all).
    pub syn_overflows: Vec<SynOverflow>,
    /// dead_listener / unix_missing / unix_stale: the listener's story (who listened, how it
    /// died, the refusals, the recovery or "still down"), in time order.
    pub timeline: Vec<TimelineEntry>,
    /// After-connect causes: the process that held the upstream's end of the connection (the
    /// latest failure's), when known.
    pub upstream_process: Option<ProcessRef>,
    /// upstream_killed: how that process died.
    pub death: Option<Death>,
    /// After-connect causes: the latest failed connection's facts.
    pub connection: Option<ConnectionFacts>,
    /// ports_exhausted: the local port range and Nginx's sockets towards the target.
    pub ports: Option<PortsFacts>,
    /// The real backend behind the target when the connection was address-translated (DNAT:
    /// a Kubernetes Service, a published port); None without NAT.
    pub backend: Option<std::net::SocketAddr>,
    /// firewall_drop / firewall_reject: the netfilter rule that dropped or rejected the
    /// packets (or the candidates), read from the ruleset of the namespace of the drop.
    pub rule: Option<RuleFacts>,
}

/// The netfilter rule of a firewall finding, as enrich named it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleFacts {
    /// The namespace whose ruleset holds it (where the packet was dropped).
    pub netns: u32,
    /// The rule first; more than one only when they are candidates.
    pub rules: Vec<crate::event::NamedRule>,
    /// One rule, surely; false: candidates, none of them certain.
    pub certain: bool,
    /// How to reach `netns` (both None: tracer's own): its `ip netns` name, else a process in it.
    pub enter_pid: Option<u32>,
    pub netns_name: Option<String>,
}

/// How an upstream process died (upstream_killed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Death {
    // Fields in name order: the JSON keys are written sorted.
    /// The exit status, when it exited rather than being killed.
    pub exit_status: Option<i32>,
    pub how: DeathHow,
    /// Who sent the signal (None for a fault in the process itself, or unknown).
    pub sender: Option<ProcessRef>,
    /// `SIGKILL`, `SIGSEGV`... when a signal ended it.
    pub signal: Option<String>,
}

/// The ways an upstream process dies, as the fix depends on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeathHow {
    /// A fault in the process itself (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT by itself).
    Crash,
    /// The OOM killer.
    Oom,
    /// Its parent (a Gunicorn/uWSGI master) killed it: a worker timeout.
    WorkerTimeout,
    /// Another process signalled it.
    Signal,
    /// It exited with a status.
    Exit,
}

/// One failed connection, told by the kernel's counters (after-connect causes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionFacts {
    // Fields in name order: the JSON keys are written sorted.
    /// From Nginx's connect() to the end (the death, the reset, the close, Nginx giving up).
    pub after_ms: u64,
    /// keepalive_race: how long the connection had been idle when the upstream closed it.
    pub idle_ms: Option<u64>,
    /// Bytes Nginx had received (responses) and sent (requests) on it.
    pub nginx_received: u64,
    pub nginx_sent: u64,
    /// upstream_reset: how the reset came (`closed with the request unread` ...).
    pub reset_reason: Option<String>,
    /// Bytes the upstream's socket had received and sent, when its end was seen.
    pub upstream_received: Option<u64>,
    pub upstream_sent: Option<u64>,
    /// upstream_timeout: the holder's /proc state when Nginx gave up, or `in accept queue`.
    pub upstream_state: Option<String>,
}

/// ports_exhausted: the netns's local port range and Nginx's sockets towards the target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortsFacts {
    /// TCP state name -> sockets towards the target in that state.
    pub held: BTreeMap<String, u64>,
    pub range: [u16; 2],
}

/// What changed in a `tick`/`finish`.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    Attempt(AttemptRecord),
    /// A finding opened or changed (its current state).
    Finding(Finding),
}

/// Whether any client is a proxy (`PROXY_COMMS`). No client known: assume one, so nothing is
/// hidden for lack of a name.
pub(super) fn clients_include_a_proxy<'a>(clients: impl IntoIterator<Item = &'a ProcessRef>) -> bool {
    let mut any = false;
    for c in clients {
        if rules::is_proxy_comm(&c.comm) {
            return true;
        }
        any = true;
    }
    !any
}

impl Finding {
    /// Whether a proxy (Nginx and the like, `PROXY_COMMS`) made these attempts. Findings of
    /// other clients (`logger` on /dev/log) are reported apart, out of the headline.
    pub fn proxy_client(&self) -> bool {
        clients_include_a_proxy(&self.clients)
    }
}
