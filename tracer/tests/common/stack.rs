//! The real stack an SRE runs: Nginx (Debian package, workers as www-data) proxying to
//! Gunicorn (PyPI, a tiny WSGI app) inside a test's network namespace, plus curl and wrk to
//! drive it. Every process is started in its own process group and killed by a guard.
#![allow(dead_code)]

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, killpg, Signal},
    unistd::Pid,
};
use xtask::kit::{spawn_group_logged, ListenWait, Listener, ProcessGroup};

use super::{wait_timeout, Netns, TempDir};

/// Nginx listens here inside the namespace.
pub const FRONT_PORT: u16 = 8080;
/// How long a service may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGKILLed group's leader may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// The WSGI app: answers 200 after `SLOW` seconds (0 by default), so a test can make one
/// sync worker busy enough for the accept queue to overflow. `/crash` dies of a fault in
/// native code (SIGSEGV: a NULL read through ctypes), the way a broken C extension does.
const APP: &str = r#"import os, time
SLOW = float(os.environ.get("SLOW", "0"))
def app(environ, start_response):
    if environ.get("PATH_INFO") == "/crash":
        import ctypes
        ctypes.string_at(0)
    if SLOW:
        time.sleep(SLOW)
    body = b"hello from gunicorn\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

/// The Gunicorn executable `cargo xtask setup` installed (target/venv), or TRACER_GUNICORN.
pub fn gunicorn_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TRACER_GUNICORN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv/bin/gunicorn")
}

/// Why the Nginx suite cannot run here (beyond root and TRACER_INTEGRATION), if so.
pub fn stack_missing() -> Option<String> {
    if !gunicorn_bin().exists() {
        return Some(format!("{} is missing (run `cargo xtask setup`)", gunicorn_bin().display()));
    }
    if Command::new("nginx").arg("-v").output().is_err() {
        return Some("nginx is not installed (run `cargo xtask setup`)".into());
    }
    None
}

pub struct GunicornOpts<'a> {
    /// `127.0.0.1:8000` or `unix:/path`.
    pub bind: &'a str,
    pub workers: u32,
    pub backlog: Option<u32>,
    /// Seconds each request takes.
    pub slow_s: f64,
    /// Gunicorn's --umask (decides a Unix socket file's mode).
    pub umask: Option<&'a str>,
    /// Threads per worker: the gthread worker class, which (unlike sync) serves several
    /// requests at once and keeps HTTP/1.1 connections alive.
    pub threads: Option<u32>,
    /// --keep-alive: seconds a gthread worker keeps an idle connection open.
    pub keep_alive: Option<u32>,
}

impl Default for GunicornOpts<'_> {
    fn default() -> Self {
        GunicornOpts {
            bind: "127.0.0.1:8000",
            workers: 2,
            backlog: None,
            slow_s: 0.0,
            umask: None,
            threads: None,
            keep_alive: None,
        }
    }
}

/// A running Gunicorn (its master's pid; workers are its children), SIGKILLed with its
/// whole group on drop.
pub struct Gunicorn {
    child: ProcessGroup,
    pub pid: u32,
    pub log: PathBuf,
}

impl Gunicorn {
    /// SIGKILL to the whole process group: master and workers die at once, as in a crash or
    /// an OOM kill, leaving a Unix socket file behind.
    pub fn crash(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        let _ = wait_timeout(&mut self.child, Duration::from_secs(10));
    }
}

/// A running Nginx master (workers are its children), SIGKILLed with its whole group on drop.
pub struct Nginx {
    child: ProcessGroup,
    pub master: u32,
    pub error_log: PathBuf,
}

impl Nginx {
    /// The worker processes' pids.
    pub fn workers(&self) -> Vec<u32> {
        children_of(self.master)
    }

    pub fn error_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.error_log).unwrap_or_default().lines().map(str::to_string).collect()
    }

    /// Error-log lines containing `needle`.
    pub fn errors_with(&self, needle: &str) -> Vec<String> {
        self.error_lines().into_iter().filter(|l| l.contains(needle)).collect()
    }
}

/// The workers of an Nginx or Gunicorn master (the kit's, shared with the demo).
pub use xtask::kit::children_of;

/// A directory Nginx's workers (www-data) can traverse.
pub fn stack_dir(name: &str) -> TempDir {
    let d = TempDir::new(name);
    let _ = fs::set_permissions(&d.0, fs::Permissions::from_mode(0o755));
    d
}

impl Netns {
    /// Starts `program` inside the namespace, in its own process group (so a crash can take
    /// the master and its workers at once), output to `log`; guarded from the start, so a
    /// service that never listens is stopped too.
    fn spawn_in(&self, program: &Path, args: &[String], log: &Path) -> ProcessGroup {
        let child = spawn_group_logged(self.command(program).args(args), log)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        ProcessGroup::new(child, Signal::SIGKILL, REAP_TIMEOUT)
    }

