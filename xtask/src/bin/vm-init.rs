//! /init of the kernel-matrix VMs (`cargo xtask vm-test`): PID 1 of a busybox initramfs that
//! holds `/bin/tracer`. It mounts what tracer needs, brings up lo, and runs three passes
//! (function hooks allowed, kprobes only, `TRACER_BACKEND=tracepoints`), and on a kernel
//! without drop reasons a fourth with tracepoints and the kernel's addresses hidden. In each pass it starts
//! `tracer diagnose --json`, waits for its `tracing:` line, produces every cause that needs no
//! Nginx (dead listener, full TCP backlog, Unix missing/stale/full), stops tracer and checks
//! cause, target, count, client PID and listener PID. It prints a per-hook table
//! (`VM-HOOK ...` lines, read from the `hooks` of tracer's JSON summary), `VM-PASS`/`VM-FAIL`
//! lines and, when everything held, `VM-TEST-SUCCESS`, then powers the VM off.
//!
//! The same binary is the scenario helper: `/init listen-tcp ...`, `/init client-tcp ...` and
//! so on run as separate processes, so client and listener PIDs are real and distinct.
use std::{
    ffi::CString,
    io::{BufRead, BufReader, Read, Write},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

const TRACER: &str = "/bin/tracer";
const BUSYBOX: &str = "/bin/busybox";
#[path = "../vm/summary.rs"]
mod summary;
use summary::{hook_of, summary_hooks, HOOKED};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() > 1 {
        helper(&args[1..]);
        return;
    }
    if std::process::id() != 1 {
        eprintln!("vm-init: run as PID 1 of the test VM (or as a helper: listen-tcp, client-tcp, ...)");
        std::process::exit(2);
    }
    let ok = std::panic::catch_unwind(run_init).unwrap_or(false);
    println!("{}", if ok { "VM-TEST-SUCCESS" } else { "VM-TEST-FAILURE" });
    let _ = std::io::stdout().flush();
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
}

fn sh(args: &[&str]) -> bool {
    Command::new(BUSYBOX).args(args).status().map(|s| s.success()).unwrap_or(false)
}

fn mount(fstype: &str, target: &str) {
    let _ = std::fs::create_dir_all(target);
    let src = CString::new(fstype).unwrap();
    let tgt = CString::new(target).unwrap();
    let r = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
    if r != 0 {
        println!("vm-init: mount {fstype} on {target}: {}", std::io::Error::last_os_error());
    }
}

fn run_init() -> bool {
    mount("proc", "/proc");
    mount("sysfs", "/sys");
    mount("devtmpfs", "/dev");
    mount("tmpfs", "/tmp");
    mount("tracefs", "/sys/kernel/tracing");
    mount("bpf", "/sys/fs/bpf");
    mount("debugfs", "/sys/kernel/debug");
    // Modules packed next to init (sock_diag for tracer's listener snapshots), when present.
    if let Ok(dir) = std::fs::read_dir("/modules") {
        let mut mods: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        mods.sort();
        for m in mods {
            let _ = Command::new(BUSYBOX).arg("insmod").arg(&m).stderr(Stdio::null()).status();
        }
    }
    sh(&["ip", "link", "set", "lo", "up"]);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("VM-KERNEL {}", release.trim());

    // What doctor says here (it loads each function hook to test it, attaches nothing).
    doctor("");

    // Before 5.17 kfree_skb has no drop reason: tracer then reads where each drop happened,
    // which needs the addresses in /proc/kallsyms. A fourth pass there hides them
    // (kernel.kptr_restrict=2, as a hardened host does) and checks what tracer says when the
    // kernel cannot show a local refusal at all.
    let drop_reasons = std::fs::read_to_string("/sys/kernel/tracing/events/skb/kfree_skb/format").map(|f| f.contains(" reason;")).unwrap_or(true);
    let mut passes = vec![("functions", "auto"), ("kprobes", "kprobes"), ("tracepoints", "tracepoints")];
    if !drop_reasons {
        passes.push(("blind", "tracepoints"));
    }
    let mut all_ok = true;
    for (i, (name, backend)) in passes.iter().enumerate() {
        let started = Instant::now();
        let blind = *name == "blind";
        let kptr_restrict = std::fs::read_to_string(KPTR_RESTRICT).unwrap_or_else(|_| "0".into());
        if blind {
            if std::fs::write(KPTR_RESTRICT, "2").is_err() {
                println!("VM-FAIL {name}: cannot hide the kernel's addresses ({KPTR_RESTRICT})");
                all_ok = false;
                continue;
            }
            println!("VM-NOTE {name}: no drop reasons and kptr_restrict=2: tracer cannot see where packets drop; refusals must read refused_unattributed");
            doctor(&format!("{name}: "));
        }
        let result = pass(name, backend, 7000 + 100 * i as u16, blind);
        if blind {
            let _ = std::fs::write(KPTR_RESTRICT, kptr_restrict.trim());
        }
        let ok = match result {
            Ok(()) => true,
            Err(e) => {
                println!("VM-FAIL {name}: {e}");
                false
            }
        };
        if ok {
            println!("VM-PASS {name} ({:.1} s)", started.elapsed().as_secs_f64());
        }
        all_ok &= ok;
    }
    all_ok
}

