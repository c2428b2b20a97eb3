//! What an operator starts from, joined to the findings: the Nginx configuration (upstream
//! names, `server` lines, configured targets nobody listens on), the Nginx error log lines
//! written during the trace, and the cgroups/containers of clients and listeners.
//!
//! I/O at start (discovery, log positions) and at the end (log lines, cgroups); the matching
//! itself is in the pure `nginx::errlog`.
use crate::report::text::Escaped;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use crate::enrich::{cgroup, Enricher};
use crate::explain::Finding;
use crate::nginx::{self, config::ConfiguredTarget, errlog, LogTail, NginxInstance};
use crate::report::json::{ConfigCheckLine, ConfigCheckType, FindingLine, LogUnexplainedLine, LogUnexplainedType, ProcessLine};
use crate::report::text::escape;

/// Configured targets checked for a listener at start, per Nginx.
const MAX_CHECKED_TARGETS: usize = 256;

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
    instances: Vec<NginxInstance>,
    logs: Vec<LogTail>,
    pub unlistened: Vec<Unlistened>,
    netns: Option<u32>,
    cgroup_filter: Option<String>,
    cgroups: HashMap<u32, Option<cgroup::CgroupInfo>>,
    /// pid -> parent pid, read while the clients are alive.
    parents: RefCell<HashMap<u32, Option<u32>>>,
    /// The upstream error-log lines read so far: the logs are read as they grow (each
    /// `finish` takes the new lines), and every `finish` matches all of them.
    log_lines: Vec<errlog::LogLine>,
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
    pub fn start(args: &OperatorArgs, enricher: &mut Enricher) -> Result<Operator> {
        let instances = nginx::discover();
        let mut logs = Vec::new();
        for path in &args.error_logs {
            logs.push(LogTail::open(path)?);
        }
        let mut unlistened = Vec::new();
        for inst in &instances {
            let cfg = &inst.config;
            for e in &inst.config_errors {
                note!(
                    "tracer: warning: nginx (pid {}): {}; the rest of its configuration is used (check it with `nginx -t`)",
                    inst.master,
                    escape(e)
                );
            }
            note!(
                "nginx: master pid {} (netns {}), {}: {} upstream targets, error log {}",
                inst.master,
                inst.netns,
                escape(&inst.conf),
                cfg.targets.len(),
                escape(&cfg.error_logs.join(", "))
            );
            if args.error_logs.is_empty() {
                for log in &cfg.error_logs {
                    match LogTail::open_in(inst.root.clone(), log, vec![inst.netns]) {
                        // Several masters (or an old one still exiting) may share a log.
                        Ok(t) => match logs.iter_mut().find(|l: &&mut LogTail| l.id == t.id) {
                            Some(shared) => shared.writers.push(inst.netns),
                            None => logs.push(t),
                        },
                        Err(e) => note!(
                            "tracer: warning: cannot read the error log {} of nginx (pid {}): {}",
                            escape(log),
                            inst.master,
                            escape(&e.to_string())
                        ),
                    }
                }
            }
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
                if enricher.probe_target(inst.netns, &t.target).is_none() {
                    unlistened.push(Unlistened { netns: inst.netns, target: t.clone() });
                }
            }
        }
        Ok(Operator {
            instances,
            logs,
            unlistened,
            netns: args.netns,
            cgroup_filter: args.cgroup.clone(),
            cgroups: HashMap::new(),
            parents: RefCell::new(HashMap::new()),
            log_lines: Vec::new(),
        })
    }

    /// The configured upstream of a finding's target, from the Nginx whose workers made the
    /// attempts (same network namespace; among several there, the clients' master).
    pub fn configured(&self, f: &Finding) -> Option<&ConfiguredTarget> {
        let masters: Vec<u32> = f.clients.iter().filter_map(|c| self.parent_of(c.pid)).collect();
        nginx::lookup(&self.instances, f.netns, &masters, &f.target)
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
            for p in f.clients.iter().chain(f.listener.iter()) {
                let _ = self.cgroup(p.pid);
            }
            for p in &f.clients {
                let _ = self.parent_of(p.pid);
            }
        }
    }

    /// --netns / --cgroup filters.
    pub fn keep(&mut self, f: &Finding) -> bool {
        if let Some(ns) = self.netns {
            if f.netns != ns {
                return false;
            }
        }
        if let Some(want) = self.cgroup_filter.clone() {
            let pids: Vec<u32> = f.clients.iter().chain(f.listener.iter()).map(|p| p.pid).collect();
            return pids.into_iter().any(|pid| self.cgroup(pid).is_some_and(|c| c.path.contains(&want)));
        }
        true
    }

    /// Reads the log lines written since the last call and matches every line of the trace
    /// so far to the findings. `watch --json` calls it for each tick that prints findings
    /// (their `log_lines` so far), every trace once more at the end.
    pub fn finish(&mut self, findings: &[Finding]) -> Context {
        for log in &mut self.logs {
            let writers = log.writers.clone();
            self.log_lines.extend(log.new_lines().iter().filter_map(|l| errlog::parse_line(l)).map(|mut l| {
                l.writers = writers.clone();
                l
            }));
        }
        let lines = &self.log_lines;
        let upstream_of = |f: &Finding| self.configured(f).map(|c| c.upstream.clone());
        let c = errlog::correlate(&lines, findings, &upstream_of);
        Context {
            explained: c.explained.iter().map(|idx| idx.iter().map(|&i| lines[i].raw.clone()).collect()).collect(),
            unexplained: c.unexplained.iter().map(|&(i, why)| (lines[i].raw.clone(), why)).collect(),
        }
    }

    /// A process's cgroup and its container (or systemd unit), remembered once read.
    fn annotate_process(&mut self, p: &mut ProcessLine) {
        if let Some(c) = self.cgroup(p.pid) {
            p.container = c.container.or(c.unit);
            p.cgroup = Some(c.path);
        }
    }

    /// Fills a finding line's operator keys: "upstream", "config_line", "config_place",
    /// "log_lines", "log_example", and "cgroup"/"container" on each process.
    pub fn annotate_json(&mut self, line: &mut FindingLine, f: &Finding, log_lines: &[String]) {
        if let Some(c) = self.configured(f).cloned() {
            line.upstream = Some(c.upstream);
            line.config_line = Some(c.line);
            line.config_place = Some(c.place);
        }
        line.log_lines = log_lines.len() as u64;
        line.log_example = log_lines.first().cloned();
        for p in line.clients.iter_mut().chain(line.listener.as_mut()) {
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
                    let label = match (&c.container, &c.unit) {
                        (Some(id), _) => format!("container {}", Escaped(id.get(..12).unwrap_or(id))),
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
        if self.instances.is_empty() && self.logs.is_empty() {
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
