//! Privileged suite for the operator features: `tracer watch --metrics` scraped over real HTTP,
//! and `tracer top` driven in a real terminal (tmux: send-keys, capture-pane).
//!
//! Runs only with TRACER_INTEGRATION=1 as root (`cargo xtask test` does both), one test at a
//! time; otherwise each privileged test prints `skipped: <reason>` and passes. The `top` tests
//! also skip, saying so, when tmux is missing (`cargo xtask setup` installs it).
//!
//! Failures are made as in the scenario suite: `python3 tests/helpers/net.py` in a fresh
//! network namespace, tracer in the host namespace (it covers every namespace); the `n`
//! tests do the same against the real stack (Nginx `upstream backend` -> Gunicorn, crashed),
//! where the upstream name comes from Nginx's configuration.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use common::{stack::*, *};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

/// A port nobody listens on right now (the kernel picks it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.1 GET over a plain TcpStream: (status line, headers, body).
fn http_get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap_or_else(|e| panic!("reading the answer to GET {path}: {e}"));
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not an HTTP response: {resp:?}"));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

/// The value of the sample line `series` (name and labels exactly), if present.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
}

/// `watch` prints a finding each time it changes, then the final report: the last one for
/// `target` is the final state; every one must have `cause`.
fn final_finding<'a>(run: &'a TracerRun, target: &str, cause: Cause) -> &'a FindingLine {
    let fs = run.findings_for(target);
    assert!(fs.iter().all(|f| f.cause == cause), "only {} findings for {target}:\n{}", cause.as_str(), run.stdout);
    let f = *fs.last().unwrap_or_else(|| panic!("no finding for {target}:\n{}\nstderr:\n{}", run.stdout, run.stderr));
    check_finding_shape(f);
    run.summary();
    f
}

/// `--metrics` with something that is not an address: one line, non-zero, nothing attached.
#[test]
fn metrics_rejects_a_bad_address() {
    for bad in ["nonsense", "127.0.0.1:99999", "1.2.3.4"] {
        let out = output_with_timeout(Command::new(tracer_bin()).args(["watch", "--metrics", bad]), Duration::from_secs(30));
        assert!(!out.status.success(), "--metrics {bad} must fail");
        assert_eq!(out.stderr.trim().lines().count(), 1, "one line: {:?}", out.stderr);
        assert!(out.stderr.contains("is not an address"), "{:?}", out.stderr);
        assert!(!out.stderr.contains("tracing:"), "{:?}", out.stderr);
    }
}