const KPTR_RESTRICT: &str = "/proc/sys/kernel/kptr_restrict";

/// Prints what `tracer doctor` says here, from its function hooks on (the tracepoint table
/// only for kfree_skb and tcp_send_reset, the two that differ most between kernels).
fn doctor(prefix: &str) {
    let Ok(out) = Command::new(TRACER).arg("doctor").output() else { return };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut on = false;
    let mut drop_lines = false;
    for line in text.lines() {
        if line.starts_with("  skb:kfree_skb") || line.starts_with("  tcp:tcp_send_reset") {
            drop_lines = true;
        } else if line.starts_with("  ") && !line.starts_with("   ") {
            drop_lines = false;
        }
        on |= line.starts_with("function hooks");
        if (on || drop_lines) && !line.trim().is_empty() {
            println!("  doctor: {prefix}{line}");
        }
    }
}

/// A helper process whose stdout says "ready" once it is set up.
fn spawn_helper(args: &[&str]) -> Result<Child, String> {
    let mut child = Command::new("/init")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn {args:?}: {e}"))?;
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    out.read_exact(&mut buf).map_err(|e| format!("{args:?} never got ready: {e}"))?;
    Ok(child)
}

fn run_helper(args: &[&str]) -> Result<u32, String> {
    let mut child = Command::new("/init").args(args).spawn().map_err(|e| format!("spawn {args:?}: {e}"))?;
    let pid = child.id();
    child.wait().map_err(|e| e.to_string())?;
    Ok(pid)
}

fn kill(child: &mut Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}

/// `Expect.cause` when no finding at all is the right answer for the target.
const NO_FINDING: &str = "-";

struct Expect {
    cause: &'static str,
    target: String,
    count: (u64, u64),
    client: u32,
    listener: Option<u32>,
    /// After-connect causes: the process that held the upstream's end.
    upstream: Option<u32>,
}

