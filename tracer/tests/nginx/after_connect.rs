//! Issue 12, after the connect: the connection to the upstream existed, and the request still
//! failed. Each case makes the failure for real (a worker that segfaults, a `kill -9`, a
//! server that closes with the request unread, a kept-alive connection the upstream closed,
//! a netns with four local ports, a handler slower than `proxy_read_timeout`), checks Nginx's
//! status and error-log line, then tracer's finding read into the contract's type
//! (`FindingLine`): the cause, the Nginx worker that logged the line among the clients, the
//! upstream process (a pid the test knows), the count, and how it happened.

use std::{
    io::{Read, Write},
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use nix::{
    sched::CloneFlags,
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use tracer::explain::DeathHow;

use super::*;

/// Nginx's log lines when the upstream's end went away while Nginx waited for the response
/// header: a FIN (the socket closed with the request read) or an RST (closed unread).
const CLOSED_WHILE_READING: [&str; 2] = [
    "upstream prematurely closed connection while reading response header from upstream",
    "recv() failed (104: Connection reset by peer) while reading response header from upstream",
];

/// The one finding for the upstream, which must have `cause`, read into the contract's type.
fn after_finding(run: &TracerRun, cause: Cause) -> FindingLine {
    let f = run.only_finding(UPSTREAM, cause).clone();
    // The raw JSON text names the cause by its contract name (serde's, not only `as_str`'s).
    assert_eq!(serde_json::to_value(f.cause).unwrap(), cause.as_str(), "{f:?}");
    // Every upstream error line Nginx wrote is explained by this finding: none is left over.
    let unexplained = run.log_unexplained();
    assert!(unexplained.is_empty(), "log lines no finding explains: {unexplained:?}");
    assert!(f.log_lines >= 1 && f.log_example.is_some(), "the finding explains Nginx's line: {f:?}");
    f
}

/// The pid of the Nginx worker that wrote an error-log line (`... [error] PID#TID: ...`).
fn logged_by(line: &str) -> u32 {
    line.split_once("] ")
        .and_then(|(_, rest)| rest.split_once('#'))
        .and_then(|(pid, _)| pid.parse().ok())
        .unwrap_or_else(|| panic!("no PID#TID in the error-log line {line:?}"))
}

/// The finding's clients include the Nginx worker that logged `line` (and only Nginx workers).
fn assert_logger_is_client(f: &FindingLine, line: &str, nginx: &Nginx) {
    let pid = logged_by(line);
    let workers = nginx.workers();
    assert!(workers.contains(&pid), "the line's pid {pid} is one of nginx's workers {workers:?}: {line}");
    assert!(f.clients.iter().any(|c| c.pid == pid && c.comm == "nginx"), "clients include nginx worker {pid}: {f:?}");
    for c in &f.clients {
        assert!(c.comm == "nginx" && workers.contains(&c.pid), "client {c:?} is not an nginx worker {workers:?}: {f:?}");
    }
}

fn assert_upstream_process(f: &FindingLine, pid: u32) {
    let p = f.upstream_process.as_ref().unwrap_or_else(|| panic!("no upstream_process: {f:?}"));
    assert_eq!(p.pid, pid, "upstream_process.pid: {f:?}");
}

/// Nginx's error-log lines containing any of `needles`.
fn errors_with_any(nginx: &Nginx, needles: &[&str]) -> Vec<String> {
    nginx.error_lines().into_iter().filter(|l| needles.iter().any(|n| l.contains(n))).collect()
}

/// The only worker of a `--workers 1` Gunicorn.
fn only_worker(gunicorn: &Gunicorn) -> u32 {
    let workers = children_of(gunicorn.pid);
    assert_eq!(workers.len(), 1, "one gunicorn worker expected: {workers:?}");
    workers[0]
}

/// One GET of `path` through Nginx, curl run inside the namespace with `extra` arguments:
/// the HTTP status (0 when none came back).
fn curl_at(ns: &Netns, path: &str, max_time_s: u32, extra: &[&str]) -> u16 {
    let out = ns
        .command("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", &max_time_s.to_string()])
        .args(extra)
        .arg(format!("http://127.0.0.1:{FRONT_PORT}{path}"))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// Waits (bounded) until a connection to the upstream port is established inside the
/// namespace: the request is in Gunicorn's hands.
fn wait_upstream_connection(ns: &Netns) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns.exec("ss", &["-Htn", "state", "established", "dport", "= :8000"]);
        if !out.trim().is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "no connection to :8000 within 10 s");
        thread::sleep(Duration::from_millis(50));
    }
}

