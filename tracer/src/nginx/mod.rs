//! Nginx awareness: find running Nginx masters (any network or mount namespace), read their
//! configuration through /proc/PID/root, and map every upstream target to its upstream name and
//! `server`/`*_pass` line; read the error log(s) written during the trace.
//!
//! `config` and `errlog` are pure; this file is the I/O edge.
pub mod config;
pub mod errlog;
#[cfg(test)]
mod fuzz_tests;
pub mod rootfs;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use config::{ConfigFiles, NginxConfig};
use rootfs::RootDir;

use crate::enrich::netns_inode_of_pid;
use crate::event::Target;

/// One running Nginx master and what its configuration says.
#[derive(Debug)]
pub struct NginxInstance {
    pub master: u32,
    pub netns: u32,
    /// The main configuration file as the master sees it (inside its mount namespace).
    pub conf: String,
    pub config: NginxConfig,
    /// Files of the configuration that could not be read or parsed, with why (what did
    /// parse is kept in `config`).
    pub config_errors: Vec<String>,
    /// The master's root directory, held open: its files (error logs) are resolved inside
    /// it, also after this master exits (a restart after a log rotation).
    pub root: Arc<RootDir>,
}

/// Reads configuration files inside a process's root, never outside it.
struct RootFiles<'a> {
    root: &'a RootDir,
}

impl ConfigFiles for RootFiles<'_> {
    fn read(&self, path: &str) -> Result<String, String> {
        self.root.read_to_string(path, rootfs::MAX_CONFIG_BYTES).map_err(|e| e.to_string())
    }

    fn glob(&self, pattern: &str) -> Vec<String> {
        let Some((dir, file_pattern)) = pattern.rsplit_once('/') else { return Vec::new() };
        let Ok(names) = self.root.list_dir(if dir.is_empty() { "/" } else { dir }) else { return Vec::new() };
        let mut out: Vec<String> =
            names.into_iter().filter(|name| glob_match(file_pattern, name)).map(|name| format!("{dir}/{name}")).collect();
        // nginx includes in sorted order (glob(3) without GLOB_NOSORT).
        out.sort();
        out
    }
}

/// Whether `name` matches a glob(3) pattern as Nginx's `include` uses it: `*`, `?` and
/// `[...]` classes; a leading dot is matched only by a pattern that starts with a dot, so
/// an editor's `.#draft.conf` or `.site.conf.swp` is not included (as `nginx -t` agrees).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with one backtrack point for the last `*`: linear in practice, and
    // never exponential on hostile patterns.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => match class_match(&p[pi..], n[ni]) {
                Some((true, len)) => Some(pi + len),
                Some((false, _)) => None,
                // An unclosed `[` is a literal.
                None => (n[ni] == '[').then_some(pi + 1),
            },
            Some(&c) => (c == n[ni]).then_some(pi + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ni += 1;
            }
            (None, Some((sp, sn))) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// `[...]` at the start of `p` against `c`: (matched, length of the class), or None when the
/// class is not closed.
fn class_match(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while let Some(&pc) = p.get(i) {
        if pc == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&e| e != ']') {
            matched |= pc <= c && c <= p[i + 2];
            i += 3;
        } else {
            matched |= pc == c;
            i += 1;
        }
    }
    None
}

/// Nginx's compiled-in paths: where it looks for its configuration and logs when the
/// command line does not say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledDefaults {
    pub prefix: String,
    pub conf: String,
    pub error_log: String,
}

impl Default for CompiledDefaults {
    /// Debian's and most distributions' paths.
    fn default() -> Self {
        CompiledDefaults {
            prefix: "/usr/share/nginx".into(),
            conf: "/etc/nginx/nginx.conf".into(),
            error_log: "/var/log/nginx/error.log".into(),
        }
    }
}

