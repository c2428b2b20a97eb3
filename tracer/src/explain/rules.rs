//! THE verdict table: evidence in, cause out. Everything a reader needs to check a verdict is
//! in this file; each cause's words (title, detail, fix) are in `cause_words`.

use serde::{Deserialize, Serialize};

/// Why a connection to an upstream failed. The snake_case names are a stable contract (JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    DeadListener,
    BacklogFull,
    FirewallDrop,
    FirewallReject,
    RemoteRefused,
    /// Refused, on a kernel that cannot show a local refusal (no drop reasons before 5.17,
    /// no drop sites, no resets from no socket before 6.10): a firewall reject, a dead
    /// listener or the remote host, and this kernel does not say which.
    RefusedUnattributed,
    UnixMissing,
    UnixStale,
    UnixBacklogFull,
    UnixPermissionDenied,
    NoResponse,
    // After the connect (the connection existed; see `classify_after_connect`).
    UpstreamKilled,
    UpstreamReset,
    UpstreamClosed,
    KeepaliveRace,
    PortsExhausted,
    UpstreamTimeout,
}

/// How a firewall rejected a connection (the two ways nft/iptables `reject` answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectKind {
    TcpReset,
    Icmp,
}

/// What was seen for one concluded TCP attempt, reduced to the facts the table reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFacts {
    /// A packet of this flow (either direction) was freed with NETFILTER_DROP.
    pub netfilter_drop: bool,
    /// The socket received an RST while in SYN_SENT.
    pub rst_received: bool,
    /// Socket error when it closed (positive errno; 0 = closed by its owner or still open).
    pub sk_err: i32,
    /// This host's stack found no socket for the SYN (tcp_send_reset from no socket, or the
    /// SYN freed with NO_SOCKET), i.e. nothing listened on the target.
    pub local_no_socket: bool,
    /// The listener's accept queue was measured full, or an ACK was dropped with
    /// TCP_LISTEN_OVERFLOW.
    pub queue_full: bool,
    /// TcpExtListenOverflows rose in the attempt's netns while it was waiting.
    pub listen_overflows_rose: bool,
    /// A local listener on the target was known while the attempt was waiting.
    pub local_listener: bool,
    /// This host sent an ICMP error for the attempt's packets.
    pub icmp_sent: bool,
    /// SYN retransmits of this attempt.
    pub syn_retransmits: u32,
    /// The kernel cannot show this host refusing a connection (it has no drop reasons, its
    /// drop sites are unknown, and tcp_send_reset does not report resets from no socket): the
    /// absence of local evidence then proves nothing.
    pub local_refusals_unseen: bool,
}

/// What a packet drop (skb:kfree_skb) means for a connect, from its drop reason or, on
/// kernels without reasons (before 5.17), from the function that dropped it (`in NAME`, see
/// tracer_common::DROP_SITE_FUNCTIONS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropMeaning {
    /// A netfilter rule dropped or rejected it: `NETFILTER_DROP`, or freed by `nf_hook_slow`
    /// (where the NF_DROP verdict frees the packet).
    Netfilter,
    /// No socket took it: `NO_SOCKET`, or freed by `tcp_v4_rcv`/`tcp_v6_rcv`, whose drop of a
    /// segment on its way to the target follows the reset from no socket (it is the
    /// `no_tcp_socket` path; the other drops there are malformed segments, which no client
    /// sees refused).
    NoSocket,
    /// `TCP_LISTEN_OVERFLOW`: the handshake's ACK came to a full accept queue.
    ListenOverflow,
}

/// The meaning of a drop reason name (without its prefix) or drop site; None: not one tracer
/// reads.
pub fn drop_meaning(reason: &str) -> Option<DropMeaning> {
    match reason {
        "NETFILTER_DROP" | "in nf_hook_slow" => Some(DropMeaning::Netfilter),
        "NO_SOCKET" | "in tcp_v4_rcv" | "in tcp_v6_rcv" => Some(DropMeaning::NoSocket),
        "TCP_LISTEN_OVERFLOW" => Some(DropMeaning::ListenOverflow),
        _ => None,
    }
}

