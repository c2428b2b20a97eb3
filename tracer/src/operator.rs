//! What an operator starts from, joined to the findings: the Nginx configuration (upstream
//! names, `server` lines, configured targets nobody listens on), the Nginx error log lines
//! written during the trace, and the cgroups/containers of clients and listeners.
//!
//! I/O at start (discovery, log positions) and at the end (log lines, cgroups); the matching
//! itself is in the pure `nginx::errlog`.
use crate::report::text::{Escaped, Place, Places, SHORT_ID_LEN};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;

use crate::enrich::{cgroup, Enricher};
use crate::event::Target;
use crate::explain::{Cause, Finding, NginxReadTimeout, Update};
use crate::nginx::{self, config::ConfiguredTarget, errlog, rootfs::RootDir, LogTail, NginxInstance};
use crate::report::json::{ConfigCheckLine, ConfigCheckType, FindingLine, LogUnexplainedLine, LogUnexplainedType, ProcessLine};
use crate::report::text::escape;

/// Configured targets checked for a listener at start, per Nginx.
const MAX_CHECKED_TARGETS: usize = 256;
/// Error logs followed at once (masters come and go while tracing; each log costs an fd).
const MAX_LOGS: usize = 64;
/// Masters that exited during the trace kept for their configuration (the findings their
/// workers made still name their upstreams in the report).
const MAX_RETIRED: usize = 16;
/// Upstream error-log lines kept for matching: the newest; older ones are let go (and
/// counted), so that a long `watch` neither grows without end nor matches more each tick.
pub const MAX_LOG_LINES: usize = 20_000;

/// Operator options from the command line.
pub struct OperatorArgs {
    pub error_logs: Vec<PathBuf>,
    pub netns: Option<u32>,
    pub cgroup: Option<String>,
}

/// A configured target that nothing listens on when tracing starts.
pub struct Unlistened {
    pub netns: u32,
    pub target: ConfiguredTarget,
}

pub struct Operator {
    /// The Nginx masters running (found at start or since).
    instances: Vec<NginxInstance>,
    /// Masters that exited while tracing, newest first.
    retired: Vec<NginxInstance>,
    /// Finds masters that start, reload or exit after start-up.
    watcher: Option<nginx::Watcher>,
    /// Follow the error logs the configurations name (no --nginx-error-log given).
    config_logs: bool,
    logs: Vec<LogTail>,
    pub unlistened: Vec<Unlistened>,
    netns: Option<u32>,
    cgroup_filter: Option<String>,
    cgroups: HashMap<u32, Option<cgroup::CgroupInfo>>,
    /// pid -> parent pid, read while the clients are alive.
    parents: RefCell<HashMap<u32, Option<u32>>>,
    /// The upstream error-log lines read so far (the newest MAX_LOG_LINES): the logs are read
    /// as they grow (each `tick` and `finish` takes the new lines), and every `finish` matches
    /// all of them.
    log_lines: VecDeque<errlog::LogLine>,
    /// Lines let go to keep MAX_LOG_LINES.
    log_lines_dropped: u64,
}

