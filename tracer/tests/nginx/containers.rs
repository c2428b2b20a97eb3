//! Issue 13, containers: Nginx and its upstream in different network namespaces on one host,
//! joined by a bridge that lives in a third namespace (docker0's layout, `common::bridged`),
//! and a Service address that exists only as a DNAT rule in Nginx's namespace (kube-proxy's
//! ClusterIP). Each case makes the failure for real in the app's namespace, checks Nginx's
//! status and error-log line, then tracer's finding: the same cause and detail as on loopback
//! (the listener and its story, the queue, the firewall), and behind NAT the dialled address
//! as `target` with the real backend as `backend`.

use std::{thread, time::Duration};

use crate::common::bridged::{Bridged, APP_IP};

use super::*;

/// Gunicorn's address in the app namespace.
const APP_UPSTREAM: &str = "10.232.0.2:8000";
/// The Service address Nginx dials; only the DNAT rule in Nginx's namespace knows it.
const SERVICE: &str = "10.96.0.10:80";
/// The Service's backend behind the DNAT rule.
const SERVICE_BACKEND: &str = "10.232.0.2:8405";
/// Nginx's line when the connect timed out (a dropped SYN, a full accept queue).
const CONNECT_TIMED_OUT: &str = "upstream timed out (110: Connection timed out) while connecting to upstream";
/// Nginx's line when the connect was refused (an RST from the app namespace's kernel).
const CONNECT_REFUSED: &str = "connect() failed (111: Connection refused) while connecting to upstream";

/// The bridged namespaces with Nginx's DNAT rule for the Service address in front.
fn bridged_with_service(name: &str, backend: &str) -> Bridged {
    let net = Bridged::new(name);
    net.front.nft_dnat_output(SERVICE, backend);
    net
}

/// The finding's `backend`, which must be `expected` (None: no NAT).
fn assert_backend(f: &FindingLine, expected: Option<&str>) {
    assert_eq!(f.backend.as_deref(), expected, "backend: {f:?}");
}

/// One GET through Nginx's server on `port` inside `ns`: the HTTP status (0 when none came back).
fn curl_port(ns: &Netns, port: u16, max_time_s: u32) -> u16 {
    let out = ns
        .command("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", &max_time_s.to_string()])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// Requests that wait on a full accept queue, still in flight when the test reads tracer's
/// findings; their curls end once Nginx is gone.
struct Prefill(Vec<thread::JoinHandle<u16>>);

impl Prefill {
    /// Stops Nginx (the prefilled requests lose their proxy) and collects the curls' statuses.
    fn end(self, nginx: Nginx) -> Vec<u16> {
        drop(nginx);
        self.0.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    }
}