pub const ECONNREFUSED: i32 = 111;
pub const EHOSTUNREACH: i32 = 113;
pub const ENETUNREACH: i32 = 101;

/// The verdict table for a concluded TCP attempt. `None`: not a failure (rule 4).
pub fn classify_tcp(f: &TcpFacts) -> Option<(Cause, Option<RejectKind>)> {
    use Cause::*;
    // 1. Netfilter dropped a packet of this flow: a local firewall rule is in the way. An RST
    //    the client received then was forged by netfilter (`reject with tcp reset`); an
    //    unreachable error or an ICMP sent by this host means `reject with icmp`.
    if f.netfilter_drop {
        if f.rst_received {
            return Some((FirewallReject, Some(RejectKind::TcpReset)));
        }
        if matches!(f.sk_err, ECONNREFUSED | EHOSTUNREACH | ENETUNREACH) || f.icmp_sent {
            return Some((FirewallReject, Some(RejectKind::Icmp)));
        }
        return Some((FirewallDrop, None));
    }
    // 2. Refused. Only local evidence can say who refused.
    if f.rst_received || f.sk_err == ECONNREFUSED {
        if f.local_no_socket {
            return Some((DeadListener, None));
        }
        if f.queue_full {
            // tcp_abort_on_overflow=1: a full queue answers with a reset.
            return Some((BacklogFull, None));
        }
        if f.icmp_sent {
            return Some((FirewallReject, Some(RejectKind::Icmp)));
        }
        // Nothing local seen: the remote host refused, unless this kernel could not have
        // shown a local refusal. Then say so rather than name one.
        if f.local_refusals_unseen {
            return Some((RefusedUnattributed, None));
        }
        return Some((RemoteRefused, None));
    }
    // 3. Unanswered: SYNs retransmitted (timed out, given up by its owner, still pending, or
    //    delayed), or the kernel gave up with another error (ETIMEDOUT, EHOSTUNREACH ...).
    //    A full local queue explains it; otherwise nothing on this host does.
    if f.syn_retransmits > 0 || f.sk_err != 0 {
        if f.queue_full || f.listen_overflows_rose || f.local_listener {
            return Some((BacklogFull, None));
        }
        return Some((NoResponse, None));
    }
    // 4. Closed by its owner before any retransmit (a connect timeout shorter than the first
    //    SYN retransmit, 1 s): a failure only when the target's accept queue was seen full
    //    meanwhile, or its namespace's listen overflows rose while a listener was there.
    if f.queue_full || (f.listen_overflows_rose && f.local_listener) {
        return Some((BacklogFull, None));
    }
    None
}

/// What was seen of one upstream connection that ended without a response (after the
/// connect), or of a connect that found no local port, reduced to the facts the table reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnFacts {
    /// connect() found no free local port (EADDRNOTAVAIL): the attempt closed unbound.
    pub no_local_port: bool,
    /// The upstream's listener dropped a packet of this connection with TCP_LISTEN_OVERFLOW:
    /// the handshake's last ACK (or the request) came while its accept queue was full, so the
    /// connection Nginx believed established never reached the upstream process.
    pub handshake_overflow: bool,
    /// Nginx's socket got the upstream's FIN before any response byte.
    pub fin_before_response: bool,
    /// Nginx's socket was reset (a reset received: sk_err set).
    pub reset: bool,
    /// That reset came after the upstream's FIN: Nginx wrote on a connection already closed.
    pub reset_after_fin: bool,
    /// Nginx closed its socket first (it gave up waiting).
    pub nginx_closed: bool,
    /// Response bytes Nginx had received on the connection (before this request, on a reused
    /// keep-alive connection), and request bytes it had sent.
    pub nginx_received: u64,
    pub nginx_sent: u64,
    /// The upstream's end was closed by its own process while that process was dying (a
    /// non-zero exit code, or a fatal signal just before).
    pub upstream_died: bool,
    /// The upstream's end was still in its listener's accept queue when Nginx closed (found
    /// by sock_diag then): no process ever accepted the connection.
    pub never_accepted: bool,
    /// Nginx closed the connection clearly before the read timeout its configuration gives
    /// the target (false when that timeout is unknown): see rule 7.
    pub closed_before_read_timeout: bool,
}