/// The `configure arguments` string that every nginx binary embeds (what `nginx -V` would
/// print), read from the file's bytes: tracer never runs another process's binary.
pub fn defaults_from_binary(bytes: &[u8]) -> CompiledDefaults {
    let mut d = CompiledDefaults::default();
    // The NUL-terminated string holding `--conf-path=`, else `--prefix=`.
    let Some(at) = find(bytes, b"--conf-path=").or_else(|| find(bytes, b"--prefix=")) else { return d };
    let start = bytes[..at].iter().rposition(|&b| b == 0).map(|i| i + 1).unwrap_or(0);
    let end = bytes[at..].iter().position(|&b| b == 0).map(|i| at + i).unwrap_or(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..end.min(start + 16 * 1024)]).into_owned();
    for word in text.split_whitespace() {
        if let Some(v) = word.strip_prefix("--prefix=") {
            d.prefix = v.to_string();
        } else if let Some(v) = word.strip_prefix("--conf-path=") {
            d.conf = v.to_string();
        } else if let Some(v) = word.strip_prefix("--error-log-path=") {
            d.error_log = v.to_string();
        }
    }
    d
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An nginx binary is about a megabyte; a file much larger is not read whole.
const MAX_BINARY_BYTES: u64 = 64 << 20;

/// The compiled-in defaults of the binary a master runs, read (not run) from /proc/PID/exe.
fn compiled_defaults(pid: u32) -> CompiledDefaults {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(file) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/{pid}/exe"))
    else {
        return CompiledDefaults::default();
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return CompiledDefaults::default();
    }
    let mut bytes = Vec::new();
    if file.take(MAX_BINARY_BYTES).read_to_end(&mut bytes).is_err() {
        return CompiledDefaults::default();
    }
    defaults_from_binary(&bytes)
}

/// The main config file and prefix of a master: its command line (`nginx: master process
/// /usr/sbin/nginx -c /etc/nginx/nginx.conf -p /srv/`) over the compiled-in defaults.
pub fn conf_and_prefix(args: &str, defaults: &CompiledDefaults) -> (String, String) {
    let (mut conf, mut prefix) = (defaults.conf.clone(), defaults.prefix.clone());
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
    (conf, prefix)
}

/// How long discovery may hold up start-up. Each master is read in its own thread; one whose
/// files block (a FUSE mount that never answers) is left behind with a warning.
pub const DISCOVERY_DEADLINE: Duration = Duration::from_secs(2);

/// Every Nginx master on the host with its parsed configuration, within DISCOVERY_DEADLINE.
/// Whether any of these masters may connect to a Unix socket upstream: one configures a
/// `unix:` target, or part of its configuration could not be read (its upstreams are then
/// not all known).
pub fn may_connect_unix(instances: &[NginxInstance]) -> bool {
    instances.iter().any(|i| !i.config_errors.is_empty() || i.config.targets.iter().any(|t| matches!(t.target, Target::Unix(_))))
}

pub fn discover() -> Vec<NginxInstance> {
    let (found, late) = inspect_all(masters_now());
    if !late.is_empty() {
        note!(
            "tracer: warning: reading the files of {} nginx master(s) took longer than {:?}; continuing without their configuration",
            late.len(),
            DISCOVERY_DEADLINE
        );
    }
    found
}

/// The Nginx masters running now: (pid, the arguments of their title).
fn masters_now() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for pid in crate::enrich::netns::all_pids() {
        // Read as bytes (procfs' cmdline wants UTF-8): a title is matched whatever it holds.
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        // nginx rewrites its title: "nginx: master process nginx -c /etc/nginx/nginx.conf".
        let title = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if let Some(args) = title.trim().strip_prefix("nginx: master process") {
            out.push((pid, args.to_string()));
        }
    }
    out
}

