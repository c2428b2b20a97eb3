//! Item 12 (metrics) and item 13 (`watch --json` live lines): see ../hostile.rs.
//!
//! The metrics tests run `tracer watch --metrics` and scrape it over real TCP, lint what they
//! get with `promtool` (the Prometheus project's own checker; `cargo xtask setup` installs the
//! `prometheus` package), and make the failures with python3 inside a fresh network namespace.
//! The watch test runs the real stack (Nginx `upstream backend` -> Gunicorn, crashed).
use crate::common::{stack::*, *};

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// What Prometheus 2.x sends: it prefers OpenMetrics.
const PROMETHEUS_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A port nobody listens on right now (the kernel picks it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.1 GET /metrics: (status line, Content-Type, body). `accept`: the Accept
/// header, or none at all.
fn scrape(addr: SocketAddr, accept: Option<&str>) -> (String, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap_or_else(|e| panic!("reading the scrape of {addr}: {e}"));
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not an HTTP response: {resp:?}"));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let content_type = headers
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default();
    (status.to_string(), content_type, body.to_string())
}

/// The value of the sample line `series` (name and labels exactly), if present.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
}

/// Why promtool cannot be used here, or None.
fn promtool_missing() -> Option<String> {
    match Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("`promtool --version` failed ({})", o.status)),
        Err(e) => Some(format!("promtool is not installed ({e}); `cargo xtask setup` installs the prometheus package")),
    }
}

/// Runs promtool with `args`, `input` on stdin (bounded): (success, what it said).
fn promtool(args: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(30)).unwrap_or_else(|| {
        kill_and_reap(&mut child);
        panic!("promtool {args:?} did not finish within 30 s")
    });
    let mut said = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut said);
    let _ = child.stderr.take().unwrap().read_to_string(&mut said);
    (status.success(), said)
}

/// Every sample of the exposition belongs to a family announced with HELP and TYPE; counters'
/// samples end in `_total` (OpenMetrics: family `x`, samples `x_total`; text: both `x_total`).
fn assert_every_family_described(body: &str, openmetrics: bool) {
    let mut family: Option<(String, String)> = None;
    let mut helped = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.push(rest.split(' ').next().unwrap().to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(helped.iter().any(|h| h == name), "{name} has a TYPE but no HELP:\n{body}");
            family = Some((name.to_string(), kind.to_string()));
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            let (fam, kind) = family.as_ref().unwrap_or_else(|| panic!("{name} before any TYPE:\n{body}"));
            let expected = if kind == "counter" && openmetrics { format!("{fam}_total") } else { fam.clone() };
            assert_eq!(name, expected, "sample {name} in family {fam} ({kind}):\n{body}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter sample {name}:\n{body}");
            }
        }
    }
    assert_eq!(body.ends_with("# EOF\n"), openmetrics, "# EOF ends OpenMetrics only:\n{body}");
}