/// What the end of a trace adds to the findings.
pub struct Context {
    /// Per finding (same order): the error-log lines it explains.
    pub explained: Vec<Vec<String>>,
    /// Lines tracer could not explain, with why.
    pub unexplained: Vec<(String, &'static str)>,
}

impl Operator {
    /// Finds Nginx, checks its configured targets, and starts following its error logs.
    /// A log given on the command line that cannot be read is an error; one found in the
    /// configuration that cannot be read is a warning.
    /// `instances`: the masters running now (`nginx::discover`).
    pub fn start(args: &OperatorArgs, instances: Vec<NginxInstance>, enricher: &mut Enricher) -> Result<Operator> {
        let tracing_since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let mut logs = Vec::new();
        for path in &args.error_logs {
            logs.push(LogTail::open(path)?);
        }
        let watcher = Some(nginx::Watcher::start(&instances, tracing_since));
        let mut ops = Operator {
            instances: Vec::new(),
            retired: Vec::new(),
            watcher,
            config_logs: args.error_logs.is_empty(),
            logs,
            unlistened: Vec::new(),
            netns: args.netns,
            cgroup_filter: args.cgroup.clone(),
            cgroups: HashMap::new(),
            parents: RefCell::new(HashMap::new()),
            log_lines: VecDeque::new(),
            log_lines_dropped: 0,
        };
        for inst in instances {
            ops.adopt(inst, None, "");
            let inst = ops.instances.last().expect("just adopted");
            let cfg = &inst.config;
            // A configuration with thousands of servers (or a planted one) must not hold up
            // start-up with as many sock_diag queries.
            if cfg.targets.len() > MAX_CHECKED_TARGETS {
                note!(
                    "tracer: warning: nginx (pid {}) configures {} upstream targets; only the first {MAX_CHECKED_TARGETS} are checked for a listener at start",
                    inst.master,
                    cfg.targets.len()
                );
            }
            for t in cfg.targets.iter().take(MAX_CHECKED_TARGETS) {
                // Checked where the address is served (maybe a container's namespace); an
                // address no namespace here holds (another host, a Service translated by NAT)
                // cannot be checked from here, and is not called unlistened.
                let serving = match &t.target {
                    Target::Tcp(a) => enricher.serving_netns(inst.netns, a.ip()),
                    Target::Unix(_) => Some(inst.netns),
                };
                let Some(serving) = serving else { continue };
                if enricher.probe_target(serving, &t.target).is_none() {
                    ops.unlistened.push(Unlistened { netns: inst.netns, target: t.clone() });
                }
            }
        }
        Ok(ops)
    }

    /// Takes a master in (found at start, since, or read again after a reload): says so, and
    /// follows its error logs (from `since`, a `nginx::log_time`, when found while tracing).
    fn adopt(&mut self, inst: NginxInstance, since: Option<&str>, how: &str) {
        for e in &inst.config_errors {
            note!(
                "tracer: warning: nginx (pid {}): {}; the rest of its configuration is used (check it with `nginx -t`)",
                inst.master,
                escape(e)
            );
        }
        note!(
            "nginx: master pid {} (netns {}){how}, {}: {} upstream targets, error log {}",
            inst.master,
            inst.netns,
            escape(&inst.conf),
            inst.config.targets.len(),
            escape(&inst.config.error_logs.join(", "))
        );
        if self.config_logs {
            for log in &inst.config.error_logs {
                self.follow(&inst.root, log, inst.netns, inst.master, since);
            }
        }
        self.retired.retain(|r| r.master != inst.master);
        match self.instances.iter_mut().find(|i| i.master == inst.master) {
            Some(old) => *old = inst,
            None => self.instances.push(inst),
        }
    }

    /// Follows one error log of a master, unless it is followed already (by path in the same
    /// root, or as the same file).
    fn follow(&mut self, root: &Arc<RootDir>, log: &str, netns: u32, master: u32, since: Option<&str>) {
        if let Some(t) = self.logs.iter_mut().find(|t| t.follows(root, log)) {
            if !t.writers.contains(&netns) {
                t.writers.push(netns);
            }
            return;
        }
        if self.logs.len() >= MAX_LOGS {
            note!("tracer: warning: already following {MAX_LOGS} error logs; not the error log {} of nginx (pid {master})", escape(log));
            return;
        }
        match LogTail::open_since(root.clone(), log, vec![netns], since) {
            // Several masters (or an old one still exiting) may share a log.
            Ok(t) => match self.logs.iter_mut().find(|l| l.id == t.id) {
                Some(shared) if !shared.writers.contains(&netns) => shared.writers.push(netns),
                Some(_) => {}
                None => self.logs.push(t),
            },
            Err(e) => note!(
                "tracer: warning: cannot read the error log {} of nginx (pid {master}): {}",
                escape(log),
                escape(&e.to_string())
            ),
        }
    }

