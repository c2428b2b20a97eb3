//! Issue 17, the firewall rule: each firewall finding names the rule that dropped or rejected
//! Nginx's connections, read from the ruleset of the namespace of the drop. Real rulesets
//! (nft, iptables-nft), each test in its own namespaces, asserting the rule's handle (or the
//! iptables line and its comment), and candidates, not certainty, where the ruleset alone
//! cannot tell.

use crate::common::bridged::{Bridged, APP_IP};
use tracer::report::json::RuleLine;

use super::*;

/// Gunicorn's address in the app namespace (bridged cases).
const APP_UPSTREAM: &str = "10.232.0.2:8000";

/// Loads `ruleset` (nft syntax) into the namespace with `nft -f`.
fn load_ruleset(ns: &Netns, dir: &TempDir, ruleset: &str) {
    let file = dir.path("ruleset.nft");
    std::fs::write(&file, ruleset).unwrap();
    ns.nft(&["-f", &file]);
}

/// The handle of the rule of `family table chain` whose listed text is `text`.
fn handle_of(ns: &Netns, family: &str, table: &str, chain: &str, text: &str) -> u64 {
    let listing = ns.exec("nft", &["-a", "-s", "list", "chain", family, table, chain]);
    listing
        .lines()
        .find_map(|l| l.trim().strip_prefix(text)?.trim().strip_prefix("# handle ")?.parse().ok())
        .unwrap_or_else(|| panic!("no rule {text:?} in {family} {table} {chain}:\n{listing}"))
}

/// The finding's rule, which must be there.
fn rule_of(f: &FindingLine) -> &RuleLine {
    f.rule.as_ref().unwrap_or_else(|| panic!("no rule named: {f:?}"))
}

/// Gunicorn and Nginx on loopback in a new namespace, a request through them answered.
fn healthy_stack(name: &str, connect_timeout: &str) -> (TempDir, Netns, Gunicorn, Nginx) {
    let dir = stack_dir(name);
    let ns = Netns::new(name);
    let gunicorn = ns.gunicorn(&dir, &GunicornOpts::default());
    let nginx = ns.nginx(&dir, &format!("http://{UPSTREAM}"), connect_timeout);
    assert_eq!(ns.curl(10), 200, "healthy before the rules");
    (dir, ns, gunicorn, nginx)
}

/// A loopback stack whose ruleset stops Nginx's connects to Gunicorn (loaded once both are
/// up and a request went through): the statuses of two requests and tracer's run.
fn loopback_firewall(name: &str, ruleset: &str, connect_timeout: &str) -> (Vec<u16>, Netns, Nginx, TracerRun, TempDir) {
    let (dir, ns, _gunicorn, nginx) = healthy_stack(name, connect_timeout);
    let tracer = Tracer::diagnose(&["--port", "8000"]);
    load_ruleset(&ns, &dir, ruleset);
    let statuses = ns.curls(2, 10);
    let run = tracer.finish();
    (statuses, ns, nginx, run, dir)
}

/// 1. An output drop with a decoy for another port before it and an accept after it: the
/// drop rule is named by its handle, surely, and the fix names its deletion.
#[test]
fn output_drop_after_a_decoy_is_named_by_its_handle() {
    require_stack!();
    let ruleset = "table inet filter {\n  chain output {\n    type filter hook output priority 0; policy accept;\n    \
                   tcp dport 9000 drop\n    tcp dport 8000 counter drop\n    tcp dport 8000 accept\n  }\n}\n";
    let (statuses, ns, nginx, run, _dir) = loopback_firewall("fwdecoy", ruleset, "1s");
    assert_eq!(statuses, [504, 504]);
    let handle = handle_of(&ns, "inet", "filter", "output", "tcp dport 8000 counter drop");
    let f = run.only_finding(UPSTREAM, Cause::FirewallDrop);
    show("output drop after a decoy", "504 x2", &nginx.errors_with("timed out").first().cloned().unwrap_or_default(), f);
    let r = rule_of(f);
    assert_eq!((r.family.as_str(), r.table.as_str(), r.chain.as_str(), r.hook.as_str()), ("inet", "filter", "output", "output"), "{r:?}");
    assert_eq!((r.handle, r.text.as_str(), r.certain, r.policy), (handle, "tcp dport 8000 counter drop", true, false), "{r:?}");
    assert_eq!(r.netns, f.netns, "Nginx's own namespace");
    assert!(f.rule_candidates.is_empty(), "{f:?}");
    assert!(f.fix.contains(&format!("nft delete rule inet filter output handle {handle}`")), "{}", f.fix);
    assert!(f.fix.contains("changes the firewall"), "{}", f.fix);
    assert_eq!(f.count, 2, "{f:?}");
}

