//! Each cause's words: its title, the proof in one sentence (`detail`) and the `fix`, built
//! from a finding's facts (`Wording`). The verdicts themselves are in `rules`.
//!
//! The fix texts follow the Nginx 502 runbook (/work/shared/seed/000_37ed1e0df48b4470.txt):
//! Fix 1 restart the upstream and verify with `ss -tlnp`, Fix 2 correct a wrong `proxy_pass`,
//! Fix 3 more Gunicorn workers, Fix 4 upstream keepalive and `proxy_connect_timeout`, and its
//! prevention notes (`Restart=always`, workers = (2 x cores) + 1).

use crate::event::Target;

use super::rules::{is_abstract, Cause};

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
    /// Who listened on the target (the process that died, or that listens now), when known.
    pub listener: Option<ListenerFacts<'a>>,
    /// Whether a proxy (see `PROXY_COMMS`) made the attempts: only then do `proxy_pass` and
    /// upstream keepalive belong in the fix.
    pub proxy_client: bool,
    /// After-connect causes: who held the upstream's end, how it died, the connection's facts.
    pub upstream_process: Option<&'a super::output::ProcessRef>,
    pub death: Option<&'a super::output::Death>,
    pub connection: Option<&'a super::output::ConnectionFacts>,
    pub ports: Option<&'a super::output::PortsFacts>,
    /// Firewall causes: the rule named in the namespace of the drop.
    pub rule: Option<&'a super::output::RuleFacts>,
}

/// The listener a fix names: its process name and, when its cgroup said so, its systemd unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerFacts<'a> {
    pub comm: &'a str,
    pub pid: u32,
    pub unit: Option<&'a str>,
}

