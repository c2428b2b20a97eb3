//! Privileged scenario suite: every cause produced for real in a fresh network namespace,
//! observed by the real tracer binary, asserted on its JSON lines.
//!
//! Runs only with TRACER_INTEGRATION=1 as root (`cargo xtask test` does both), one test at a
//! time (`--test-threads=1`): tracer's hooks are host-wide. Otherwise each test prints
//! `skipped: <reason>` and passes.
//!
//! Each scenario: a fresh netns `tracer-t-<name>-<pid>` (deleted by a guard that also kills
//! what runs inside it); `tracer diagnose --json --duration 60s <filters>` started in the host
//! netns (it covers every netns) and waited for until its `tracing:` line; the situation made
//! by `python3 tests/helpers/net.py` inside the netns (each helper prints its own pid first);
//! then SIGINT to tracer, which prints its findings and exits 0; then the assertions: cause,
//! target, count, the client helper's pid and comm, the listener helper's pid, and that no
//! finding with another cause exists for that target.

mod common;

use std::{process::Command, time::Duration};

use common::*;

// ---------------------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------------------

/// a. A listener on 127.0.0.1:P is SIGKILLed; 3 blocking connects are refused by this host's
/// stack: dead_listener, count 3, naming the killed listener.
#[test]
fn a_dead_listener_ipv4_after_sigkill() {
    require_integration!();
    let port = "18101";
    let target = "127.0.0.1:18101";
    let ns = Netns::new("dead4");
    let tracer = Tracer::diagnose(&["--port", port, "--client-comm", "python3"]);

    let mut listener = ns.helper(&["tcp-listen", "--host", "127.0.0.1", "--port", port]);
    listener.expect("listening");
    listener.sigkill();

    let mut client = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", port, "--count", "3"]);
    let done = client.finish();
    assert_eq!(result_count(&done, "ECONNREFUSED"), 3, "helper: {done}");

    let run = tracer.finish();
    let f = run.only_finding(target, "dead_listener");
    assert_eq!(count(f), 3, "{f}");
    assert_client(f, client.pid);
    assert_listener(f, listener.pid);
}

/// b. Nothing ever listened on [::1]:P: dead_listener, count 2, no listener known.
#[test]
fn b_dead_listener_ipv6_never_listened() {
    require_integration!();
    let port = "18102";
    let target = "[::1]:18102";
    let ns = Netns::new("dead6");
    let tracer = Tracer::diagnose(&["--port", port]);

    let mut client = ns.helper(&["tcp-connect", "--host", "::1", "--port", port, "--count", "2"]);
    let done = client.finish();
    assert_eq!(result_count(&done, "ECONNREFUSED"), 2, "helper: {done}");

    let run = tracer.finish();
    let f = run.only_finding(target, "dead_listener");
    assert_eq!(count(f), 2, "{f}");
    assert_client(f, client.pid);
    assert!(f["listener"].is_null(), "no listener was ever seen on {target}: {f}");
}

/// c. listen(1), never accept(): 2 connections fill the queue, the SYNs of the other 4 are
/// dropped by the listener and retransmitted (~1 s, ~3 s) until the client closes at 4 s.
/// backlog_full, 3..=6 attempts, naming the listener; never a firewall or no-response verdict.
#[test]
fn c_backlog_full_never_accepting_listener() {
    require_integration!();
    let port = "18103";
    let target = "127.0.0.1:18103";
    let ns = Netns::new("backlog");
    let tracer = Tracer::diagnose(&["--port", port]);

    let mut listener = ns.helper(&["tcp-listen", "--host", "127.0.0.1", "--port", port, "--backlog", "1"]);
    listener.expect("listening");
    let mut client = ns.helper(&[
        "tcp-connect",
        "--host",
        "127.0.0.1",
        "--port",
        port,
        "--count",
        "6",
        "--nonblock",
        "--hold",
        "4",
    ]);
    let done = client.finish();
    let pending = done["final"]["pending"].as_u64().unwrap_or(0);
    assert!(
        pending >= 3,
        "the helper should leave >= 3 connects in SYN_SENT: {done}"
    );

    let run = tracer.finish();
    listener.stop();
    let f = run.only_finding(target, "backlog_full");
    let n = count(f);
    assert!(
        (3..=6).contains(&n),
        "count {n} should be in 3..=6 ({pending} stayed in SYN_SENT): {f}"
    );
    assert_client(f, client.pid);
    assert_listener(f, listener.pid);
    if !f["queue"].is_null() {
        assert_eq!(
            f["queue"]["max"].as_u64(),
            Some(1),
            "queue.max is the listen backlog: {f}"
        );
    }
}

