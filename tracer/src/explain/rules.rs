//! THE verdict table: evidence in, cause out, with each cause's words (title, detail, fix)
//! beside it. Everything a reader needs to check a verdict is in this file.
//!
//! The fix texts follow the Nginx 502 runbook (/work/shared/seed/000_37ed1e0df48b4470.txt):
//! Fix 1 restart the upstream and verify with `ss -tlnp`, Fix 2 correct a wrong `proxy_pass`,
//! Fix 3 more Gunicorn workers, Fix 4 upstream keepalive and `proxy_connect_timeout`, and its
//! prevention notes (`Restart=always`, workers = (2 x cores) + 1).

use serde::{Deserialize, Serialize};

use crate::event::Target;

/// Why a connection to an upstream failed. The snake_case names are a stable contract (JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    DeadListener,
    BacklogFull,
    FirewallDrop,
    FirewallReject,
    RemoteRefused,
    UnixMissing,
    UnixStale,
    UnixBacklogFull,
    UnixPermissionDenied,
    NoResponse,
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
    // 4. Closed by its owner before any retransmit, with no evidence at all: not a failure.
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

/// What the words of a finding are built from.
#[derive(Clone, Debug, Default)]
pub struct Wording<'a> {
    pub target: Option<&'a Target>,
    /// Distinct attempts, and of those: delayed (connected late) and pending (never closed).
    pub count: u64,
    pub delayed: u64,
    pub pending: u64,
    pub syn_retransmits: u64,
    pub resets_sent: u64,
    pub netfilter_drops: u64,
    pub rejected_by_reset: u64,
    pub rejected_by_icmp: u64,
    pub queue: Option<crate::event::Queue>,
    pub uids: &'a [u32],
}

impl Cause {
    pub const ALL: [Cause; 10] = [
        Cause::DeadListener,
        Cause::BacklogFull,
        Cause::FirewallDrop,
        Cause::FirewallReject,
        Cause::RemoteRefused,
        Cause::UnixMissing,
        Cause::UnixStale,
        Cause::UnixBacklogFull,
        Cause::UnixPermissionDenied,
        Cause::NoResponse,
    ];

