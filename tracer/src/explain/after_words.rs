//! The words of the after-connect causes (and ports_exhausted): the proof in one sentence and
//! the fix, from the facts the kernel gave about the failed connection. Every name in a fix
//! (a Gunicorn flag, a uWSGI option) comes from the processes that were really there.

use super::cause_words::{shell_word, Wording};
use super::output::DeathHow;
use super::rules::Cause;
use super::words::duration;

const MS: u64 = 1_000_000;

/// The upstream process by name; without one, the listener it served, else a generic name.
fn who(w: &Wording) -> String {
    match (w.upstream_process, &w.listener) {
        (Some(p), _) => p.to_string(),
        (None, Some(l)) => format!("{} (pid {}, which listens there)", l.comm, l.pid),
        (None, None) => "the upstream process".to_string(),
    }
}

fn requests(n: u64) -> String {
    if n == 1 {
        "1 request".to_string()
    } else {
        format!("{n} requests")
    }
}

/// How a process died, as a clause: "crashed with SIGSEGV", "was killed with SIGKILL by bash (pid 9)".
fn death_clause(w: &Wording) -> String {
    let Some(d) = w.death else { return "died".to_string() };
    let signal = d.signal.clone().unwrap_or_else(|| "a signal".to_string());
    let sender = d.sender.as_ref().map(|s| format!(" by {s}")).unwrap_or_default();
    match d.how {
        DeathHow::Crash => format!("crashed with {signal}"),
        DeathHow::Oom => "was killed by the OOM killer".to_string(),
        DeathHow::WorkerTimeout => format!("was killed with {signal}{sender}, its master, for running past its worker timeout"),
        DeathHow::Signal => format!("was killed with {signal}{sender}"),
        DeathHow::Exit => format!("exited with status {}", d.exit_status.unwrap_or(0)),
    }
}

/// Whether a process name is a Python server's (a Python-specific tool may then be named).
fn python_like(comm: &str) -> bool {
    ["gunicorn", "python", "uwsgi", "uvicorn", "celery", "daphne", "hypercorn"].iter().any(|n| comm.contains(n))
}

/// The worker-timeout option of the master that killed its worker, by its name.
fn timeout_option(master: &str) -> String {
    if master.contains("gunicorn") {
        "Gunicorn's `--timeout` (default 30 s)".to_string()
    } else if master.contains("uwsgi") {
        "uWSGI's `harakiri`".to_string()
    } else if master.contains("php-fpm") {
        "PHP-FPM's `request_terminate_timeout`".to_string()
    } else {
        format!("the worker timeout of {master}")
    }
}

pub(super) fn detail(cause: Cause, w: &Wording) -> String {
    let target = w.target.map(|t| t.to_string()).unwrap_or_else(|| "the upstream".into());
    let n = w.count;
    let proc_ = who(w);
    let c = w.connection.cloned().unwrap_or_default();
    let after = duration(c.after_ms * MS);
    // The client is Nginx (or another proxy) in the cases tracer is for; say so only then.
    let client = if w.proxy_client { "Nginx" } else { "the client" };
    let bytes = format!("{client} had sent {} bytes and received {}", c.nginx_sent, c.nginx_received);
    match cause {
        Cause::UpstreamKilled => {
            let read = match c.upstream_received {
                Some(b) => format!(", having received {b} bytes of the request and sent {} bytes back", c.upstream_sent.unwrap_or(0)),
                None => String::new(),
            };
            format!(
                "{} to {target} lost {} upstream: {proc_} {} {after} after {client} connected{read}; \
                 its socket closed as it died ({bytes}).",
                requests(n),
                if n == 1 { "its" } else { "their" },
                death_clause(w)
            )
        }
        Cause::UpstreamReset => format!(
            "{proc_}, alive, reset {} from {client} to {target} {after} after the connect: it {} ({bytes}).",
            if n == 1 { "1 connection".to_string() } else { format!("{n} connections") },
            c.reset_reason.as_deref().unwrap_or("reset the connection")
        ),
        Cause::UpstreamClosed => format!(
            "{proc_}, alive, closed {} from {client} to {target} (FIN) {after} after the connect, before \
             sending a response byte ({bytes}).",
            if n == 1 { "1 connection".to_string() } else { format!("{n} connections") }
        ),
        Cause::KeepaliveRace => {
            let idle = c.idle_ms.map(|ms| format!(" after {} idle", duration(ms * MS))).unwrap_or_default();
            format!(
                "{} went out on kept-alive connections to {target} that {proc_} had already closed{idle}: \
                 {client} wrote on a connection whose FIN had come, and the upstream answered with a reset.",
                requests(n)
            )
        }
        Cause::PortsExhausted => {
            let (range, held) = match w.ports {
                Some(p) => {
                    let total: u64 = p.held.values().sum();
                    let states: Vec<String> = p.held.iter().map(|(s, k)| format!("{k} {s}")).collect();
                    (
                        format!("the local port range {}-{} ({} ports)", p.range[0], p.range[1], p.range[1].saturating_sub(p.range[0]) as u32 + 1),
                        format!(", and {total} sockets towards {target} hold ports ({})", states.join(", ")),
                    )
                }
                None => ("the local port range".to_string(), String::new()),
            };
            format!(
                "{} connect() calls to {target} found no free local port (EADDRNOTAVAIL): {range} is used up{held}.",
                n
            )
        }
        Cause::UpstreamTimeout => {
            let state = match c.upstream_state.as_deref() {
                Some("in accept queue") => format!("; the connection was still in the listener's accept queue, accepted by no process"),
                Some(s) => format!("; {proc_} held the connection and was {s} then"),
                None => String::new(),
            };
            format!(
                "{} gave up on {} to {target} after {after} without a response byte{state}.",
                if w.proxy_client { "Nginx" } else { "The client" },
                requests(n)
            )
        }
        _ => String::new(),
    }
}