/// The verdict table after the connect. `None`: not a failure tracer can name (Nginx
/// aborting a connection for its own reasons).
pub fn classify_after_connect(f: &ConnFacts) -> Option<Cause> {
    use Cause::*;
    // 1. No connection at all: no local port was free for the connect.
    if f.no_local_port {
        return Some(PortsExhausted);
    }
    // 2. The connection never left the listener's full queue: whatever Nginx saw later (a
    //    timeout, a reset), the full accept queue is the cause.
    if f.handshake_overflow {
        return Some(BacklogFull);
    }
    //    So is a connection Nginx gave up on while it still waited in the accept queue: the
    //    listener did not accept within Nginx's timeout (too few workers for the load).
    if f.never_accepted && f.nginx_closed && f.nginx_received == 0 {
        return Some(BacklogFull);
    }
    // 3. The upstream's process died holding the connection: whatever Nginx then saw (a FIN,
    //    a reset, or a reset after writing), the death is the cause.
    if f.upstream_died {
        return Some(UpstreamKilled);
    }
    // 4. A reset after the upstream's FIN on a connection that had carried responses before:
    //    Nginx reused a kept-alive connection the upstream had closed when idle.
    if f.reset_after_fin && f.nginx_received > 0 {
        return Some(KeepaliveRace);
    }
    // 5. A live upstream (or its host) reset the connection.
    if f.reset {
        return Some(UpstreamReset);
    }
    // 6. A live upstream closed before answering a request it had been sent. (A server that
    //    closes a connection its client never used, as health checks see, failed no request.)
    if f.fin_before_response && f.nginx_sent > 0 {
        return Some(UpstreamClosed);
    }
    // 7. Nginx gave up without a response byte to a request it had sent: its read timeout.
    //    (A client closing a connection it never used has sent nothing.) But Nginx also
    //    closes the upstream connection, with nothing received, when its own client goes away
    //    (it logs 499, and answers no 502/504: `proxy_ignore_client_abort off`, the default).
    //    A close clearly before the read timeout Nginx was configured with cannot be that
    //    timeout: it is such a client abort, not a failure.
    if f.nginx_closed && f.nginx_received == 0 && f.nginx_sent > 0 {
        if f.closed_before_read_timeout {
            return None;
        }
        return Some(UpstreamTimeout);
    }
    None
}

/// The verdict for a failed connect() on an AF_UNIX socket, by errno. `None`: not ours.
/// Unix sockets that programs probe as a matter of course and whose absence is normal: not
/// upstreams. glibc asks nscd on every name lookup (curl, nginx workers resolving names...)
/// and quietly goes on when the daemon is not running.
const OPTIONAL_SYSTEM_SOCKETS: &[&str] = &["/var/run/nscd/socket", "/run/nscd/socket"];

pub fn classify_unix(errno: i32, path: &str) -> Option<Cause> {
    if OPTIONAL_SYSTEM_SOCKETS.contains(&path) {
        return None;
    }
    match errno {
        2 => Some(Cause::UnixMissing),               // ENOENT: no file at the path
        111 => Some(Cause::UnixStale),               // ECONNREFUSED: file, but nobody listening
        11 => Some(Cause::UnixBacklogFull),          // EAGAIN: queue full, non-blocking connect
        13 | 1 => Some(Cause::UnixPermissionDenied), // EACCES / EPERM
        _ => None,
    }
}