fn pass(name: &str, backend: &str, base: u16, blind: bool) -> Result<(), String> {
    println!("VM-STEP {name}: starting tracer (backend {backend})");
    let mut tracer = Command::new(TRACER)
        .args(["diagnose", "--verbose", "--json"])
        .env("TRACER_BACKEND", backend)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start tracer: {e}"))?;
    let stderr = tracer.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            println!("  tracer stderr: {line}");
            if line.starts_with("tracing:") {
                let _ = tx.send(line);
            }
        }
    });
    let mut stdout = tracer.stdout.take().unwrap();
    let collector = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let t0 = Instant::now();
    // The `tracing:` line says the hooks are attached; which they are, the summary says.
    match rx.recv_timeout(Duration::from_secs(120)) {
        // Every kernel of the matrix (5.10 included, through the id helpers for the owner)
        // takes the BTF tracepoint on inet_sock_set_state; the verdicts below then check it.
        Ok(line) if !line.contains("tp_btf:sock:inet_sock_set_state") => {
            kill(&mut tracer);
            return Err(format!("inet_sock_set_state is not attached as a BTF tracepoint: {line}"));
        }
        Ok(_) => {}
        Err(_) => {
            kill(&mut tracer);
            return Err("tracer printed no tracing: line within 120 s".into());
        }
    }
    println!("VM-STEP {name}: tracer ready after {:.1} s", t0.elapsed().as_secs_f64());

    let mut expects = Vec::new();
    let lo = "127.0.0.1";

    // dead_listener: a listener SIGKILLed, then 3 connects.
    let dead = format!("{lo}:{}", base + 1);
    let mut l = spawn_helper(&["listen-tcp", &dead, "16", "0"])?;
    let lpid = l.id();
    kill(&mut l);
    let c = run_helper(&["client-tcp", &dead, "3"])?;
    // Where the kernel cannot show the reset from no socket, the honest verdict (no listener
    // named: nothing proves this was one).
    let refused = |listener: u32| if blind { ("refused_unattributed", None) } else { ("dead_listener", Some(listener)) };
    let (cause, listener) = refused(lpid);
    expects.push(Expect { cause, target: dead, count: (3, 3), client: c, listener, upstream: None });

    // dead_listener over IPv6: [::1], a listener that closed, 2 connects.
    let dead6 = format!("[::1]:{}", base + 6);
    let mut l = spawn_helper(&["listen-tcp", &dead6, "16", "0"])?;
    let lpid = l.id();
    kill(&mut l);
    let c = run_helper(&["client-tcp", &dead6, "2"])?;
    let (cause, listener) = refused(lpid);
    expects.push(Expect { cause, target: dead6, count: (2, 2), client: c, listener, upstream: None });

    // backlog_full: listen(1), accepts only after 3 s; 6 non-blocking connects held 4.5 s.
    let full = format!("{lo}:{}", base + 2);
    let mut l = spawn_helper(&["listen-tcp", &full, "1", "3000"])?;
    let lpid = l.id();
    let c = run_helper(&["client-tcp-hold", &full, "6", "4500"])?;
    kill(&mut l);
    expects.push(Expect { cause: "backlog_full", target: full.clone(), count: (3, 6), client: c, listener: Some(lpid), upstream: None });

    // unix_missing.
    let missing = format!("/tmp/vm-missing-{base}.sock");
    let c = run_helper(&["client-unix", &missing, "2", "block"])?;
    expects.push(Expect { cause: "unix_missing", target: format!("unix:{missing}"), count: (2, 2), client: c, listener: None, upstream: None });

    // unix_stale: the listener exits, its socket file stays.
    let stale = format!("/tmp/vm-stale-{base}.sock");
    let mut l = spawn_helper(&["listen-unix", &stale, "4", "exit"])?;
    let lpid = l.id();
    let _ = l.wait();
    let c = run_helper(&["client-unix", &stale, "2", "block"])?;
    expects.push(Expect { cause: "unix_stale", target: format!("unix:{stale}"), count: (2, 2), client: c, listener: Some(lpid), upstream: None });

    // unix_backlog_full: listen(1), never accept, 5 non-blocking connects.
    let ufull = format!("/tmp/vm-full-{base}.sock");
    let mut l = spawn_helper(&["listen-unix", &ufull, "1", "hold"])?;
    let lpid = l.id();
    let c = run_helper(&["client-unix", &ufull, "5", "nonblock"])?;
    kill(&mut l);
    expects.push(Expect { cause: "unix_backlog_full", target: format!("unix:{ufull}"), count: (1, 5), client: c, listener: Some(lpid), upstream: None });

    // unix_permission_denied: socket file mode 0600 (root), the client runs as uid 65534.
    let perm = format!("/tmp/vm-perm-{base}.sock");
    let mut l = spawn_helper(&["listen-unix", &perm, "16", "hold"])?;
    let lpid = l.id();
    sh(&["chmod", "0600", &perm]);
    let c = run_helper(&["client-unix", &perm, "2", "block", "65534"])?;
    kill(&mut l);
    expects.push(Expect { cause: "unix_permission_denied", target: format!("unix:{perm}"), count: (2, 2), client: c, listener: Some(lpid), upstream: None });

    // After the connect: an upstream that resets with the request unread, one that closes
    // before answering, one that crashes (SIGSEGV) while serving.
    for (port, mode, cause) in [(base + 7, "rst", "upstream_reset"), (base + 8, "fin", "upstream_closed"), (base + 9, "crash", "upstream_killed")] {
        let target = format!("{lo}:{port}");
        let mut server = spawn_helper(&["serve-tcp", &target, mode])?;
        let spid = server.id();
        let c = run_helper(&["client-tcp-request", &target])?;
        let _ = server.wait();
        kill(&mut server);
        expects.push(Expect { cause, target, count: (1, 1), client: c, listener: None, upstream: Some(spid) });
    }

    // Firewall causes, when nft (and nf_tables) made it into the VM.
    if std::path::Path::new("/bin/nft").exists() {
        let (d, r, i) = (base + 3, base + 4, base + 5);
        let rules = format!(
            "table inet vmtest {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    \
             tcp dport {d} drop\n    tcp dport {r} reject with tcp reset\n    \
             tcp dport {i} reject with icmpx type port-unreachable\n  }}\n}}\n"
        );
        let _ = std::fs::write("/tmp/vmtest.nft", rules);
        let loaded = Command::new("/bin/nft").args(["-f", "/tmp/vmtest.nft"]).status().map(|s| s.success()).unwrap_or(false);
        if loaded {
            let target = |p: u16| format!("{lo}:{p}");
            // Blind: a SYN dropped on output leaves no trace at all (5.10 traces only the
            // retransmits it sends), so no finding; a reject reads as any refusal.
            let c = run_helper(&["client-tcp-hold", &target(d), "1", "2500"])?;
            let (cause, count) = if blind { (NO_FINDING, (0, 0)) } else { ("firewall_drop", (1, 1)) };
            expects.push(Expect { cause, target: target(d), count, client: c, listener: None, upstream: None });
            let reject = if blind { "refused_unattributed" } else { "firewall_reject" };
            let c = run_helper(&["client-tcp", &target(r), "2"])?;
            expects.push(Expect { cause: reject, target: target(r), count: (2, 2), client: c, listener: None, upstream: None });
            let c = run_helper(&["client-tcp", &target(i), "2"])?;
            expects.push(Expect { cause: reject, target: target(i), count: (2, 2), client: c, listener: None, upstream: None });
            let _ = Command::new("/bin/nft").args(["delete", "table", "inet", "vmtest"]).status();
        } else {
            println!("VM-NOTE {name}: nft could not load rules here: firewall causes not tested");
        }
    }

    // Let the last evidence arrive, then stop tracer orderly.
    thread::sleep(Duration::from_millis(700));
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let status = tracer.wait().map_err(|e| e.to_string())?;
    let out = collector.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("tracer exited with {status}"));
    }
    let objects: Vec<Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let findings: Vec<&Value> = objects.iter().filter(|v| v["type"] == "finding").collect();
    let hooks = summary_hooks(&objects).ok_or("tracer printed no summary line with a hooks list")?;
    for f in &findings {
        println!("  finding: {}", f);
    }

    // The per-hook table: which program served each hooked function.
    let mut hooks_ok = true;
    for function in HOOKED {
        let served = hook_of(&hooks, function);
        println!("VM-HOOK {name} {function} {served}");
        let is_kprobe = served.starts_with("kprobe") || served.starts_with("kretprobe");
        let function_hook = served.starts_with("fentry") || served.starts_with("fexit") || is_kprobe;
        if backend == "tracepoints" && function_hook {
            println!("VM-CHECK {name}: {function} should be off with --backend tracepoints");
            hooks_ok = false;
        }
        if backend == "kprobes" && !is_kprobe {
            println!("VM-CHECK {name}: {function} should be served by a kprobe with --backend kprobes");
            hooks_ok = false;
        }
        if backend == "auto" && !function_hook {
            println!("VM-CHECK {name}: {function} has no function hook on this kernel");
            hooks_ok = false;
        }
        // Every kernel of the matrix takes BPF trampolines: a kprobe there means a
        // trampoline program the verifier refused (doctor says why), except where no
        // variant fits the prototype (unix_find_other's six arguments on 5.10).
        if backend == "auto" && is_kprobe && function != "unix_find_other" {
            println!("VM-CHECK {name}: {function} fell back to {served}: its fentry/fexit program did not load");
            hooks_ok = false;
        }
    }

    let mut problems = Vec::new();
    for e in &expects {
        if e.cause == NO_FINDING {
            let wrong: Vec<&str> = findings.iter().filter(|f| f["target"] == e.target.as_str()).filter_map(|f| f["cause"].as_str()).collect();
            let mark = if wrong.is_empty() { "ok" } else { "WRONG" };
            println!("VM-CASE {name} {:<18} {:<28} {wrong:?}: {mark}", "(no finding)", e.target);
            if !wrong.is_empty() {
                problems.push(format!("{}: no finding expected (nothing shows it here), found {wrong:?}", e.target));
            }
            continue;
        }
        let found = findings.iter().find(|f| f["cause"] == e.cause && f["target"] == e.target.as_str());
        let Some(f) = found else {
            let others: Vec<String> = findings
                .iter()
                .filter(|f| f["target"] == e.target.as_str())
                .map(|f| f["cause"].as_str().unwrap_or("?").to_string())
                .collect();
            problems.push(format!("no {} finding for {} (found: {others:?})", e.cause, e.target));
            continue;
        };
        let count = f["count"].as_u64().unwrap_or(0);
        let clients: Vec<u64> = f["clients"].as_array().map(|a| a.iter().filter_map(|c| c["pid"].as_u64()).collect()).unwrap_or_default();
        let listener = f["listener"]["pid"].as_u64();
        let mut bad = Vec::new();
        if count < e.count.0 || count > e.count.1 {
            bad.push(format!("count {count} not in {}..={}", e.count.0, e.count.1));
        }
        if !clients.contains(&(e.client as u64)) {
            bad.push(format!("clients {clients:?} lack {}", e.client));
        }
        if let Some(lp) = e.listener {
            if listener != Some(lp as u64) {
                bad.push(format!("listener {listener:?} != {lp}"));
            }
        }
        if let Some(up) = e.upstream {
            let seen = f["upstream_process"]["pid"].as_u64();
            if seen != Some(up as u64) {
                bad.push(format!("upstream_process {seen:?} != {up}"));
            }
        }
        if e.cause == "upstream_killed" && (f["death"]["how"] != "crash" || f["death"]["signal"] != "SIGSEGV") {
            bad.push(format!("death {} (a crash with SIGSEGV expected)", f["death"]));
        }
        if e.cause == "unix_permission_denied" && f["uids"].as_array().map(|u| u.iter().any(|x| x.as_u64() == Some(65534))) != Some(true) {
            bad.push(format!("uids {} lack 65534", f["uids"]));
        }
        if e.cause == "unix_backlog_full" {
            let seen = f["evidence"]["unix_stream_connect: peer queue full"].as_u64().unwrap_or(0);
            let hooked = !hook_of(&hooks, "unix_find_other").starts_with("none");
            if hooked && (seen == 0 || f["queue"]["max"].as_u64() != Some(1)) {
                bad.push(format!("unix_find_other is hooked: want the peer queue read in the kernel (evidence {seen}, queue {})", f["queue"]));
            }
            if !hooked && seen > 0 {
                bad.push("peer queue evidence without the unix_find_other hook".into());
            }
            println!("VM-DETAIL {name} unix_backlog_full: peer queue read in the kernel {seen} times, queue {}", f["queue"]);
        }
        if e.cause == "backlog_full" {
            if f["queue"]["max"].as_u64() != Some(1) {
                bad.push(format!("queue {} (max 1 expected)", f["queue"]));
            }
            let overflow_seen = f["evidence"]["tcp_conn_request: queue full"].as_u64().unwrap_or(0);
            let waits = f["accept_wait_ms"].as_object().map(|o| o.len()).unwrap_or(0);
            let conn_request_hooked = !hook_of(&hooks, "tcp_conn_request").starts_with("none");
            let accept_hooked = !hook_of(&hooks, "inet_csk_accept").starts_with("none");
            if conn_request_hooked && overflow_seen == 0 {
                bad.push("tcp_conn_request is hooked but no SYN-time overflow in the evidence".into());
            }
            // The queue at each overflow, with the listener named by the kernel.
            let samples = f["syn_overflows"].as_array().cloned().unwrap_or_default();
            if conn_request_hooked {
                let right = |s: &Value| s["len"].as_u64() > s["max"].as_u64() && s["max"].as_u64() == Some(1) && s["listener"]["pid"].as_u64() == e.listener.map(u64::from);
                if samples.is_empty() || !samples.iter().all(right) {
                    bad.push(format!("syn_overflows {} (each: len > max = 1, listener {:?})", f["syn_overflows"], e.listener));
                }
            }
            if accept_hooked && waits == 0 {
                bad.push("inet_csk_accept is hooked but no accept_wait_ms histogram".into());
            }
            if !conn_request_hooked && overflow_seen > 0 {
                bad.push("SYN-time overflow evidence without the tcp_conn_request hook".into());
            }
            let first = samples.first().map(|s| format!("{}/{} listener {}", s["len"], s["max"], s["listener"]["pid"])).unwrap_or_else(|| "-".into());
            println!(
                "VM-DETAIL {name} backlog_full: tcp_conn_request overflows {overflow_seen} (queue at first: {first}), accept_wait_ms {}",
                f["accept_wait_ms"]
            );
        }
        let mark = if bad.is_empty() { "ok" } else { "WRONG" };
        println!(
            "VM-CASE {name} {:<18} {:<28} count {count} clients {clients:?} listener {listener:?}: {mark} {}",
            e.cause,
            e.target,
            bad.join("; ")
        );
        if !bad.is_empty() {
            problems.push(format!("{} {}: {}", e.cause, e.target, bad.join("; ")));
        }
    }
    if !hooks_ok {
        problems.push("hook table not as expected for this backend".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join(" | "))
    }
}