/// Item 12: a real scrape after 3 refused connects. No Accept header, `*/*` and `text/plain`
/// get the Prometheus text format 0.0.4, which `promtool check metrics` passes without a word
/// (before: OpenMetrics whatever was asked, and promtool said `tracer_events_total no help
/// text` for the three counters); Prometheus' own Accept gets OpenMetrics, which promtool's
/// OpenMetrics parser (`tsdb create-blocks-from openmetrics`) reads.
#[test]
fn metrics_negotiate_the_format_and_pass_promtool() {
    require_integration!();
    let port = "47061";
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ns = Netns::new("hmetlint");
    let tracer = Tracer::start(&["watch", "--json", "--duration", "60s", "--port", port, "--metrics", &metrics.to_string()]);
    let mut client = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", port, "--count", "3"]);
    assert_eq!(result_count(&client.finish(), "ECONNREFUSED"), 3);
    let series = format!(
        r#"tracer_failed_connections_total{{cause="dead_listener",target="127.0.0.1:{port}",upstream="",client_comm="python3"}}"#
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while sample(&scrape(metrics, None).2, &series) != Some(3.0) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(250));
    }

    let mut text_bodies = Vec::new();
    for accept in [None, Some("*/*"), Some("text/plain"), Some("text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.3")] {
        let (status, content_type, body) = scrape(metrics, accept);
        assert_eq!(status, "HTTP/1.1 200 OK", "Accept {accept:?}");
        assert_eq!(content_type, TEXT_CONTENT_TYPE, "Accept {accept:?}:\n{body}");
        assert_every_family_described(&body, false);
        for counter in ["tracer_events_total", "tracer_failed_connections_total", "tracer_lost_events_total", "tracer_series_folded_total"] {
            assert!(body.contains(&format!("# HELP {counter} ")), "{counter} has HELP (Accept {accept:?}):\n{body}");
            assert!(body.contains(&format!("# TYPE {counter} counter\n")), "{counter} is a counter (Accept {accept:?}):\n{body}");
        }
        assert_eq!(sample(&body, &series), Some(3.0), "{series} 3:\n{body}\ntracer stderr:\n{}", tracer.stderr_text());
        text_bodies.push(body);
    }
    let (status, content_type, om) = scrape(metrics, Some(PROMETHEUS_ACCEPT));
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(content_type, OPENMETRICS_CONTENT_TYPE, "{om}");
    assert_every_family_described(&om, true);
    assert!(om.contains("# TYPE tracer_failed_connections counter\n") && om.contains(&format!("{series} 3\n")), "{om}");
    println!("text format:\n{}\nOpenMetrics:\n{om}", text_bodies[0]);

    if let Some(reason) = promtool_missing() {
        println!("skipped (the promtool part): {reason}");
    } else {
        for body in &text_bodies {
            let (ok, said) = promtool(&["check", "metrics"], body);
            assert!(ok && said.trim().is_empty(), "promtool check metrics: {said}\n{body}");
        }
        // The OpenMetrics parser wants a timestamp on every sample to make blocks from it.
        let stamped: String = om.lines().map(|l| if l.starts_with('#') { format!("{l}\n") } else { format!("{l} 1700000000\n") }).collect();
        let dir = TempDir::new("hmet-om");
        let input = dir.path("scrape.om");
        std::fs::write(&input, &stamped).unwrap();
        let (ok, said) = promtool(&["tsdb", "create-blocks-from", "openmetrics", &input, &dir.path("blocks")], "");
        assert!(ok, "promtool's OpenMetrics parser rejects the scrape: {said}\n{om}");
    }
    tracer.finish();
}

/// Item 12: `--metrics :PORT` serves every address, IPv4 and IPv6 (before: 0.0.0.0 only, and
/// [::1] was refused).
#[test]
fn metrics_every_address_means_ipv4_and_ipv6() {
    require_integration!();
    if !std::path::Path::new("/proc/net/if_inet6").exists() {
        println!("skipped: this kernel has no IPv6 (tracer falls back to 0.0.0.0, IPv4 only)");
        return;
    }
    let port = free_port();
    let tracer = Tracer::start(&["watch", "--json", "--duration", "60s", "--port", "47062", "--metrics", &format!(":{port}")]);
    assert!(tracer.stderr_text().contains(&format!("metrics: http://[::]:{port}/metrics")), "{}", tracer.stderr_text());
    for ip in ["127.0.0.1", "[::1]"] {
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let (status, content_type, body) = scrape(addr, None);
        assert_eq!(status, "HTTP/1.1 200 OK", "{addr}");
        assert_eq!(content_type, TEXT_CONTENT_TYPE, "{addr}");
        assert!(sample(&body, "tracer_hooks_active").is_some_and(|v| v >= 1.0), "{addr}:\n{body}");
    }
    tracer.finish();
}

/// The cap tracer documents (README, Metrics): 200 target values.
const MAX_TARGETS: usize = 200;