    /// Whether a running Nginx may connect to a Unix socket upstream (see
    /// `nginx::may_connect_unix`): the Unix connect hooks are then needed.
    pub fn may_connect_unix(&self) -> bool {
        nginx::may_connect_unix(&self.instances)
    }

    /// Called about once a second while tracing: takes in the masters that started, reloaded
    /// or exited, and reads the error-log lines written meanwhile (so a log rotated twice
    /// between two reports loses nothing). True when a master started, reloaded or exited:
    /// what the configurations say (`read_timeouts`) may have changed.
    pub fn tick(&mut self) -> bool {
        let changes = self.watcher.as_ref().map(|w| w.changes()).unwrap_or_default();
        let configs_changed = changes.iter().any(|c| !c.gone.is_empty() || !c.found.is_empty());
        for c in changes {
            for pid in c.gone {
                if let Some(at) = self.instances.iter().position(|i| i.master == pid) {
                    let inst = self.instances.remove(at);
                    note!("nginx: master pid {pid} exited");
                    self.retired.insert(0, inst);
                    self.retired.truncate(MAX_RETIRED);
                }
            }
            for (inst, since) in c.found {
                let how = match self.instances.iter().any(|i| i.master == inst.master) {
                    true => " reloaded",
                    false => " started",
                };
                self.adopt(inst, Some(&since), how);
            }
        }
        self.read_logs();
        configs_changed
    }

    /// The read timeout each Nginx configures per target, for the engine. Masters that exited
    /// count too: their workers' last connections (closed at a shutdown) conclude after them.
    pub fn read_timeouts(&self) -> Vec<NginxReadTimeout> {
        let mut out = Vec::new();
        for inst in self.instances.iter().chain(&self.retired) {
            for t in &inst.config.targets {
                if let Some(timeout_ms) = t.read_timeout_ms {
                    out.push(NginxReadTimeout { netns: inst.netns, target: t.target.clone(), timeout_ms });
                }
            }
        }
        out
    }

    /// Reads the lines written to the followed logs since the last read.
    fn read_logs(&mut self) {
        for log in &mut self.logs {
            let writers = log.writers.clone();
            self.log_lines.extend(log.new_lines().iter().filter_map(|l| errlog::parse_line(l)).map(|mut l| {
                l.writers = writers.clone();
                l
            }));
        }
        // A log that rotated onto a file another tail follows (two names for one file) is
        // read once.
        let mut i = 1;
        while i < self.logs.len() {
            match (0..i).find(|&j| self.logs[j].id == self.logs[i].id) {
                Some(j) => {
                    let extra = self.logs.remove(i).writers;
                    for w in extra {
                        if !self.logs[j].writers.contains(&w) {
                            self.logs[j].writers.push(w);
                        }
                    }
                }
                None => i += 1,
            }
        }
        if self.log_lines.len() > MAX_LOG_LINES {
            let extra = self.log_lines.len() - MAX_LOG_LINES;
            if self.log_lines_dropped == 0 {
                note!("tracer: warning: more than {MAX_LOG_LINES} nginx upstream error-log lines; only the newest {MAX_LOG_LINES} are matched to findings");
            }
            self.log_lines.drain(..extra);
            self.log_lines_dropped += extra as u64;
        }
    }

    /// The configured upstream of a finding's target, from the Nginx whose workers made the
    /// attempts (same network namespace; among several there, the clients' master).
    pub fn configured(&self, f: &Finding) -> Option<&ConfiguredTarget> {
        let masters: Vec<u32> = f.clients.iter().filter_map(|c| self.parent_of(c.pid)).collect();
        nginx::lookup(&self.instances, f.netns, &masters, &f.target)
            .or_else(|| nginx::lookup(&self.retired, f.netns, &masters, &f.target))
    }

    /// The parent of a process (an Nginx worker's master), remembered once read.
    fn parent_of(&self, pid: u32) -> Option<u32> {
        *self.parents.borrow_mut().entry(pid).or_insert_with(|| {
            procfs::process::Process::new(pid as i32).and_then(|p| p.stat()).ok().and_then(|s| u32::try_from(s.ppid).ok())
        })
    }