/// An address already in use fails at once, before anything is attached.
#[test]
fn metrics_address_in_use_fails_at_once() {
    require_integration!();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = output_with_timeout(
        Command::new(tracer_bin()).args(["watch", "--duration", "30s", "--metrics", &addr]),
        Duration::from_secs(60),
    );
    assert!(!out.status.success(), "serving on a taken address must fail: {}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "one line: {:?}", out.stderr);
    assert!(out.stderr.contains(&format!("cannot serve metrics on {addr}")), "{:?}", out.stderr);
    assert!(!out.stderr.contains("tracing:"), "it fails before attaching: {:?}", out.stderr);
}

/// m. 3 connects to a port nothing listens on, while `tracer watch --metrics` runs: a scrape
/// shows the dead_listener counter at 3 for that target and client comm, and tracer's health.
#[test]
fn m_metrics_scrape_counts_dead_listener_attempts() {
    require_integration!();
    let port = "18201";
    let target = "127.0.0.1:18201";
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ns = Netns::new("metrics");
    let tracer = Tracer::start(&["watch", "--json", "--duration", "60s", "--port", port, "--metrics", &metrics.to_string()]);

    let mut client = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", port, "--count", "3"]);
    let done = client.finish();
    assert_eq!(result_count(&done, "ECONNREFUSED"), 3, "helper: {done}");

    let series = format!(
        r#"tracer_failed_connections_total{{cause="dead_listener",target="{target}",upstream="",client_comm="python3"}}"#
    );
    // Attempts are concluded after a grace period (300 ms) on the next tick.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (status, headers, body) = loop {
        let (status, headers, body) = http_get(metrics, "/metrics");
        if sample(&body, &series) == Some(3.0) || Instant::now() > deadline {
            break (status, headers, body);
        }
        thread::sleep(Duration::from_millis(250));
    };
    println!("GET http://{metrics}/metrics -> {status}\n{body}");
    assert_eq!(status, "HTTP/1.1 200 OK");
    // `Accept: */*` asks for no OpenMetrics: the Prometheus text format (issue 10, item 12).
    assert!(headers.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{headers}");
    assert_eq!(sample(&body, &series), Some(3.0), "expected `{series} 3` in:\n{body}\ntracer stderr:\n{}", tracer.stderr_text());
    assert!(body.contains("# TYPE tracer_failed_connections_total counter"), "{body}");
    // No other cause for this target.
    for l in body.lines().filter(|l| l.starts_with("tracer_failed_connections_total{") && l.contains(target)) {
        assert!(l.starts_with(&series), "only dead_listener for {target}: {l}");
    }
    // tracer's own health.
    assert!(sample(&body, "tracer_events_total").is_some_and(|v| v > 0.0), "tracer_events_total > 0:\n{body}");
    assert!(sample(&body, "tracer_hooks_active").is_some_and(|v| v >= 1.0), "tracer_hooks_active >= 1:\n{body}");
    assert_eq!(sample(&body, r#"tracer_hook_active{hook="sock:inet_sock_set_state"}"#), Some(1.0), "{body}");
    assert!(body.contains("# TYPE tracer_lost_events_total counter"), "{body}");
    assert!(
        body.lines().any(|l| l.starts_with("tracer_lost_events_total{kind=")),
        "a lost-events series per event kind seen:\n{body}"
    );
    assert!(!body.contains("# EOF"), "no OpenMetrics EOF in the text format: {body}");
    let (status, _, _) = http_get(metrics, "/nope");
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // The findings agree with the counter.
    let run = tracer.finish();
    let f = final_finding(&run, target, Cause::DeadListener);
    assert_eq!(f.count, 3, "{f:?}");
    assert_client(f, client.pid);
}

/// m3. `--netns` applies to the metrics as to the findings: refused connects to one port in
/// two namespaces (3 in the one watched, then 4 in another, then 1 more in the watched one);
/// the counter ends at 4, the watched namespace's alone (unfiltered, the same series would
/// hold 8). Attempts are concluded in time order, so when the last one is counted the other
/// namespace's, made before it, have been seen and left out.
#[test]
fn m3_metrics_obey_the_netns_filter() {
    require_integration!();
    use std::os::unix::fs::MetadataExt;
    let port = "18203";
    let target = "127.0.0.1:18203";
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let watched = Netns::new("metricsns");
    let other = Netns::new("metricsother");
    let inode = std::fs::metadata(format!("/run/netns/{}", watched.name)).unwrap().ino().to_string();
    let tracer = Tracer::start(&["watch", "--json", "--duration", "60s", "--port", port, "--netns", &inode, "--metrics", &metrics.to_string()]);
    let series = format!(r#"tracer_failed_connections_total{{cause="dead_listener",target="{target}",upstream="",client_comm="python3"}}"#);
    let scrape_until = |at_least: f64| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (_, _, body) = http_get(metrics, "/metrics");
            if sample(&body, &series).is_some_and(|v| v >= at_least) || Instant::now() > deadline {
                return body;
            }
            thread::sleep(Duration::from_millis(250));
        }
    };

    let connects = |ns: &Netns, n: &str| {
        let mut client = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", port, "--count", n]);
        let done = client.finish();
        assert_eq!(result_count(&done, "ECONNREFUSED"), n.parse::<u64>().unwrap(), "helper: {done}");
    };
    connects(&watched, "3");
    let body = scrape_until(3.0);
    assert_eq!(sample(&body, &series), Some(3.0), "{body}\ntracer stderr:\n{}", tracer.stderr_text());
    connects(&other, "4");
    connects(&watched, "1");
    let body = scrape_until(4.0);
    println!("GET http://{metrics}/metrics ->\n{body}");
    assert_eq!(sample(&body, &series), Some(4.0), "the other namespace's attempts are not counted:\n{body}\ntracer stderr:\n{}", tracer.stderr_text());

    // The findings agree: the watched namespace's only.
    let run = tracer.finish();
    let f = final_finding(&run, target, Cause::DeadListener);
    assert_eq!((f.count, f.netns.to_string()), (4, inode.clone()), "{f:?}");
    assert!(run.findings_for(target).iter().all(|f| f.netns.to_string() == inode), "{}", run.stdout);
    // And so do the attempt lines: 4 attempts (a line stands for `count` identical ones the
    // kernel counted), all in the watched namespace.
    let attempts: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "attempt" && v["target"] == target)
        .collect();
    assert_eq!(attempts.iter().map(|a| a["count"].as_u64().unwrap_or(0)).sum::<u64>(), 4, "{}", run.stdout);
    assert!(attempts.iter().all(|a| a["netns"].to_string() == inode), "{}", run.stdout);
}

/// m4. The kernel's attempt records as the gauge shows them: 60 connections held open to a
/// listener in the test's own namespace raise `tracer_kernel_attempt_records` by at least 60,
/// and their close lets the 60 go. A record left behind would fill the kernel's table, and
/// the attempts after it would be counted lost instead of followed.
#[test]
fn m4_metrics_gauge_the_kernels_attempt_records() {
    require_integration!();
    let port = "18207";
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ns = Netns::new("metricsrec");
    let tracer = Tracer::start(&["watch", "--json", "--duration", "60s", "--port", port, "--metrics", &metrics.to_string()]);
    // Other sockets on the host (another suite, a package manager) move the gauge too, both
    // ways: the rise is measured from the lowest reading before it, the fall from the highest.
    // The test's own scrape is one of them: its connection is open while tracer serves it, and
    // the gauge (set each 250 ms tick) counts it when a tick falls inside a scrape. So a
    // reading may hold one record of the test's own that the next one does not: the 60 show
    // as a change of at least 59.
    const SCRAPE: f64 = 1.0;
    let readings = std::cell::RefCell::new(Vec::<f64>::new());
    let wait_for = |what: &str, want: &dyn Fn(f64, &[f64]) -> bool| -> f64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(v) = sample(&http_get(metrics, "/metrics").2, "tracer_kernel_attempt_records") {
                let met = want(v, &readings.borrow());
                readings.borrow_mut().push(v);
                if met {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "tracer_kernel_attempt_records never {what}; readings {:?}\ntracer stderr:\n{}",
                readings.borrow(),
                tracer.stderr_text()
            );
            thread::sleep(Duration::from_millis(250));
        }
    };
    let lowest = |seen: &[f64]| seen.iter().copied().fold(f64::INFINITY, f64::min);
    wait_for("appeared", &|_, _| true);

    let mut listener = ns.helper(&["tcp-listen", "--host", "127.0.0.1", "--port", port, "--backlog", "128"]);
    listener.expect("listening");
    let mut client = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", port, "--count", "60", "--nonblock", "--hold", "4"]);
    let held = wait_for("rose by the 60 held connections", &|v, seen| v >= lowest(seen) + 60.0 - SCRAPE);
    let done = client.finish();
    assert_eq!(done["final"]["connected"], 60, "all 60 connected and were held: {done}");
    readings.borrow_mut().clear();
    let after = wait_for("fell by the 60 closed connections", &|v, _| v <= held - 60.0 + SCRAPE);
    println!("tracer_kernel_attempt_records: {held} held, {after} after");
    listener.stop();
    tracer.finish();
}