/// Whether a character must not reach a terminal raw: control characters (C0 such as newline,
/// CR and ESC; DEL; C1) and the Unicode characters that reorder or break lines (bidi marks,
/// overrides and isolates, line and paragraph separators). Shell words and the text report's
/// escaping both go by this one list.
pub fn unsafe_for_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// One shell word for a command line the reader may paste: plain words as they are, others
/// in single quotes, and words with control characters (a path with a newline) in bash's
/// `$'...'` form with every such character escaped, so the command is exact and nothing in it
/// acts on the terminal.
pub fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        return s.to_string();
    }
    if !s.chars().any(unsafe_for_terminal) {
        return format!("'{}'", s.replace('\'', "'\\''"));
    }
    let mut out = String::from("$'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if unsafe_for_terminal(c) && (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if unsafe_for_terminal(c) => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// How a fix names the listener and the commands that restart it and show its log.
struct RestartWords {
    /// "python3 (pid 700, unit app.service)" / "the program that should listen there".
    who: String,
    /// "(`sudo systemctl restart app.service`)" / "(the way it is run on this host: ...)".
    how: String,
    /// "`journalctl -u app.service --since '5 min ago'`" / "its own log".
    log: String,
    /// How to have it restarted after a crash: "set `Restart=always` in its unit app.service".
    supervise: String,
    known: bool,
}

fn restart_words(l: Option<&ListenerFacts>) -> RestartWords {
    match l {
        // Only a service can be restarted by name; a scope (a login session, a container's
        // scope) is where the process ran, not how to start it again.
        Some(ListenerFacts { comm, pid, unit: Some(unit) }) if !unit.ends_with(".service") => RestartWords {
            who: format!("{comm} (pid {pid}, in {unit})"),
            how: "the way it is run on this host (it ran in no systemd service: its supervisor, container or start script)".to_string(),
            log: format!("its own log (or `journalctl {} --since '5 min ago'`)", shell_word(&format!("_COMM={comm}"))),
            supervise: "run it under a supervisor (e.g. a systemd unit with `Restart=always`)".to_string(),
            known: true,
        },
        Some(ListenerFacts { comm, pid, unit: Some(unit) }) => RestartWords {
            who: format!("{comm} (pid {pid}, unit {unit})"),
            how: format!("(`sudo systemctl restart {}`)", shell_word(unit)),
            log: format!("`journalctl -u {} --since '5 min ago'`", shell_word(unit)),
            supervise: format!("set `Restart=always` in its unit {unit}"),
            known: true,
        },
        Some(ListenerFacts { comm, pid, unit: None }) => RestartWords {
            who: format!("{comm} (pid {pid})"),
            how: "the way it is run on this host (tracer learnt no systemd unit for it: its supervisor, container or start script)".to_string(),
            log: format!("its own log (or `journalctl {} --since '5 min ago'`)", shell_word(&format!("_COMM={comm}"))),
            supervise: "run it under a supervisor (e.g. a systemd unit with `Restart=always`)".to_string(),
            known: true,
        },
        None => RestartWords {
            who: "the program that should listen there".to_string(),
            how: "(tracer saw no listener there, so it cannot name one: find which service is meant to serve it)".to_string(),
            log: "that service's log".to_string(),
            supervise: "run it under a supervisor (e.g. a systemd unit with `Restart=always`)".to_string(),
            known: false,
        },
    }
}

impl Cause {
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
            // After the connect (and a connect with no local port): their own room.
            Cause::UpstreamKilled
            | Cause::UpstreamReset
            | Cause::UpstreamClosed
            | Cause::KeepaliveRace
            | Cause::PortsExhausted
            | Cause::UpstreamTimeout => super::after_words::detail(self, w),
            Cause::DeadListener => format!(
                "This host's kernel answered {attempts} to {target} with a TCP reset because no socket \
                 listened on that port ({}), so connect() failed with ECONNREFUSED.",
                // Kernels before 6.10 trace no reset from no socket: there the SYN's drop shows it.
                if w.resets_sent > 0 {
                    format!("tcp_send_reset from no socket, {} sent", w.resets_sent)
                } else {
                    "its stack found no socket for the SYN and dropped it".to_string()
                }
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
                 ({} netfilter drops): the SYN was never answered, so the connection waited and \
                 timed out.",
                w.netfilter_drops
            ),
            Cause::FirewallReject => {
                let how = match (w.rejected_by_reset, w.rejected_by_icmp) {
                    (r, 0) if r > 0 => "netfilter answered with a TCP reset (netfilter dropped the \
                                        packet, and no socket-less reset came from the TCP stack)"
                        .to_string(),
                    (0, _) => "netfilter answered with an ICMP unreachable error (a netfilter \
                               drop, then the ICMP error)"
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
            Cause::RefusedUnattributed => format!(
                "{target} refused {attempts} (ECONNREFUSED), and this kernel cannot show who refused: \
                 a firewall rule on this host, no listener on that port, or the remote host. It gives \
                 no drop reason (those came in 5.17), and tracer could not learn where it dropped packets."
            ),
            Cause::NoResponse => format!(
                "{attempts} to {target} got no answer at all ({} SYN retransmits) and this host saw \
                 no drop, reset or ICMP for them: the upstream host is down or unreachable, packets \
                 are lost, or a firewall on another host drops them.",
                w.syn_retransmits
            ),
            Cause::UnixMissing if is_abstract(&path) => {
                format!("connect() to the abstract name {path} failed with ENOENT {}: no socket is bound to that name.", times(n))
            }
            Cause::UnixMissing => {
                format!("connect() to {path} failed with ENOENT {}: the socket file does not exist.", times(n))
            }
            Cause::UnixStale if is_abstract(&path) => format!(
                "connect() to the abstract name {path} failed with ECONNREFUSED {}: no socket is \
                 bound to that name now (abstract names are not files: a name disappears with the \
                 socket that bound it).",
                times(n)
            ),
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

    /// One paragraph in plain words: what to do, citing the runbook's commands, naming the
    /// listener the evidence names (its process and unit) and no other program.
    pub fn fix(self, w: &Wording) -> String {
        let port = match w.target {
            Some(Target::Tcp(a)) => a.port().to_string(),
            _ => "PORT".to_string(),
        };
        let path = match w.target {
            Some(Target::Unix(p)) => p.clone(),
            _ => "/run/app.sock".to_string(),
        };
        let r = restart_words(w.listener.as_ref());
        let gunicorn = w.listener.is_some_and(|l| l.comm.contains("gunicorn"));
        let keepalive = if w.proxy_client {
            " and add `keepalive 32;` to the Nginx upstream block so fewer new connections are needed"
        } else {
            ""
        };
        match self {
            // After the connect (and a connect with no local port): their own room.
            Cause::UpstreamKilled
            | Cause::UpstreamReset
            | Cause::UpstreamClosed
            | Cause::KeepaliveRace
            | Cause::PortsExhausted
            | Cause::UpstreamTimeout => super::after_words::fix(self, w),
            Cause::DeadListener => {
                let mut s = if r.known {
                    format!(
                        "Nothing listens on port {port} any more; {} listened there: start it again {} \
                         and verify it listens with `ss -tlnp | grep {port}`; read why it stopped in {}. \
                         So that a crash recovers by itself, {}.",
                        r.who, r.how, r.log, r.supervise
                    )
                } else {
                    format!(
                        "Nothing listens on port {port}, and tracer saw no listener there since it \
                         started, so it cannot say which program should: start the service meant to \
                         serve port {port}, verify it listens with `ss -tlnp | grep {port}`, and, \
                         so that a crash recovers by itself, {}.",
                        r.supervise
                    )
                };
                if w.proxy_client {
                    s.push_str(
                        " If a process listens on a neighbouring port, correct the port in `proxy_pass` \
                         (check with `sudo nginx -T | grep proxy_pass`).",
                    );
                }
                s
            }
            Cause::BacklogFull => {
                let workers = if gunicorn {
                    "raise its workers (`gunicorn --workers`, (2 x CPU cores) + 1 as a start, then load-test), \
                     raise its listen backlog (`gunicorn --backlog`)"
                } else {
                    "give it more workers or threads ((2 x CPU cores) + 1 as a start for a pre-fork \
                     server, then load-test), raise its listen backlog (the backlog argument of its \
                     listen(); `--backlog` for Gunicorn)"
                };
                let who = w.listener.map(|l| format!(" ({} (pid {}))", l.comm, l.pid)).unwrap_or_default();
                format!(
                    "The upstream{who} accepts connections too slowly and its accept queue overflows: \
                     {workers} together with `net.core.somaxconn` (the kernel caps the backlog at it){keepalive}. \
                     Watch the queue with `ss -ltn 'sport = :{port}'` (Recv-Q against Send-Q)."
                )
            }
            Cause::FirewallDrop if w.rule.is_some_and(|r| !r.rules.is_empty()) => format!(
                "{} Until then set a short `proxy_connect_timeout` (e.g. 5s) so requests fail fast instead of hanging.",
                super::rule_words::fix(w.rule, &port, "drops").unwrap_or_default()
            ),
            Cause::FirewallReject if w.rule.is_some_and(|r| !r.rules.is_empty()) => {
                super::rule_words::fix(w.rule, &port, "rejects").unwrap_or_default()
            }
            Cause::FirewallDrop => format!(
                "A netfilter rule on this host silently drops packets to the upstream: list the rules \
                 with `sudo nft list ruleset` (or `sudo iptables -S`) and look for a drop rule on port \
                 {port} (`tcp dport {port} drop`); remove it or allow the client through. Until then set a \
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
                     look for port {port}, and remove it or allow the client through."
                )
            }
            Cause::RemoteRefused => "The refusal came from the upstream host, not this one: run tracer \
                 on the upstream host to tell a dead listener from a firewall REJECT there; meanwhile \
                 check on that host that the upstream listens (`ss -tlnp`, `systemctl status` of its \
                 unit) and that no firewall rule rejects this host's address (`nft list ruleset`)."
                .to_string(),
            Cause::RefusedUnattributed => format!(
                "Tell the three apart by hand: `ss -tlnp | grep {port}` on the upstream's host shows \
                 whether anything listens there, `sudo nft list ruleset | grep reject` (or `sudo iptables \
                 -S | grep REJECT`) shows reject rules on each host. tracer tells them apart itself on \
                 kernels with drop reasons (5.17 and later), and on this one when it can read the \
                 addresses in /proc/kallsyms (as root, with kernel.kptr_restrict at most 1)."
            ),
            Cause::NoResponse => "The upstream never answered and this host shows no reason: check that \
                 the upstream host is up and reachable (`ping`, `curl -v` to it from this host), and \
                 look for firewalls or security groups along the path that drop the traffic. Set a \
                 short `proxy_connect_timeout` so requests fail fast meanwhile."
                .to_string(),
            Cause::UnixMissing | Cause::UnixStale if is_abstract(&path) => format!(
                "Nothing is bound to the abstract socket name {path} (a name in the kernel, no file on \
                 disk: it exists only while a socket holds it): start {} again {} so it binds the \
                 name, verify with `ss -xlp | grep -F {}`, and, so that a crash recovers by itself, {}.",
                r.who,
                r.how,
                shell_word(&path),
                r.supervise
            ),
            Cause::UnixMissing => {
                let mut s = format!(
                    "The socket file {path} does not exist: start {} again {} so it recreates it, then \
                     check with `ls -la {}`; keep systemd-tmpfiles or cleanup jobs from deleting files \
                     under /run (use `RuntimeDirectory=` in the unit).",
                    r.who,
                    r.how,
                    shell_word(&path)
                );
                if w.proxy_client {
                    s.push_str(" Check that the path in `proxy_pass` matches the path the upstream binds (e.g. Gunicorn's `--bind unix:`).");
                }
                s
            }
            Cause::UnixStale => format!(
                "The socket file {path} was left behind by a process that is gone: start {} again {}, \
                 it will replace the file; so that it comes back after a crash, {}.",
                r.who, r.how, r.supervise
            ),
            Cause::UnixBacklogFull => {
                let who = w.listener.map(|l| format!(" ({} (pid {}))", l.comm, l.pid)).unwrap_or_default();
                format!(
                    "The upstream{who} accepts too slowly and its Unix socket queue is full: give it more \
                     workers ((2 x CPU cores) + 1 as a start), raise its listen backlog (`--backlog` for \
                     Gunicorn) and `net.core.somaxconn`{keepalive}."
                )
            }
            Cause::UnixPermissionDenied => format!(
                "The client user (uid {}) may not connect to {path}: give it access through the \
                 socket file's mode and group (e.g. `gunicorn --umask 007` with group www-data, or \
                 `SocketGroup=`/`SocketMode=` in a systemd socket unit), make sure every parent \
                 directory is searchable by it, and check the SELinux context (`ls -Z {}`, \
                 `ausearch -m avc`).",
                join_uids(w.uids),
                shell_word(&path)
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