    fn cgroup(&mut self, pid: u32) -> Option<cgroup::CgroupInfo> {
        self.cgroups.entry(pid).or_insert_with(|| cgroup::cgroup_of(pid)).clone()
    }

    /// Remembers the cgroups of the processes a finding names while they are alive.
    pub fn note_processes(&mut self, findings: &[Finding]) {
        for f in findings {
            for p in f.clients.iter().chain(&f.listener).chain(&f.upstream_process) {
                let _ = self.cgroup(p.pid);
            }
            for p in &f.clients {
                let _ = self.parent_of(p.pid);
            }
        }
    }

    /// --netns / --cgroup filters.
    pub fn keep(&mut self, f: &Finding) -> bool {
        let pids: Vec<u32> = f.clients.iter().chain(f.listener.iter()).map(|p| p.pid).collect();
        self.keep_in(f.netns, &pids)
    }

    /// --netns / --cgroup: `netns` is the filter's, and some process of `pids` is in a cgroup
    /// whose path contains the filter's text.
    fn keep_in(&mut self, netns: u32, pids: &[u32]) -> bool {
        if self.netns.is_some_and(|ns| ns != netns) {
            return false;
        }
        match self.cgroup_filter.clone() {
            Some(want) => pids.iter().any(|&pid| self.cgroup(pid).is_some_and(|c| c.path.contains(&want))),
            None => true,
        }
    }