// ---- helpers (separate processes) ----------------------------------------------------------

fn ready() {
    let mut out = std::io::stdout();
    let _ = out.write_all(b"ready\n");
    let _ = out.flush();
}

/// A sockaddr_in or sockaddr_in6 for "ip:port" / "[ip6]:port": (family, storage, length).
fn sockaddr_in(addr: &str) -> (i32, libc::sockaddr_storage, u32) {
    let sa: std::net::SocketAddr = addr.parse().expect("address:port");
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match sa {
        std::net::SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin) };
            (libc::AF_INET, st, std::mem::size_of::<libc::sockaddr_in>() as u32)
        }
        std::net::SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: 0,
            };
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin6) };
            (libc::AF_INET6, st, std::mem::size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

fn sockaddr_un(path: &str) -> (libc::sockaddr_un, u32) {
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as u16;
    for (i, b) in path.bytes().enumerate() {
        sa.sun_path[i] = b as libc::c_char;
    }
    (sa, (2 + path.len() + 1) as u32)
}

/// A TCP socket listening on "ip:port" with this backlog (SO_REUSEADDR: passes reuse ports).
fn tcp_listener(addr: &str, backlog: i32) -> i32 {
    let (family, sa, len) = sockaddr_in(addr);
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM, 0);
        let one: i32 = 1;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&one as *const i32).cast(), 4);
        if libc::bind(fd, (&sa as *const libc::sockaddr_storage).cast(), len) != 0 {
            panic!("bind {addr}: {}", std::io::Error::last_os_error());
        }
        libc::listen(fd, backlog);
        fd
    }
}