/// Reads each master's configuration in its own thread, within DISCOVERY_DEADLINE: the
/// instances read in time (sorted by pid), and the masters whose files took longer (a FUSE
/// mount that never answers leaves its thread behind, never tracer).
fn inspect_all(masters: Vec<(u32, String)>) -> (Vec<NginxInstance>, Vec<u32>) {
    let (tx, rx) = mpsc::channel();
    let mut pending = Vec::new();
    for (pid, args) in masters {
        let tx = tx.clone();
        let spawned = std::thread::Builder::new().name(format!("nginx-{pid}")).spawn(move || {
            let _ = tx.send((pid, inspect(pid, &args)));
        });
        if spawned.is_ok() {
            pending.push(pid);
        }
    }
    drop(tx);
    let deadline = Instant::now() + DISCOVERY_DEADLINE;
    let mut out = Vec::new();
    while !pending.is_empty() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((pid, inst)) => {
                pending.retain(|&p| p != pid);
                out.extend(inst);
            }
            Err(_) => break,
        }
    }
    out.sort_by_key(|i| i.master);
    (out, pending)
}

/// The children of a master (its workers, cache manager and loader), sorted.
fn workers_of(pid: u32) -> Vec<u32> {
    let mut w: Vec<u32> = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    w.sort_unstable();
    w
}

/// When a process started, in seconds since the epoch.
fn started_at(pid: u32) -> Option<i64> {
    let stat = procfs::process::Process::new(pid as i32).and_then(|p| p.stat()).ok()?;
    let boot = procfs::boot_time_secs().ok()?;
    Some((boot + stat.starttime / procfs::ticks_per_second().max(1)) as i64)
}

/// How Nginx stamps its error-log lines (`2026/11/30 10:00:00`, local time): the same text
/// for a moment, so that lines can be compared with it as strings.
pub fn log_time(epoch_s: i64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_opt(epoch_s, 0).single() {
        Some(t) => t.format("%Y/%m/%d %H:%M:%S").to_string(),
        None => String::new(),
    }
}

/// How often the watcher looks for Nginx masters that started, reloaded or exited.
pub const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// What changed among the Nginx masters since the last look.
pub struct MasterChanges {
    /// Masters found since (started after tracer), or whose configuration was read again
    /// after a reload (new workers), each with the moment (`log_time`) from which its error
    /// logs are new: the lines written since then are its own.
    pub found: Vec<(NginxInstance, String)>,
    /// Masters that exited.
    pub gone: Vec<u32>,
}

/// A master as the watcher last saw it.
struct Seen {
    workers: Vec<u32>,
}