fn nft_output_rule(ns: &Netns, rule: &str) {
    ns.nft(&["add", "table", "inet", "t"]);
    ns.nft(&[
        "add",
        "chain",
        "inet",
        "t",
        "out",
        "{ type filter hook output priority 0; }",
    ]);
    let mut args = vec!["add", "rule", "inet", "t", "out"];
    args.extend(rule.split_whitespace());
    ns.nft(&args);
}

/// d. An nft output rule drops the SYN; the client waits 2.5 s (one retransmit) and gives up:
/// firewall_drop, count 1.
#[test]
fn d_firewall_drop() {
    require_integration!();
    let port = "18104";
    let target = "127.0.0.1:18104";
    let ns = Netns::new("fwdrop");
    nft_output_rule(&ns, "tcp dport 18104 drop");
    let tracer = Tracer::diagnose(&["--port", port]);

    let mut client = ns.helper(&[
        "tcp-connect",
        "--host",
        "127.0.0.1",
        "--port",
        port,
        "--count",
        "1",
        "--nonblock",
        "--hold",
        "2.5",
    ]);
    let done = client.finish();
    assert_eq!(
        done["final"]["pending"].as_u64(),
        Some(1),
        "the SYN is never answered: {done}"
    );

    let run = tracer.finish();
    let f = run.only_finding(target, "firewall_drop");
    assert_eq!(count(f), 1, "{f}");
    assert_client(f, client.pid);
}

/// e. `reject with tcp reset`, no listener: the client gets ECONNREFUSED exactly as from a dead
/// listener, but netfilter forged the reset: firewall_reject, count 2, never dead_listener.
#[test]
fn e_firewall_reject_tcp_reset() {
    require_integration!();
    let port = "18105";
    let target = "127.0.0.1:18105";
    let ns = Netns::new("fwrst");
    nft_output_rule(&ns, "tcp dport 18105 reject with tcp reset");
    let tracer = Tracer::diagnose(&["--port", port]);

    let mut client = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", port, "--count", "2"]);
    let done = client.finish();
    assert_eq!(result_count(&done, "ECONNREFUSED"), 2, "helper: {done}");

    let run = tracer.finish();
    let f = run.only_finding(target, "firewall_reject");
    assert_eq!(count(f), 2, "{f}");
    assert_client(f, client.pid);
    let detail = f["detail"].as_str().unwrap_or("").to_lowercase();
    assert!(
        detail.contains("reset"),
        "the finding says the reject was a TCP reset: {f}"
    );
}

/// f. `reject with icmpx type port-unreachable`: firewall_reject, count 2, never dead_listener.
#[test]
fn f_firewall_reject_icmp() {
    require_integration!();
    let port = "18106";
    let target = "127.0.0.1:18106";
    let ns = Netns::new("fwicmp");
    nft_output_rule(&ns, "tcp dport 18106 reject with icmpx type port-unreachable");
    let tracer = Tracer::diagnose(&["--port", port]);

    let mut client = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", port, "--count", "2"]);
    let done = client.finish();
    assert_eq!(result_count(&done, "ECONNREFUSED"), 2, "helper: {done}");

    let run = tracer.finish();
    let f = run.only_finding(target, "firewall_reject");
    assert_eq!(count(f), 2, "{f}");
    assert_client(f, client.pid);
    let detail = f["detail"].as_str().unwrap_or("").to_lowercase();
    assert!(
        detail.contains("icmp"),
        "the finding says the reject was an ICMP error: {f}"
    );
}