fn helper(args: &[String]) {
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    unsafe {
        match a(0) {
            // listen-tcp ADDR BACKLOG ACCEPT_AFTER_MS (0: accept at once; keeps accepting).
            "listen-tcp" => {
                let fd = tcp_listener(a(1), a(2).parse().unwrap());
                ready();
                thread::sleep(Duration::from_millis(a(3).parse().unwrap()));
                loop {
                    let c = libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut());
                    if c < 0 {
                        thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            // client-tcp ADDR N: N blocking connects (each expected to fail).
            "client-tcp" => {
                let (family, sa, len) = sockaddr_in(a(1));
                for _ in 0..a(2).parse::<u32>().unwrap() {
                    let fd = libc::socket(family, libc::SOCK_STREAM, 0);
                    libc::connect(fd, (&sa as *const libc::sockaddr_storage).cast(), len);
                    libc::close(fd);
                }
            }
            // client-tcp-hold ADDR N HOLD_MS: N non-blocking connects kept open HOLD_MS.
            "client-tcp-hold" => {
                let (family, sa, len) = sockaddr_in(a(1));
                let mut fds = Vec::new();
                for _ in 0..a(2).parse::<u32>().unwrap() {
                    let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
                    libc::connect(fd, (&sa as *const libc::sockaddr_storage).cast(), len);
                    fds.push(fd);
                    thread::sleep(Duration::from_millis(20));
                }
                thread::sleep(Duration::from_millis(a(3).parse().unwrap()));
                for fd in fds {
                    libc::close(fd);
                }
            }
            // serve-tcp ADDR rst|fin|crash: accept one connection, then close it with the request
            // unread (a reset), read it and close (a FIN before any response), or read it and
            // die of SIGSEGV.
            "serve-tcp" => {
                let fd = tcp_listener(a(1), 16);
                ready();
                let c = libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut());
                // Let the request arrive.
                thread::sleep(Duration::from_millis(200));
                if a(2) != "rst" {
                    let mut buf = [0u8; 4096];
                    libc::recv(c, buf.as_mut_ptr().cast(), buf.len(), 0);
                }
                if a(2) == "crash" {
                    libc::raise(libc::SIGSEGV);
                }
                libc::close(c);
            }
            // client-tcp-request ADDR: one request, read until the end (EOF or a reset).
            "client-tcp-request" => {
                let (family, sa, len) = sockaddr_in(a(1));
                let fd = libc::socket(family, libc::SOCK_STREAM, 0);
                if libc::connect(fd, (&sa as *const libc::sockaddr_storage).cast(), len) == 0 {
                    let req = b"GET / HTTP/1.0\r\n\r\n";
                    libc::send(fd, req.as_ptr().cast(), req.len(), 0);
                    let mut buf = [0u8; 4096];
                    while libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) > 0 {}
                }
                libc::close(fd);
            }
            // listen-unix PATH BACKLOG exit|hold
            "listen-unix" => {
                let _ = std::fs::remove_file(a(1));
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let (sa, len) = sockaddr_un(a(1));
                if libc::bind(fd, (&sa as *const libc::sockaddr_un).cast(), len) != 0 {
                    panic!("bind {}: {}", a(1), std::io::Error::last_os_error());
                }
                libc::listen(fd, a(2).parse().unwrap());
                ready();
                if a(3) == "hold" {
                    loop {
                        thread::sleep(Duration::from_secs(60));
                    }
                }
            }
            // client-unix PATH N block|nonblock [UID]: N connects, kept open until exit.
            "client-unix" => {
                if let Ok(uid) = a(4).parse::<u32>() {
                    libc::setgid(uid);
                    libc::setuid(uid);
                }
                let (sa, len) = sockaddr_un(a(1));
                let flags = if a(3) == "nonblock" { libc::SOCK_NONBLOCK } else { 0 };
                let mut fds = Vec::new();
                for _ in 0..a(2).parse::<u32>().unwrap() {
                    let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | flags, 0);
                    libc::connect(fd, (&sa as *const libc::sockaddr_un).cast(), len);
                    fds.push(fd);
                }
                thread::sleep(Duration::from_millis(100));
            }
            other => {
                eprintln!("vm-init: unknown helper {other}");
                std::process::exit(2);
            }
        }
    }
}