/// The accept queue of a `--workers 1 --backlog 2` Gunicorn with a 3 s handler overflows:
/// five requests one after the other (the worker takes the first, the queue the next three,
/// the fifth SYN is dropped), then 30 at once, all of which find the queue full. Nginx's
/// `proxy_connect_timeout 1s` gives up on each dropped SYN: 504. Returns the statuses of the
/// 30 and the requests still waiting in the queue.
///
/// One at a time first: SYNs that arrive together at an empty queue all get SYN-ACKs, and the
/// third ACKs of those the queue cannot take are dropped later: those clients believe they are
/// connected and wait on the read, not on the connect.
fn overflow_accept_queue(front: &Netns) -> (Vec<u16>, Prefill) {
    let prefill: Vec<thread::JoinHandle<u16>> = (0..5)
        .map(|_| {
            let name = front.name.clone();
            let h = thread::spawn(move || Netns::handle(name).curl_keep(20));
            thread::sleep(Duration::from_millis(150));
            h
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let statuses = thread::scope(|s| {
        let wave: Vec<_> = (0..30).map(|_| s.spawn(|| front.curl(8))).collect();
        wave.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    });
    (statuses, Prefill(prefill))
}

/// What Nginx said under the overflow: 504s each logged as a connect timeout; returns the
/// timeout lines.
fn assert_connect_timeouts(nginx: &Nginx, statuses: &[u16]) -> Vec<String> {
    let timeouts = nginx.errors_with(CONNECT_TIMED_OUT);
    let n504 = statuses.iter().filter(|&&s| s == 504).count();
    println!("overflow: {n504} of {} requests 504, {} connect timeouts logged", statuses.len(), timeouts.len());
    assert!(n504 >= 20, "most of the 30 requests time out connecting: {statuses:?}; log: {:?}", nginx.error_lines());
    assert!(
        timeouts.len() >= n504,
        "every 504 is a connect timeout nginx logged ({} lines): {statuses:?}",
        timeouts.len()
    );
    timeouts
}

/// tracer's backlog_full for `target` behind `backend`: the attempts, the queue measured at
/// Gunicorn's --backlog 2, Gunicorn's master as the listener, Nginx's workers as the clients.
fn assert_backlog_full(run: &TracerRun, target: &str, backend: Option<&str>, timeouts: &[String], nginx: &Nginx, gunicorn: &Gunicorn) {
    let f = run.only_finding(target, Cause::BacklogFull);
    show(&format!("backlog full across namespaces ({target})"), "504s", &timeouts[0], f);
    assert_backend(f, backend);
    let lost = lost_events(run, "TcpAttemptFailed") + lost_events(run, "TcpSynRetransmit");
    assert!(
        f.count + lost >= timeouts.len() as u64,
        "every connect timeout is an affected attempt, or a lost event tracer reports: {} + {lost} < {}: {f:?}",
        f.count,
        timeouts.len()
    );
    assert_nginx_clients(f, nginx);
    assert_listener(f, gunicorn.pid);
    let queue = f.queue.unwrap_or_else(|| panic!("a measured queue: {f:?}"));
    assert_eq!(queue.max, 2, "the measured maximum is Gunicorn's --backlog: {f:?}");
    assert!(queue.len >= 2, "{f:?}");
}

/// 1. Gunicorn in the app namespace crashes (SIGKILL to master and workers): the app
/// namespace's kernel refuses Nginx's connects. 502; dead_listener naming the Gunicorn master
/// that died, its death in the timeline.
#[test]
fn gunicorn_killed_in_the_app_namespace_is_a_dead_listener_with_its_story() {
    require_stack!();
    let dir = stack_dir("ngx-xns-killed");
    let net = Bridged::new("xnskill");
    let mut gunicorn = net.app.gunicorn(&dir, &GunicornOpts { bind: APP_UPSTREAM, ..GunicornOpts::default() });
    let nginx = net.front.nginx(&dir, &format!("http://{APP_UPSTREAM}"), "3s");
    assert_eq!(net.front.curl(10), 200, "healthy across the bridge before the crash");
    let tracer = Tracer::diagnose(&["--port", "8000", "--client-comm", "nginx"]);

    gunicorn.crash();
    assert_eq!(net.front.curls(3, 10), [502, 502, 502]);
    let logged = nginx.errors_with(CONNECT_REFUSED);
    assert_eq!(logged.len(), 3, "nginx error log: {:?}", nginx.error_lines());

    let run = tracer.finish();
    let f = run.only_finding(APP_UPSTREAM, Cause::DeadListener);
    show("gunicorn killed in the app namespace", "502 x3", &logged[0], f);
    assert_eq!(f.count, 3, "{f:?}");
    assert_backend(f, None);
    assert_nginx_clients(f, &nginx);
    assert_listener(f, gunicorn.pid);
    let master = gunicorn.pid;
    let story: Vec<(&str, u32, &str)> = f.timeline.iter().map(|e| (e.what.as_str(), e.pid, e.detail.as_str())).collect();
    let signal = story.iter().find(|e| e.0 == "signal" && e.1 == master);
    let signal = signal.unwrap_or_else(|| panic!("no signal to the master {master} in the timeline: {story:?}"));
    assert!(
        signal.2.starts_with("SIGKILL from ") && signal.2.contains(&format!("(pid {})", std::process::id())),
        "SIGKILL sent by this test process: {story:?}"
    );
    assert!(story.contains(&("exit", master, "killed by SIGKILL")), "the master's death: {story:?}");
}

/// 2. A full accept queue in the app namespace: Nginx's SYNs are dropped on the other side of
/// the bridge; 504 after proxy_connect_timeout. backlog_full with the queue and the listener.
#[test]
fn full_accept_queue_in_the_app_namespace_is_backlog_full() {
    require_stack!();
    let dir = stack_dir("ngx-xns-backlog");
    let net = Bridged::new("xnsbacklog");
    let gunicorn = net.app.gunicorn(
        &dir,
        &GunicornOpts { bind: APP_UPSTREAM, workers: 1, backlog: Some(2), slow_s: 3.0, ..GunicornOpts::default() },
    );
    let nginx = net.front.nginx(&dir, &format!("http://{APP_UPSTREAM}"), "1s");
    let tracer = Tracer::diagnose(&["--port", "8000"]);

    let (statuses, prefill) = overflow_accept_queue(&net.front);
    let timeouts = assert_connect_timeouts(&nginx, &statuses);

    let run = tracer.finish();
    assert_backlog_full(&run, APP_UPSTREAM, None, &timeouts, &nginx, &gunicorn);
    prefill.end(nginx);
}

/// Gunicorn in the app namespace, a rule in that namespace's own input hook, and two requests
/// through Nginx that the rule stops: the statuses, Nginx, Gunicorn and tracer's run.
fn app_firewall(name: &str, rule: &str, connect_timeout: &str) -> (Vec<u16>, Nginx, Gunicorn, TracerRun, Bridged, TempDir) {
    let dir = stack_dir(name);
    let net = Bridged::new(name);
    let gunicorn = net.app.gunicorn(&dir, &GunicornOpts { bind: APP_UPSTREAM, ..GunicornOpts::default() });
    let nginx = net.front.nginx(&dir, &format!("http://{APP_UPSTREAM}"), connect_timeout);
    let tracer = Tracer::diagnose(&["--port", "8000"]);
    // Accepted connections while tracing must not look like the listener closing.
    assert_eq!(net.front.curls(2, 10), [200, 200]);
    net.app.nft_input_rule(rule);
    let statuses = net.front.curls(2, 10);
    let run = tracer.finish();
    (statuses, nginx, gunicorn, run, net, dir)
}

/// 3a. A drop rule in the app namespace's input hook: 504; firewall_drop.
#[test]
fn drop_rule_in_the_app_namespace_is_a_firewall_drop() {
    require_stack!();
    let (statuses, nginx, _gunicorn, run, _net, _dir) = app_firewall("xnsdrop", "tcp dport 8000 drop", "1s");
    assert_eq!(statuses, [504, 504]);
    let logged = nginx.errors_with(CONNECT_TIMED_OUT);
    assert_eq!(logged.len(), 2, "nginx error log: {:?}", nginx.error_lines());

    let f = run.only_finding(APP_UPSTREAM, Cause::FirewallDrop);
    show("drop rule in the app namespace", "504 x2", &logged[0], f);
    assert_eq!(f.count, 2, "{f:?}");
    assert_backend(f, None);
    assert_nginx_clients(f, &nginx);
}

/// 3b. A reject rule with a TCP reset in the app namespace's input hook: 502 exactly like a
/// dead listener for Nginx, firewall_reject for tracer, with Gunicorn still listening.
#[test]
fn reject_rule_in_the_app_namespace_is_a_firewall_reject() {
    require_stack!();
    let (statuses, nginx, gunicorn, run, _net, _dir) =
        app_firewall("xnsrst", "tcp dport 8000 reject with tcp reset", "3s");
    assert_eq!(statuses, [502, 502]);
    let logged = nginx.errors_with(CONNECT_REFUSED);
    assert_eq!(logged.len(), 2, "nginx error log: {:?}", nginx.error_lines());

    // only_finding also fails on any dead_listener finding for the same target.
    let f = run.only_finding(APP_UPSTREAM, Cause::FirewallReject);
    show("reject rule in the app namespace", "502 x2", &logged[0], f);
    // Issue 17: named from the app namespace's ruleset, where the SYN was rejected.
    let r = f.rule.as_ref().unwrap_or_else(|| panic!("no rule named: {f:?}"));
    assert_eq!((r.chain.as_str(), r.hook.as_str(), r.text.as_str(), r.certain), ("in", "input", "tcp dport 8000 reject with tcp reset", true), "{r:?}");
    assert_ne!(r.netns, f.netns, "the app's namespace, not Nginx's: {r:?}");
    assert_eq!(f.count, 2, "{f:?}");
    assert_backend(f, None);
    assert_nginx_clients(f, &nginx);
    assert!(f.detail.contains("reset"), "{f:?}");
    assert_listener(f, gunicorn.pid);
    assert!(f.listener_note.contains("listens here"), "Gunicorn still listens: {f:?}");
}

/// 4. The Service address is DNATed to a backend port nothing listens on in the app
/// namespace: that namespace's kernel refuses. 502; dead_listener (not remote_refused) with
/// the Service as the target and the real backend.
#[test]
fn service_dnat_to_a_dead_backend_is_a_dead_listener_behind_nat() {
    require_stack!();
    let dir = stack_dir("ngx-xns-svcdead");
    let net = bridged_with_service("xnssvcdead", SERVICE_BACKEND);
    let nginx = net.front.nginx(&dir, &format!("http://{SERVICE}"), "3s");
    let tracer = Tracer::diagnose(&["--port", "80", "--port", "8405"]);

    assert_eq!(net.front.curls(3, 10), [502, 502, 502]);
    let logged = nginx.errors_with(CONNECT_REFUSED);
    assert_eq!(logged.len(), 3, "nginx error log: {:?}", nginx.error_lines());
    assert!(logged.iter().all(|l| l.contains(&format!("upstream: \"http://{SERVICE}/\""))), "nginx dialled the Service: {logged:?}");

    let run = tracer.finish();
    let f = run.only_finding(SERVICE, Cause::DeadListener);
    show("service DNAT to a dead backend", "502 x3", &logged[0], f);
    assert_eq!(f.count, 3, "{f:?}");
    assert_backend(f, Some(SERVICE_BACKEND));
    assert_nginx_clients(f, &nginx);
    run.assert_no_finding_for(SERVICE_BACKEND);
}

/// 5. The Service address is DNATed to a live Gunicorn whose accept queue is full: 504s;
/// backlog_full with the Service as the target, the real backend, the queue and the listener.
#[test]
fn service_dnat_to_a_full_backend_is_backlog_full_behind_nat() {
    require_stack!();
    let dir = stack_dir("ngx-xns-svcfull");
    let net = bridged_with_service("xnssvcfull", SERVICE_BACKEND);
    let gunicorn = net.app.gunicorn(
        &dir,
        &GunicornOpts { bind: SERVICE_BACKEND, workers: 1, backlog: Some(2), slow_s: 3.0, ..GunicornOpts::default() },
    );
    let nginx = net.front.nginx(&dir, &format!("http://{SERVICE}"), "1s");
    let tracer = Tracer::diagnose(&["--port", "80", "--port", "8405"]);

    let (statuses, prefill) = overflow_accept_queue(&net.front);
    let timeouts = assert_connect_timeouts(&nginx, &statuses);
    assert!(timeouts[0].contains(&format!("upstream: \"http://{SERVICE}/\"")), "nginx dialled the Service: {timeouts:?}");

    let run = tracer.finish();
    assert_backlog_full(&run, SERVICE, Some(SERVICE_BACKEND), &timeouts, &nginx, &gunicorn);
    run.assert_no_finding_for(SERVICE_BACKEND);
    prefill.end(nginx);
}

/// 6. Healthy traffic across the bridge, straight to the app's address (wrk) and through the
/// Service address (50 requests): every request 200, and no finding for any of the addresses.
#[test]
fn healthy_traffic_across_namespaces_has_no_findings() {
    require_stack!();
    const SERVICE_FRONT_PORT: u16 = 8081;
    let dir = stack_dir("ngx-xns-healthy");
    let net = bridged_with_service("xnsok", APP_UPSTREAM);
    let _gunicorn = net.app.gunicorn(&dir, &GunicornOpts { bind: APP_UPSTREAM, workers: 2, ..GunicornOpts::default() });
    let via_service =
        format!("server {{ listen 127.0.0.1:{SERVICE_FRONT_PORT}; location / {{ proxy_pass http://{SERVICE}; }} }}");
    let _nginx = net.front.nginx_with(&dir, &format!("http://{APP_UPSTREAM}"), "3s", &via_service);
    let tracer = Tracer::diagnose(&[]);

    let summary = net.front.wrk(4, 3);
    assert!(wrk_requests(&summary) > 50, "load ran: {summary}");
    assert_eq!(wrk_non_2xx(&summary), 0, "{summary}");
    let statuses: Vec<u16> = (0..50).map(|_| curl_port(&net.front, SERVICE_FRONT_PORT, 10)).collect();
    assert!(statuses.iter().all(|&s| s == 200), "through the Service: {statuses:?}");

    let run = tracer.finish();
    println!(
        "SCENARIO healthy across namespaces\n  nginx:  wrk: {} requests, {} non-2xx; 50 x 200 via the Service\n  tracer: {} findings",
        wrk_requests(&summary),
        wrk_non_2xx(&summary),
        run.findings().len()
    );
    let fronts = [format!("127.0.0.1:{FRONT_PORT}"), format!("127.0.0.1:{SERVICE_FRONT_PORT}")];
    for target in [APP_UPSTREAM, SERVICE, SERVICE_BACKEND].into_iter().chain(fronts.iter().map(String::as_str)) {
        run.assert_no_finding_for(target);
    }
    let ours: Vec<&FindingLine> =
        run.findings().into_iter().filter(|f| f.target.starts_with(APP_IP) || f.target.starts_with("10.96.0.10")).collect();
    assert!(ours.is_empty(), "no finding for the test's addresses: {ours:?}");
    assert!(run.summary().lost_events.is_empty(), "{}", run.stdout);
    // Gunicorn listened in the app namespace when tracing started: tracer finds the socket
    // that serves the address in whichever namespace it is, and does not call the
    // configured upstream unlistened.
    let unlistened: Vec<_> = run.config_checks().into_iter().filter(|c| c.target == APP_UPSTREAM && !c.listening).collect();
    assert!(unlistened.is_empty(), "Gunicorn listens on {APP_UPSTREAM} in the app namespace: {unlistened:?}");
}