/// k. IPv6, a listener that closes normally (close(), exit 0), then 2 connects:
/// dead_listener naming the listener that went away.
#[test]
fn k_dead_listener_ipv6_after_clean_exit() {
    require_integration!();
    let port = "18111";
    let target = "[::1]:18111";
    let ns = Netns::new("dead6exit");
    let tracer = Tracer::diagnose(&["--port", port]);

    let mut listener = ns.helper(&["tcp-listen", "--host", "::1", "--port", port]);
    listener.expect("listening");
    listener.stop(); // closes its socket, exits 0

    let mut client = ns.helper(&["tcp-connect", "--host", "::1", "--port", port, "--count", "2"]);
    let done = client.finish();
    assert_eq!(result_count(&done, "ECONNREFUSED"), 2, "helper: {done}");

    let run = tracer.finish();
    let f = run.only_finding(target, "dead_listener");
    assert_eq!(count(f), 2, "{f}");
    assert_client(f, client.pid);
    assert_listener(f, listener.pid);
}

/// m. A listener that accepts and 20 successful connects: no finding at all for the target.
#[test]
fn m_no_false_findings_for_healthy_connections() {
    require_integration!();
    let port = "18113";
    let target = "127.0.0.1:18113";
    let ns = Netns::new("healthy");
    let tracer = Tracer::diagnose(&["--port", port]);

    let mut listener = ns.helper(&["tcp-listen", "--host", "127.0.0.1", "--port", port, "--accept"]);
    listener.expect("listening");
    let mut client = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", port, "--count", "20"]);
    let done = client.finish();
    assert_eq!(result_count(&done, "OK"), 20, "helper: {done}");

    let run = tracer.finish();
    listener.stop();
    run.assert_no_finding_for(target);
}

// ---------------------------------------------------------------------------------------
// Unix sockets
// ---------------------------------------------------------------------------------------

/// g. connect() to a path that does not exist: unix_missing, count 2.
#[test]
fn g_unix_missing() {
    require_integration!();
    let dir = TempDir::new("umissing");
    let path = dir.path("missing.sock");
    let target = format!("unix:{path}");
    let ns = Netns::new("umissing");
    let tracer = Tracer::diagnose(&["--unix", &path]);

    let mut client = ns.helper(&["unix-connect", "--path", &path, "--count", "2"]);
    let done = client.finish();
    assert_eq!(result_count(&done, "ENOENT"), 2, "helper: {done}");

    let run = tracer.finish();
    let f = run.only_finding(&target, "unix_missing");
    assert_eq!(count(f), 2, "{f}");
    assert_client(f, client.pid);
}

/// h. A Unix listener is SIGKILLed, its socket file stays: ECONNREFUSED, unix_stale, count 2,
/// naming the dead listener.
#[test]
fn h_unix_stale_after_sigkill() {
    require_integration!();
    let dir = TempDir::new("ustale");
    let path = dir.path("stale.sock");
    let target = format!("unix:{path}");
    let ns = Netns::new("ustale");
    let tracer = Tracer::diagnose(&["--unix", &path]);

    let mut listener = ns.helper(&["unix-listen", "--path", &path]);
    listener.expect("listening");
    listener.sigkill();
    assert!(
        std::path::Path::new(&path).exists(),
        "the socket file stays after SIGKILL"
    );

    let mut client = ns.helper(&["unix-connect", "--path", &path, "--count", "2"]);
    let done = client.finish();
    assert_eq!(result_count(&done, "ECONNREFUSED"), 2, "helper: {done}");

    let run = tracer.finish();
    let f = run.only_finding(&target, "unix_stale");
    assert_eq!(count(f), 2, "{f}");
    assert_client(f, client.pid);
    assert_listener(f, listener.pid);
}