    /// The kit's bounded wait for a listener; panics with the service's log when it fails.
    fn wait_listening_or_panic(&self, what: &Listener, child: &mut Child, log: &Path) {
        let sleep = |d| {
            thread::sleep(d);
            Ok(())
        };
        match self.0.wait_listening(what, child, START_TIMEOUT, sleep).expect("sleeping cannot fail") {
            ListenWait::Listening => {}
            ListenWait::Exited(status) => {
                panic!("{what:?} exited ({status}) before listening:\n{}", fs::read_to_string(log).unwrap_or_default())
            }
            ListenWait::TimedOut => panic!(
                "nothing listens on {what:?} after {START_TIMEOUT:?}:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }

    /// Starts Gunicorn with the test app and waits until it listens.
    pub fn gunicorn(&self, dir: &TempDir, o: &GunicornOpts) -> Gunicorn {
        fs::write(dir.0.join("app.py"), APP).expect("write app.py");
        let mut args: Vec<String> = vec![
            "--chdir".into(),
            dir.0.display().to_string(),
            "--bind".into(),
            o.bind.into(),
            "--workers".into(),
            o.workers.to_string(),
            "--env".into(),
            format!("SLOW={}", o.slow_s),
            "--timeout".into(),
            "60".into(),
        ];
        if let Some(b) = o.backlog {
            args.extend(["--backlog".into(), b.to_string()]);
        }
        if let Some(u) = o.umask {
            args.extend(["--umask".into(), u.into()]);
        }
        if let Some(t) = o.threads {
            args.extend(["--worker-class".into(), "gthread".into(), "--threads".into(), t.to_string()]);
        }
        if let Some(k) = o.keep_alive {
            args.extend(["--keep-alive".into(), k.to_string()]);
        }
        args.push("app:app".into());
        let log = dir.0.join("gunicorn.log");
        let mut child = self.spawn_in(&gunicorn_bin(), &args, &log);
        let what = match o.bind.strip_prefix("unix:") {
            Some(p) => Listener::Unix(p.to_string()),
            None => Listener::Tcp(o.bind.rsplit(':').next().unwrap().parse().expect("port")),
        };
        self.wait_listening_or_panic(&what, &mut child, &log);
        // The workers boot after the master listens; requests before that would only queue.
        let deadline = Instant::now() + START_TIMEOUT;
        while children_of(child.id()).len() < o.workers as usize && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        thread::sleep(Duration::from_millis(300));
        Gunicorn { pid: child.id(), child, log }
    }

    /// Starts Nginx (master root, workers www-data) on :8080 with `proxy_pass <proxy_pass>`.
    pub fn nginx(&self, dir: &TempDir, proxy_pass: &str, connect_timeout: &str) -> Nginx {
        self.nginx_with(dir, proxy_pass, connect_timeout, "")
    }

    /// The same, with extra text inside `http { }` (upstream blocks, more servers).
    pub fn nginx_with(&self, dir: &TempDir, proxy_pass: &str, connect_timeout: &str, extra_http: &str) -> Nginx {
        self.nginx_read_timeout(dir, proxy_pass, connect_timeout, "30s", extra_http)
    }

    /// The same, with `proxy_read_timeout <read_timeout>` (how long Nginx waits for a response).
    pub fn nginx_read_timeout(
        &self,
        dir: &TempDir,
        proxy_pass: &str,
        connect_timeout: &str,
        read_timeout: &str,
        extra_http: &str,
    ) -> Nginx {
        let listen = format!("127.0.0.1:{FRONT_PORT}");
        let conf = xtask::kit::NginxConf {
            dir: &dir.0,
            user: "www-data",
            workers: 2,
            worker_connections: 512,
            error_log_level: Some("error"),
            extra_http,
            listen: &listen,
            proxy_pass,
            connect_timeout,
            read_timeout: Some(read_timeout),
        }
        .render();
        let conf_path = dir.0.join("nginx.conf");
        fs::write(&conf_path, conf).expect("write nginx.conf");
        let log = dir.0.join("nginx.out");
        let args = vec!["-c".to_string(), conf_path.display().to_string()];
        let mut child = self.spawn_in(Path::new("nginx"), &args, &log);
        self.wait_listening_or_panic(&Listener::Tcp(FRONT_PORT), &mut child, &log);
        let deadline = Instant::now() + START_TIMEOUT;
        while children_of(child.id()).len() < 2 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        Nginx { master: child.id(), child, error_log: dir.0.join("error.log") }
    }

    /// One request through Nginx: the HTTP status (0 when none came back).
    pub fn curl(&self, max_time_s: u32) -> u16 {
        let out = self
            .command("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time"])
            .arg(max_time_s.to_string())
            .arg(format!("http://127.0.0.1:{FRONT_PORT}/"))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    }

    /// One request through a `Netns` handle that must not delete the namespace when dropped
    /// (for threads that share the test's namespace).
    pub fn curl_keep(self, max_time_s: u32) -> u16 {
        let status = self.curl(max_time_s);
        std::mem::forget(self);
        status
    }

    /// `n` requests in a row: their statuses.
    pub fn curls(&self, n: usize, max_time_s: u32) -> Vec<u16> {
        (0..n).map(|_| self.curl(max_time_s)).collect()
    }

    /// wrk against Nginx (bounded: `secs` seconds, `conns` connections); its summary text.
    pub fn wrk(&self, conns: u32, secs: u32) -> String {
        let out = self
            .command("wrk")
            .args(["-t", "2"])
            .args(["-c", &conns.to_string(), "-d", &format!("{secs}s"), "--timeout", "20s"])
            .arg(format!("http://127.0.0.1:{FRONT_PORT}/"))
            .output()
            .expect("run wrk");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The uid of a user (e.g. www-data), from /etc/passwd.
pub fn uid_of(user: &str) -> u32 {
    fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&user)).then(|| f.get(2).and_then(|u| u.parse().ok())).flatten()
        })
        .unwrap_or_else(|| panic!("no user {user} in /etc/passwd"))
}

/// "Non-2xx or 3xx responses: N" from wrk's summary (0 when absent).
pub fn wrk_non_2xx(summary: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:").map(|n| n.trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

/// Total requests from wrk's summary ("N requests in ...").
pub fn wrk_requests(summary: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.trim().parse().ok()))
        .unwrap_or(0)
}

pub fn sigkill(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}
