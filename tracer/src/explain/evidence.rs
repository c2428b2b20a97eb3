//! The evidence an attempt or a finding counts: one typed kind per kernel event or engine
//! fact that supports a verdict. The words for each kind (the labels of the JSON `evidence`
//! object and of the text report's `proof:` line) belong to the report, not here.

use std::sync::Arc;

use serde::Serialize;

/// One kind of evidence.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Evidence {
    /// This host sent an RST because no socket matched (tcp:tcp_send_reset); `reason` is the
    /// kernel's sk_rst_reason without its prefix (`NO_SOCKET` when not given).
    ResetSent { reason: Arc<str>, to_client: bool },
    /// A packet freed with a watched drop reason (skb:kfree_skb), without its prefix. A
    /// `NETFILTER_DROP` counts in either direction and is never `to_client`.
    Dropped { reason: Arc<str>, to_client: bool },
    /// A SYN dropped by tcp_conn_request on a full accept queue.
    SynOverflow,
    /// The attempt's socket received an RST (tcp:tcp_receive_reset).
    ResetReceived,
    /// SYN retransmits of the attempt (tcp:tcp_retransmit_skb in SYN_SENT).
    SynRetransmits,
    /// The listener's accept queue read full in the kernel at a SYN retransmit.
    KernelQueueFull,
    /// connect() failed (Unix) or the socket closed (TCP) with this positive errno.
    ConnectErrno(i32),
    /// This host sent an ICMP error of this type and code (icmp:icmp_send).
    IcmpSent { icmp_type: u8, code: u8 },
    /// The netns' TcpExtListenOverflows counter rose (counted once per finding).
    ListenOverflows,
    /// Attempts made while sock_diag saw the listener's queue full.
    SockDiagQueueFull,
    /// Attempts made while a local listener was present.
    LiveListener,
    /// The attempt connected, late.
    DelayedThenConnected,
    /// The attempt still waited when tracing ended.
    PendingAtEnd,
    /// The attempt went silent for too long: its close was lost.
    PendingNoCloseSeen,
    /// The attempt still waited when it was dropped from tracking (memory bound).
    PendingWhenEvicted,
    /// A Unix connect whose listener's queue the kernel read full (unix_stream_connect).
    UnixPeerQueueFull,
    // ---- after the connect (sock:inet_sock_set_state on established connections) ----
    /// Nginx's socket got the upstream's FIN before any response byte.
    FinBeforeResponse,
    /// Nginx's established socket was reset (with this positive errno).
    ResetOnConnection,
    /// Nginx's socket was reset after the upstream's FIN: it wrote on a closed connection.
    ResetAfterUpstreamFin,
    /// The upstream's socket was closed by its process as it died (exit code non-zero).
    ClosedByDyingProcess,
    /// A fatal signal was sent to the upstream process (signal:signal_generate), by number.
    FatalSignal(i32),
    /// The OOM killer chose the upstream process (oom:mark_victim).
    OomKill,
    /// The upstream's live process closed its socket with a reset (unread data, SO_LINGER 0).
    UpstreamAbort,
    /// The upstream's live process closed its socket (FIN) before sending a byte.
    UpstreamFinBeforeResponse,
    /// Nginx closed its socket before any response byte (it gave up).
    NginxClosedWithoutResponse,
    /// The upstream's end of the connection was still in its listener's accept queue when
    /// Nginx gave up: no process ever accepted it.
    NeverAccepted,
    /// connect() found no free local port: the attempt closed before a port was bound.
    NoLocalPort,
}

/// Evidence kinds with their counts, in kind order. A sorted list rather than a tree: an
/// attempt has a handful of kinds, and every concluded attempt builds one and adds it to its
/// finding's.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EvidenceCounts(Vec<(Evidence, u64)>);

impl EvidenceCounts {
    pub fn new() -> EvidenceCounts {
        EvidenceCounts::default()
    }

    fn position(&self, e: &Evidence) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(e))
    }

    /// Adds `n` to the count of `e`.
    pub fn add(&mut self, e: Evidence, n: u64) {
        match self.position(&e) {
            Ok(i) => self.0[i].1 += n,
            Err(i) => self.0.insert(i, (e, n)),
        }
    }

    /// Adds `n` to the count of `e`, copying `e` only when it is new here.
    pub fn add_to(&mut self, e: &Evidence, n: u64) {
        match self.position(e) {
            Ok(i) => self.0[i].1 += n,
            Err(i) => self.0.insert(i, (e.clone(), n)),
        }
    }

    /// Sets the count of `e` (a per-attempt fact, counted once).
    pub fn set(&mut self, e: Evidence, n: u64) {
        match self.position(&e) {
            Ok(i) => self.0[i].1 = n,
            Err(i) => self.0.insert(i, (e, n)),
        }
    }

    /// The count of `e` (0 when never seen).
    pub fn get(&self, e: &Evidence) -> u64 {
        self.position(e).map(|i| self.0[i].1).unwrap_or(0)
    }

    pub fn contains(&self, e: &Evidence) -> bool {
        self.position(e).is_ok()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Evidence, u64)> {
        self.0.iter().map(|(e, n)| (e, *n))
    }
}

/// As a map, kind -> count.
impl std::fmt::Debug for EvidenceCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(e, n)| (e, n))).finish()
    }
}

impl FromIterator<(Evidence, u64)> for EvidenceCounts {
    fn from_iter<I: IntoIterator<Item = (Evidence, u64)>>(iter: I) -> Self {
        let mut c = EvidenceCounts::new();
        for (e, n) in iter {
            c.add(e, n);
        }
        c
    }
}

impl std::ops::Index<Evidence> for EvidenceCounts {
    type Output = u64;

    /// The count of `e`; 0 when never seen (tests read counts this way).
    fn index(&self, e: Evidence) -> &u64 {
        self.position(&e).map(|i| &self.0[i].1).unwrap_or(&0)
    }
}

/// Serialized as a list of `[kind, count]` pairs: kinds are not strings, and their words are
/// the report's (`report::evidence`).
impl Serialize for EvidenceCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(e, n)| (e, n)))
    }
}
