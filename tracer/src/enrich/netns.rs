//! Network namespaces, named by the inode of their nsfs file (what the kernel programs read as
//! `net->ns.inum`). The registry keeps one open /proc/PID/ns/net per namespace so a sock_diag
//! socket can be created inside it, and one pid per namespace to read its /proc/PID/net files.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

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

/// The namespaces `ip netns` named: each entry of `NAMED_NETNS_DIR` that is an nsfs file (a
/// plain file or a symlink there is skipped), by inode.
fn named_namespaces() -> HashMap<u32, NamedNetns> {
    let mut out = HashMap::new();
    let Ok(dir) = fs::read_dir(NAMED_NETNS_DIR) else { return out };
    for entry in dir.flatten().take(MAX_NAMED) {
        let Ok(name) = entry.file_name().into_string() else { continue };
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(entry.path());
        let Ok(file) = opened else { continue };
        let nsfs = nix::sys::statfs::fstatfs(&file).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC);
        let inode = file.metadata().ok().and_then(|m| u32::try_from(m.ino()).ok());
        if let (true, Some(inode)) = (nsfs, inode) {
            out.insert(inode, NamedNetns { file, name });
        }
    }
    out
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

/// Where `ip netns add` keeps named namespaces (nsfs files bind-mounted there): such a
/// namespace may hold no process at all (a router's, or a test's between its commands).
const NAMED_NETNS_DIR: &str = "/run/netns";
/// Bound on the names read there.
const MAX_NAMED: usize = 4096;

/// A namespace named in `NAMED_NETNS_DIR`.
struct NamedNetns {
    file: File,
    name: String,
}

/// Network namespaces that have at least one process, found by scanning /proc, and the named
/// ones of `ip netns` (entered only to read their firewall rules).
#[derive(Default)]
pub struct NetnsRegistry {
    entries: HashMap<u32, NetnsEntry>,
    named: HashMap<u32, NamedNetns>,
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
        self.named = named_namespaces();
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

    /// A handle on namespace `inode` also when no process is in it but `ip netns` named it.
    pub fn handle_or_named(&mut self, inode: u32) -> Option<BorrowedFd<'_>> {
        if !self.entries.contains_key(&inode) && !self.named.contains_key(&inode) {
            self.refresh();
        }
        match self.entries.get(&inode) {
            Some(e) => Some(e.file.as_fd()),
            None => self.named.get(&inode).map(|n| n.file.as_fd()),
        }
    }

    /// Every namespace known, with processes or only named by `ip netns`, ascending.
    pub fn all_inodes(&self) -> Vec<u32> {
        let mut inodes: Vec<u32> = self.entries.keys().chain(self.named.keys()).copied().collect();
        inodes.sort_unstable();
        inodes.dedup();
        inodes
    }

    /// The `ip netns` name of namespace `inode`, when it has one.
    pub fn name(&self, inode: u32) -> Option<&str> {
        self.named.get(&inode).map(|n| n.name.as_str())
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
