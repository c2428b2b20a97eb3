//! Start-up refusals of filters and files that name nothing usable, before anything is attached.

use anyhow::{bail, Result};

use crate::cli::TraceArgs;
use crate::{enrich, nginx};

/// Refuses, before anything is attached, what names nothing usable: `--netns` and `--cgroup`
/// filters that match nothing on the host when tracing starts (they would end in "No failed
/// upstream connections seen.", a false all-clear; a namespace inode cannot be known before
/// the namespace exists, and a cgroup filter is meant for a container or unit that runs), and
/// `--nginx-error-log` files that are not regular files (a FIFO would block the open).
pub fn validate_args(args: &TraceArgs) -> Result<()> {
    for path in &args.nginx_error_logs {
        // Opened again, and held, by the operator once attached; this open only checks.
        nginx::LogTail::open(path)?;
    }
    if let Some(inode) = args.netns {
        if !existing_netns_inodes().contains(&inode) {
            bail!(
                "--netns {inode}: no network namespace has this inode now; give one that `lsns -t net` or `readlink /proc/PID/ns/net` shows"
            );
        }
    }
    if let Some(text) = &args.cgroup {
        if !cgroup_exists_containing(text) {
            bail!(
                "--cgroup {text:?}: no cgroup path contains this text now (see /proc/PID/cgroup or `systemd-cgls`); start tracer once the container or unit runs"
            );
        }
    }
    Ok(())
}

/// The network namespaces of every process, and those kept by `ip netns add` without one.
fn existing_netns_inodes() -> std::collections::HashSet<u32> {
    use std::os::unix::fs::MetadataExt;
    let mut inodes: std::collections::HashSet<u32> =
        enrich::netns::all_pids().into_iter().filter_map(enrich::netns_inode_of_pid).collect();
    for dir in ["/run/netns", "/var/run/netns"] {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.filter_map(|e| e.ok()) {
            if let Some(inode) = std::fs::metadata(entry.path()).ok().and_then(|m| u32::try_from(m.ino()).ok()) {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// Whether some process's cgroup path (what `--cgroup` is matched against) or some cgroup
/// under /sys/fs/cgroup contains `text`.
fn cgroup_exists_containing(text: &str) -> bool {
    let by_process = enrich::netns::all_pids()
        .into_iter()
        .filter_map(enrich::cgroup::cgroup_of)
        .any(|c| c.path.contains(text));
    by_process || cgroup_dir_containing(std::path::Path::new("/sys/fs/cgroup"), "", text, &mut 0)
}

/// Walks the cgroup tree below `dir` (as `/relative/path`), bounded in depth and in the number
/// of cgroups visited so that a huge tree cannot stall start-up.
fn cgroup_dir_containing(dir: &std::path::Path, relative: &str, text: &str, visited: &mut usize) -> bool {
    const MAX_CGROUPS: usize = 200_000;
    if relative.matches('/').count() > 32 {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    for entry in entries.filter_map(|e| e.ok()) {
        // Directories only: the tree's files are its control knobs. DirEntry::file_type does
        // not follow symlinks, and cgroupfs has none.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        *visited += 1;
        if *visited > MAX_CGROUPS {
            return false;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        let path = format!("{relative}/{name}");
        if path.contains(text) || cgroup_dir_containing(&entry.path(), &path, text, visited) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::diagnose_args;

    #[test]
    fn filters_naming_nothing_are_refused_in_one_line() {
        let own = enrich::netns::own_netns_inode().expect("own netns");
        validate_args(&diagnose_args(&["--netns", &own.to_string()]).unwrap()).expect("the namespace tracer runs in exists");
        // Namespace inodes are allocated from 0xF0000000 up: 12345 is never one.
        let e = validate_args(&diagnose_args(&["--netns", "12345"]).unwrap()).unwrap_err().to_string();
        assert!(e.starts_with("--netns 12345: no network namespace has this inode now") && !e.contains('\n'), "{e}");

        let e = validate_args(&diagnose_args(&["--cgroup", "no-such-cgroup-\u{1b}[2J"]).unwrap()).unwrap_err().to_string();
        assert!(e.starts_with("--cgroup \"no-such-cgroup-\\u{1b}[2J\": no cgroup path contains"), "{e}");
        assert!(!e.contains('\n') && !e.contains('\x1b'), "{e}");
        if let Some(own) = enrich::cgroup::cgroup_of(std::process::id()) {
            validate_args(&diagnose_args(&["--cgroup", &own.path]).unwrap()).expect("tracer's own cgroup exists");
        }
    }


    #[test]
    fn error_logs_that_are_not_regular_files_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("tracer-unit-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let file = dir.join("error.log");
        std::fs::write(&file, "old line\n").unwrap();
        for (path, kind) in [(&fifo, "FIFO"), (&dir, "directory")] {
            // No writer on the FIFO: a blocking open would hang this test.
            let e = validate_args(&diagnose_args(&["--nginx-error-log", path.to_str().unwrap()]).unwrap()).unwrap_err();
            let e = format!("{e:#}");
            assert!(e.contains(path.to_str().unwrap()) && e.contains("regular file") && !e.contains('\n'), "{kind}: {e}");
        }
        let missing = dir.join("missing.log");
        assert!(validate_args(&diagnose_args(&["--nginx-error-log", missing.to_str().unwrap()]).unwrap()).is_err());
        validate_args(&diagnose_args(&["--nginx-error-log", file.to_str().unwrap()]).unwrap()).expect("a regular file");
        let _ = std::fs::remove_dir_all(&dir);
    }


    #[test]
    fn cgroup_tree_walk_finds_nested_paths_only() {
        let root = std::env::temp_dir().join(format!("tracer-unit-cgroups-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("system.slice/gunicorn.service")).unwrap();
        std::fs::write(root.join("system.slice/cgroup.procs"), "").unwrap();
        let found = |text: &str| cgroup_dir_containing(&root, "", text, &mut 0);
        assert!(found("gunicorn.service"));
        assert!(found("/system.slice/gunicorn"));
        assert!(!found("cgroup.procs"), "files are no cgroups");
        assert!(!found("no-such"));
        let _ = std::fs::remove_dir_all(&root);
    }

}