pub(super) fn fix(cause: Cause, w: &Wording) -> String {
    let proc_ = who(w);
    let comm = w.upstream_process.map(|p| p.comm.as_str()).or(w.listener.as_ref().map(|l| l.comm)).unwrap_or("the upstream");
    let pid = w.upstream_process.map(|p| p.pid).unwrap_or(0);
    let c = w.connection.cloned().unwrap_or_default();
    match cause {
        Cause::UpstreamKilled => match w.death.map(|d| d.how) {
            Some(DeathHow::Crash) => {
                let tracer = if python_like(comm) { " (for Python: `PYTHONFAULTHANDLER=1` prints the stack of the fault)" } else { "" };
                format!(
                    "{proc_} crashed inside a request handler: find the fault with `coredumpctl info {pid}` \
                     (when systemd-coredump keeps cores) or in its own log{tracer}; the request that was in \
                     flight at that moment is the one that triggers it."
                )
            }
            Some(DeathHow::Oom) => format!(
                "{proc_} ran out of memory: raise the memory limit of its cgroup or container (`memory.max`), \
                 or lower its use (fewer workers, smaller batches); `journalctl -k --grep oom` shows the kill."
            ),
            Some(DeathHow::WorkerTimeout) => {
                let master = w.death.and_then(|d| d.sender.as_ref()).map(|s| s.comm.as_str()).unwrap_or(comm);
                format!(
                    "The request ran longer than {}: make the handler faster, or raise the timeout above \
                     the slowest expected request (and keep Nginx's `proxy_read_timeout` in step).",
                    timeout_option(master)
                )
            }
            Some(DeathHow::Signal) => {
                let sender = w.death.and_then(|d| d.sender.as_ref()).map(|s| s.to_string()).unwrap_or_else(|| "another process".into());
                format!(
                    "Find why {sender} killed {proc_} while it served a request (a deploy, an operator, a \
                     supervisor's stop timeout): stop workers gracefully (SIGTERM, then wait for their \
                     requests to finish) instead."
                )
            }
            _ => format!(
                "{proc_} exited while serving a request: its own log at that moment says why (`journalctl _PID={pid}`)."
            ),
        },
        Cause::UpstreamReset => format!(
            "{proc_} resets connections without answering: look in its log at that time for why it closes \
             them (a request-size or connection limit, an error handler that closes the socket, a load \
             shedder). A close with the request unread always sends a reset."
        ),
        Cause::UpstreamClosed => format!(
            "{proc_} ended requests without a response: its log at that time shows the handler's error; a \
             server that closes connections at a request limit (e.g. max-requests) or that it considers idle \
             does this too."
        ),
        Cause::KeepaliveRace => {
            let seen = c.idle_ms.map(|ms| format!(" (it closed after {} idle here)", duration(ms * MS))).unwrap_or_default();
            let upstream_timeout = if comm.contains("gunicorn") {
                "Gunicorn's `--keep-alive`, 2 s by default"
            } else if comm.contains("node") {
                "Node's `server.keepAliveTimeout`, 5 s by default"
            } else {
                "the upstream's idle timeout"
            };
            format!(
                "Make Nginx drop idle upstream connections before {proc_} does{seen}: in the `upstream` block \
                 set `keepalive_timeout` below {upstream_timeout}, or raise the upstream's timeout above \
                 Nginx's. Nginx retries only idempotent requests on such a connection, so POST and PATCH \
                 get the 502."
            )
        }
        Cause::PortsExhausted => format!(
            "Reuse upstream connections instead of opening one per request: `keepalive 32;` in the \
             `upstream` block with `proxy_http_version 1.1;` and `proxy_set_header Connection \"\";` \
             (runbook Fix 4). Also widen `net.ipv4.ip_local_port_range` in Nginx's network namespace \
             (`sysctl -w net.ipv4.ip_local_port_range={}`), or spread the load over more upstream addresses.",
            shell_word("1024 65535")
        ),
        Cause::UpstreamTimeout => {
            let dump = match w.upstream_process {
                Some(p) if python_like(&p.comm) => format!(", `py-spy dump --pid {}` for its stack", p.pid),
                _ => String::new(),
            };
            format!(
                "{proc_} did not answer within Nginx's `proxy_read_timeout`: find what it was doing then (its \
                 log at that time{dump}, a slow dependency). Raise `proxy_read_timeout` only if such slow \
                 requests are expected."
            )
        }
        _ => String::new(),
    }
}
