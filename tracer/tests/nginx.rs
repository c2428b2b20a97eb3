//! The Nginx + Gunicorn suite: tracer must be right against the real programs, driven the way
//! production drives them. Each scenario runs in its own network namespace with real Nginx
//! (Debian package, workers as www-data) proxying to real Gunicorn (PyPI); the test sends real
//! HTTP through Nginx, checks Nginx's status and error-log line, and asserts tracer's finding:
//! cause, target, count, the Nginx worker pids as clients, the Gunicorn master as listener.
//!
//! Runs only via `cargo xtask test` (TRACER_INTEGRATION=1, root, `--test-threads=1`).

mod common;

use common::{stack::*, *};

/// Skips (printing why) when the privileged suite or the stack cannot run here.
macro_rules! require_stack {
    () => {
        require_integration!();
        if let Some(reason) = stack_missing() {
            println!("skipped: {reason}");
            return;
        }
    };
}

const UPSTREAM: &str = "127.0.0.1:8000";

/// One line per scenario with what Nginx and tracer said (visible with --nocapture; the
/// closing notes quote it).
fn show(scenario: &str, nginx_said: &str, log_line: &str, f: &FindingLine) {
    let log_line = log_line.split(", client:").next().unwrap_or(log_line);
    let log_line = log_line.split_once(" [error] ").map(|(_, l)| l).unwrap_or(log_line);
    println!(
        "SCENARIO {scenario}\n  nginx:  {nginx_said}\n  log:    {log_line}\n  tracer: {} {} count={} clients={:?} listener={:?} queue={:?} hint={:?}",
        f.cause.as_str(), f.target, f.count, f.clients, f.listener, f.queue, f.hint
    );
}

/// Events of `kind` the kernel reported lost (ring buffer full), from the summary line.
fn lost_events(run: &TracerRun, kind: &str) -> u64 {
    run.summary().lost_events.iter().find(|(k, _)| k.name() == kind).map_or(0, |(_, n)| *n)
}

/// Every client of the finding is an Nginx worker of this stack (comm "nginx").
fn assert_nginx_clients(f: &FindingLine, nginx: &Nginx) {
    let workers = nginx.workers();
    assert!(!f.clients.is_empty(), "no clients in {f:?}");
    for c in &f.clients {
        assert_eq!(c.comm, "nginx", "client is not an nginx worker: {f:?}");
        let pid = c.pid;
        assert!(workers.contains(&pid), "client pid {pid} is not one of nginx's workers {workers:?}: {f:?}");
    }
}

/// 1. Gunicorn crashes (SIGKILL to master and workers) while Nginx keeps proxying to its port:
/// 502, "connect() failed (111: Connection refused)", dead_listener naming the Gunicorn master.
#[test]
fn gunicorn_killed_is_a_dead_listener() {
    require_stack!();
    let dir = stack_dir("ngx-killed");
    let ns = Netns::new("ngxkill");
    let mut gunicorn = ns.gunicorn(&dir, &GunicornOpts::default());
    let nginx = ns.nginx(&dir, &format!("http://{UPSTREAM}"), "3s");
    assert_eq!(ns.curl(10), 200, "healthy before the crash");
    let tracer = Tracer::diagnose(&["--port", "8000", "--client-comm", "nginx"]);

    gunicorn.crash();
    assert_eq!(ns.curls(3, 10), [502, 502, 502]);
    let logged = nginx.errors_with("connect() failed (111: Connection refused) while connecting to upstream");
    assert_eq!(logged.len(), 3, "nginx error log: {:?}", nginx.error_lines());

    let run = tracer.finish();
    let f = run.only_finding(UPSTREAM, Cause::DeadListener);
    show("gunicorn killed", "502 x3", &logged[0], f);
    assert_eq!(f.count, 3, "{f:?}");
    assert_nginx_clients(f, &nginx);
    assert_listener(f, gunicorn.pid);
}

