//! `cargo xtask demo` (and `cargo xtask run` without arguments): a short live demo.
//!
//! In a fresh network namespace `tracer-demo`: Gunicorn (a tiny WSGI app) on 127.0.0.1:8000
//! and Nginx on 127.0.0.1:8080 proxying to it. tracer runs in the host namespace (it sees
//! every namespace). A healthy request, then Gunicorn is SIGKILLed, a request gets 502, and
//! Nginx's error-log line is shown beside tracer's explanation; then firewall rules, and a
//! request whose handler segfaults after Nginx connected; SIGINT to tracer shows its final
//! report. Everything is cleaned up on every exit path, Ctrl-C included (a signal
//! handler sets a flag every wait checks; a guard's Drop kills and deletes). Every wait has a
//! timeout.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};
use xtask::kit::{
    children_of, read_lines, spawn_group_logged, wait_ready, ListenWait, Listener, Netns, ProcessGroup, ReadyLine, ReadyWait,
};

use crate::{
    cmd_build::release_or_env,
    interrupt::{check_interrupted, install_handlers, pause},
    util::{run, wait_timeout},
};

const NETNS: &str = "tracer-demo";
const UPSTREAM: &str = "127.0.0.1:8000";
const FRONT: &str = "127.0.0.1:8080";

fn color() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal()
}

fn caption(text: &str) {
    if color() {
        println!("\n\x1b[1m==> {text}\x1b[0m");
    } else {
        println!("\n==> {text}");
    }
}

/// How tracer's lines are shown: `tracer | ` for stdout, `tracer ! ` for stderr.
fn prefix(stream: char) -> String {
    if color() {
        format!("  \x1b[36mtracer {stream}\x1b[0m ")
    } else {
        format!("  tracer {stream} ")
    }
}

/// Everything the demo started; Drop stops it all and deletes the namespace.
struct Stack {
    tmp: PathBuf,
    netns: Option<Netns>,
    tracer: Option<ProcessGroup>,
    gunicorn: Option<ProcessGroup>,
    nginx: Option<ProcessGroup>,
    readers: Vec<thread::JoinHandle<()>>,
}

/// How long tracer gets to print its final report and exit after SIGINT.
const TRACER_GRACE: Duration = Duration::from_secs(20);
/// How long Nginx and Gunicorn get to exit on SIGTERM (and then on SIGKILL).
const STOP_GRACE: Duration = Duration::from_secs(5);

impl Stack {
    fn new(tmp: PathBuf) -> Stack {
        Stack {
            tmp,
            netns: None,
            tracer: None,
            gunicorn: None,
            nginx: None,
            readers: Vec::new(),
        }
    }

