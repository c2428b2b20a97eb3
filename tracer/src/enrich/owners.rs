//! Who owns a socket: socket inode -> process, by scanning /proc/*/fd for `socket:[INODE]`.
//! A listener shared by a process family (nginx, gunicorn workers) is attributed to the lowest
//! pid holding it, normally the parent that created it, so the answer is stable across scans.

use std::collections::{HashMap, HashSet};

use procfs::process::{FDTarget, Process};

use crate::event::TaskInfo;

use super::netns::all_pids;

/// Owners kept at most; beyond that the cache starts over (listeners are few; this only
/// bounds memory on hosts with unusual churn).
const MAX_CACHED_OWNERS: usize = 4096;

#[derive(Default)]
pub struct OwnerCache {
    owners: HashMap<u64, TaskInfo>,
}

impl OwnerCache {
    pub fn new() -> OwnerCache {
        OwnerCache::default()
    }

    /// Owners of the given socket inodes. Cached answers whose process is gone, and inodes
    /// never seen, cost one /proc scan in total; inodes nobody holds are left out.
    pub fn owners_of(&mut self, inodes: &[u64]) -> HashMap<u64, TaskInfo> {
        let missing: HashSet<u64> = inodes
            .iter()
            .copied()
            .filter(|inode| match self.owners.get(inode) {
                Some(task) => process(task.pid).is_none(),
                None => true,
            })
            .collect();
        if !missing.is_empty() {
            for inode in &missing {
                self.owners.remove(inode);
            }
            let found = scan_socket_owners(&missing);
            if self.owners.len() + found.len() > MAX_CACHED_OWNERS {
                self.owners.clear();
            }
            self.owners.extend(found);
        }
        inodes.iter().filter_map(|i| Some((*i, self.owners.get(i)?.clone()))).collect()
    }
}

/// Scans /proc/*/fd (lowest pid first) for the wanted socket inodes.
pub fn scan_socket_owners(wanted: &HashSet<u64>) -> HashMap<u64, TaskInfo> {
    let mut found: HashMap<u64, TaskInfo> = HashMap::new();
    for pid in all_pids() {
        if found.len() == wanted.len() {
            break;
        }
        let Some(fds) = process(pid).and_then(|p| p.fd().ok()) else { continue };
        let mut task: Option<TaskInfo> = None;
        for fd in fds.flatten() {
            let FDTarget::Socket(inode) = fd.target else { continue };
            if wanted.contains(&inode) && !found.contains_key(&inode) {
                // Read comm and uid once per process, and only for processes that matter.
                let owner = task.get_or_insert_with(|| task_info(pid)).clone();
                found.insert(inode, owner);
            }
        }
    }
    found
}

fn process(pid: u32) -> Option<Process> {
    Process::new(i32::try_from(pid).ok()?).ok()
}

/// pid, comm and real uid of a process (comm empty, uid 0 when it exited meanwhile).
pub fn task_info(pid: u32) -> TaskInfo {
    let p = process(pid);
    // stat's comm is the raw name (status' Name is escaped).
    let comm = p.as_ref().and_then(|p| p.stat().ok()).map(|s| s.comm).unwrap_or_default();
    let uid = p.and_then(|p| p.status().ok()).map(|s| s.ruid).unwrap_or(0);
    TaskInfo { pid, tid: pid, uid, comm }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn finds_the_owner_of_own_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = fs::metadata(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&listener))).unwrap().ino();
        let mut cache = OwnerCache::new();
        let owners = cache.owners_of(&[inode, u64::MAX]);
        let me = owners.get(&inode).expect("own socket found");
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.uid, fs::metadata("/proc/self").unwrap().uid());
        assert!(!me.comm.is_empty());
        assert!(!owners.contains_key(&u64::MAX));
        // Cached now: a second lookup needs no scan and gives the same answer.
        assert_eq!(cache.owners_of(&[inode]).get(&inode), Some(me));
    }
}
