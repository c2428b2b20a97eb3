//! Why the listener went away (issue 7): each dead-listener finding carries a timeline of the
//! listener's life, made of real kernel events: who listened, the signal and its sender, the
//! exit code, the OOM kill, the unlink of a Unix socket file, the refusals, and the recovery.
//!
//! Real processes only, each scenario in its own network namespace; run via `cargo xtask test`
//! (TRACER_INTEGRATION=1, root, `--test-threads=1`).

mod common;

use std::{path::Path, thread, time::Duration};

use common::*;

fn lifecycle_script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helpers/lifecycle.py")
}

/// The timeline entries of a finding: (what, pid, detail).
fn timeline(f: &FindingLine) -> Vec<(String, u64, String)> {
    f.timeline
        .iter()
        .map(|e| {
            assert!(e.at.ends_with('Z'), "RFC 3339 time: {e:?}");
            (e.what.clone(), u64::from(e.pid), e.detail.clone())
        })
        .collect()
}

fn entry<'a>(t: &'a [(String, u64, String)], what: &str) -> &'a (String, u64, String) {
    t.iter().find(|e| e.0 == what).unwrap_or_else(|| panic!("no {what} entry in {t:?}"))
}

/// A listener SIGKILLed by another process: the signal names its sender, the exit says
/// "killed by SIGKILL", and the listener is still down at the end.
#[test]
fn killed_by_another_process() {
    require_integration!();
    let ns = Netns::new("lckill");
    let tracer = Tracer::diagnose(&["--port", "18301"]);
    let mut listener = ns.helper(&["tcp-listen", "--host", "127.0.0.1", "--port", "18301"]);
    listener.expect("listening");
    ns.exec("kill", &["-KILL", &listener.pid.to_string()]);
    thread::sleep(Duration::from_millis(300));
    let mut client = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", "18301", "--count", "2"]);
    client.finish();

    let run = tracer.finish();
    let f = run.only_finding("127.0.0.1:18301", Cause::DeadListener);
    assert_listener(f, listener.pid);
    let t = timeline(f);
    assert_eq!(entry(&t, "listen").1, listener.pid as u64, "{t:?}");
    let sig = entry(&t, "signal");
    assert_eq!(sig.1, listener.pid as u64);
    assert!(sig.2.starts_with("SIGKILL from kill (pid "), "{t:?}");
    assert_eq!(entry(&t, "exit").2, "killed by SIGKILL");
    assert!(entry(&t, "refused").2.starts_with("2 failed attempts"), "{t:?}");
    assert_eq!(t.last().unwrap().0, "still_down", "{t:?}");
    assert!(f.fix.contains("SIGKILL from kill"), "{f:?}");
}

/// A listener exiting with code 3.
#[test]
fn exit_code_is_reported() {
    require_integration!();
    let ns = Netns::new("lcexit");
    let tracer = Tracer::diagnose(&["--port", "18302"]);
    let mut listener = ns.script(&lifecycle_script(), &["exit-code", "--port", "18302", "--code", "3", "--after", "0.3"]);
    listener.expect("listening");
    let status = wait_timeout(&mut listener.child, Duration::from_secs(10)).expect("the listener exits");
    assert_eq!(status.code(), Some(3));
    let mut client = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", "18302", "--count", "1"]);
    client.finish();

    let run = tracer.finish();
    let f = run.only_finding("127.0.0.1:18302", Cause::DeadListener);
    let t = timeline(f);
    let exit = entry(&t, "exit");
    assert_eq!((exit.1, exit.2.as_str()), (listener.pid as u64, "exited with code 3"), "{t:?}");
    assert!(!t.iter().any(|e| e.0 == "signal"), "no signal was sent: {t:?}");
}

