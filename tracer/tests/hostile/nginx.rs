//! Nginx discovery and files (issue 10, items 1, 3, 6, 7, 8): a planted "nginx: master
//! process" is never run, files are never read outside a container's root or beyond what
//! that process could read, each namespace's Nginx keeps its own names and log lines, a
//! broken or editor file costs only itself, and a rotation followed by a restart loses no
//! log line.
use std::{
    fs,
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};


use crate::common::{stack::*, *};

/// A stand-in for a hostile local user's "nginx": it renames itself (argv[0]) to the title a
/// real master has, and, were it ever run with `-V` (what tracer used to do), it would write
/// who ran it to MARK and then hang. Static, so it also runs chrooted in an empty root.
const FAKE_MASTER_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* What `nginx -V` would print: tracer must read it from this file, never run it. */
__attribute__((used)) static const char configure[] = " --prefix=/fake --conf-path=/etc/nginx/nginx.conf --error-log-path=/fake/error.log";
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-V") == 0) {
        FILE *f = fopen(MARK, "w");
        if (f) { fprintf(f, "euid=%d\n", (int)geteuid()); fclose(f); }
        for (;;) pause();
    }
    const char *title = getenv("FAKE_TITLE"), *self = getenv("FAKE_SELF");
    if (title && self) {
        char *args[] = {(char *)title, NULL};
        unsetenv("FAKE_TITLE");
        execv(self, args);
        return 127;
    }
    for (;;) pause();
}
"#;

