//! Network namespaces, named by the inode of their nsfs file (what the kernel programs read as
//! `net->ns.inum`). The registry keeps one open /proc/PID/ns/net per namespace so a sock_diag
//! socket can be created inside it, and one pid per namespace to read its /proc/PID/net files.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;

/// The network namespace inode of a process; None when it exited or may not be inspected.
pub fn netns_inode_of_pid(pid: u32) -> Option<u32> {
    inode_of(&format!("/proc/{pid}/ns/net"))
}

/// This process's network namespace inode.
pub fn own_netns_inode() -> Option<u32> {
    inode_of("/proc/self/ns/net")
}

fn inode_of(ns_path: &str) -> Option<u32> {
    // metadata() follows the magic link to the nsfs inode, whose number is ns.inum (32 bits).
    u32::try_from(fs::metadata(ns_path).ok()?.ino()).ok()
}

/// The text of a file read from inside network namespace `netns` (an open /proc/PID/ns/net).
/// /proc/sys/net answers for the namespace of the task that opens it, so a short-lived thread
/// enters the namespace (setns affects only the calling thread), reads and exits.
pub fn read_in_netns(netns: BorrowedFd<'_>, path: &str) -> std::io::Result<String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                fs::read_to_string(path)
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("netns reader thread panicked")))
    })
}

/// Every pid in /proc, ascending (lowest first: usually the parent of a process family).
pub fn all_pids() -> Vec<u32> {
    // Each `Process` holds an fd on its /proc directory: keep only the pid.
    let mut pids: Vec<u32> = procfs::process::all_processes()
        .map(|all| all.filter_map(|p| u32::try_from(p.ok()?.pid()).ok()).collect())
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

struct NetnsEntry {
    /// Keeps a handle on the namespace for setns(); dropped when no process is in it any more.
    file: File,
    /// A process in the namespace when it was last scanned.
    pid: u32,
}

/// Network namespaces that have at least one process, found by scanning /proc.
#[derive(Default)]
pub struct NetnsRegistry {
    entries: HashMap<u32, NetnsEntry>,
}

impl NetnsRegistry {
    pub fn new() -> NetnsRegistry {
        NetnsRegistry::default()
    }

    /// Rescans /proc/*/ns/net: adds new namespaces, updates each one's pid, and forgets the
    /// ones no process is in any more (so their handles do not keep dead namespaces alive).
    pub fn refresh(&mut self) {
        let mut seen: HashMap<u32, u32> = HashMap::new();
        for pid in all_pids() {
            if let Some(inode) = netns_inode_of_pid(pid) {
                seen.entry(inode).or_insert(pid);
            }
        }
        self.entries.retain(|inode, _| seen.contains_key(inode));
        for (inode, pid) in seen {
            if let Some(entry) = self.entries.get_mut(&inode) {
                entry.pid = pid;
                continue;
            }
            // The process may have exited or moved since the stat: check the inode again.
            let Ok(file) = File::open(format!("/proc/{pid}/ns/net")) else { continue };
            match file.metadata() {
                Ok(m) if m.ino() == u64::from(inode) => {
                    self.entries.insert(inode, NetnsEntry { file, pid });
                }
                _ => {}
            }
        }
    }

    /// Known namespace inodes, ascending.
    pub fn inodes(&self) -> Vec<u32> {
        let mut inodes: Vec<u32> = self.entries.keys().copied().collect();
        inodes.sort_unstable();
        inodes
    }

    pub fn contains(&self, inode: u32) -> bool {
        self.entries.contains_key(&inode)
    }

    /// A handle on namespace `inode`, rescanning /proc once when it is not known yet.
    pub fn handle(&mut self, inode: u32) -> Option<BorrowedFd<'_>> {
        if !self.entries.contains_key(&inode) {
            self.refresh();
        }
        self.entries.get(&inode).map(|e| e.file.as_fd())
    }

    /// A process in namespace `inode` at the last scan (it may have exited since).
    pub fn pid(&self, inode: u32) -> Option<u32> {
        self.entries.get(&inode).map(|e| e.pid)
    }

    /// (namespace inode, pid) pairs, ascending by inode.
    pub fn pids(&self) -> Vec<(u32, u32)> {
        self.inodes().into_iter().filter_map(|i| Some((i, self.pid(i)?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_namespace() {
        let own = own_netns_inode().expect("/proc/self/ns/net");
        assert_eq!(netns_inode_of_pid(std::process::id()), Some(own));
        assert_eq!(netns_inode_of_pid(u32::MAX), None);
        let mut registry = NetnsRegistry::new();
        assert!(registry.handle(own).is_some());
        assert!(registry.contains(own));
        assert!(registry.pid(own).is_some());
        assert!(registry.handle(1).is_none(), "inode 1 is no namespace");
    }
}