/// i. listen(1), never accept(); 6 non-blocking connects (kept open): the first ones fill the
/// queue, the rest get EAGAIN: unix_backlog_full, count == the EAGAINs, naming the listener.
#[test]
fn i_unix_backlog_full() {
    require_integration!();
    let dir = TempDir::new("ufull");
    let path = dir.path("full.sock");
    let target = format!("unix:{path}");
    let ns = Netns::new("ufull");
    let tracer = Tracer::diagnose(&["--unix", &path]);

    let mut listener = ns.helper(&["unix-listen", "--path", &path, "--backlog", "1"]);
    listener.expect("listening");
    let mut client = ns.helper(&[
        "unix-connect",
        "--path",
        &path,
        "--count",
        "6",
        "--nonblock",
        "--hold",
        "1",
    ]);
    let done = client.finish();
    let eagain = result_count(&done, "EAGAIN");
    assert!(eagain >= 1, "some connects get EAGAIN once the queue is full: {done}");

    let run = tracer.finish();
    listener.stop();
    let f = run.only_finding(&target, "unix_backlog_full");
    assert_eq!(count(f), eagain, "count == the helper's EAGAINs: {f}");
    assert_client(f, client.pid);
    assert_listener(f, listener.pid);
    if !f["queue"].is_null() {
        assert_eq!(
            f["queue"]["max"].as_u64(),
            Some(1),
            "queue.max is the listen backlog: {f}"
        );
    }
}

/// j. A root-owned socket file with mode 0600; the client drops to uid 65534: EACCES,
/// unix_permission_denied, count 2, uids [65534].
#[test]
fn j_unix_permission_denied() {
    require_integration!();
    let dir = TempDir::new("uperm");
    let path = dir.path("perm.sock");
    let target = format!("unix:{path}");
    let ns = Netns::new("uperm");
    let tracer = Tracer::diagnose(&["--unix", &path]);

    let mut listener = ns.helper(&["unix-listen", "--path", &path, "--mode", "600"]);
    let l = listener.expect("listening");
    assert_eq!(l["mode"], "600", "{l}");
    let mut client = ns.helper(&[
        "unix-connect",
        "--path",
        &path,
        "--count",
        "2",
        "--uid",
        "65534",
        "--gid",
        "65534",
    ]);
    let done = client.finish();
    assert_eq!(result_count(&done, "EACCES"), 2, "helper: {done}");

    let run = tracer.finish();
    listener.stop();
    let f = run.only_finding(&target, "unix_permission_denied");
    assert_eq!(count(f), 2, "{f}");
    assert_client(f, client.pid);
    let uids = f["uids"].as_array().expect("uids array");
    assert!(
        uids.iter().any(|u| u.as_u64() == Some(65534)),
        "uids contains 65534: {f}"
    );
}

// ---------------------------------------------------------------------------------------
// l. Bad input: clear one-line errors, non-zero exit, no panic
// ---------------------------------------------------------------------------------------

fn tracer_cmd(args: &[&str]) -> Output {
    output_with_timeout(Command::new(tracer_bin()).args(args), Duration::from_secs(60))
}

fn nonempty_lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn l1_unknown_flag_exits_2_with_one_line() {
    require_integration!();
    let out = tracer_cmd(&["--bogus"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code 2 for a bad flag; stderr: {}",
        out.stderr
    );
    let lines = nonempty_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "one-line error, got:\n{}", out.stderr);
    assert!(lines[0].contains("--bogus"), "the error names the flag: {}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn l2_bad_duration_names_the_flag() {
    require_integration!();
    let out = tracer_cmd(&["diagnose", "--duration", "nonsense"]);
    assert!(
        !out.status.success(),
        "a bad --duration must fail; stderr: {}",
        out.stderr
    );
    let lines = nonempty_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "one-line error, got:\n{}", out.stderr);
    assert!(
        lines[0].contains("--duration"),
        "the error names --duration: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn l3_non_root_is_refused_without_panic() {
    require_integration!();
    // A copy any user can execute, whatever the permissions along the build directory.
    let dir = TempDir::new("nonroot");
    let bin = dir.path("tracer");
    std::fs::copy(tracer_bin(), &bin).expect("copy tracer");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = output_with_timeout(
        Command::new("setpriv").args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &bin,
            "diagnose",
            "--duration",
            "5s",
        ]),
        Duration::from_secs(60),
    );
    assert!(
        !out.status.success(),
        "tracer must refuse to run as uid 65534; stdout: {}",
        out.stdout
    );
    assert!(
        out.stderr.to_lowercase().contains("root"),
        "the error mentions root: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(
        nonempty_lines(&out.stderr).len() <= 2,
        "a short error, got:\n{}",
        out.stderr
    );
}