/// One line per case with what Nginx and tracer said (visible with --nocapture).
fn show_after(scenario: &str, nginx_said: &str, log_line: &str, f: &FindingLine) {
    let log_line = log_line.split(", client:").next().unwrap_or(log_line);
    let clients: Vec<u32> = f.clients.iter().map(|c| c.pid).collect();
    println!(
        "SCENARIO {scenario}\n  nginx:  {nginx_said}\n  log:    {log_line}\n  tracer: {:?} {} count={} clients={clients:?} upstream_process={:?}\n          death={:?}\n          connection={:?} ports={:?}",
        f.cause,
        f.target,
        f.count,
        f.upstream_process.as_ref().map(|p| (p.pid, &p.comm)),
        f.death,
        f.connection,
        f.ports
    );
}

/// A WSGI handler crashes in native code: the Gunicorn worker dies of SIGSEGV with Nginx's
/// request in hand. 502; upstream_killed, a crash by SIGSEGV, naming that worker.
#[test]
fn worker_segfault_is_upstream_killed_by_a_crash() {
    require_stack!();
    let dir = stack_dir("ngx-crash");
    let ns = Netns::new("ngxcrash");
    let gunicorn = ns.gunicorn(&dir, &GunicornOpts { workers: 1, ..GunicornOpts::default() });
    let nginx = ns.nginx(&dir, &format!("http://{UPSTREAM}"), "3s");
    let worker = only_worker(&gunicorn);
    let tracer = Tracer::diagnose(&["--port", "8000"]);

    // A healthy request on a connection that ends normally first: it must not count.
    assert_eq!(ns.curl(10), 200, "healthy before the crash");
    assert_eq!(curl_at(&ns, "/crash", 10, &[]), 502);
    let logged = errors_with_any(&nginx, &CLOSED_WHILE_READING);
    assert_eq!(logged.len(), 1, "nginx error log: {:?}", nginx.error_lines());
    // Gunicorn's arbiter logs the death when it reaps the worker, which may come after Nginx
    // has answered 502 (seen once in a clean-clone CI run).
    let sigsegv = format!("Worker (pid:{worker}) was sent SIGSEGV");
    wait_until(&format!("gunicorn logs that its worker {worker} died of SIGSEGV"), || {
        std::fs::read_to_string(&gunicorn.log).unwrap_or_default().contains(&sigsegv)
    });

    let run = tracer.finish();
    let f = after_finding(&run, Cause::UpstreamKilled);
    show_after("worker segfault", "502", &logged[0], &f);
    assert_eq!(f.count, 1, "{f:?}");
    assert_logger_is_client(&f, &logged[0], &nginx);
    assert_upstream_process(&f, worker);
    let death = f.death.as_ref().unwrap_or_else(|| panic!("no death: {f:?}"));
    assert_eq!(death.how, DeathHow::Crash, "{f:?}");
    assert_eq!(death.signal.as_deref(), Some("SIGSEGV"), "{f:?}");
    assert!(death.sender.is_none(), "a fault has no sender: {f:?}");
    let c = f.connection.as_ref().unwrap_or_else(|| panic!("no connection: {f:?}"));
    assert!(c.nginx_sent > 0 && c.nginx_received == 0, "the request went out, no response byte came back: {f:?}");
}