/// 2. A reject through a named set of ports.
#[test]
fn reject_through_a_named_set_is_named_by_its_handle() {
    require_stack!();
    let ruleset = "table inet filter {\n  set blocked { type inet_service; elements = { 7999, 8000 } }\n  chain output {\n    \
                   type filter hook output priority 0;\n    tcp dport 9000 reject\n    tcp dport @blocked reject with tcp reset\n  }\n}\n";
    let (statuses, ns, _nginx, run, _dir) = loopback_firewall("fwset", ruleset, "3s");
    assert_eq!(statuses, [502, 502]);
    let handle = handle_of(&ns, "inet", "filter", "output", "tcp dport @blocked reject with tcp reset");
    let f = run.only_finding(UPSTREAM, Cause::FirewallReject);
    let r = rule_of(f);
    assert_eq!((r.handle, r.certain, r.chain.as_str()), (handle, true, "output"), "{r:?}");
    assert_eq!(r.text, "tcp dport @blocked reject with tcp reset");
}

/// 3. An iptables rule (nft backend) rejecting with a comment: the iptables table, chain and
/// `-A` line with the comment, and the fix deletes that line.
#[test]
fn iptables_nft_reject_with_a_comment_is_named_by_its_line() {
    require_stack!();
    let iptables = "/usr/sbin/iptables-nft";
    if !std::path::Path::new(iptables).exists() {
        println!("skipped: {iptables} is not installed (Debian package iptables; `cargo xtask setup` installs it)");
        return;
    }
    let (_dir, ns, _gunicorn, _nginx) = healthy_stack("fwipt", "3s");
    let tracer = Tracer::diagnose(&["--port", "8000"]);
    ns.exec(iptables, &["-A", "OUTPUT", "-p", "tcp", "--dport", "9000", "-j", "DROP"]);
    ns.exec(iptables, &["-A", "OUTPUT", "-p", "tcp", "--dport", "8000", "-m", "comment", "--comment", "no app traffic", "-j", "REJECT", "--reject-with", "tcp-reset"]);
    assert_eq!(ns.curls(2, 10), [502, 502]);
    let run = tracer.finish();
    let f = run.only_finding(UPSTREAM, Cause::FirewallReject);
    let r = rule_of(f);
    assert!(r.certain, "a comment always matches: {r:?}");
    assert_eq!((r.family.as_str(), r.table.as_str(), r.chain.as_str()), ("ip", "filter", "OUTPUT"), "{r:?}");
    let ipt = r.iptables.as_ref().unwrap_or_else(|| panic!("no iptables line: {r:?}"));
    assert_eq!((ipt.table.as_str(), ipt.chain.as_str()), ("filter", "OUTPUT"));
    assert_eq!(ipt.spec, "-A OUTPUT -p tcp -m tcp --dport 8000 -m comment --comment \"no app traffic\" -j REJECT --reject-with tcp-reset");
    assert!(f.fix.contains("iptables -t filter -D OUTPUT -p tcp -m tcp --dport 8000 -m comment"), "{}", f.fix);
}