/// Follows the Nginx masters while tracing: a thread looks every RESCAN_EVERY for masters
/// that started or exited and for reloads (a master with workers it did not have), and reads
/// their configuration (never running their binary, files read in-root as at start).
pub struct Watcher {
    rx: mpsc::Receiver<MasterChanges>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Watcher {
    /// Starts watching; the `known` masters (read at start) are not read again until they reload.
    pub fn start(known: &[NginxInstance], tracing_since: i64) -> Watcher {
        let mut seen: HashMap<u32, Seen> = known.iter().map(|i| (i.master, Seen { workers: workers_of(i.master) })).collect();
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let spawned = std::thread::Builder::new().name("nginx-watch".into()).spawn(move || {
            // Masters whose files took too long once are not read again (no thread pile-up).
            let mut given_up: HashSet<u32> = HashSet::new();
            loop {
                for _ in 0..10 {
                    if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(RESCAN_EVERY / 10);
                }
                let changes = look(&mut seen, &mut given_up, tracing_since);
                if (!changes.found.is_empty() || !changes.gone.is_empty()) && tx.send(changes).is_err() {
                    return;
                }
            }
        });
        if let Err(e) = spawned {
            note!("tracer: warning: cannot watch for nginx masters that start later: {e}");
        }
        Watcher { rx, stop }
    }

    /// The changes seen since the last call (never blocks).
    pub fn changes(&self) -> Vec<MasterChanges> {
        self.rx.try_iter().collect()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One look at the masters: new ones and reloaded ones are read, exited ones are gone.
fn look(seen: &mut HashMap<u32, Seen>, given_up: &mut HashSet<u32>, tracing_since: i64) -> MasterChanges {
    let now = masters_now();
    let gone: Vec<u32> = seen.keys().copied().filter(|pid| !now.iter().any(|(p, _)| p == pid)).collect();
    for pid in &gone {
        seen.remove(pid);
    }
    given_up.retain(|pid| now.iter().any(|(p, _)| p == pid));
    let mut read = Vec::new();
    let mut since = HashMap::new();
    for (pid, args) in now {
        if given_up.contains(&pid) {
            continue;
        }
        let workers = workers_of(pid);
        // A new master's lines are its own from its start; a reloaded one's from its newest
        // workers' start (a reload may name another error log). Never before tracing began.
        let from = match seen.get(&pid) {
            None => started_at(pid),
            Some(s) => {
                let new: Vec<u32> = workers.iter().copied().filter(|w| !s.workers.contains(w)).collect();
                if new.is_empty() {
                    continue;
                }
                new.iter().filter_map(|&w| started_at(w)).min()
            }
        };
        since.insert(pid, log_time(from.unwrap_or(tracing_since).max(tracing_since)));
        seen.insert(pid, Seen { workers });
        read.push((pid, args));
    }
    let (found, late) = inspect_all(read);
    for pid in late {
        note!("tracer: warning: reading the files of nginx master pid {pid} took longer than {DISCOVERY_DEADLINE:?}; continuing without its configuration");
        given_up.insert(pid);
    }
    let found = found.into_iter().map(|i| {
        let s = since.remove(&i.master).unwrap_or_default();
        (i, s)
    });
    MasterChanges { found: found.collect(), gone }
}

/// One master's configuration, read inside its root.
fn inspect(pid: u32, args: &str) -> Option<NginxInstance> {
    let root = Arc::new(RootDir::of_pid(pid).ok()?);
    let defaults = compiled_defaults(pid);
    let (conf, prefix) = conf_and_prefix(args, &defaults);
    let parsed = config::parse(&RootFiles { root: &root }, &conf, &prefix);
    let mut config = parsed.config;
    // No `error_log` in the configuration: the compiled-in one, unless that is not a file
    // (Debian builds with `--error-log-path=stderr`).
    if config.error_logs.is_empty() && defaults.error_log != "stderr" && !defaults.error_log.is_empty() {
        let log = match defaults.error_log.starts_with('/') {
            true => defaults.error_log.clone(),
            false => format!("{}/{}", prefix.trim_end_matches('/'), defaults.error_log),
        };
        config.error_logs.push(log);
    }
    Some(NginxInstance { master: pid, netns: netns_inode_of_pid(pid).unwrap_or(0), conf, config, config_errors: parsed.errors, root })
}

/// The configured target matching `target` for a finding in `netns`, from the Nginx of that
/// namespace only: another namespace's upstream of the same address is a different one.
/// `masters` (the parents of the finding's clients) picks among several Nginx in one
/// namespace. netns 0 (unknown) takes any.
pub fn lookup<'a>(
    instances: &'a [NginxInstance],
    netns: u32,
    masters: &[u32],
    target: &Target,
) -> Option<&'a config::ConfiguredTarget> {
    let mut same_netns = None;
    for inst in instances.iter().filter(|i| netns == 0 || i.netns == netns) {
        if let Some(t) = inst.config.lookup(target) {
            if masters.contains(&inst.master) {
                return Some(t);
            }
            same_netns.get_or_insert(t);
        }
    }
    same_netns
}

/// An error log being followed: the file as it was when tracing started (held open, so a
/// master that exits or a path that changes does not lose it), read on from where it ended.
pub struct LogTail {
    /// The path inside `root`, as its Nginx names it.
    pub path: String,
    /// Where the path is resolved: the writing master's root, held open so that a rotation
    /// followed by a restart (the old master gone) still finds the new file.
    root: Arc<RootDir>,
    file: fs::File,
    /// Where the next read starts (after the last complete line handed out).
    pos: u64,
    /// (device, inode) of the held file, to notice a rotation and to skip duplicates.
    pub id: (u64, u64),
    /// The file the path named before the last rotation, read once more on the next call:
    /// a worker may still write its last lines there after the master reopened the logs.
    draining: Option<(fs::File, u64)>,
    /// Network namespaces of the Nginx masters that write this log; empty for a log named on
    /// the command line (its lines may belong to any Nginx).
    pub writers: Vec<u32>,
}

/// At most this much log is read per file per call.
const MAX_LOG_READ: u64 = 64 << 20;
/// A log found after tracing began is searched this far back for the lines of its master.
const MAX_CATCH_UP: u64 = 1 << 20;

/// The complete lines of `f` from `*pos`, advancing `*pos` past them (a line still being
/// written stays for the next read). A file shorter than `*pos` was truncated in place
/// (copytruncate): it is read from the start.
fn read_lines_from(f: &mut fs::File, pos: &mut u64, budget: &mut u64) -> Vec<String> {
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len < *pos {
        *pos = 0;
    }
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(*pos)).is_err() || f.take((len - *pos).min(*budget)).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let complete = buf.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
    *pos += complete as u64;
    *budget = budget.saturating_sub(complete as u64);
    String::from_utf8_lossy(&buf[..complete]).lines().map(str::to_string).collect()
}