/// Process names (comm, as the kernel keeps it: at most 15 bytes) of the reverse proxies and
/// load balancers tracer is written for. A finding whose clients include none of them (a
/// `logger` failing on /dev/log, a cron job's `curl`) is still reported, but marked as not
/// coming from a proxy and kept out of the headline: it is not why a proxy answers 502/504.
/// Nginx forks (OpenResty, Tengine, Angie) keep the `nginx` comm or use their own name.
pub const PROXY_COMMS: &[&str] = &[
    "nginx", "openresty", "angie", "haproxy", "envoy", "traefik", "caddy", "varnishd", "h2o", "httpd", "apache2",
    "lighttpd", "squid", "pound", "[ET_NET 0]", "trafficserver",
];

/// Whether a client process name is one of `PROXY_COMMS`.
pub fn is_proxy_comm(comm: &str) -> bool {
    PROXY_COMMS.contains(&comm)
}

/// Whether a Unix socket name is abstract (`@name`): a name in the kernel only, not a file.
pub fn is_abstract(path: &str) -> bool {
    path.starts_with('@')
}

impl Cause {
    pub const ALL: [Cause; 17] = [
        Cause::DeadListener,
        Cause::BacklogFull,
        Cause::FirewallDrop,
        Cause::FirewallReject,
        Cause::RemoteRefused,
        Cause::RefusedUnattributed,
        Cause::UnixMissing,
        Cause::UnixStale,
        Cause::UnixBacklogFull,
        Cause::UnixPermissionDenied,
        Cause::NoResponse,
        Cause::UpstreamKilled,
        Cause::UpstreamReset,
        Cause::UpstreamClosed,
        Cause::KeepaliveRace,
        Cause::PortsExhausted,
        Cause::UpstreamTimeout,
    ];

    /// The stable snake_case name (same as serde).
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::DeadListener => "dead_listener",
            Cause::BacklogFull => "backlog_full",
            Cause::FirewallDrop => "firewall_drop",
            Cause::FirewallReject => "firewall_reject",
            Cause::RemoteRefused => "remote_refused",
            Cause::RefusedUnattributed => "refused_unattributed",
            Cause::UnixMissing => "unix_missing",
            Cause::UnixStale => "unix_stale",
            Cause::UnixBacklogFull => "unix_backlog_full",
            Cause::UnixPermissionDenied => "unix_permission_denied",
            Cause::NoResponse => "no_response",
            Cause::UpstreamKilled => "upstream_killed",
            Cause::UpstreamReset => "upstream_reset",
            Cause::UpstreamClosed => "upstream_closed",
            Cause::KeepaliveRace => "keepalive_race",
            Cause::PortsExhausted => "ports_exhausted",
            Cause::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// Whether the cause is about a connection that existed (after the connect), rather than
    /// a connect that failed. `ports_exhausted` is a connect failure.
    pub fn after_connect(self) -> bool {
        matches!(
            self,
            Cause::UpstreamKilled | Cause::UpstreamReset | Cause::UpstreamClosed | Cause::KeepaliveRace | Cause::UpstreamTimeout
        )
    }

}

/// Name of a positive errno, for evidence labels.
pub fn errno_name(errno: i32) -> String {
    match errno {
        1 => "EPERM".into(),
        2 => "ENOENT".into(),
        11 => "EAGAIN".into(),
        13 => "EACCES".into(),
        32 => "EPIPE".into(),
        99 => "EADDRNOTAVAIL".into(),
        101 => "ENETUNREACH".into(),
        104 => "ECONNRESET".into(),
        110 => "ETIMEDOUT".into(),
        111 => "ECONNREFUSED".into(),
        112 => "EHOSTDOWN".into(),
        113 => "EHOSTUNREACH".into(),
        e => format!("errno {e}"),
    }
}