/// 4. A drop in the upstream's namespace (its input hook) across a veth: the rule is read
/// from that namespace, not Nginx's.
#[test]
fn drop_in_the_upstreams_namespace_is_read_there() {
    require_stack!();
    let dir = stack_dir("fwveth");
    let net = Bridged::new("fwveth");
    let gunicorn = net.app.gunicorn(&dir, &GunicornOpts { bind: APP_UPSTREAM, ..GunicornOpts::default() });
    let _nginx = net.front.nginx(&dir, &format!("http://{APP_UPSTREAM}"), "1s");
    assert_eq!(net.front.curl(10), 200);
    let tracer = Tracer::diagnose(&["--port", "8000"]);
    load_ruleset(
        &net.app,
        &dir,
        &format!("table inet filter {{\n  chain input {{\n    type filter hook input priority 0;\n    tcp dport 9000 drop\n    ip daddr {APP_IP} tcp dport 8000 drop\n  }}\n}}\n"),
    );
    assert_eq!(net.front.curls(2, 10), [504, 504]);
    let run = tracer.finish();
    let handle = handle_of(&net.app, "inet", "filter", "input", &format!("ip daddr {APP_IP} tcp dport 8000 drop"));
    let app_netns: u32 = std::fs::metadata(format!("/proc/{}/ns/net", gunicorn.pid)).map(|m| std::os::unix::fs::MetadataExt::ino(&m) as u32).unwrap();
    let f = run.only_finding(APP_UPSTREAM, Cause::FirewallDrop);
    let r = rule_of(f);
    assert_eq!((r.netns, r.handle, r.hook.as_str(), r.certain), (app_netns, handle, "input", true), "{r:?}");
    assert_ne!(r.netns, f.netns, "the app's namespace, not Nginx's");
    assert!(f.fix.contains(&format!("nft delete rule inet filter input handle {handle}`")), "{}", f.fix);
    // Reached by its `ip netns` name, which outlives any process in it.
    assert!(f.fix.contains(&format!("`sudo ip netns exec {} nft delete rule", net.app.name)), "{}", f.fix);
}

/// 5. A jump into a user chain: the rule there is named, reached through the output hook.
#[test]
fn drop_in_a_user_chain_reached_by_a_jump_is_named() {
    require_stack!();
    let ruleset = "table inet filter {\n  chain app_rules {\n    tcp dport 9000 drop\n    tcp dport 8000 drop\n  }\n  \
                   chain output {\n    type filter hook output priority 0;\n    ip daddr 127.0.0.1 jump app_rules\n  }\n}\n";
    let (statuses, ns, _nginx, run, _dir) = loopback_firewall("fwjump", ruleset, "1s");
    assert_eq!(statuses, [504, 504]);
    let handle = handle_of(&ns, "inet", "filter", "app_rules", "tcp dport 8000 drop");
    let f = run.only_finding(UPSTREAM, Cause::FirewallDrop);
    let r = rule_of(f);
    assert_eq!((r.chain.as_str(), r.hook.as_str(), r.handle, r.certain), ("app_rules", "output", handle, true), "{r:?}");
}

/// 6. A rule the static matcher cannot decide (`ct state new`) before a port rule: both are
/// candidates, none certain, and the fix says so.
#[test]
fn an_undecidable_rule_gives_candidates_not_certainty() {
    require_stack!();
    let ruleset = "table inet filter {\n  chain output {\n    type filter hook output priority 0;\n    \
                   ct state new tcp dport 8000 drop\n    tcp dport 8000 drop\n  }\n}\n";
    let (statuses, ns, _nginx, run, _dir) = loopback_firewall("fwct", ruleset, "1s");
    assert_eq!(statuses, [504, 504]);
    let ct = handle_of(&ns, "inet", "filter", "output", "ct state new tcp dport 8000 drop");
    let port = handle_of(&ns, "inet", "filter", "output", "tcp dport 8000 drop");
    let f = run.only_finding(UPSTREAM, Cause::FirewallDrop);
    let r = rule_of(f);
    assert_eq!((r.handle, r.certain), (ct, false), "{r:?}");
    let candidates: Vec<u64> = f.rule_candidates.iter().map(|c| c.handle).collect();
    assert_eq!(candidates, [port], "{f:?}");
    assert!(f.rule_candidates.iter().all(|c| !c.certain));
    assert!(f.fix.contains("cannot tell") && f.fix.contains("candidates"), "{}", f.fix);
}