    /// SIGINT to tracer (it prints its final report), bounded; SIGKILL after that.
    fn stop_tracer(&mut self) -> bool {
        let Some(mut t) = self.tracer.take() else { return true };
        let clean = match t.stop() {
            Some(st) => st.success(),
            None => {
                eprintln!("demo: tracer did not exit within 20 s of SIGINT; killed it");
                false
            }
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        clean
    }

    /// A service of the demo (Gunicorn, Nginx): stopped with its group by SIGTERM.
    fn service(child: Child) -> ProcessGroup {
        ProcessGroup::new(child, Signal::SIGTERM, STOP_GRACE)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop_tracer();
        // Nginx first, so that no request reaches a Gunicorn going away.
        drop(self.nginx.take());
        drop(self.gunicorn.take());
        // Deleting the namespace kills whatever is still inside.
        drop(self.netns.take());
        let _ = fs::remove_dir_all(&self.tmp);
        println!("demo: cleaned up (tracer, nginx, gunicorn stopped; netns {NETNS} deleted)");
    }
}

/// `/crash` dies of a fault in native code (SIGSEGV: a NULL read through ctypes), as a
/// broken C extension does, with Nginx's request in hand.
const APP: &str = r#"def app(environ, start_response):
    if environ.get("PATH_INFO") == "/crash":
        import ctypes
        ctypes.string_at(0)
    body = b"hello from gunicorn\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

fn nginx_conf(tmp: &Path) -> String {
    xtask::kit::NginxConf {
        dir: tmp,
        user: "www-data",
        workers: 1,
        worker_connections: 64,
        error_log_level: None,
        extra_http: "",
        listen: FRONT,
        proxy_pass: &format!("http://{UPSTREAM}"),
        connect_timeout: "3s",
        read_timeout: None,
    }
    .render()
}

/// `ip netns exec tracer-demo curl ... URL` → the HTTP status ("000" when none).
fn curl(ns: &Netns, url: &str) -> Result<String> {
    check_interrupted()?;
    let out = ns
        .command("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            url,
        ])
        .stdin(Stdio::null())
        .output()
        .context("cannot run curl")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Waits (bounded, Ctrl-C ends it) until `what` (the process `child`) listens on `port`.
fn wait_listening(ns: &Netns, port: u16, what: &str, child: &mut Child, timeout: Duration) -> Result<()> {
    check_interrupted()?;
    match ns.wait_listening(&Listener::Tcp(port), child, timeout, pause)? {
        ListenWait::Listening => Ok(()),
        ListenWait::Exited(st) => bail!("{what} exited ({st}) before listening on port {port}"),
        ListenWait::TimedOut => bail!("{what} did not listen on port {port} within {timeout:?}"),
    }
}

/// Starts a command in its own process group (so Ctrl-C reaches only xtask, and the guard
/// can stop the whole group), output to a log file; printed first.
fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child> {
    eprintln!("{}", crate::util::show(cmd));
    spawn_group_logged(cmd, log).with_context(|| format!("cannot start {:?}", cmd.get_program()))
}

/// Gunicorn with the demo app on UPSTREAM inside the demo namespace, logging to tmp/log.
fn start_gunicorn(ns: &Netns, gunicorn: &Path, tmp: &Path, log: &str) -> Result<Child> {
    spawn_logged(
        ns.command(gunicorn)
            .args(["--bind", UPSTREAM, "--workers", "1", "--chdir"])
            .arg(tmp)
            .arg("app:app"),
        &tmp.join(log),
    )
}

/// `nft ARGS` inside the demo namespace.
fn nft(ns: &Netns, args: &[&str]) -> Result<()> {
    check_interrupted()?;
    run(ns.command("nft").args(args))
}

/// One request for `path` through Nginx with a caption: Nginx's status, the error-log lines
/// it wrote, and a pause so tracer's explanation (printed by its reader thread) appears
/// beside them.
fn request_and_show(ns: &Netns, tmp: &Path, path: &str, what: &str) -> Result<()> {
    let log_before = fs::read_to_string(tmp.join("error.log")).unwrap_or_default().len();
    caption(what);
    let code = curl(ns, &format!("http://{FRONT}{path}"))?;
    let name = match code.as_str() {
        "502" => " Bad Gateway",
        "504" => " Gateway Timeout",
        _ => "",
    };
    println!("Nginx answered {code}{name}");
    pause(Duration::from_millis(700))?;
    let log = fs::read_to_string(tmp.join("error.log")).unwrap_or_default();
    let new = log.get(log_before..).unwrap_or("");
    println!("Nginx's error log says:");
    for line in new.lines().filter(|l| l.contains("upstream")).take(3) {
        println!("  {}", line.split(", client:").next().unwrap_or(line));
    }
    println!("(tracer's explanation, from inside the kernel, is on the `tracer |` lines)");
    pause(Duration::from_secs(1))?;
    Ok(())
}

pub fn demo() -> Result<()> {
    install_handlers()?;
    // TRACER_DEMO_BIN, for working on the demo itself: any program that behaves like tracer.
    let bin = release_or_env("TRACER_DEMO_BIN")?;
    let gunicorn = crate::setup::gunicorn()?;
    check_interrupted()?;

    let tmp = std::env::temp_dir().join(format!("tracer-demo-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    {
        use std::os::unix::fs::PermissionsExt;
        // Nginx's workers (www-data) must reach their temp directories inside.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    }
    let mut stack = Stack::new(tmp.clone());
    fs::write(tmp.join("app.py"), APP)?;
    fs::write(tmp.join("nginx.conf"), nginx_conf(&tmp))?;
    fs::write(tmp.join("error.log"), "")?;

    // (A namespace left by a demo that was killed hard is deleted first.)
    let ns: &Netns = stack.netns.insert(Netns::create(NETNS)?);

    caption("starting tracer in the host namespace (it sees every network namespace)");
    let mut tcmd = Command::new(&bin);
    tcmd.args(["watch", "--port", "8000"]);
    eprintln!("{}", crate::util::show(&tcmd));
    let mut tracer = {
        use std::os::unix::process::CommandExt;
        tcmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    }
    .with_context(|| format!("cannot start {}", bin.display()))?;
    let (mut ready, rx) = ReadyLine::new("tracing:");
    let out = tracer.stdout.take().unwrap();
    let err = tracer.stderr.take().unwrap();
    let tracer: &mut Child = stack.tracer.insert(ProcessGroup::new(tracer, Signal::SIGINT, TRACER_GRACE));
    let p = prefix('|');
    stack.readers.push(read_lines(out, move |line| println!("{p}{line}")));
    let p = prefix('!');
    stack.readers.push(read_lines(err, move |line| {
        println!("{p}{line}");
        ready.see(&line);
    }));
    let (timeout, poll) = (Duration::from_secs(60), Duration::from_millis(100));
    match wait_ready(&rx, tracer, timeout, poll, check_interrupted)? {
        ReadyWait::Ready(_) => {}
        ReadyWait::Exited(st) => bail!("tracer exited ({st}) before it was tracing"),
        ReadyWait::TimedOut => bail!("tracer printed no `tracing:` line within 60 s"),
    }

    caption(&format!(
        "starting Gunicorn on {UPSTREAM} and Nginx on {FRONT} -> {UPSTREAM} (netns {NETNS})"
    ));
    let mut g = start_gunicorn(ns, &gunicorn, &tmp, "gunicorn.log")?;
    let gpid = g.id();
    let waited = wait_listening(ns, 8000, "gunicorn", &mut g, Duration::from_secs(30));
    stack.gunicorn = Some(Stack::service(g));
    waited.map_err(|e| e.context(format!("see {}", tmp.join("gunicorn.log").display())))?;

    let mut n = spawn_logged(
        ns.command("nginx")
            .arg("-c")
            .arg(tmp.join("nginx.conf"))
            .arg("-p")
            .arg(&tmp)
            .arg("-e")
            .arg(tmp.join("error.log")),
        &tmp.join("nginx.out"),
    )?;
    let npid = n.id();
    let waited = wait_listening(ns, 8080, "nginx", &mut n, Duration::from_secs(30));
    stack.nginx = Some(Stack::service(n));
    waited?;
    let workers = children_of(npid);
    println!(
        "Gunicorn master PID {gpid} (workers {:?}); Nginx master PID {npid}, worker PID(s) {workers:?}",
        children_of(gpid)
    );

    caption("healthy request: curl http://127.0.0.1:8080/ (through Nginx)");
    println!("Nginx answered {}", curl(ns, &format!("http://{FRONT}/"))?);
    pause(Duration::from_secs(1))?;

    caption(&format!(
        "now killing Gunicorn (SIGKILL to PID {gpid} and its workers)..."
    ));
    if let Some(g) = stack.gunicorn.as_mut() {
        let _ = killpg(Pid::from_raw(gpid as i32), Signal::SIGKILL);
        let _ = wait_timeout(g, Duration::from_secs(5));
    }
    pause(Duration::from_millis(500))?;
    request_and_show(ns, &tmp, "/", "the same request again")?;

    caption("restarting Gunicorn");
    let mut g = start_gunicorn(ns, &gunicorn, &tmp, "gunicorn2.log")?;
    let waited = wait_listening(ns, 8000, "gunicorn", &mut g, Duration::from_secs(30));
    stack.gunicorn = Some(Stack::service(g));
    waited?;
    pause(Duration::from_millis(500))?;
    println!("Nginx answered {}", curl(ns, &format!("http://{FRONT}/"))?);

    caption("now an nftables rule REJECTS connections to port 8000 with a TCP reset");
    nft(ns, &["add", "table", "inet", "tracer_demo"])?;
    nft(ns, &["add", "chain", "inet", "tracer_demo", "out", "{ type filter hook output priority 0; }"])?;
    nft(ns, &["add", "rule", "inet", "tracer_demo", "out", "tcp", "dport", "8000", "reject", "with", "tcp", "reset"])?;
    request_and_show(ns, &tmp, "/", "the request: Nginx sees 'Connection refused' exactly as for a dead listener")?;
    nft(ns, &["flush", "chain", "inet", "tracer_demo", "out"])?;

    caption("now an nftables rule silently DROPS them (Nginx waits proxy_connect_timeout, 3 s)");
    nft(ns, &["add", "rule", "inet", "tracer_demo", "out", "tcp", "dport", "8000", "drop"])?;
    request_and_show(ns, &tmp, "/", "the request")?;
    nft(ns, &["delete", "table", "inet", "tracer_demo"])?;
    println!("rule removed; Nginx answered {}", curl(ns, &format!("http://{FRONT}/"))?);

    // After the connect: the connection exists, Nginx sent the request, and the worker dies.
    let workers = stack.gunicorn.as_ref().map(|g| children_of(g.id())).unwrap_or_default();
    caption(&format!(
        "now a request whose handler crashes in native code: curl http://{FRONT}/crash (Gunicorn worker(s) {workers:?})"
    ));
    request_and_show(
        ns,
        &tmp,
        "/crash",
        "the request: Nginx only sees the connection close; the kernel saw the worker die of SIGSEGV",
    )?;

    caption("stopping tracer (SIGINT): its final report");
    let clean = stack.stop_tracer();
    if !clean {
        bail!("tracer did not exit cleanly after SIGINT");
    }
    caption("demo finished");
    Ok(())
}