/// Where the first line stamped at or after `since` (`log_time`) starts in the last
/// MAX_CATCH_UP bytes of `f`; without one, the end of the last complete line.
fn offset_of_lines_since(f: &mut fs::File, since: &str) -> u64 {
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(MAX_CATCH_UP);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.take(len - start).read_to_end(&mut buf).is_err() {
        return len;
    }
    let mut at = 0;
    // The window may begin inside a line: that one is not whole, skip it.
    if start > 0 {
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => at = i + 1,
            None => return len,
        }
    }
    while let Some(nl) = buf[at..].iter().position(|&b| b == b'\n') {
        let line = &buf[at..at + nl];
        // "2026/11/30 10:00:00 [error] ...": the stamp is the first 19 bytes.
        let stamped = line.len() >= 19 && line[4] == b'/' && line[7] == b'/' && line[13] == b':';
        if stamped && !since.is_empty() && &line[..19] >= since.as_bytes() {
            return start + at as u64;
        }
        at += nl + 1;
    }
    start + at as u64
}

impl LogTail {
    /// Starts following a log named on the command line, from its current end. Only a regular
    /// file is accepted (a FIFO would block, a directory has no lines). Errors are one line
    /// that names the file.
    pub fn open(path: &Path) -> anyhow::Result<LogTail> {
        let shown = path.display().to_string();
        let escaped = crate::report::text::escape(&shown).into_owned();
        let root = RootDir::host().map_err(|e| anyhow::anyhow!("cannot open /: {e}"))?;
        let abs = if path.is_absolute() {
            shown.clone()
        } else {
            std::env::current_dir().map(|d| d.join(path).display().to_string()).unwrap_or_else(|_| shown.clone())
        };
        Self::open_in(Arc::new(root), &abs, Vec::new()).map_err(|e| {
            anyhow::anyhow!("cannot read the Nginx error log {escaped}: {e} (pass a regular file with --nginx-error-log PATH)")
        })
    }

    /// Starts following `path` inside `root` (a master's root), from its current end.
    pub fn open_in(root: Arc<RootDir>, path: &str, writers: Vec<u32>) -> std::io::Result<LogTail> {
        Self::open_since(root, path, writers, None)
    }