/// Builds the fake master into `dir/fake-nginx` (mode 0755); None, with why, when there is
/// no C compiler able to link statically.
fn build_fake_master(dir: &TempDir, mark: &str) -> Result<PathBuf, String> {
    let src = dir.0.join("fake.c");
    fs::write(&src, FAKE_MASTER_C).unwrap();
    let bin = dir.0.join("fake-nginx");
    let out = Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(&bin)
        .arg(format!("-DMARK=\"{mark}\""))
        .arg(&src)
        .output()
        .map_err(|e| format!("no C compiler (cc): {e}"))?;
    if !out.status.success() {
        return Err(format!("cc -static failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    Ok(bin)
}

/// A running fake master, killed on drop.
struct FakeMaster(Child);

impl FakeMaster {
    /// Starts `cmd` (which runs the fake binary) with the master title `title`, and waits until
    /// /proc shows that title.
    fn start(mut cmd: Command, title: &str, self_path: &str) -> FakeMaster {
        let child = cmd
            .env("FAKE_TITLE", title)
            .env("FAKE_SELF", self_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the fake master");
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.starts_with(title.as_bytes()) {
                return FakeMaster(child);
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("the fake master never took the title {title:?}");
    }
}

impl Drop for FakeMaster {
    fn drop(&mut self) {
        kill_and_reap(&mut self.0);
    }
}

/// The `nginx: master pid N ...` line and the warnings about pid N on tracer's stderr.
fn lines_about(stderr: &str, pid: u32) -> Vec<String> {
    stderr.lines().filter(|l| l.contains(&format!("pid {pid}"))).map(str::to_string).collect()
}

#[test]
fn a_planted_nginx_master_is_read_never_run() {
    require_integration!();
    let dir = TempDir::new("fake-master");
    let mark = dir.path("ran-as");
    let bin = match build_fake_master(&dir, &mark) {
        Ok(b) => b,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    // An unprivileged user (nobody) names itself an nginx master whose configuration is a
    // root-only file.
    let bin_s = bin.display().to_string();
    let title = format!("nginx: master process {bin_s} -c /etc/shadow");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", &bin_s]);
    let fake = FakeMaster::start(cmd, &title, &bin_s);
    let pid = fake.0.id();

    // Start-up is not held up by it (Tracer::start panics after a bounded wait).
    let tracer = Tracer::diagnose(&["--port", "9"]);
    let run = tracer.finish();
    assert!(!Path::new(&mark).exists(), "tracer ran the planted binary: {:?}", fs::read_to_string(&mark));
    let about = lines_about(&run.stderr, pid);
    assert!(
        about.iter().any(|l| l.contains("cannot read /etc/shadow") && l.contains("could not read it itself")),
        "a warning says why the planted configuration was not read:\n{}",
        run.stderr
    );
    assert!(about.iter().any(|l| l.contains("0 upstream targets")), "{}", run.stderr);
    // Nothing of the file's contents (shadow lines look like `root:...`).
    assert!(!run.stderr.contains("root:") && !run.stdout.contains("root:"), "{}", run.stderr);
    drop(fake);
}

#[test]
fn a_symlink_in_a_container_root_does_not_reach_the_host() {
    require_integration!();
    let dir = TempDir::new("fake-root");
    let bin = match build_fake_master(&dir, "/ran-as") {
        Ok(b) => b,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    // On the host: a file with an upstream the container must never be credited with.
    let secret = dir.path("host-secret.conf");
    fs::write(&secret, "http { upstream HOST_ONLY_UPSTREAM { server 127.0.0.1:9; } }\n").unwrap();
    // Two container roots. In `evil`, nginx.conf is an absolute symlink to the host file's
    // path; in `good`, an absolute symlink to a file inside the same root (which must work).
    let mut masters = Vec::new();
    for (name, link) in [("evil", secret.as_str()), ("good", "/etc/nginx/real.conf")] {
        let root = dir.0.join(name);
        fs::create_dir_all(root.join("etc/nginx")).unwrap();
        fs::copy(&bin, root.join("fake-nginx")).unwrap();
        fs::write(root.join("etc/nginx/real.conf"), "http { upstream in_root { server 127.0.0.1:9; } }\n").unwrap();
        symlink(link, root.join("etc/nginx/nginx.conf")).unwrap();
        let title = "nginx: master process /fake-nginx -c /etc/nginx/nginx.conf";
        let mut cmd = Command::new("chroot");
        cmd.arg(&root).arg("/fake-nginx");
        masters.push((name, FakeMaster::start(cmd, title, "/fake-nginx")));
    }
    let run = Tracer::diagnose(&["--port", "9"]).finish();
    let (evil, good) = (masters[0].1 .0.id(), masters[1].1 .0.id());
    let evil_lines = lines_about(&run.stderr, evil);
    assert!(
        evil_lines.iter().any(|l| l.contains("cannot read /etc/nginx/nginx.conf")),
        "the escaping link resolves inside the container's root, where nothing is:\n{}",
        run.stderr
    );
    assert!(evil_lines.iter().any(|l| l.contains("0 upstream targets")), "{}", run.stderr);
    assert!(!run.stderr.contains("HOST_ONLY_UPSTREAM"), "{}", run.stderr);
    assert!(
        lines_about(&run.stderr, good).iter().any(|l| l.contains("1 upstream targets")),
        "an absolute link inside the root is followed inside it:\n{}",
        run.stderr
    );
}

/// The namespace inode of a test namespace.
fn netns_inode(ns: &Netns) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(Path::new("/run/netns").join(&ns.name)).expect("netns file").ino()
}

fn finding_in<'a>(run: &'a TracerRun, target: &str, netns: u64) -> &'a FindingLine {
    let fs = run.findings_for(target);
    let mine: Vec<&&FindingLine> = fs.iter().filter(|f| u64::from(f.netns) == netns).collect();
    assert_eq!(mine.len(), 1, "one finding for {target} in netns {netns}:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    mine[0]
}

fn pids_of(f: &FindingLine) -> Vec<u32> {
    f.clients.iter().map(|c| c.pid).collect()
}

#[test]
fn each_namespace_keeps_its_own_upstream_names_and_log_lines() {
    require_integration!();
    if let Some(why) = stack_missing() {
        println!("skipped: {why}");
        return;
    }
    // Two Nginx in two namespaces send their upstream to the same address, where nothing
    // listens in either: 2 requests in A, 3 in B.
    let (ns_a, ns_b) = (Netns::new("ns-a"), Netns::new("ns-b"));
    let (dir_a, dir_b) = (stack_dir("ns-a"), stack_dir("ns-b"));
    let nginx_a = ns_a.nginx_with(&dir_a, "http://app_a", "2s", "upstream app_a { server 127.0.0.1:9; }");
    let nginx_b = ns_b.nginx_with(&dir_b, "http://app_b", "2s", "upstream app_b { server 127.0.0.1:9; }");
    let tracer = Tracer::diagnose(&["--port", "9"]);
    assert_eq!(ns_a.curls(2, 5), [502, 502]);
    assert_eq!(ns_b.curls(3, 5), [502, 502, 502]);
    let run = tracer.finish();
    for (ns, nginx, upstream, n) in [(&ns_a, &nginx_a, "app_a", 2), (&ns_b, &nginx_b, "app_b", 3)] {
        let f = finding_in(&run, "127.0.0.1:9", netns_inode(ns));
        assert_eq!(f.cause, Cause::DeadListener, "{f:?}");
        assert_eq!(f.count, n, "{f:?}");
        assert_eq!(f.upstream.as_deref(), Some(upstream), "the upstream name of this namespace's Nginx: {f:?}");
        assert_eq!(f.log_lines, n, "only this Nginx's own log lines: {f:?}");
        let workers = nginx.workers();
        assert!(pids_of(f).iter().all(|p| workers.contains(p)), "clients are this Nginx's workers {workers:?}: {f:?}");
    }
}

#[test]
fn an_editor_file_and_a_broken_include_cost_only_themselves() {
    require_integration!();
    if let Some(why) = stack_missing() {
        println!("skipped: {why}");
        return;
    }
    let ns = Netns::new("broken-include");
    let dir = stack_dir("broken-include");
    let confd = dir.0.join("conf.d");
    fs::create_dir_all(&confd).unwrap();
    fs::write(confd.join("app.conf"), "upstream app { server 127.0.0.1:9; }\n").unwrap();
    let include = format!("include {}/*.conf;", confd.display());
    let _nginx = ns.nginx_with(&dir, "http://app", "2s", &include);
    // Nginx runs; then someone edits: an editor's lock file nginx never reads, and a new
    // file with a syntax error that `nginx -t` would reject.
    fs::write(confd.join(".#draft.conf"), "this is { not nginx\n").unwrap();
    fs::write(confd.join("zz-half-edited.conf"), "server { listen 81;\n").unwrap();
    let tracer = Tracer::diagnose(&["--port", "9"]);
    assert_eq!(ns.curls(2, 5), [502, 502]);
    let run = tracer.finish();
    let f = finding_in(&run, "127.0.0.1:9", netns_inode(&ns));
    assert_eq!(f.cause, Cause::DeadListener, "{f:?}");
    assert_eq!(f.upstream.as_deref(), Some("app"), "the configuration that parses still names the upstream: {f:?}");
    assert_eq!(f.log_lines, 2, "log matching still works: {f:?}");
    assert!(
        run.stderr.lines().any(|l| l.contains("zz-half-edited.conf") && l.contains("warning")),
        "the file that does not parse is named:\n{}",
        run.stderr
    );
    assert!(!run.stderr.contains(".#draft.conf"), "nginx never reads the editor's file:\n{}", run.stderr);
}

#[test]
fn a_rotation_then_a_restart_loses_no_log_line() {
    require_integration!();
    if let Some(why) = stack_missing() {
        println!("skipped: {why}");
        return;
    }
    let ns = Netns::new("rotate");
    let dir = stack_dir("rotate");
    let upstream = "upstream app { server 127.0.0.1:9; }";
    let nginx = ns.nginx_with(&dir, "http://app", "2s", upstream);
    let tracer = Tracer::diagnose(&["--port", "9"]);
    assert_eq!(ns.curls(2, 5), [502, 502]);
    // logrotate moves the log away; then the master is replaced (an upgrade, a crash and
    // systemd's restart): the old master, whose root tracer read the log through, is gone.
    fs::rename(&nginx.error_log, dir.0.join("error.log.1")).unwrap();
    drop(nginx);
    let nginx = ns.nginx_with(&dir, "http://app", "2s", upstream);
    assert_eq!(ns.curls(3, 5), [502, 502, 502]);
    let run = tracer.finish();
    let f = finding_in(&run, "127.0.0.1:9", netns_inode(&ns));
    assert_eq!(f.count, 5, "{f:?}");
    assert_eq!(f.log_lines, 5, "2 lines in the rotated file, 3 in the new one: {f:?}");
    drop(nginx);
}
