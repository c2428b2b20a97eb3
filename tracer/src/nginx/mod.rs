//! Nginx awareness: find running Nginx masters (any network or mount namespace), read their
//! configuration through /proc/PID/root, and map every upstream target to its upstream name and
//! `server`/`*_pass` line; read the error log(s) written during the trace.
//!
//! `config` and `errlog` are pure; this file is the I/O edge.
pub mod config;
pub mod errlog;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use config::{ConfigFiles, NginxConfig};

use crate::enrich::netns_inode_of_pid;
use crate::event::Target;

/// One running Nginx master and what its configuration says.
#[derive(Debug)]
pub struct NginxInstance {
    pub master: u32,
    pub netns: u32,
    /// The main configuration file as the master sees it (inside its mount namespace).
    pub conf: String,
    pub config: Result<NginxConfig, String>,
}

impl NginxInstance {
    /// A path of the master's mount namespace, as this process can open it.
    pub fn host_path(&self, path: &str) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.master)).join(path.trim_start_matches('/'))
    }
}

/// Reads configuration files inside a process's mount namespace.
struct ProcRootFiles {
    root: PathBuf,
}

impl ConfigFiles for ProcRootFiles {
    fn read(&self, path: &str) -> Option<String> {
        fs::read_to_string(self.root.join(path.trim_start_matches('/'))).ok()
    }

    fn glob(&self, pattern: &str) -> Vec<String> {
        let Some((dir, file_pattern)) = pattern.rsplit_once('/') else { return Vec::new() };
        let Ok(entries) = fs::read_dir(self.root.join(dir.trim_start_matches('/'))) else { return Vec::new() };
        let mut out: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| wildcard_match(file_pattern, name))
            .map(|name| format!("{dir}/{name}"))
            .collect();
        // nginx includes in sorted order.
        out.sort();
        out
    }
}

/// `*` matches any run of characters (all nginx include patterns need in practice).
fn wildcard_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            name.starts_with(head) && {
                let rest = &name[head.len()..];
                (0..=rest.len()).any(|i| rest.is_char_boundary(i) && wildcard_match(tail, &rest[i..]))
            }
        }
    }
}

/// The compiled-in defaults of an nginx binary (`nginx -V`): prefix, conf path, error log.
fn compiled_defaults(exe: &Path) -> (String, String, String) {
    let mut prefix = "/usr/share/nginx".to_string();
    let mut conf = "/etc/nginx/nginx.conf".to_string();
    let mut error_log = "/var/log/nginx/error.log".to_string();
    if let Ok(out) = Command::new(exe).arg("-V").output() {
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        for word in text.split_whitespace() {
            if let Some(v) = word.strip_prefix("--prefix=") {
                prefix = v.to_string();
            } else if let Some(v) = word.strip_prefix("--conf-path=") {
                conf = v.to_string();
            } else if let Some(v) = word.strip_prefix("--error-log-path=") {
                error_log = v.to_string();
            }
        }
    }
    (prefix, conf, error_log)
}

/// Every Nginx master on the host with its parsed configuration.
pub fn discover() -> Vec<NginxInstance> {
    let Ok(proc_dir) = fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for entry in proc_dir.filter_map(|e| e.ok()) {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        // nginx rewrites its title: "nginx: master process nginx -c /etc/nginx/nginx.conf".
        let title = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let Some(args) = title.trim().strip_prefix("nginx: master process") else { continue };
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let (mut prefix, mut conf, default_error_log) = compiled_defaults(&exe);
        let words: Vec<&str> = args.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            match *w {
                "-c" => conf = words.get(i + 1).unwrap_or(&"").to_string(),
                "-p" => prefix = words.get(i + 1).unwrap_or(&"").to_string(),
                _ => {}
            }
        }
        if !conf.starts_with('/') {
            conf = format!("{}/{conf}", prefix.trim_end_matches('/'));
        }
        let files = ProcRootFiles { root: PathBuf::from(format!("/proc/{pid}/root")) };
        let config = config::parse(&files, &conf, &prefix).map(|mut c| {
            if c.error_logs.is_empty() {
                c.error_logs.push(default_error_log.clone());
            }
            c
        });
        out.push(NginxInstance { master: pid, netns: netns_inode_of_pid(pid).unwrap_or(0), conf, config });
    }
    out
}

/// The configured target matching `target` in `netns` (any instance when netns is unknown).
pub fn lookup<'a>(instances: &'a [NginxInstance], netns: u32, target: &Target) -> Option<&'a config::ConfiguredTarget> {
    let mut fallback = None;
    for inst in instances {
        let Ok(cfg) = &inst.config else { continue };
        if let Some(t) = cfg.lookup(target) {
            if inst.netns == netns || netns == 0 {
                return Some(t);
            }
            fallback.get_or_insert(t);
        }
    }
    fallback
}

/// An error log being followed: the file as it was when tracing started (held open, so a
/// master that exits or a path that changes does not lose it) and where it ended then.
pub struct LogTail {
    pub path: PathBuf,
    file: fs::File,
    start: u64,
    /// (device, inode) of the held file, to notice a rotation and to skip duplicates.
    pub id: (u64, u64),
}

/// At most this much log is read per file per trace.
const MAX_LOG_READ: u64 = 64 << 20;

fn read_from(f: &mut fs::File, from: u64) -> Vec<String> {
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    // Truncated in place (copytruncate): read it from the start.
    let from = if len < from { 0 } else { from };
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_err() || f.take((len - from).min(MAX_LOG_READ)).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    String::from_utf8_lossy(&buf).lines().map(str::to_string).collect()
}

impl LogTail {
    /// Starts following `path` from its current end. Errors name the file.
    pub fn open(path: &Path) -> anyhow::Result<LogTail> {
        use std::os::unix::fs::MetadataExt;
        let file = fs::File::open(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the Nginx error log {}: {e} (pass the right one with --nginx-error-log PATH)",
                path.display()
            )
        })?;
        let meta = file.metadata()?;
        Ok(LogTail { path: path.to_path_buf(), file, start: meta.len(), id: (meta.dev(), meta.ino()) })
    }

    /// The lines written since `open`: the rest of the held file, plus the whole file now at
    /// the path when the log was rotated meanwhile.
    pub fn new_lines(&mut self) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut lines = read_from(&mut self.file, self.start);
        if let Ok(mut now) = fs::File::open(&self.path) {
            if now.metadata().is_ok_and(|m| (m.dev(), m.ino()) != self.id) {
                lines.extend(read_from(&mut now, 0));
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_wildcards() {
        assert!(wildcard_match("*.conf", "site.conf"));
        assert!(wildcard_match("*", "anything"));
        assert!(!wildcard_match("*.conf", "site.conf.bak"));
        assert!(wildcard_match("a*b*c", "a-b-c"));
    }
}