/// A listener killed by the OOM killer inside a memory-limited cgroup (v1 memory controller).
#[test]
fn oom_killed_listener() {
    require_integration!();
    let base = Path::new("/sys/fs/cgroup/memory");
    if !base.join("memory.limit_in_bytes").exists() {
        println!("skipped: no cgroup v1 memory controller at {} to confine an OOM kill", base.display());
        return;
    }
    let cg = base.join(format!("tracer-oom-{}", std::process::id()));
    let _ = std::fs::create_dir(&cg);
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _rm = Rm(cg.clone());
    std::fs::write(cg.join("memory.limit_in_bytes"), "67108864").expect("set a 64 MiB limit");
    let _ = std::fs::write(cg.join("memory.memsw.limit_in_bytes"), "67108864");

    let ns = Netns::new("lcoom");
    let tracer = Tracer::diagnose(&["--port", "18303"]);
    let name = cg.file_name().unwrap().to_string_lossy().into_owned();
    let mut hog = ns.script(&lifecycle_script(), &["hog", "--port", "18303", "--mb", "400", "--cgroup", &name]);
    hog.expect("listening");
    std::fs::write(cg.join("cgroup.procs"), hog.pid.to_string()).expect("move the hog into the limited cgroup");
    hog.expect("confined");
    let status = wait_timeout(&mut hog.child, Duration::from_secs(30)).expect("the OOM killer ends the hog");
    assert!(!status.success(), "the hog must be killed: {status}");
    let mut client = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", "18303", "--count", "1"]);
    client.finish();

    let run = tracer.finish();
    let f = run.only_finding("127.0.0.1:18303", Cause::DeadListener);
    println!("OOM finding: {}", serde_json::to_string_pretty(f).unwrap());
    let t = timeline(f);
    assert_eq!(entry(&t, "oom_kill").1, hog.pid as u64, "{t:?}");
    assert_eq!(entry(&t, "exit").2, "killed by SIGKILL", "{t:?}");
    assert!(f.fix.contains("OOM killer"), "{f:?}");
}

/// A Unix socket file deleted by another process while its listener lives on: unix_missing,
/// naming who deleted it.
#[test]
fn unix_socket_file_unlinked_by_another_process() {
    require_integration!();
    let ns = Netns::new("lcunlink");
    let dir = TempDir::new("lcunlink");
    let path = dir.path("app.sock");
    let tracer = Tracer::diagnose(&["--unix", &path]);
    let mut listener = ns.helper(&["unix-listen", "--path", &path]);
    listener.expect("listening");
    ns.exec("rm", &["-f", &path]);
    let mut client = ns.helper(&["unix-connect", "--path", &path, "--count", "2"]);
    client.finish();

    let run = tracer.finish();
    let f = run.only_finding(&format!("unix:{path}"), Cause::UnixMissing);
    let t = timeline(f);
    assert_eq!(entry(&t, "bind").1, listener.pid as u64, "{t:?}");
    let unlink = entry(&t, "unlink");
    assert!(unlink.2.contains(&path), "{t:?}");
    assert_ne!(unlink.1, listener.pid as u64, "another process deleted it: {t:?}");
    assert!(f.fix.contains("deleted the socket file"), "{f:?}");
}

/// A listener that restarts on the same port after a gap: the timeline ends with the
/// recovery, naming the new listener and the outage's length.
#[test]
fn restart_after_a_gap_is_a_recovery_with_its_outage() {
    require_integration!();
    let ns = Netns::new("lcrestart");
    let tracer = Tracer::diagnose(&["--port", "18305"]);
    let mut first = ns.helper(&["tcp-listen", "--host", "127.0.0.1", "--port", "18305"]);
    first.expect("listening");
    first.sigkill();
    let mut client = ns.helper(&["tcp-connect", "--host", "127.0.0.1", "--port", "18305", "--count", "2"]);
    client.finish();
    thread::sleep(Duration::from_millis(1500));
    let mut second = ns.helper(&["tcp-listen", "--host", "127.0.0.1", "--port", "18305"]);
    second.expect("listening");

    let run = tracer.finish();
    let f = run.only_finding("127.0.0.1:18305", Cause::DeadListener);
    println!("restart finding: {}", serde_json::to_string_pretty(f).unwrap());
    assert_listener(f, first.pid);
    let t = timeline(f);
    let rec = entry(&t, "recovered");
    assert_eq!(rec.1, second.pid as u64, "{t:?}");
    let outage: f64 = rec
        .2
        .split("outage of ")
        .nth(1)
        .and_then(|s| s.trim_end_matches(" s").parse().ok())
        .unwrap_or_else(|| panic!("outage length in {t:?}"));
    assert!((1.4..5.0).contains(&outage), "outage ~1.5 s plus start-up: {outage} ({t:?})");
    drop(second);
}