/// Whether tracer's `--trace-rules` table is in the namespace's ruleset.
fn has_trace_table(ns: &Netns) -> bool {
    ns.exec("nft", &["list", "tables"]).contains("table inet tracer_trace")
}

/// The namespace's inode (for `--netns`).
fn inode_of(ns: &Netns) -> String {
    let m = std::fs::metadata(format!("/run/netns/{}", ns.name)).expect("the namespace's file");
    std::os::unix::fs::MetadataExt::ino(&m).to_string()
}

/// 7. `--trace-rules`: the kernel's trace names the rule the static matcher could only list
/// as a candidate, surely; tracer's table is there while it traces and gone after.
#[test]
fn trace_rules_names_the_undecidable_rule_exactly() {
    require_stack!();
    let (dir, ns, _gunicorn, _nginx) = healthy_stack("fwtrace", "1s");
    load_ruleset(
        &ns,
        &dir,
        "table inet filter {\n  chain output {\n    type filter hook output priority 0;\n    \
         ct state new tcp dport 8000 drop\n    tcp dport 8000 drop\n  }\n}\n",
    );
    let ct = handle_of(&ns, "inet", "filter", "output", "ct state new tcp dport 8000 drop");
    let tracer = Tracer::diagnose(&["--port", "8000", "--netns", &inode_of(&ns), "--trace-rules"]);
    assert!(has_trace_table(&ns), "tracer's table while it traces");
    assert_eq!(ns.curls(2, 10), [504, 504]);
    let run = tracer.finish();
    assert!(!has_trace_table(&ns), "tracer's table is gone after Ctrl-C");
    let f = run.only_finding(UPSTREAM, Cause::FirewallDrop);
    let r = rule_of(f);
    assert_eq!((r.handle, r.certain, r.hook.as_str(), r.chain.as_str()), (ct, true, "output", "output"), "{r:?}");
    assert!(f.rule_candidates.is_empty(), "{f:?}");
}

/// 8. `--trace-rules`' table goes when tracer ends on SIGTERM or SIGINT; after a SIGKILL it
/// stays, and the next start of tracer (without the flag) removes it.
#[test]
fn trace_rules_table_goes_on_every_exit_and_a_killed_tracers_at_the_next_start() {
    require_stack!();
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let ns = Netns::new("fwtrlife");
    let inode = inode_of(&ns);
    let args = ["diagnose", "--json", "--duration", "60s", "--port", "8000", "--netns", &inode, "--trace-rules"];
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGKILL] {
        let mut child = spawn_tracer(&args);
        wait_until(&format!("tracer's table in {} (before {signal})", ns.name), || has_trace_table(&ns));
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        let status = wait_timeout(&mut child, std::time::Duration::from_secs(30)).unwrap_or_else(|| {
            kill_and_reap(&mut child);
            panic!("tracer did not exit after {signal}")
        });
        if signal == Signal::SIGKILL {
            assert!(has_trace_table(&ns), "a SIGKILLed tracer cannot remove its table");
        } else {
            assert!(status.success(), "{signal}: {status}");
            assert!(!has_trace_table(&ns), "tracer's table is gone after {signal}");
        }
    }
    let next = Tracer::diagnose(&["--port", "8000", "--netns", &inode]);
    assert!(!has_trace_table(&ns), "the next start removed the leftover");
    assert!(next.stderr_text().contains("removed table inet tracer_trace left in netns"), "{}", next.stderr_text());
    next.finish();
}