/// 2. `proxy_pass` names the wrong port while Gunicorn listens on another: dead_listener on
/// the wrong port, pointing at the port where the same upstream does listen.
#[test]
fn wrong_proxy_pass_port_is_a_dead_listener_with_a_hint() {
    require_stack!();
    let dir = stack_dir("ngx-wrongport");
    let ns = Netns::new("ngxport");
    let gunicorn = ns.gunicorn(&dir, &GunicornOpts::default());
    let tracer = Tracer::diagnose(&["--port", "8001"]);
    let nginx = ns.nginx(&dir, "http://127.0.0.1:8001", "3s");

    assert_eq!(ns.curls(2, 10), [502, 502]);
    let logged = nginx.errors_with("(111: Connection refused) while connecting to upstream");
    assert_eq!(logged.len(), 2);

    let run = tracer.finish();
    let f = run.only_finding("127.0.0.1:8001", Cause::DeadListener);
    show("proxy_pass to the wrong port", "502 x2", &logged[0], f);
    assert_eq!(f.count, 2, "{f:?}");
    assert_nginx_clients(f, &nginx);
    let hint = f.hint.as_deref().unwrap_or_default();
    assert!(hint.contains("8000"), "the hint names the port Gunicorn listens on: {f:?}");
    assert!(hint.contains(&gunicorn.pid.to_string()), "the hint names Gunicorn's pid {}: {f:?}", gunicorn.pid);
}