/// Item 12: 230 targets fail (one refused connect each, ports nothing listens on in a fresh
/// namespace): 200 keep series of their own, the other 30 are counted in one
/// `target="other"` series, and `tracer_series_folded_total{label="target"}` says 30 (before:
/// one series per target without end).
#[test]
fn metrics_target_series_are_capped_and_the_rest_folded() {
    require_integration!();
    const TARGETS: u16 = 230;
    const FIRST: u16 = 47100;
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ns = Netns::new("hmetcap");
    let ports: Vec<String> = (FIRST..FIRST + TARGETS).map(|p| p.to_string()).collect();
    let mut args = vec!["watch".to_string(), "--json".into(), "--duration".into(), "120s".into()];
    for p in &ports {
        args.extend(["--port".to_string(), p.clone()]);
    }
    args.extend(["--metrics".to_string(), metrics.to_string()]);
    let tracer = Tracer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // One refused connect per port, bounded in count and time.
    let script = format!(
        "import socket, json\nrefused = 0\nfor p in range({FIRST}, {}):\n    s = socket.socket()\n    s.settimeout(2)\n    try:\n        s.connect(('127.0.0.1', p))\n    except ConnectionRefusedError:\n        refused += 1\n    finally:\n        s.close()\nprint(json.dumps({{'refused': refused}}))\n",
        FIRST + TARGETS
    );
    let out = ns.exec(python3(), &["-c", &script]);
    assert!(out.contains(&format!("\"refused\": {TARGETS}")), "every connect refused: {out}");

    let failed = |body: &str| -> Vec<(String, f64)> {
        body.lines()
            .filter(|l| l.starts_with("tracer_failed_connections_total{"))
            .map(|l| {
                let target = l.split("target=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_string();
                (target, l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (_, _, body) = scrape(metrics, None);
        let total: f64 = failed(&body).iter().map(|(_, v)| v).sum();
        if total >= TARGETS as f64 || Instant::now() > deadline {
            break body;
        }
        thread::sleep(Duration::from_millis(500));
    };
    let series = failed(&body);
    let total: f64 = series.iter().map(|(_, v)| v).sum();
    assert_eq!(total, TARGETS as f64, "every attempt counted once:\n{body}\ntracer stderr:\n{}", tracer.stderr_text());
    let mut own: Vec<&str> = series.iter().map(|(t, _)| t.as_str()).filter(|t| *t != "other").collect();
    own.sort_unstable();
    own.dedup();
    assert_eq!(own.len(), MAX_TARGETS, "series of their own for the first {MAX_TARGETS} targets:\n{body}");
    assert!(own.iter().all(|t| t.starts_with("127.0.0.1:")), "{own:?}");
    let other: f64 = series.iter().filter(|(t, _)| t == "other").map(|(_, v)| v).sum();
    assert_eq!(other, (TARGETS as usize - MAX_TARGETS) as f64, "the 30 others in target=\"other\":\n{body}");
    assert_eq!(sample(&body, r#"tracer_series_folded_total{label="target"}"#), Some(30.0), "{body}");
    assert_eq!(sample(&body, r#"tracer_series_folded_total{label="client_comm"}"#), Some(0.0), "{body}");
    if promtool_missing().is_none() {
        let (ok, said) = promtool(&["check", "metrics"], &body);
        assert!(ok && said.trim().is_empty(), "promtool check metrics: {said}");
    }
    // The findings are not capped: the report still names every target.
    let run = tracer.finish();
    for p in [FIRST, FIRST + TARGETS - 1] {
        assert!(!run.findings_for(&format!("127.0.0.1:{p}")).is_empty(), "a finding for port {p}");
    }
}

/// Item 13: `watch --json` against Nginx (`upstream backend`) -> Gunicorn, crashed, 3 requests
/// answered 502. Every live finding line carries the final report's Nginx context (upstream,
/// config line, log lines matched so far), and the `config_check` line for a configured port
/// nobody listens on comes first, before any finding (before: live lines had none of these
/// keys and config_check came last).
#[test]
fn watch_json_live_lines_carry_the_nginx_context_and_config_check_comes_first() {
    require_integration!();
    if let Some(reason) = stack_missing() {
        println!("skipped: {reason}");
        return;
    }
    let dir = stack_dir("hwatch-ngx");
    let ns = Netns::new("hwatchngx");
    let mut gunicorn = ns.gunicorn(&dir, &GunicornOpts::default());
    let extra = "upstream backend { server 127.0.0.1:8000 max_fails=0; }\n    server { listen 127.0.0.1:8081; location / { proxy_pass http://127.0.0.1:8009; } }";
    let nginx = ns.nginx_with(&dir, "http://backend", "3s", extra);
    // --netns: other suites' stacks use 127.0.0.1:8000 too (it also shows the live lines
    // honour it, as the report does).
    let link = std::fs::read_link(format!("/proc/{}/ns/net", nginx.master)).unwrap().display().to_string();
    let inode: String = link.chars().filter(|c| c.is_ascii_digit()).collect();
    let tracer = Tracer::start(&["watch", "--json", "--duration", "60s", "--port", "8000", "--port", "8009", "--netns", &inode]);
    assert!(tracer.stderr_text().contains(&format!("nginx: master pid {}", nginx.master)), "{}", tracer.stderr_text());

    gunicorn.crash();
    assert_eq!(ns.curls(3, 10), [502, 502, 502]);
    assert_eq!(nginx.errors_with("(111: Connection refused)").len(), 3, "nginx logged the 3 refusals");
    // Attempts are concluded 300 ms after they end, on the next 250 ms tick: leave time for
    // the live lines before the end.
    thread::sleep(Duration::from_secs(2));
    let run = tracer.finish();
    println!("{}", run.stdout);

    // config_check first, once.
    let first_finding = run.lines.iter().position(|l| matches!(l, Line::Finding(_))).expect("a finding line");
    let checks: Vec<(usize, &ConfigCheckLine)> = run
        .lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| match l {
            Line::ConfigCheck(c) => Some((i, c)),
            _ => None,
        })
        .collect();
    assert!(
        checks.iter().any(|(_, c)| c.target == "127.0.0.1:8009"),
        "a config_check for 127.0.0.1:8009:\n{}",
        run.stdout
    );
    assert!(checks.iter().all(|&(i, _)| i < first_finding), "config_check lines come before any finding line:\n{}", run.stdout);
    assert!(matches!(run.lines[0], Line::ConfigCheck(_)), "the first line:\n{}", run.stdout);
    let ours = |(_, c): &&(usize, &ConfigCheckLine)| c.target == "127.0.0.1:8009" && c.netns.to_string() == inode;
    assert_eq!(checks.iter().filter(ours).count(), 1, "one config_check for 127.0.0.1:8009, not repeated at the end:\n{}", run.stdout);

    // Live lines, then the report's line for the same target (the last).
    let lines = run.findings_for("127.0.0.1:8000");
    assert!(lines.len() >= 2, "at least one live line and the report's:\n{}", run.stdout);
    for v in &lines {
        check_finding_shape(v);
        assert_eq!(v.cause, Cause::DeadListener, "{v:?}");
        assert_eq!(v.upstream.as_deref(), Some("backend"), "{v:?}");
        assert_eq!(v.config_line.as_deref(), Some("server 127.0.0.1:8000 max_fails=0;"), "{v:?}");
        assert!(v.config_place.as_deref().is_some_and(|p| p.contains("nginx.conf")), "{v:?}");
        let (count, log_lines) = (v.count, v.log_lines);
        // Nginx logs a refusal before tracer concludes the attempt: never fewer lines than
        // attempts, never more than the 3 written.
        assert!(count <= log_lines && log_lines <= 3, "count {count}, log_lines {log_lines}: {v:?}");
        for c in &v.clients {
            assert!(c.cgroup.as_deref().is_some_and(|p| p.starts_with('/')), "client cgroup: {v:?}");
        }
    }
    let live = &lines[..lines.len() - 1];
    let last_live = live.last().unwrap();
    assert_eq!((last_live.count, last_live.log_lines), (3, 3), "{last_live:?}");
    assert!(last_live.log_example.as_deref().is_some_and(|l| l.contains("(111: Connection refused)")), "{last_live:?}");
    let report = lines.last().unwrap();
    assert_eq!((report.count, report.log_lines), (3, 3), "the report: {report:?}");
    run.summary();
}