/// m2. A listener with listen(1) that never accepts, 6 non-blocking connects held 4 s: the
/// backlog_full counter, and the queue gauges show the queue the finding measured.
#[test]
fn m2_metrics_queue_gauges_for_a_full_backlog() {
    require_integration!();
    let port = "18206";
    let target = "127.0.0.1:18206";
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ns = Netns::new("metricsq");
    let tracer = Tracer::start(&["watch", "--json", "--duration", "60s", "--port", port, "--metrics", &metrics.to_string()]);

    let mut listener = ns.helper(&["tcp-listen", "--host", "127.0.0.1", "--port", port, "--backlog", "1"]);
    listener.expect("listening");
    let mut client = ns.helper(&[
        "tcp-connect", "--host", "127.0.0.1", "--port", port, "--count", "6", "--nonblock", "--hold", "4",
    ]);
    client.finish();

    let prefix = format!(r#"tracer_failed_connections_total{{cause="backlog_full",target="{target}","#);
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let (_, _, body) = http_get(metrics, "/metrics");
        if body.lines().any(|l| l.starts_with(&prefix)) || Instant::now() > deadline {
            break body;
        }
        thread::sleep(Duration::from_millis(250));
    };
    println!("GET http://{metrics}/metrics ->\n{body}");
    let failed: f64 = body
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(failed >= 1.0, "a backlog_full counter for {target}:\n{body}");
    let run = tracer.finish();
    listener.stop();
    let f = final_finding(&run, target, Cause::BacklogFull);
    assert!(f.count as f64 >= failed, "the finding counts at least the failed attempts: {f:?}");
    if f.queue.is_some() {
        // Gauges show the latest queue a finding measured; the finding keeps the fullest.
        let max = sample(&body, &format!(r#"tracer_listener_queue_max{{target="{target}"}}"#));
        assert_eq!(max, Some(1.0), "the listen backlog as tracer_listener_queue_max:\n{body}\nfinding: {f:?}");
        let len = sample(&body, &format!(r#"tracer_listener_queue_length{{target="{target}"}}"#));
        assert!(len.is_some_and(|l| l >= 1.0), "a full queue's length:\n{body}");
    } else {
        println!("note: no queue measured for this run's finding; gauges not checked: {f:?}");
    }
}

// ---------------------------------------------------------------------------------------
// A real Prometheus server with tracer's rules
// ---------------------------------------------------------------------------------------

/// The Prometheus server of Debian's `prometheus` package, running inside `ns` with its data
/// in a directory of its own; SIGKILLed on drop (and with the namespace).
struct Prometheus<'a> {
    ns: &'a Netns,
    child: std::process::Child,
    _data: TempDir,
}

/// Where Prometheus serves inside its namespace.
const PROMETHEUS_ADDR: &str = "127.0.0.1:9090";

impl<'a> Prometheus<'a> {
    /// Scrapes `targets` as job `tracer` every second and evaluates tracer's rules
    /// (deploy/prometheus/tracer-rules.yml, as the package ships them) every second.
    fn start(ns: &'a Netns, targets: &[&str]) -> Prometheus<'a> {
        let data = TempDir::new("prometheus");
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/tracer-rules.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - '{}'\n\
             scrape_configs:\n  - job_name: tracer\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        );
        std::fs::write(data.path("prometheus.yml"), config).unwrap();
        let child = ns
            .command("prometheus")
            .arg(format!("--config.file={}", data.path("prometheus.yml")))
            .arg(format!("--storage.tsdb.path={}", data.path("tsdb")))
            .arg(format!("--web.listen-address={PROMETHEUS_ADDR}"))
            .arg("--log.level=warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(data.path("prometheus.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prometheus: {e}"));
        let mut p = Prometheus { ns, child, _data: data };
        let deadline = Instant::now() + Duration::from_secs(60);
        while p.get("/-/ready").is_none() {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited ({status}): {}", p.log());
            }
            assert!(Instant::now() < deadline, "prometheus not ready within 60 s: {}", p.log());
            thread::sleep(Duration::from_millis(250));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._data.path("prometheus.log")).unwrap_or_default()
    }

    /// GET http://127.0.0.1:9090<path> from inside the namespace (curl): the body when 200.
    fn get(&self, path: &str) -> Option<String> {
        let out = output_with_timeout(
            self.ns.command("curl").args(["-sf", "--max-time", "5", &format!("http://{PROMETHEUS_ADDR}{path}")]),
            Duration::from_secs(10),
        );
        out.status.success().then_some(out.stdout)
    }

    /// `/api/v1/<what>`'s `data`, from its JSON answer.
    fn api(&self, what: &str) -> serde_json::Value {
        let body = self.get(&format!("/api/v1/{what}")).unwrap_or_else(|| panic!("GET /api/v1/{what} failed: {}", self.log()));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/v1/{what}: {e}: {body}"));
        assert_eq!(v["status"], "success", "{body}");
        v["data"].clone()
    }

    /// The value of an instant query that returns one sample, None when it returns none.
    fn query_one(&self, promql: &str) -> Option<f64> {
        let data = self.api(&format!("query?query={}", urlencode(promql)));
        let result = data["result"].as_array().cloned().unwrap_or_default();
        assert!(result.len() <= 1, "{promql}: {data}");
        result.first().map(|s| s["value"][1].as_str().unwrap().parse().unwrap())
    }

    /// Waits (bounded) until `pred` holds for the answer of `/api/v1/<what>`; returns it.
    fn wait_api(&self, what: &str, timeout: Duration, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let data = self.api(what);
            if pred(&data) || Instant::now() > deadline {
                return data;
            }
            thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// Percent-encoding for a query parameter (PromQL has braces, quotes, spaces).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The alerts of `/api/v1/alerts` named `name`.
fn alerts_named(data: &serde_json::Value, name: &str) -> Vec<serde_json::Value> {
    data["alerts"].as_array().into_iter().flatten().filter(|a| a["labels"]["alertname"] == name).cloned().collect()
}

/// p. What tracer.service does on a host, end to end: `tracer watch --metrics
/// 127.0.0.1:9464` (the unit's command line) and a real Prometheus server, both in a test
/// namespace, Prometheus loading deploy/prometheus/tracer-rules.yml. Refused connects to a
/// port nothing listens on, in two bursts (a counter's first scrape gives no increase): the
/// TracerUpstreamNotListening alert fires with the target, cause and severity as labels, the
/// counter Prometheus stored equals the finding's count, and no other alert fires.
#[test]
fn p_prometheus_alerts_on_a_dead_listener() {
    require_integration!();
    if which("prometheus").is_none() || which("curl").is_none() {
        println!("skipped: prometheus or curl is not installed (`cargo xtask setup` installs the prometheus and curl packages)");
        return;
    }
    let port = "18207";
    let target = "127.0.0.1:18207";
    let metrics = "127.0.0.1:9464";
    let ns = Netns::new("prom");
    let tracer = Tracer::start_in_netns(&ns, &["watch", "--json", "--duration", "120s", "--port", port, "--metrics", metrics]);
    let prometheus = Prometheus::start(&ns, &[metrics]);
    let series = format!(r#"sum(tracer_failed_connections_total{{cause="dead_listener",target="{target}"}})"#);

    let connects = |n: &str| {
        let mut client = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", port, "--count", n]);
        let done = client.finish();
        assert_eq!(result_count(&done, "ECONNREFUSED"), n.parse::<u64>().unwrap(), "helper: {done}");
        client.pid
    };
    let wait_stored = |at_least: f64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = prometheus.query_one(&series);
            if v.is_some_and(|v| v >= at_least) || Instant::now() > deadline {
                return v;
            }
            thread::sleep(Duration::from_millis(500));
        }
    };
    let first = connects("3");
    assert_eq!(wait_stored(3.0), Some(3.0), "Prometheus stored the first burst; tracer stderr:\n{}", tracer.stderr_text());
    let second = connects("4");
    assert_eq!(wait_stored(7.0), Some(7.0), "Prometheus stored both bursts; tracer stderr:\n{}", tracer.stderr_text());

    let data = prometheus.wait_api("alerts", Duration::from_secs(30), |d| {
        alerts_named(d, "TracerUpstreamNotListening").iter().any(|a| a["state"] == "firing")
    });
    println!("GET /api/v1/alerts ->\n{}", serde_json::to_string_pretty(&data).unwrap());
    let fired = alerts_named(&data, "TracerUpstreamNotListening");
    assert_eq!(fired.len(), 1, "one alert, for {target}: {data}");
    let alert = &fired[0];
    assert_eq!(alert["state"], "firing", "{alert}");
    let labels = alert["labels"].as_object().unwrap();
    let mut got: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect();
    got.sort();
    let mut want: Vec<(String, String)> = [
        ("alertname", "TracerUpstreamNotListening"),
        ("cause", "dead_listener"),
        ("family", "not_listening"),
        ("instance", metrics),
        ("job", "tracer"),
        ("severity", "critical"),
        ("target", target),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    want.sort();
    // No Nginx here, so no `upstream` label (tracer exports upstream="", which Prometheus drops).
    assert_eq!(got, want, "{alert}");
    let summary = alert["annotations"]["summary"].as_str().unwrap();
    assert!(summary.starts_with(&format!("{metrics}: nothing listens on {target} (upstream -, dead_listener): about ")), "{summary}");
    let description = alert["annotations"]["description"].as_str().unwrap();
    assert!(description.starts_with(&format!("Target {target}, upstream -: start the service")) && !description.contains('\n'), "{description}");
    // Only this alert: tracer is up, its hooks are attached, nothing was lost.
    let names: Vec<&str> = data["alerts"].as_array().unwrap().iter().map(|a| a["labels"]["alertname"].as_str().unwrap()).collect();
    assert_eq!(names, ["TracerUpstreamNotListening"], "{data}");
    assert_eq!(prometheus.query_one(r#"up{job="tracer"}"#), Some(1.0));
    assert!(prometheus.query_one("tracer_hooks_active").is_some_and(|v| v >= 1.0));
    // The recording rule the dashboards read has the cause's rate.
    assert!(
        prometheus.query_one(r#"cause_upstream:tracer_failed_connections:rate5m{cause="dead_listener"}"#).is_some_and(|v| v > 0.0),
        "{}",
        prometheus.log()
    );

    // tracer's own finding agrees with what Prometheus stored.
    let run = tracer.finish();
    let f = final_finding(&run, target, Cause::DeadListener);
    assert_eq!(f.count, 7, "{f:?}");
    assert_client(f, first);
    assert_client(f, second);
}

/// The path of `program` on PATH, if any.
fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------
// tracer top in tmux
// ---------------------------------------------------------------------------------------

/// A tmux server of our own (`tmux -L <socket>`), killed with everything in it on drop.
struct Tmux {
    socket: String,
    session: String,
}

/// How long `tracer top` may take to attach and draw its first screen.
const TOP_START: Duration = Duration::from_secs(60);

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().expect("run tmux")
    }

    fn capture(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", &self.session]).stdout).into_owned()
    }

    fn display(&self, format: &str) -> String {
        String::from_utf8_lossy(&self.cmd(&["display-message", "-p", "-t", &self.session, format]).stdout).trim().to_string()
    }

    fn send(&self, key: &str) {
        assert!(self.cmd(&["send-keys", "-t", &self.session, key]).status.success(), "tmux send-keys {key}");
    }

    /// Polls the pane until `pred` holds; panics with the last capture after `timeout`.
    fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.capture();
            if pred(&screen) {
                return screen;
            }
            if Instant::now() > deadline {
                panic!("tmux pane: no {what} within {timeout:?}; the pane shows:\n{screen}");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// The real stack: Gunicorn on 127.0.0.1:8000 behind Nginx's `upstream backend`, in `ns`.
const NGINX_UPSTREAM: &str = "upstream backend { server 127.0.0.1:8000 max_fails=0; }";

/// n1. Gunicorn crashes behind Nginx; 3 requests get 502: the counter carries the upstream
/// name from Nginx's configuration and the Nginx workers' comm.
#[test]
fn n1_metrics_against_nginx_and_gunicorn() {
    require_integration!();
    if let Some(reason) = stack_missing() {
        println!("skipped: {reason}");
        return;
    }
    let dir = stack_dir("ops-ngx-metrics");
    let ns = Netns::new("opsngxm");
    let mut gunicorn = ns.gunicorn(&dir, &GunicornOpts::default());
    let _nginx = ns.nginx_with(&dir, "http://backend", "3s", NGINX_UPSTREAM);
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let tracer = Tracer::start(&["watch", "--json", "--duration", "60s", "--port", "8000", "--metrics", &metrics.to_string()]);

    gunicorn.crash();
    assert_eq!(ns.curls(3, 10), [502, 502, 502]);
    let series = r#"tracer_failed_connections_total{cause="dead_listener",target="127.0.0.1:8000",upstream="backend",client_comm="nginx"}"#;
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let (_, _, body) = http_get(metrics, "/metrics");
        if sample(&body, series) == Some(3.0) || Instant::now() > deadline {
            break body;
        }
        thread::sleep(Duration::from_millis(250));
    };
    println!("GET http://{metrics}/metrics ->\n{body}");
    assert_eq!(sample(&body, series), Some(3.0), "expected `{series} 3` in:\n{body}\ntracer stderr:\n{}", tracer.stderr_text());
    let run = tracer.finish();
    let f = final_finding(&run, "127.0.0.1:8000", Cause::DeadListener);
    assert_eq!(f.count, 3, "{f:?}");
}

/// n2. The same in `tracer top`: the row names the upstream, the cause and count, and the
/// Gunicorn master as the listener that was there.
#[test]
fn n2_top_against_nginx_and_gunicorn() {
    require_integration!();
    if let Some(reason) = tmux_missing().or_else(stack_missing) {
        println!("skipped: {reason}");
        return;
    }
    let dir = stack_dir("ops-ngx-top");
    let ns = Netns::new("opsngxt");
    let mut gunicorn = ns.gunicorn(&dir, &GunicornOpts::default());
    let _nginx = ns.nginx_with(&dir, "http://backend", "3s", NGINX_UPSTREAM);
    let top = TopRun::start("opsngxtop", &["--port", "8000"], &[]);
    let pid = top.pid();

    gunicorn.crash();
    assert_eq!(ns.curls(3, 10), [502, 502, 502]);
    let listener = format!("gunicorn {}", gunicorn.pid);
    let screen = top.tmux.wait_for("the upstream's row", Duration::from_secs(15), |s| {
        s.lines().any(|l| l.starts_with("127.0.0.1:8000") && l.contains("backend") && l.contains("dead_listener 3") && l.contains(&listener))
    });
    println!("tracer top, as tmux shows it:\n{screen}");
    top.tmux.send("q");
    assert_eq!(top.wait_exit(), "0");
    top.assert_restored(pid);
}

/// Why the top tests cannot run here (tmux missing), or None.
fn tmux_missing() -> Option<String> {
    match Command::new("tmux").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("tmux is not installed (`cargo xtask setup` installs it)".into()),
    }
}

/// `tracer top <args>` in a 160x40 tmux pane, wrapped in a shell that records the terminal
/// settings before and after, tracer's pid and exit status, then keeps the pane open.
struct TopRun {
    tmux: Tmux,
    dir: TempDir,
}

impl TopRun {
    fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> TopRun {
        let dir = TempDir::new(name);
        let env: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        let script = format!(
            "stty -g > {d}/before\n\
             {env}sh -c 'echo $$ > {d}/pid; exec \"$0\" \"$@\"' {bin} top {args}\n\
             echo $? > {d}/rc\n\
             stty -g > {d}/after\n\
             exec sleep 600\n",
            d = dir.0.display(),
            bin = tracer_bin(),
            args = args.join(" ")
        );
        std::fs::write(dir.0.join("run.sh"), script).unwrap();
        let tmux = Tmux { socket: format!("tracer-t-{name}-{}", std::process::id()), session: "top".into() };
        let run_sh = format!("sh {}/run.sh", dir.0.display());
        let out = tmux.cmd(&["-f", "/dev/null", "new-session", "-d", "-s", &tmux.session, "-x", "160", "-y", "40", &run_sh]);
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        let run = TopRun { tmux, dir };
        run.tmux.wait_for("`tracer top` status line", TOP_START, |s| s.starts_with("tracer top "));
        run
    }

    fn file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.0.join(name)).ok().map(|s| s.trim().to_string())
    }

    fn pid(&self) -> i32 {
        self.file("pid").and_then(|p| p.parse().ok()).expect("tracer's pid")
    }

    /// Waits for tracer to exit; returns its exit status as the shell saw it.
    fn wait_exit(&self) -> String {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(rc) = self.file("rc").filter(|s| !s.is_empty()) {
                // The `after` settings are written right after.
                thread::sleep(Duration::from_millis(300));
                return rc;
            }
            if Instant::now() > deadline {
                panic!("tracer top did not exit within {EXIT_TIMEOUT:?}; the pane shows:\n{}", self.tmux.capture());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// tracer is gone, and the terminal is as it was: normal screen, cursor shown, same
    /// termios settings (raw mode off).
    fn assert_restored(&self, pid: i32) {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "tracer (pid {pid}) is gone");
        assert_eq!(self.tmux.display("#{alternate_on}"), "0", "the pane left the alternate screen:\n{}", self.tmux.capture());
        assert_eq!(self.tmux.display("#{cursor_flag}"), "1", "the cursor is visible again");
        let (before, after) = (self.file("before").unwrap(), self.file("after").expect("stty after"));
        assert!(!before.is_empty());
        assert_eq!(before, after, "terminal settings (stty -g) are restored");
    }
}

/// t1. `tracer top` shows the target of 2 refused connects with its cause, `s` changes the
/// sort, `q` quits: tracer exits 0, the terminal is restored and the final report is printed.
#[test]
fn t1_top_shows_the_failing_target_and_quits_on_q() {
    require_integration!();
    if let Some(reason) = tmux_missing() {
        println!("skipped: {reason}");
        return;
    }
    let port = "18202";
    let target = "127.0.0.1:18202";
    let ns = Netns::new("top");
    let top = TopRun::start("top", &["--port", port], &[]);
    let pid = top.pid();
    let first = top.tmux.capture();
    assert!(first.lines().next().unwrap().contains("sort: attempts"), "{first}");
    assert_eq!(top.tmux.display("#{alternate_on}"), "1", "top draws on the alternate screen");

    let mut client = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", port, "--count", "2"]);
    let done = client.finish();
    assert_eq!(result_count(&done, "ECONNREFUSED"), 2, "helper: {done}");

    let screen = top.tmux.wait_for("row for the target with its cause", Duration::from_secs(15), |s| {
        s.lines().any(|l| l.starts_with(target) && l.contains("dead_listener 2"))
    });
    println!("tracer top, as tmux shows it:\n{screen}");
    assert!(screen.lines().any(|l| l.starts_with("TARGET") && l.contains("FAILURES BY CAUSE") && l.contains("LAST ERROR")), "{screen}");

    top.tmux.send("s");
    top.tmux.wait_for("sort by last error", Duration::from_secs(5), |s| s.starts_with("tracer top ") && s.lines().next().unwrap().contains("sort: last error"));

    top.tmux.send("q");
    assert_eq!(top.wait_exit(), "0", "q ends tracer top with status 0");
    top.assert_restored(pid);
    let after = top.tmux.capture();
    assert!(!after.contains("FAILURES BY CAUSE"), "the view is gone:\n{after}");
    assert!(after.contains(&format!("DEAD LISTENER  {target}")), "the final report follows:\n{after}");
}

/// t2. SIGTERM while `tracer top` runs: exit 0, terminal restored.
#[test]
fn t2_top_restores_the_terminal_on_sigterm() {
    require_integration!();
    if let Some(reason) = tmux_missing() {
        println!("skipped: {reason}");
        return;
    }
    let top = TopRun::start("topterm", &["--port", "18203"], &[]);
    let pid = top.pid();
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM tracer");
    assert_eq!(top.wait_exit(), "0", "SIGTERM ends tracer top with status 0");
    top.assert_restored(pid);
}

/// t3. Ctrl-C (a key in raw mode, not a signal): exit 0, terminal restored.
#[test]
fn t3_top_restores_the_terminal_on_ctrl_c() {
    require_integration!();
    if let Some(reason) = tmux_missing() {
        println!("skipped: {reason}");
        return;
    }
    let top = TopRun::start("topctrlc", &["--port", "18204"], &[]);
    let pid = top.pid();
    top.tmux.send("C-c");
    assert_eq!(top.wait_exit(), "0", "Ctrl-C ends tracer top with status 0");
    top.assert_restored(pid);
}

/// t4. A warning, then a panic inside the view (forced by TRACER_TEST_TOP_PANIC): the panic
/// hook restores the terminal before the message, the warning held while the view was up is
/// printed after it, tracer exits non-zero.
#[test]
fn t4_top_restores_the_terminal_on_panic() {
    require_integration!();
    if let Some(reason) = tmux_missing() {
        println!("skipped: {reason}");
        return;
    }
    // Without a backtrace, the panic message stays on the 40-line pane.
    let top = TopRun::start("toppanic", &["--port", "18205"], &[("TRACER_TEST_TOP_PANIC", "1"), ("RUST_BACKTRACE", "0")]);
    let pid = top.pid();
    let rc = top.wait_exit();
    assert_ne!(rc, "0", "a panic is a failure");
    top.assert_restored(pid);
    let screen = top.tmux.capture();
    assert!(screen.contains("TRACER_TEST_TOP_PANIC is set: panicking"), "the panic message is readable on the normal screen:\n{screen}");
    assert!(
        screen.contains("warning: TRACER_TEST_TOP_PANIC: a warning written while the view is up"),
        "a warning written while the view was up is printed after it:\n{screen}"
    );
}