    /// Of one tick's updates (already through `Filter`), those --netns / --cgroup keep, for
    /// the metrics: a finding as `keep` decides, an attempt as its finding does (the engine
    /// reports an attempt's finding as changed in the same tick), so that a finding filtered
    /// out of the report is not counted either; an attempt whose finding is not among the
    /// updates goes by its namespace and its client's cgroup.
    pub fn keep_updates<'a>(&mut self, updates: impl IntoIterator<Item = &'a Update>) -> Vec<&'a Update> {
        let updates: Vec<&Update> = updates.into_iter().collect();
        let mut findings: HashMap<(Cause, &Target, u32), bool> = HashMap::new();
        for u in &updates {
            if let Update::Finding(f) = u {
                let kept = self.keep(f);
                findings.insert((f.cause, &f.target, f.netns), kept);
            }
        }
        updates
            .into_iter()
            .filter(|u| match u {
                Update::Finding(f) => findings.get(&(f.cause, &f.target, f.netns)).copied().unwrap_or(false),
                Update::Attempt(a) => match findings.get(&(a.cause, &a.target, a.netns)) {
                    Some(&kept) => kept,
                    None => self.keep_in(a.netns, &[a.client.pid]),
                },
            })
            .collect()
    }

    /// Where the processes of `findings` run (container, pod), for the text report.
    pub fn places(&mut self, findings: &[Finding]) -> Places {
        let mut places = Places::new();
        for f in findings {
            for p in f.clients.iter().chain(&f.listener).chain(&f.upstream_process) {
                if let Some(c) = self.cgroup(p.pid).filter(|c| c.container.is_some() || c.pod.is_some()) {
                    places.insert(p.pid, Place { container: c.container, pod: c.pod });
                }
            }
        }
        places
    }

    /// Reads the log lines written since the last call and matches every line of the trace
    /// so far to the findings. `watch --json` calls it for each tick that prints findings
    /// (their `log_lines` so far), every trace once more at the end.
    pub fn finish(&mut self, findings: &[Finding]) -> Context {
        self.tick();
        self.log_lines.make_contiguous();
        let lines = self.log_lines.as_slices().0;
        let upstream_of = |f: &Finding| self.configured(f).map(|c| c.upstream.clone());
        let c = errlog::correlate(lines, findings, &upstream_of);
        Context {
            explained: c.explained.iter().map(|idx| idx.iter().map(|&i| lines[i].raw.clone()).collect()).collect(),
            unexplained: c.unexplained.iter().map(|&(i, why)| (lines[i].raw.clone(), why)).collect(),
        }
    }

    /// A process's cgroup, its container (or systemd unit) and pod, remembered once read.
    fn annotate_process(&mut self, p: &mut ProcessLine) {
        if let Some(c) = self.cgroup(p.pid) {
            p.container = c.container.or(c.unit);
            p.pod = c.pod;
            p.cgroup = Some(c.path);
        }
    }

    /// Fills a finding line's operator keys: "upstream", "config_line", "config_place",
    /// "log_lines", "log_example", and "cgroup"/"container"/"pod" on each process.
    pub fn annotate_json(&mut self, line: &mut FindingLine, f: &Finding, log_lines: &[String]) {
        if let Some(c) = self.configured(f).cloned() {
            line.upstream = Some(c.upstream);
            line.config_line = Some(c.line);
            line.config_place = Some(c.place);
        }
        line.log_lines = log_lines.len() as u64;
        line.log_example = log_lines.first().cloned();
        for p in line.clients.iter_mut().chain(line.listener.as_mut()).chain(line.upstream_process.as_mut()) {
            self.annotate_process(p);
        }
    }

    /// `config_check` lines: configured targets nobody listens on when tracing starts
    /// (printed before any finding line).
    pub fn config_check_json(&self) -> Vec<ConfigCheckLine> {
        self.unlistened
            .iter()
            .map(|u| ConfigCheckLine {
                config_line: u.target.line.clone(),
                config_place: u.target.place.clone(),
                detail: format!("nginx sends requests for upstream {} to {}, but nothing listens there now", u.target.upstream, u.target.target),
                listening: false,
                netns: u.netns,
                target: u.target.target.to_string(),
                line_type: ConfigCheckType::Tag,
                upstream: u.target.upstream.clone(),
            })
            .collect()
    }

    /// `log_unexplained` lines: error-log lines no finding explains (at the end, the first 50).
    pub fn extra_json(&self, ctx: &Context) -> Vec<LogUnexplainedLine> {
        ctx.unexplained
            .iter()
            .take(50)
            .map(|(line, why)| LogUnexplainedLine { line: line.clone(), line_type: LogUnexplainedType::Tag, why: why.to_string() })
            .collect()
    }

    /// The text section after the findings.
    pub fn write_text(&mut self, w: &mut impl Write, findings: &[Finding], ctx: &Context) -> std::io::Result<()> {
        let mut rows: Vec<String> = Vec::new();
        for (f, lines) in findings.iter().zip(&ctx.explained) {
            // Outside strings (paths, Nginx names and lines, log lines) are escaped for the terminal.
            let mut row = format!("  {}", Escaped(&f.target.to_string()));
            if let Some(c) = self.configured(f) {
                row.push_str(&format!("  upstream {}: `{}` ({})", Escaped(&c.upstream), Escaped(&c.line), Escaped(&c.place)));
            }
            if !lines.is_empty() {
                let example = lines[0].split(", client:").next().unwrap_or(&lines[0]);
                row.push_str(&format!("\n      nginx error log: {} line(s) explained, e.g. {}", lines.len(), Escaped(example)));
            }
            let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            for p in f.clients.iter().chain(f.listener.iter()) {
                if let Some(c) = self.cgroup(p.pid) {
                    let pod = c.pod.as_ref().map(|p| format!(" (pod {})", Escaped(p))).unwrap_or_default();
                    let label = match (&c.container, &c.unit) {
                        (Some(id), _) => format!("container {}{pod}", Escaped(id.get(..SHORT_ID_LEN).unwrap_or(id))),
                        (None, _) if c.pod.is_some() => format!("cgroup {}{pod}", Escaped(&c.path)),
                        (None, Some(u)) => format!("unit {}", Escaped(u)),
                        _ => format!("cgroup {}", Escaped(&c.path)),
                    };
                    groups.entry(label).or_default().push(p.pid);
                }
            }
            for (label, pids) in groups {
                row.push_str(&format!("\n      {label}: pids {pids:?}"));
            }
            rows.push(row);
        }
        if self.instances.is_empty() && self.retired.is_empty() && self.logs.is_empty() {
            return Ok(());
        }
        writeln!(w, "NGINX CONTEXT")?;
        // Bounded at scale (500 failing targets): the findings above are bounded alike.
        for r in rows.iter().take(crate::report::text::ONE_LINE_ROWS) {
            writeln!(w, "{r}")?;
        }
        if rows.len() > crate::report::text::ONE_LINE_ROWS {
            writeln!(w, "  ... and {} more targets (every one: --json)", rows.len() - crate::report::text::ONE_LINE_ROWS)?;
        }
        const MAX_UNLISTENED_ROWS: usize = 20;
        for u in self.unlistened.iter().take(MAX_UNLISTENED_ROWS) {
            writeln!(
                w,
                "  configured but nothing listens now: {} (upstream {}: `{}`, {})",
                Escaped(&u.target.target.to_string()),
                Escaped(&u.target.upstream),
                Escaped(&u.target.line),
                Escaped(&u.target.place)
            )?;
        }
        if self.unlistened.len() > MAX_UNLISTENED_ROWS {
            writeln!(w, "  ... and {} more configured targets nothing listens on (all of them: --json)", self.unlistened.len() - MAX_UNLISTENED_ROWS)?;
        }
        if !ctx.unexplained.is_empty() {
            writeln!(w, "  error-log lines tracer could not explain: {}", ctx.unexplained.len())?;
            for (line, why) in ctx.unexplained.iter().take(5) {
                writeln!(w, "    {}\n      ({})", Escaped(line), Escaped(why))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventBody, FlowAddr, TaskInfo};
    use crate::explain::{Engine, EngineOptions};
    use crate::metrics::{Format, Metrics};

    const NGINX_ID: &str = "9a1c2b3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
    const POD_ID: &str = "3f2a9c1b7d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
    const POD: &str = "6f0e3c2a-1b4d-4e5f-8a9b-0c1d2e3f4a5b";

    /// An operator with the filters given and the cgroups of two clients already read: pid
    /// 812 in a docker container (netns 1), pid 912 in a Kubernetes pod's container (netns 2).
    fn operator(netns: Option<u32>, cgroup: Option<&str>) -> Operator {
        let mut cgroups = HashMap::new();
        cgroups.insert(812, Some(cgroup::from_path(format!("/system.slice/docker-{NGINX_ID}.scope"))));
        let pod_path = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{POD_ID}.scope", POD.replace('-', "_"));
        cgroups.insert(912, Some(cgroup::from_path(pod_path)));
        Operator {
            instances: Vec::new(),
            retired: Vec::new(),
            watcher: None,
            config_logs: false,
            logs: Vec::new(),
            unlistened: Vec::new(),
            netns,
            cgroup_filter: cgroup.map(str::to_string),
            cgroups,
            parents: RefCell::new(HashMap::new()),
            log_lines: VecDeque::new(),
            log_lines_dropped: 0,
        }
    }

    /// One tick's updates: `n` refused connects by each client, nginx 812 to 10.0.0.1:8000
    /// in netns 1 and nginx 912 to 10.0.0.2:8000 in netns 2.
    fn updates(n: u64) -> Vec<Update> {
        let mut e = Engine::new(EngineOptions::default());
        for (pid, netns, dst) in [(812, 1, "10.0.0.1:8000"), (912, 2, "10.0.0.2:8000")] {
            let task = TaskInfo { pid, tid: pid, uid: 33, comm: "nginx".into() };
            for i in 0..n {
                let flow = FlowAddr { src: format!("10.0.0.9:{}", 40000 + i).parse().unwrap(), dst: dst.parse().unwrap() };
                let t0 = 1_000_000_000 * (i + 1);
                let body = EventBody::TcpRstSentNoSocket { flow, reason: None };
                e.push(&Event { ts_ns: t0, netns, sock: 0, task: task.clone(), body });
                let body = EventBody::TcpAttemptFailed { flow, sk_err: 111, syn_retransmits: 0, rst_received: true, start_ns: t0 };
                e.push(&Event { ts_ns: t0 + 10, netns, sock: u64::from(pid) * 100 + i, task: task.clone(), body });
            }
        }
        e.finish()
    }

    /// `tracer_failed_connections_total` per target after one tick through the filters.
    fn failed_counts(ops: &mut Operator) -> Vec<(String, u64)> {
        let m = Metrics::new();
        let all = updates(3);
        assert_eq!(all.iter().filter(|u| matches!(u, Update::Attempt(_))).count(), 6, "{all:?}");
        m.observe(ops.keep_updates(&all), |_| None);
        let text = m.render(Format::PrometheusText);
        let mut counts: Vec<(String, u64)> = text
            .lines()
            .filter(|l| l.starts_with("tracer_failed_connections_total{"))
            .map(|l| {
                let target = l.split("target=\"").nth(1).and_then(|t| t.split('"').next()).unwrap_or("").to_string();
                (target, l.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0))
            })
            .collect();
        counts.sort();
        counts
    }

    #[test]
    fn metrics_count_only_what_the_netns_and_cgroup_filters_keep() {
        let both = vec![("10.0.0.1:8000".to_string(), 3), ("10.0.0.2:8000".to_string(), 3)];
        assert_eq!(failed_counts(&mut operator(None, None)), both);
        assert_eq!(failed_counts(&mut operator(Some(2), None)), vec![("10.0.0.2:8000".to_string(), 3)]);
        assert_eq!(failed_counts(&mut operator(None, Some("docker-"))), vec![("10.0.0.1:8000".to_string(), 3)]);
        assert_eq!(failed_counts(&mut operator(None, Some("kubepods"))), vec![("10.0.0.2:8000".to_string(), 3)]);
        // Both filters: a namespace and a cgroup that are not the same client's keep nothing.
        assert_eq!(failed_counts(&mut operator(Some(1), Some("kubepods"))), vec![]);
        assert_eq!(failed_counts(&mut operator(None, Some("no-such-cgroup"))), vec![]);
    }

    #[test]
    fn an_attempt_without_its_finding_in_the_tick_goes_by_its_client() {
        let attempts: Vec<Update> = updates(1).into_iter().filter(|u| matches!(u, Update::Attempt(_))).collect();
        let kept = operator(None, Some("kubepods")).keep_updates(&attempts);
        let pids: Vec<u32> = kept
            .iter()
            .filter_map(|u| match u {
                Update::Attempt(a) => Some(a.client.pid),
                _ => None,
            })
            .collect();
        assert_eq!(pids, vec![912]);
    }

    #[test]
    fn json_and_text_name_the_container_and_pod() {
        let mut ops = operator(None, None);
        let findings: Vec<Finding> = updates(1)
            .into_iter()
            .filter_map(|u| match u {
                Update::Finding(f) => Some(f),
                _ => None,
            })
            .collect();
        let in_pod = findings.iter().find(|f| f.netns == 2).expect("the pod's finding");
        let mut line = crate::report::json::finding_json(in_pod, &crate::report::Clock::fixed(0));
        ops.annotate_json(&mut line, in_pod, &[]);
        let client = &line.clients[0];
        assert_eq!((client.pid, client.container.as_deref(), client.pod.as_deref()), (912, Some(POD_ID), Some(POD)));
        let places = ops.places(&findings);
        assert_eq!(places[&912], Place { container: Some(POD_ID.into()), pod: Some(POD.into()) });
        assert_eq!(places[&812], Place { container: Some(NGINX_ID.into()), pod: None });
        assert_eq!(crate::report::text::process_name("nginx", 912, &places), format!("nginx (pid 912, container 3f2a9c1b7d4e, pod {POD})"));
    }
}