/// 3. One sync worker, a slow handler and `--backlog 1` under concurrent load: the accept
/// queue overflows; SYNs are dropped, Nginx times out connecting (504). backlog_full with the
/// queue measured full; never a firewall or an unexplained timeout.
#[test]
fn small_backlog_under_load_is_backlog_full() {
    require_stack!();
    let dir = stack_dir("ngx-backlog");
    let ns = Netns::new("ngxbacklog");
    let gunicorn =
        ns.gunicorn(&dir, &GunicornOpts { workers: 1, backlog: Some(1), slow_s: 3.0, ..GunicornOpts::default() });
    let nginx = ns.nginx(&dir, &format!("http://{UPSTREAM}"), "2s");
    let tracer = Tracer::diagnose(&["--port", "8000"]);

    // One sync worker busy 3 s per request and a queue of 1. Three requests first, so the
    // worker is busy and the queue full before the load starts: SYNs that arrive at an empty
    // queue all get SYN-ACKs, and their third ACKs are dropped later instead (the clients
    // then believe they are connected and wait on the read, not on the connect).
    let prefill: Vec<std::thread::JoinHandle<u16>> = (0..3)
        .map(|_| {
            let name = ns.name.clone();
            std::thread::spawn(move || Netns::handle(name).curl_keep(15))
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(800));
    // 20 connections for 7 s: most connects wait longer than proxy_connect_timeout (2 s).
    let summary = ns.wrk(20, 7);
    for h in prefill {
        let _ = h.join();
    }
    let timeouts = nginx.errors_with("upstream timed out (110: Connection timed out) while connecting to upstream");
    assert!(!timeouts.is_empty(), "nginx must time out connecting; wrk: {summary}; log: {:?}", nginx.error_lines());

    let run = tracer.finish();
    let f = run.only_finding(UPSTREAM, Cause::BacklogFull);
    show("small backlog under load", &format!("wrk: {} requests, {} non-2xx", wrk_requests(&summary), wrk_non_2xx(&summary)), &timeouts[0], f);
    let n = f.count;
    let lost = lost_events(&run, "TcpAttemptFailed") + lost_events(&run, "TcpSynRetransmit");
    assert!(
        n + lost >= timeouts.len() as u64,
        "every connect timeout is an affected attempt, or a lost event tracer reports: {n} + {lost} < {}: {f:?}\nsummary: {:?}\nstderr: {}",
        timeouts.len(),
        run.summary(),
        run.stderr
    );
    assert!(n <= wrk_requests(&summary) + 20, "no more attempts than requests plus the 20 in flight: {summary} {f:?}");
    assert_nginx_clients(f, &nginx);
    assert_listener(f, gunicorn.pid);
    let queue = f.queue.unwrap_or_else(|| panic!("a measured queue: {f:?}"));
    assert_eq!(queue.max, 1, "the measured maximum is Gunicorn's --backlog: {f:?}");
    assert!(queue.len >= 1, "{f:?}");
}

/// 4. An nftables rule drops traffic to the upstream port: Nginx answers 504 after its short
/// proxy_connect_timeout; firewall_drop.
#[test]
fn nft_drop_is_a_firewall_drop() {
    require_stack!();
    let dir = stack_dir("ngx-drop");
    let ns = Netns::new("ngxdrop");
    let _gunicorn = ns.gunicorn(&dir, &GunicornOpts::default());
    let nginx = ns.nginx(&dir, &format!("http://{UPSTREAM}"), "1s");
    ns.nft_output_rule("tcp dport 8000 drop");
    let tracer = Tracer::diagnose(&["--port", "8000"]);

    assert_eq!(ns.curls(2, 10), [504, 504]);
    let logged = nginx.errors_with("upstream timed out (110: Connection timed out) while connecting to upstream");
    assert_eq!(logged.len(), 2);

    let run = tracer.finish();
    let f = run.only_finding(UPSTREAM, Cause::FirewallDrop);
    show("nft drop", "504 x2", &logged[0], f);
    assert_eq!(f.count, 2, "{f:?}");
    let r = f.rule.as_ref().unwrap_or_else(|| panic!("no rule named: {f:?}"));
    assert_eq!((r.chain.as_str(), r.text.as_str(), r.certain), ("out", "tcp dport 8000 drop", true), "{r:?}");
    assert_nginx_clients(f, &nginx);
}

fn reject_scenario(name: &str, rule: &str, detail_word: &str) {
    let dir = stack_dir(name);
    let ns = Netns::new(name);
    let gunicorn = ns.gunicorn(&dir, &GunicornOpts::default());
    let nginx = ns.nginx(&dir, &format!("http://{UPSTREAM}"), "3s");
    let tracer = Tracer::diagnose(&["--port", "8000"]);
    // Accepted connections while tracing must not look like the listener closing.
    assert_eq!(ns.curls(2, 10), [200, 200]);
    ns.nft_output_rule(rule);

    assert_eq!(ns.curls(2, 10), [502, 502]);
    let logged = nginx.errors_with("(111: Connection refused) while connecting to upstream");
    assert_eq!(logged.len(), 2);

    let run = tracer.finish();
    // only_finding also fails on any dead_listener finding for the same target.
    let f = run.only_finding(UPSTREAM, Cause::FirewallReject);
    show(rule, "502 x2", &logged[0], f);
    assert_listener(f, gunicorn.pid);
    assert!(f.listener_note.contains("listens here"), "Gunicorn still listens: {f:?}");
    assert_eq!(f.count, 2, "{f:?}");
    assert_nginx_clients(f, &nginx);
    assert!(f.detail.contains(detail_word), "{f:?}");
}

/// 5a. An nftables rule rejecting with a TCP reset: 502 exactly like a dead listener for
/// Nginx, but firewall_reject for tracer.
#[test]
fn nft_reject_with_reset_is_a_firewall_reject() {
    require_stack!();
    reject_scenario("ngxrst", "tcp dport 8000 reject with tcp reset", "reset");
}

/// 5b. The same with ICMP port unreachable.
#[test]
fn nft_reject_with_icmp_is_a_firewall_reject() {
    require_stack!();
    reject_scenario("ngxicmp", "tcp dport 8000 reject with icmpx type port-unreachable", "ICMP");
}

/// Gunicorn on a Unix socket, Nginx proxying to it.
fn unix_stack(name: &str, o: GunicornOpts) -> (TempDir, Netns, Gunicorn, Nginx, String) {
    let dir = stack_dir(name);
    let ns = Netns::new(name);
    let path = dir.path("gunicorn.sock");
    let bind = format!("unix:{path}");
    let gunicorn = ns.gunicorn(&dir, &GunicornOpts { bind: &bind, ..o });
    let nginx = ns.nginx(&dir, &format!("http://unix:{path}:/"), "3s");
    (dir, ns, gunicorn, nginx, path)
}

/// 6a. The socket file is deleted while Nginx proxies to it: unix_missing.
#[test]
fn unix_socket_deleted_is_unix_missing() {
    require_stack!();
    let (_dir, ns, _gunicorn, nginx, path) = unix_stack("ngxumiss", GunicornOpts::default());
    assert_eq!(ns.curl(10), 200);
    let tracer = Tracer::diagnose(&["--unix", &path]);
    std::fs::remove_file(&path).expect("delete the socket file");

    assert_eq!(ns.curls(2, 10), [502, 502]);
    let logged = nginx.errors_with("(2: No such file or directory) while connecting to upstream");
    assert_eq!(logged.len(), 2);

    let run = tracer.finish();
    let f = run.only_finding(&format!("unix:{path}"), Cause::UnixMissing);
    show("unix socket file deleted", "502 x2", &logged[0], f);
    assert_eq!(f.count, 2, "{f:?}");
    assert_nginx_clients(f, &nginx);
}

/// 6b. Gunicorn killed, its socket file left behind: unix_stale, naming the dead master.
#[test]
fn unix_socket_left_by_a_crash_is_unix_stale() {
    require_stack!();
    let (_dir, ns, mut gunicorn, nginx, path) = unix_stack("ngxustale", GunicornOpts::default());
    let tracer = Tracer::diagnose(&["--unix", &path]);
    gunicorn.crash();
    assert!(std::path::Path::new(&path).exists(), "a SIGKILLed Gunicorn leaves its socket file");

    assert_eq!(ns.curls(2, 10), [502, 502]);
    let logged = nginx.errors_with("(111: Connection refused) while connecting to upstream");
    assert_eq!(logged.len(), 2);

    let run = tracer.finish();
    let f = run.only_finding(&format!("unix:{path}"), Cause::UnixStale);
    show("gunicorn killed, socket file left", "502 x2", &logged[0], f);
    assert_eq!(f.count, 2, "{f:?}");
    assert_nginx_clients(f, &nginx);
    assert_listener(f, gunicorn.pid);
}

/// 6c. A full Unix listen queue under load: Nginx's non-blocking connect gets EAGAIN (502,
/// "11: Resource temporarily unavailable"); unix_backlog_full with the queue measured.
#[test]
fn unix_backlog_under_load_is_unix_backlog_full() {
    require_stack!();
    let (_dir, ns, gunicorn, nginx, path) =
        unix_stack("ngxufull", GunicornOpts { workers: 1, backlog: Some(1), slow_s: 2.0, ..GunicornOpts::default() });
    let tracer = Tracer::diagnose(&["--unix", &path]);

    let summary = ns.wrk(10, 4);
    let eagain = nginx.errors_with("(11: Resource temporarily unavailable) while connecting to upstream");
    assert!(!eagain.is_empty(), "nginx must hit EAGAIN; wrk: {summary}; log: {:?}", nginx.error_lines());

    let run = tracer.finish();
    let f = run.only_finding(&format!("unix:{path}"), Cause::UnixBacklogFull);
    show("unix backlog under load", &format!("wrk: {} requests, {} non-2xx", wrk_requests(&summary), wrk_non_2xx(&summary)), &eagain[0], f);
    // Exact accounting: every EAGAIN nginx logged is an attempt tracer counted, or one it
    // says it lost (ring buffer full on a machine this loaded); never silently missing.
    let lost = lost_events(&run, "UnixConnectFailed");
    assert_eq!(
        f.count + lost,
        eagain.len() as u64,
        "one attempt per EAGAIN nginx logged (counted {} + reported lost {lost}): {f:?}\nsummary: {:?}",
        f.count,
        run.summary()
    );
    assert_nginx_clients(f, &nginx);
    assert_listener(f, gunicorn.pid);
    assert_eq!(f.queue.map(|q| q.max), Some(1), "{f:?}");
}

/// 6d. A socket file Nginx's worker user may not open: unix_permission_denied, with its uid.
#[test]
fn unix_socket_without_access_is_permission_denied() {
    require_stack!();
    let (_dir, ns, _gunicorn, nginx, path) =
        unix_stack("ngxuperm", GunicornOpts { umask: Some("077"), ..GunicornOpts::default() });
    let tracer = Tracer::diagnose(&["--unix", &path]);

    assert_eq!(ns.curls(2, 10), [502, 502]);
    let logged = nginx.errors_with("(13: Permission denied) while connecting to upstream");
    assert_eq!(logged.len(), 2);

    let run = tracer.finish();
    let f = run.only_finding(&format!("unix:{path}"), Cause::UnixPermissionDenied);
    show("unix socket mode 0700", "502 x2", &logged[0], f);
    assert_eq!(f.count, 2, "{f:?}");
    assert_nginx_clients(f, &nginx);
    let www_data = uid_of("www-data");
    assert!(f.uids.contains(&www_data), "uid of www-data: {f:?}");
}

/// 7. A healthy run under load: every request 200, and tracer reports nothing at all.
#[test]
fn healthy_load_has_no_findings() {
    require_stack!();
    let dir = stack_dir("ngx-healthy");
    let ns = Netns::new("ngxok");
    let _gunicorn = ns.gunicorn(&dir, &GunicornOpts { workers: 2, ..GunicornOpts::default() });
    let _nginx = ns.nginx(&dir, &format!("http://{UPSTREAM}"), "3s");
    let tracer = Tracer::diagnose(&[]);

    let summary = ns.wrk(4, 3);
    assert!(wrk_requests(&summary) > 50, "load ran: {summary}");
    assert_eq!(wrk_non_2xx(&summary), 0, "{summary}");

    let run = tracer.finish();
    println!("SCENARIO healthy load\n  nginx:  wrk: {} requests, {} non-2xx\n  tracer: {} findings", wrk_requests(&summary), wrk_non_2xx(&summary), run.findings().len());
    run.assert_no_finding_for(UPSTREAM);
    run.assert_no_finding_for(&format!("127.0.0.1:{FRONT_PORT}"));
    assert!(run.summary().lost_events.is_empty(), "{}", run.stdout);
}

/// Issue 6: the operator's view. Nginx's configuration names the upstream (`upstream backend
/// { server 127.0.0.1:8000; }`), its error log lines written during the trace are matched to
/// the finding, a configured target nobody listens on is reported before any request fails,
/// and processes carry their cgroup; --netns filters by namespace.
#[test]
fn operator_context_names_upstream_log_lines_and_unlistened_targets() {
    require_stack!();
    let dir = stack_dir("ngx-ops");
    let ns = Netns::new("ngxops");
    let mut gunicorn = ns.gunicorn(&dir, &GunicornOpts::default());
    let extra = "upstream backend { server 127.0.0.1:8000 max_fails=0; }\n    server { listen 127.0.0.1:8081; location / { proxy_pass http://127.0.0.1:8009; } }";
    let nginx = ns.nginx_with(&dir, "http://backend", "3s", extra);
    let netns = std::fs::read_link(format!("/proc/{}/ns/net", nginx.master)).unwrap().display().to_string();
    let inode: String = netns.chars().filter(|c| c.is_ascii_digit()).collect();
    let tracer = Tracer::diagnose(&["--port", "8000", "--port", "8009", "--netns", &inode]);
    assert!(tracer.stderr_text().contains(&format!("nginx: master pid {}", nginx.master)), "{}", tracer.stderr_text());

    gunicorn.crash();
    assert_eq!(ns.curls(3, 10), [502, 502, 502]);
    let run = tracer.finish();
    let f = run.only_finding(UPSTREAM, Cause::DeadListener);
    assert_eq!(f.count, 3, "{f:?}");
    assert_eq!(f.upstream.as_deref(), Some("backend"), "{f:?}");
    assert_eq!(f.config_line.as_deref(), Some("server 127.0.0.1:8000 max_fails=0;"), "{f:?}");
    assert_eq!(f.log_lines, 3, "the three connect() failures nginx logged: {f:?}");
    assert!(f.log_example.as_deref().unwrap().contains("(111: Connection refused)"), "{f:?}");
    for c in &f.clients {
        assert!(c.cgroup.as_deref().is_some_and(|p| p.starts_with('/')), "client cgroup: {f:?}");
    }
    let checks = run.config_checks();
    assert!(
        checks.iter().any(|c| c.target == "127.0.0.1:8009" && !c.listening),
        "127.0.0.1:8009 is configured but nobody listens: {}",
        run.stdout
    );
    assert!(!checks.iter().any(|c| c.target == UPSTREAM), "gunicorn listened on 8000 when tracing started: {}", run.stdout);

    // The same trace filtered to another namespace (the host's: --netns must name one that
    // exists) shows nothing.
    let host = std::fs::read_link("/proc/self/ns/net").unwrap().display().to_string();
    let host_inode: String = host.chars().filter(|c| c.is_ascii_digit()).collect();
    assert_ne!(host_inode, inode);
    let other = Tracer::diagnose(&["--port", "8000", "--netns", &host_inode]);
    assert_eq!(ns.curls(1, 10), [502]);
    let run = other.finish();
    assert!(run.findings().is_empty(), "--netns {host_inode} filters out the test namespace: {}", run.stdout);
}

/// Waits (bounded: 15 s) until tracer's stderr holds `needle`; panics with that stderr if not.
fn wait_for_stderr(tracer: &Tracer, needle: &str) {
    for _ in 0..150 {
        if tracer.stderr_text().contains(needle) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("tracer never said {needle:?}; stderr:\n{}", tracer.stderr_text());
}

/// Issue 12: an Nginx started after `tracer watch --json` is found with its configuration and
/// error log, the lines it wrote before it was found are matched to the dead-listener finding
/// too, and after a rotation (`mv error.log error.log.1`, then `nginx -s reopen`, i.e. SIGUSR1
/// to the master) the new file is followed: the count keeps growing.
#[test]
fn nginx_started_while_tracing_is_found_and_its_log_followed_across_rotation() {
    require_stack!();
    let dir = stack_dir("ngx-late");
    let ns = Netns::new("ngxlate");
    let tracer = Tracer::start(&["watch", "--json", "--duration", "120s", "--port", "8000"]);
    // Nothing listens on 8000 in this namespace.
    let nginx = ns.nginx(&dir, &format!("http://{UPSTREAM}"), "3s");
    assert!(!tracer.stderr_text().contains(&format!("nginx: master pid {} ", nginx.master)), "not running at start-up");

    // Right away, before tracer may have found this Nginx.
    assert_eq!(ns.curls(3, 10), [502, 502, 502]);
    assert_eq!(nginx.errors_with("(111: Connection refused)").len(), 3, "{:?}", nginx.error_lines());
    wait_for_stderr(&tracer, &format!("nginx: master pid {} ", nginx.master));

    // Rotation: Nginx writes into the renamed file until it reopens its logs.
    let rotated = dir.0.join("error.log.1");
    std::fs::rename(&nginx.error_log, &rotated).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(nginx.master as i32), nix::sys::signal::Signal::SIGUSR1).unwrap();
    for _ in 0..100 {
        if nginx.error_log.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(nginx.error_log.exists(), "nginx reopened no new error.log");
    assert_eq!(ns.curls(4, 10), [502, 502, 502, 502]);
    assert_eq!(nginx.errors_with("(111: Connection refused)").len(), 4, "the new file has the 4 new lines");

    let run = tracer.finish();
    let live: Vec<&FindingLine> =
        run.findings_for(UPSTREAM).into_iter().filter(|f| f.cause == Cause::DeadListener).collect();
    let f = *live.last().unwrap_or_else(|| panic!("no dead_listener finding for {UPSTREAM}: {}", run.stdout));
    assert_eq!(f.count, 7, "{f:?}");
    assert_nginx_clients(f, &nginx);
    assert!(f.log_lines >= 7, "the 3 lines of the old file and the 4 of the new one: {f:?}");
    assert!(f.log_example.as_deref().is_some_and(|l| l.contains("(111: Connection refused) while connecting to upstream")), "{f:?}");
    assert!(f.config_line.as_deref().is_some_and(|l| l.contains(UPSTREAM)), "its configuration was read: {f:?}");
    // The live lines count as the trace goes: never down.
    let counts: Vec<u64> = live.iter().map(|v| v.log_lines).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "log_lines went down: {counts:?}");
    assert!(run.log_unexplained().is_empty(), "every line is explained: {}", run.stdout);
}

/// Waits (bounded: 15 s) until `cond` holds; panics naming `what` if it never does.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..150 {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("never: {what}");
}

/// Issue 12: failures after the connect (a worker crash or kill, a reset, a keep-alive race,
/// no free local port, a read timeout).
#[path = "nginx/after_connect.rs"]
mod after_connect;

/// Issue 13: Nginx and its upstream in different network namespaces on a bridge, and a
/// Service address behind DNAT.
#[path = "nginx/containers.rs"]
mod containers;

/// Issue 17: the firewall rule that dropped or rejected the connections, named by its handle
/// (or its iptables line), in the namespace of the drop.
#[path = "nginx/firewall.rs"]
mod firewall;