/// `kill -9` of the Gunicorn worker in the middle of a slow request (the test sends it):
/// 502; upstream_killed by a signal, SIGKILL, sent by this test process.
#[test]
fn worker_sigkilled_mid_request_is_upstream_killed_by_a_signal() {
    require_stack!();
    let dir = stack_dir("ngx-kill9");
    let ns = Netns::new("ngxkill9");
    let gunicorn = ns.gunicorn(&dir, &GunicornOpts { workers: 1, slow_s: 5.0, ..GunicornOpts::default() });
    let nginx = ns.nginx(&dir, &format!("http://{UPSTREAM}"), "3s");
    let worker = only_worker(&gunicorn);
    let tracer = Tracer::diagnose(&["--port", "8000"]);

    let status = thread::scope(|s| {
        let request = s.spawn(|| ns.curl(15));
        wait_upstream_connection(&ns);
        // The sync worker reads the request as soon as it accepts; then it sleeps 5 s.
        thread::sleep(Duration::from_millis(500));
        kill(Pid::from_raw(worker as i32), Signal::SIGKILL).expect("kill -9 the gunicorn worker");
        request.join().unwrap()
    });
    assert_eq!(status, 502);
    let logged = errors_with_any(&nginx, &CLOSED_WHILE_READING);
    assert_eq!(logged.len(), 1, "nginx error log: {:?}", nginx.error_lines());

    let run = tracer.finish();
    let f = after_finding(&run, Cause::UpstreamKilled);
    show_after("worker kill -9 mid-request", "502", &logged[0], &f);
    assert_eq!(f.count, 1, "{f:?}");
    assert_logger_is_client(&f, &logged[0], &nginx);
    assert_upstream_process(&f, worker);
    let death = f.death.as_ref().unwrap_or_else(|| panic!("no death: {f:?}"));
    assert_eq!(death.how, DeathHow::Signal, "{f:?}");
    assert_eq!(death.signal.as_deref(), Some("SIGKILL"), "{f:?}");
    let sender = death.sender.as_ref().unwrap_or_else(|| panic!("no sender: {f:?}"));
    assert_eq!(sender.pid, std::process::id(), "the sender is this test process: {f:?}");
    let c = f.connection.as_ref().unwrap_or_else(|| panic!("no connection: {f:?}"));
    assert!(c.nginx_sent > 0 && c.nginx_received == 0, "the request went out, no response byte came back: {f:?}");
}

/// A live server accepts and closes with the request unread: the kernel answers with an
/// RST. 502 "recv() failed (104"; upstream_reset naming the server.
#[test]
fn close_with_the_request_unread_is_upstream_reset() {
    require_stack!();
    let dir = stack_dir("ngx-reset");
    let ns = Netns::new("ngxreset");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helpers/reset_server.py");
    let mut server = ns.script(&script, &["8000", "0.2", "10", "30"]);
    server.expect("listening");
    let nginx = ns.nginx(&dir, &format!("http://{UPSTREAM}"), "3s");
    let tracer = Tracer::diagnose(&["--port", "8000"]);

    assert_eq!(ns.curls(2, 10), [502, 502]);
    let logged = errors_with_any(
        &nginx,
        &["recv() failed (104: Connection reset by peer) while reading response header from upstream", "writev() failed"],
    );
    assert_eq!(logged.len(), 2, "nginx error log: {:?}", nginx.error_lines());

    let run = tracer.finish();
    let f = after_finding(&run, Cause::UpstreamReset);
    show_after("close with the request unread", "502 x2", &logged[0], &f);
    assert_eq!(f.count, 2, "{f:?}");
    for line in &logged {
        assert_logger_is_client(&f, line, &nginx);
    }
    assert_upstream_process(&f, server.pid);
    assert!(f.death.is_none(), "the server is alive: {f:?}");
    let c = f.connection.as_ref().unwrap_or_else(|| panic!("no connection: {f:?}"));
    assert!(c.nginx_sent > 0 && c.nginx_received == 0, "the request went out, no response byte came back: {f:?}");
    let reason = c.reset_reason.as_deref().unwrap_or_else(|| panic!("no reset_reason: {f:?}"));
    assert!(reason.contains("unread"), "the reset came from a close with the request unread: {f:?}");
}