    /// The same, from the first line stamped at or after `since` (a `log_time`) when given: a
    /// master found while tracing wrote its first lines before it was found.
    pub fn open_since(root: Arc<RootDir>, path: &str, writers: Vec<u32>, since: Option<&str>) -> std::io::Result<LogTail> {
        use std::os::unix::fs::MetadataExt;
        let mut file = root.open_regular(path)?;
        let meta = file.metadata()?;
        let pos = match since {
            Some(since) => offset_of_lines_since(&mut file, since),
            None => meta.len(),
        };
        Ok(LogTail { path: path.to_string(), root, file, pos, id: (meta.dev(), meta.ino()), draining: None, writers })
    }

    /// Whether this follows `path` inside the same root directory (another master of the
    /// same container, or the same master read again after a reload).
    pub fn follows(&self, root: &RootDir, path: &str) -> bool {
        self.path == path && self.root.id() == root.id()
    }

    /// The lines written since the last call (since `open` the first time): the rest of the
    /// held file, then, when the log was rotated meanwhile, the file now at the path, which
    /// is held from then on (the old one is read once more on the next call, then let go).
    pub fn new_lines(&mut self) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut budget = MAX_LOG_READ;
        let mut lines = Vec::new();
        if let Some((mut old, mut pos)) = self.draining.take() {
            lines = read_lines_from(&mut old, &mut pos, &mut budget);
        }
        lines.extend(read_lines_from(&mut self.file, &mut self.pos, &mut budget));
        if let Ok(now) = self.root.open_regular(&self.path) {
            if let Ok(meta) = now.metadata() {
                if (meta.dev(), meta.ino()) != self.id {
                    let old = std::mem::replace(&mut self.file, now);
                    self.draining = Some((old, self.pos));
                    self.id = (meta.dev(), meta.ino());
                    self.pos = 0;
                    lines.extend(read_lines_from(&mut self.file, &mut self.pos, &mut budget));
                }
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_patterns_follow_glob() {
        assert!(glob_match("*.conf", "site.conf"));
        assert!(glob_match("*", "anything"));
        assert!(!glob_match("*.conf", "site.conf.bak"));
        assert!(glob_match("a*b*c", "a-b-c"));
        assert!(glob_match("site?.conf", "site1.conf") && !glob_match("site?.conf", "site12.conf"));
        assert!(glob_match("[a-c]*.conf", "b.conf") && !glob_match("[!a-c]*.conf", "b.conf"));
        // Hidden files: an editor's lock or swap file is not included, as nginx agrees.
        assert!(!glob_match("*.conf", ".#draft.conf"));
        assert!(!glob_match("*", ".site.conf.swp"));
        assert!(glob_match(".*.conf", ".hidden.conf"));
        // A hostile pattern stays linear.
        let long = "a".repeat(5000);
        assert!(!glob_match(&"*a".repeat(200).to_string().replace("**", "*"), &format!("{long}b")));
    }

    #[test]
    fn defaults_are_read_from_the_configure_string_in_the_binary() {
        let mut elf = b"\x7fELF\0\0junk\0configure arguments:\0".to_vec();
        elf.extend_from_slice(b" --with-cc-opt='-g -O2' --prefix=/opt/ng --conf-path=/opt/ng/conf/ng.conf --error-log-path=/opt/ng/logs/e.log --with-http_ssl_module\0more\0");
        let d = defaults_from_binary(&elf);
        assert_eq!(d, CompiledDefaults { prefix: "/opt/ng".into(), conf: "/opt/ng/conf/ng.conf".into(), error_log: "/opt/ng/logs/e.log".into() });
        assert_eq!(defaults_from_binary(b"no nginx here"), CompiledDefaults::default());
        let (conf, prefix) = conf_and_prefix(" /usr/sbin/nginx -c conf/x.conf -p /srv/ng/", &d);
        assert_eq!((conf.as_str(), prefix.as_str()), ("/srv/ng/conf/x.conf", "/srv/ng/"));
    }

    #[test]
    fn log_tail_hands_out_complete_lines_once_and_follows_a_rotation() {
        let dir = std::env::temp_dir().join(format!("tracer-logtail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("error.log");
        std::fs::write(&log, "old line\n").unwrap();
        let mut tail = LogTail::open(&log).unwrap();
        let append = |p: &Path, s: &str| {
            use std::io::Write;
            std::fs::OpenOptions::new().append(true).create(true).open(p).unwrap().write_all(s.as_bytes()).unwrap()
        };
        append(&log, "one\ntwo (half");
        assert_eq!(tail.new_lines(), ["one"]);
        append(&log, " done)\n");
        assert_eq!(tail.new_lines(), ["two (half done)"]);
        assert!(tail.new_lines().is_empty());
        // Rotation: the old file gets a last line, the new one takes over.
        std::fs::rename(&log, dir.join("error.log.1")).unwrap();
        append(&dir.join("error.log.1"), "last old\n");
        append(&log, "first new\n");
        assert_eq!(tail.new_lines(), ["last old", "first new"]);
        append(&log, "second new\n");
        assert_eq!(tail.new_lines(), ["second new"]);
        // Not a regular file: one line naming it, no blocking.
        nix::unistd::mkfifo(&dir.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = LogTail::open(&dir.join("fifo")).err().unwrap().to_string();
        assert!(err.contains("not a regular file") && !err.contains('\n'), "{err}");
        assert!(LogTail::open(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_log_rotated_and_reopened_is_read_to_the_end_then_followed_from_its_start() {
        let dir = std::env::temp_dir().join(format!("tracer-logtail-drain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("error.log");
        std::fs::write(&log, "before\n").unwrap();
        let mut tail = LogTail::open(&log).unwrap();
        // `mv error.log error.log.1`: Nginx still writes to the old file (its fd).
        let mut old = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::fs::rename(&log, dir.join("error.log.1")).unwrap();
        use std::io::Write;
        writeln!(old, "a").unwrap();
        assert_eq!(tail.new_lines(), ["a"], "no new file yet: the old one is followed");
        // `nginx -s reopen`: the master makes a new file; a worker writes once more to the
        // old one after tracer moved on.
        std::fs::write(&log, "b\n").unwrap();
        assert_eq!(tail.new_lines(), ["b"]);
        writeln!(old, "late").unwrap();
        std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"c\n").unwrap();
        assert_eq!(tail.new_lines(), ["late", "c"], "the old file is read once more");
        writeln!(old, "too late").unwrap();
        assert!(tail.new_lines().is_empty(), "then let go");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_log_found_while_tracing_is_read_from_its_masters_start() {
        let dir = std::env::temp_dir().join(format!("tracer-logtail-since-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("error.log");
        let text = "2026/11/30 09:59:59 [error] 1#1: *1 old run\n  a continuation line\n2026/11/30 10:00:00 [notice] 2#2: start\n2026/11/30 10:00:01 [error] 3#3: *2 mine\npartial";
        std::fs::write(&log, text).unwrap();
        let root = Arc::new(RootDir::host().unwrap());
        let path = log.display().to_string();
        let mut tail = LogTail::open_since(root.clone(), &path, vec![], Some("2026/11/30 10:00:00")).unwrap();
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b" line\n").unwrap();
        assert_eq!(tail.new_lines(), ["2026/11/30 10:00:00 [notice] 2#2: start", "2026/11/30 10:00:01 [error] 3#3: *2 mine", "partial line"]);
        // Nothing that new: from the end of the last whole line.
        let mut tail = LogTail::open_since(root.clone(), &path, vec![], Some("2027/01/01 00:00:00")).unwrap();
        assert!(tail.new_lines().is_empty());
        assert!(tail.follows(&root, &path) && !tail.follows(&root, "/other"));
        assert_eq!(log_time(0).len(), 19);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