    /// The stable snake_case name (same as serde).
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::DeadListener => "dead_listener",
            Cause::BacklogFull => "backlog_full",
            Cause::FirewallDrop => "firewall_drop",
            Cause::FirewallReject => "firewall_reject",
            Cause::RemoteRefused => "remote_refused",
            Cause::UnixMissing => "unix_missing",
            Cause::UnixStale => "unix_stale",
            Cause::UnixBacklogFull => "unix_backlog_full",
            Cause::UnixPermissionDenied => "unix_permission_denied",
            Cause::NoResponse => "no_response",
        }
    }

    /// Headline for humans: "DEAD LISTENER".
    pub fn title(self) -> String {
        self.as_str().replace('_', " ").to_uppercase()
    }

    /// One sentence with the proof in words.
    pub fn detail(self, w: &Wording) -> String {
        let target = w.target.map(|t| t.to_string()).unwrap_or_else(|| "the upstream".into());
        let path = match w.target {
            Some(Target::Unix(p)) => p.clone(),
            _ => target.clone(),
        };
        let n = w.count;
        let attempts = plural(n, "connection attempt", "connection attempts");
        match self {
            Cause::DeadListener => format!(
                "This host's kernel answered {attempts} to {target} with a TCP reset because no socket \
                 listened on that port (tcp_send_reset from no socket{}), so connect() failed with \
                 ECONNREFUSED.",
                if w.resets_sent > 0 { format!(", {} sent", w.resets_sent) } else { String::new() }
            ),
            Cause::BacklogFull => {
                let queue = match w.queue {
                    Some(q) => format!(" (accept queue measured at {}/{})", q.len, q.max),
                    None => String::new(),
                };
                let outcome = match (w.delayed, w.pending) {
                    (0, 0) => String::new(),
                    (d, 0) => format!("; {d} connected only after retransmitting"),
                    (0, p) => format!("; {p} still waiting at the end"),
                    (d, p) => format!("; {d} connected only after retransmitting, {p} still waiting at the end"),
                };
                format!(
                    "{target} has a listener whose accept queue was full{queue}: the kernel dropped \
                     the SYNs of {attempts}, so the clients retransmitted ({} SYN retransmits){outcome}.",
                    w.syn_retransmits
                )
            }
            Cause::FirewallDrop => format!(
                "A netfilter rule on this host dropped the packets of {attempts} to {target} \
                 ({} NETFILTER_DROP drops): the SYN was never answered, so the connection waited and \
                 timed out.",
                w.netfilter_drops
            ),
            Cause::FirewallReject => {
                let how = match (w.rejected_by_reset, w.rejected_by_icmp) {
                    (r, 0) if r > 0 => "netfilter answered with a TCP reset (the packet was dropped \
                                        with NETFILTER_DROP and no socket-less reset came from the \
                                        TCP stack)"
                        .to_string(),
                    (0, _) => "netfilter answered with an ICMP unreachable error (NETFILTER_DROP \
                               drop and icmp_send on this host)"
                        .to_string(),
                    (r, i) => format!("netfilter answered {r} with a TCP reset and {i} with an ICMP unreachable error"),
                };
                format!("A netfilter rule on this host rejected {attempts} to {target}: {how}.")
            }
            Cause::RemoteRefused => format!(
                "{target} refused {attempts} with a TCP reset that this host's stack did not send: \
                 the refusal came from another host; from this host alone a dead listener cannot be \
                 told from a remote REJECT; run tracer on the upstream host to tell them apart."
            ),
            Cause::NoResponse => format!(
                "{attempts} to {target} got no answer at all ({} SYN retransmits) and this host saw \
                 no drop, reset or ICMP for them: the upstream host is down or unreachable, packets \
                 are lost, or a firewall on another host drops them.",
                w.syn_retransmits
            ),
            Cause::UnixMissing => {
                format!("connect() to {path} failed with ENOENT {}: the socket file does not exist.", times(n))
            }
            Cause::UnixStale => format!(
                "connect() to {path} failed with ECONNREFUSED {}: the socket file exists but no \
                 process accepts on it (a file left behind by a process that is gone).",
                times(n)
            ),
            Cause::UnixBacklogFull => {
                let queue = match w.queue {
                    Some(q) => format!(" (accept queue measured at {}/{})", q.len, q.max),
                    None => String::new(),
                };
                format!(
                    "connect() to {path} failed with EAGAIN {}: the listener's accept queue was \
                     full{queue} and Nginx connects without blocking, so it gives up at once.",
                    times(n)
                )
            }
            Cause::UnixPermissionDenied => format!(
                "connect() to {path} failed with EACCES/EPERM {} for uid {}: that user may not write \
                 to the socket file (or a security module refused it).",
                times(n),
                join_uids(w.uids)
            ),
        }
    }

    /// One paragraph in plain words: what to do, citing the runbook's commands.
    pub fn fix(self, w: &Wording) -> String {
        let port = match w.target {
            Some(Target::Tcp(a)) => a.port().to_string(),
            _ => "PORT".to_string(),
        };
        let path = match w.target {
            Some(Target::Unix(p)) => p.clone(),
            _ => "/run/app.sock".to_string(),
        };
        match self {
            Cause::DeadListener => format!(
                "Nothing listens on the upstream port: start or restart the upstream \
                 (`sudo systemctl restart gunicorn`) and verify it listens with `ss -tlnp | grep {port}`; \
                 read why it stopped with `journalctl -u gunicorn --since '5 min ago'`. Supervise it \
                 with `Restart=always` in its systemd unit so a crash recovers by itself. If a process \
                 listens on a neighbouring port, correct the port in `proxy_pass` (check with \
                 `sudo nginx -T | grep proxy_pass`)."
            ),
            Cause::BacklogFull => format!(
                "The upstream accepts connections too slowly and its accept queue overflows: raise \
                 its workers (`gunicorn --workers`, (2 x CPU cores) + 1 as a start, then load-test), \
                 raise its listen backlog (`gunicorn --backlog`) together with `net.core.somaxconn` \
                 (the kernel caps the backlog at it), and add `keepalive 32;` to the Nginx upstream \
                 block so fewer new connections are needed. Watch the queue with `ss -ltn 'sport = :{port}'` \
                 (Recv-Q against Send-Q)."
            ),
            Cause::FirewallDrop => format!(
                "A netfilter rule on this host silently drops packets to the upstream: list the rules \
                 with `sudo nft list ruleset` (or `sudo iptables -S`) and look for a drop rule on port \
                 {port} (`tcp dport {port} drop`); remove it or allow Nginx through. Until then set a \
                 short `proxy_connect_timeout` (e.g. 5s) so requests fail fast instead of hanging."
            ),
            Cause::FirewallReject => {
                let how = match (w.rejected_by_reset, w.rejected_by_icmp) {
                    (r, 0) if r > 0 => "with a TCP reset (`reject with tcp reset`)",
                    (0, _) => "with an ICMP unreachable error (`reject with icmp ...`)",
                    _ => "with TCP resets and ICMP unreachable errors",
                };
                format!(
                    "A netfilter rule on this host rejects connections to the upstream {how}: find it \
                     with `sudo nft list ruleset | grep reject` (or `sudo iptables -S | grep REJECT`), \
                     look for port {port}, and remove it or allow Nginx through."
                )
            }
            Cause::RemoteRefused => "The refusal came from the upstream host, not this one: run tracer \
                 on the upstream host to tell a dead listener from a firewall REJECT there; meanwhile \
                 check on that host that the upstream listens (`ss -tlnp`, `systemctl status gunicorn`) \
                 and that no firewall rule rejects Nginx's address (`nft list ruleset`)."
                .to_string(),
            Cause::NoResponse => "The upstream never answered and this host shows no reason: check that \
                 the upstream host is up and reachable (`ping`, `curl -v` to it from this host), and \
                 look for firewalls or security groups along the path that drop the traffic. Set a \
                 short `proxy_connect_timeout` so requests fail fast meanwhile."
                .to_string(),
            Cause::UnixMissing => format!(
                "The socket file {path} does not exist: restart the upstream so it recreates it \
                 (`sudo systemctl restart gunicorn`, then `ls -la {path}`), check that the path in \
                 `proxy_pass` matches the app's `--bind unix:` path, and keep systemd-tmpfiles or \
                 cleanup jobs from deleting files under /run (use `RuntimeDirectory=` in the unit)."
            ),
            Cause::UnixStale => format!(
                "The socket file {path} was left behind by a process that is gone: restart the \
                 upstream (`sudo systemctl restart gunicorn`), it will replace the file, and supervise \
                 it with `Restart=always` so it comes back after a crash."
            ),
            Cause::UnixBacklogFull => "The upstream accepts too slowly and its Unix socket queue is full: \
                 raise its workers ((2 x CPU cores) + 1 as a start), raise its listen backlog \
                 (`gunicorn --backlog`) and `net.core.somaxconn`, and add upstream keepalive in Nginx."
                .to_string(),
            Cause::UnixPermissionDenied => format!(
                "The Nginx worker user (uid {}) may not connect to {path}: give it access through the \
                 socket file's mode and group (e.g. `gunicorn --umask 007` with group www-data, or \
                 `SocketGroup=`/`SocketMode=` in a systemd socket unit), make sure every parent \
                 directory is searchable by it, and check the SELinux context (`ls -Z {path}`, \
                 `ausearch -m avc`).",
                join_uids(w.uids)
            ),
        }
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

fn times(n: u64) -> String {
    if n == 1 {
        "once".to_string()
    } else {
        format!("{n} times")
    }
}

fn join_uids(uids: &[u32]) -> String {
    if uids.is_empty() {
        "N".to_string()
    } else {
        uids.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(", ")
    }
}

/// Name of a positive errno, for evidence labels.
pub fn errno_name(errno: i32) -> String {
    match errno {
        1 => "EPERM".into(),
        2 => "ENOENT".into(),
        11 => "EAGAIN".into(),
        13 => "EACCES".into(),
        101 => "ENETUNREACH".into(),
        104 => "ECONNRESET".into(),
        110 => "ETIMEDOUT".into(),
        111 => "ECONNREFUSED".into(),
        112 => "EHOSTDOWN".into(),
        113 => "EHOSTUNREACH".into(),
        e => format!("errno {e}"),
    }
}