/// A TCP connection to Nginx from inside the namespace: a thread enters it (setns changes
/// only the calling thread's namespace) and connects; the socket stays in that namespace.
fn connect_inside(ns: &Netns) -> TcpStream {
    let path = format!("/run/netns/{}", ns.name);
    let stream = thread::scope(|s| {
        s.spawn(|| {
            let handle = std::fs::File::open(&path).expect("open the netns handle");
            nix::sched::setns(&handle, CloneFlags::CLONE_NEWNET).expect("setns into the test netns");
            TcpStream::connect(("127.0.0.1", FRONT_PORT)).expect("connect to nginx")
        })
        .join()
        .unwrap()
    });
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    stream
}

/// Sends one HTTP/1.1 POST on a kept-alive connection (the response is read by `read_status`).
fn send_post(stream: &mut TcpStream) {
    let body = "hello";
    let req = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).expect("send a POST to nginx");
}

/// Reads one response (headers, then a Content-Length body): its status.
fn read_status(stream: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert!(buf.len() < 16 * 1024, "response headers too long: {}", String::from_utf8_lossy(&buf));
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            other => panic!("the response ended early ({other:?}): {}", String::from_utf8_lossy(&buf)),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|n| n.trim().parse().unwrap_or(0)))
        .unwrap_or_else(|| panic!("no Content-Length in {head}"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("read the response body");
    status
}

/// Nginx keeps upstream connections alive (`keepalive 8`); Gunicorn closes an idle one after
/// 1 s. The Nginx workers are stopped while that happens, so Nginx has not seen the FIN when
/// the next POST arrives: it sends it on the dead connection. 502; keepalive_race, with the
/// connection idle for about Gunicorn's timeout.
#[test]
fn reused_connection_the_upstream_closed_is_a_keepalive_race() {
    require_stack!();
    let dir = stack_dir("ngx-karace");
    let ns = Netns::new("ngxkarace");
    let gunicorn =
        ns.gunicorn(&dir, &GunicornOpts { workers: 1, threads: Some(4), keep_alive: Some(1), ..GunicornOpts::default() });
    let extra = "upstream backend { server 127.0.0.1:8000; keepalive 8; }\n    proxy_http_version 1.1;\n    proxy_set_header Connection \"\";";
    let nginx = ns.nginx_with(&dir, "http://backend", "3s", extra);
    let worker = only_worker(&gunicorn);
    let tracer = Tracer::diagnose(&["--port", "8000"]);

    let mut client = connect_inside(&ns);
    send_post(&mut client);
    assert_eq!(read_status(&mut client), 200, "the first POST opens the kept-alive upstream connection");
    // Let the worker finish with the request (its upstream connection back in the cache)
    // before it is stopped.
    thread::sleep(Duration::from_millis(200));
    let nginx_workers = nginx.workers();
    for w in &nginx_workers {
        kill(Pid::from_raw(*w as i32), Signal::SIGSTOP).expect("SIGSTOP an nginx worker");
    }
    // Queued for the stopped worker before Gunicorn's FIN: the worker sees it first.
    send_post(&mut client);
    thread::sleep(Duration::from_millis(2500));
    for w in &nginx_workers {
        kill(Pid::from_raw(*w as i32), Signal::SIGCONT).expect("SIGCONT an nginx worker");
    }
    assert_eq!(read_status(&mut client), 502, "the second POST went out on the closed connection");
    let logged = errors_with_any(
        &nginx,
        &[CLOSED_WHILE_READING[0], CLOSED_WHILE_READING[1], "writev() failed (32: Broken pipe)"],
    );
    assert_eq!(logged.len(), 1, "nginx error log: {:?}", nginx.error_lines());

    let run = tracer.finish();
    let f = after_finding(&run, Cause::KeepaliveRace);
    show_after("kept-alive connection reused after the upstream closed it", "200, then 502", &logged[0], &f);
    assert_eq!(f.count, 1, "{f:?}");
    assert_logger_is_client(&f, &logged[0], &nginx);
    // The upstream's idle close is a healthy close, which the kernel side does not report (it
    // would cost every request): the process that last held the connection is named through
    // the listener it served, Gunicorn's master.
    assert_eq!(f.upstream_process, None, "{f:?}");
    assert_eq!(f.listener.as_ref().map(|l| l.pid), Some(gunicorn.pid), "{f:?}");
    assert!(f.detail.contains(&format!("gunicorn (pid {}, which listens there)", gunicorn.pid)), "{}", f.detail);
    let _ = worker;
    let c = f.connection.as_ref().unwrap_or_else(|| panic!("no connection: {f:?}"));
    let idle = c.idle_ms.unwrap_or_else(|| panic!("no idle_ms: {f:?}"));
    // Gunicorn's gthread worker closes an idle connection 1 to 2 s after its last response
    // (it looks once a second); the workers were stopped 2.5 s.
    assert!((900..=2600).contains(&idle), "idle about Gunicorn's --keep-alive 1: {idle} ms: {f:?}");
}

/// Four local ports in the namespace and twelve concurrent slow requests: Nginx's connect()
/// finds no free port (99: EADDRNOTAVAIL) for most. 502 and a [crit] line; ports_exhausted
/// with the range.
#[test]
fn four_local_ports_for_twelve_requests_is_ports_exhausted() {
    require_stack!();
    let dir = stack_dir("ngx-ports");
    let ns = Netns::new("ngxports");
    ns.exec("sysctl", &["-w", "net.ipv4.ip_local_port_range=40000 40003"]);
    assert_eq!(ns.exec("cat", &["/proc/sys/net/ipv4/ip_local_port_range"]).split_whitespace().collect::<Vec<_>>(), ["40000", "40003"]);
    let _gunicorn =
        ns.gunicorn(&dir, &GunicornOpts { workers: 1, threads: Some(16), slow_s: 3.0, ..GunicornOpts::default() });
    let nginx = ns.nginx(&dir, &format!("http://{UPSTREAM}"), "3s");
    let tracer = Tracer::diagnose(&["--port", "8000"]);

    // The clients bind ports of their own, outside the range: only Nginx's connects use it.
    let statuses: Vec<u16> = thread::scope(|s| {
        let requests: Vec<_> =
            (0..12).map(|_| s.spawn(|| curl_at(&ns, "/", 15, &["--local-port", "50000-50999"]))).collect();
        requests.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let failed = statuses.iter().filter(|&&s| s == 502).count();
    assert!(statuses.iter().all(|s| [200, 502].contains(s)), "{statuses:?}");
    assert!(failed >= 1 && failed < 12, "some requests get a port, the others 502: {statuses:?}");
    let logged = nginx.errors_with("(99: Cannot assign requested address) while connecting to upstream");
    assert_eq!(logged.len(), failed, "one [crit] line per 502: {:?}", nginx.error_lines());
    assert!(logged.iter().all(|l| l.contains(" [crit] ")), "{logged:?}");

    let run = tracer.finish();
    let f = after_finding(&run, Cause::PortsExhausted);
    show_after("4 local ports, 12 concurrent requests", &format!("{statuses:?}"), &logged[0], &f);
    assert_eq!(f.count, failed as u64, "one attempt per connect() that failed: {f:?}");
    for line in &logged {
        assert_logger_is_client(&f, line, &nginx);
    }
    let ports = f.ports.as_ref().unwrap_or_else(|| panic!("no ports: {f:?}"));
    assert_eq!(ports.range, [40000, 40003], "{f:?}");
    let held: u64 = ports.held.values().sum();
    assert!(held >= 4, "the four ports are held by sockets towards the upstream: {f:?}");
}

/// A handler slower than `proxy_read_timeout 2s`: Nginx gives up (504). upstream_timeout,
/// naming the Gunicorn worker still busy with the request.
#[test]
fn handler_slower_than_proxy_read_timeout_is_upstream_timeout() {
    require_stack!();
    let dir = stack_dir("ngx-readto");
    let ns = Netns::new("ngxreadto");
    let gunicorn = ns.gunicorn(&dir, &GunicornOpts { workers: 1, slow_s: 6.0, ..GunicornOpts::default() });
    let nginx = ns.nginx_read_timeout(&dir, &format!("http://{UPSTREAM}"), "3s", "2s", "");
    let worker = only_worker(&gunicorn);
    let tracer = Tracer::diagnose(&["--port", "8000"]);

    assert_eq!(ns.curl(10), 504);
    let logged =
        nginx.errors_with("upstream timed out (110: Connection timed out) while reading response header from upstream");
    assert_eq!(logged.len(), 1, "nginx error log: {:?}", nginx.error_lines());

    let run = tracer.finish();
    let f = after_finding(&run, Cause::UpstreamTimeout);
    show_after("handler slower than proxy_read_timeout", "504", &logged[0], &f);
    assert_eq!(f.count, 1, "{f:?}");
    assert_logger_is_client(&f, &logged[0], &nginx);
    assert_upstream_process(&f, worker);
    assert!(f.death.is_none(), "the worker is alive: {f:?}");
    let c = f.connection.as_ref().unwrap_or_else(|| panic!("no connection: {f:?}"));
    assert!(c.nginx_sent > 0 && c.nginx_received == 0, "the request went out, no response byte came back: {f:?}");
    assert!(c.upstream_state.is_some(), "what the worker was doing when Nginx gave up: {f:?}");
}

/// A client that gives up (curl --max-time 1) while a handler takes 3 s, behind
/// `proxy_read_timeout 30s`: Nginx closes the upstream connection with no response byte (it
/// logs 499, answers no 502/504). Closed long before its 30 s timeout, that is no
/// upstream_timeout: no finding for the upstream. (Before the engine knew Nginx's read
/// timeouts, this close was an upstream_timeout after 1 s.)
#[test]
fn a_client_giving_up_before_proxy_read_timeout_is_no_finding() {
    require_stack!();
    let dir = stack_dir("ngx-abort");
    let ns = Netns::new("ngxabort");
    let _gunicorn = ns.gunicorn(&dir, &GunicornOpts { workers: 1, slow_s: 3.0, ..GunicornOpts::default() });
    let _nginx = ns.nginx_read_timeout(&dir, &format!("http://{UPSTREAM}"), "3s", "30s", "");
    let tracer = Tracer::diagnose(&["--port", "8000"]);

    let started = Instant::now();
    assert_eq!(ns.curl(1), 0, "curl gives up after 1 s, before the 3 s handler answers");
    // Nginx saw its client go and closed its side of the upstream connection, while the
    // handler still had 2 s to go: the close tracer must not call a timeout happened.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !ns.exec("ss", &["-Htn", "state", "established", "dport", "= :8000"]).trim().is_empty() {
        assert!(Instant::now() < deadline, "nginx did not close the upstream connection after its client left");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(started.elapsed() < Duration::from_millis(2900), "closed before the handler answered: {:?}", started.elapsed());
    // The handler finishes (and writes to the closed connection) before tracing ends.
    thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()) + Duration::from_millis(500));

    let run = tracer.finish();
    run.assert_no_finding_for(UPSTREAM);
}