#[test]
fn l4_filter_naming_nothing_is_refused() {
    require_integration!();
    let out = tracer_cmd(&["diagnose", "--port", "0", "--duration", "2s"]);
    assert!(
        !out.status.success(),
        "--port 0 names nothing and must fail; stdout: {}",
        out.stdout
    );
    assert!(!out.stderr.trim().is_empty(), "with an error message");
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn l5_doctor_reports_hooks() {
    require_integration!();
    let out = tracer_cmd(&["doctor"]);
    assert!(out.status.success(), "doctor exits 0; stderr: {}", out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("inet_sock_set_state"),
        "doctor lists inet_sock_set_state:\n{all}"
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------------------
// Another host
// ---------------------------------------------------------------------------------------

/// Two namespaces joined by a veth pair: the client's, and a "wire" namespace where
/// `rst_responder.py` plays a remote host for 10.77.0.99 (an address no namespace owns, so no
/// kernel here answers or refuses for it). 10.77.0.98 is a host that never answers.
fn remote_pair() -> (Netns, Netns) {
    let client = Netns::new("rclient");
    let wire = Netns::new("rwire");
    sh(
        "ip",
        &["link", "add", "vc", "netns", &client.name, "type", "veth", "peer", "name", "vr", "netns", &wire.name],
    );
    client.exec("ip", &["addr", "add", "10.77.0.1/24", "dev", "vc"]);
    client.exec("ip", &["link", "set", "vc", "up"]);
    wire.exec("ip", &["addr", "add", "10.77.0.2/24", "dev", "vr"]);
    wire.exec("ip", &["link", "set", "vr", "up"]);
    let link = wire.exec("ip", &["-j", "link", "show", "vr"]);
    let link: serde_json::Value = serde_json::from_str(&link).expect("ip -j link output");
    let mac = link[0]["address"].as_str().expect("veth MAC").to_string();
    for host in ["10.77.0.99", "10.77.0.98"] {
        client.exec("ip", &["neigh", "add", host, "lladdr", &mac, "dev", "vc", "nud", "permanent"]);
    }
    (client, wire)
}

/// n. An RST from another host (no tcp_send_reset, no NO_SOCKET or netfilter drop here):
/// remote_refused, never dead_listener; and a host that never answers: no_response, never
/// firewall_drop.
#[test]
fn n_remote_refused_and_no_response() {
    require_integration!();
    let (client_ns, wire_ns) = remote_pair();
    let tracer = Tracer::diagnose(&["--port", "18114", "--port", "18115"]);

    let mut remote = wire_ns.script(&rst_responder_script(), &["vr", "10.77.0.99", "18114", "20"]);
    remote.expect("ready");
    let mut refused =
        client_ns.helper(&["tcp-connect", "--host", "10.77.0.99", "--port", "18114", "--count", "2", "--timeout", "3"]);
    let done = refused.finish();
    assert_eq!(result_count(&done, "ECONNREFUSED"), 2, "the remote RSTs refuse both: {done}");
    let mut silent = client_ns.helper(&[
        "tcp-connect", "--host", "10.77.0.98", "--port", "18115", "--count", "1", "--nonblock", "--hold", "2.5",
    ]);
    silent.finish();
    // The remote host's job is done; it would otherwise wait out its own time limit.
    remote.sigkill();

    let run = tracer.finish();
    let f = run.only_finding("10.77.0.99:18114", "remote_refused");
    assert_eq!(count(f), 2, "{f}");
    assert_client(f, refused.pid);
    assert!(f["detail"].as_str().unwrap_or("").contains("another host"), "{f}");
    let f = run.only_finding("10.77.0.98:18115", "no_response");
    assert_eq!(count(f), 1, "{f}");
    assert_client(f, silent.pid);
}
