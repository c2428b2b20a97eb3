//! tracer: explains, from inside the kernel, why Nginx answers 502 Bad Gateway.
//!
//! Data flows one way: kernel programs -> `capture` (decode) -> `explain` (pure) -> `report`.
//! `enrich` adds userspace measurements (sock_diag, /proc) to the same event stream.

/// A line on stderr that never panics: with `2>&1 | head` its reader may be gone, and a
/// warning must not become a crash (`eprintln!` panics when the write fails).
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod capture;
mod enrich;
mod event;
mod explain;
mod kernel;
mod metrics;
mod nginx;
mod operator;
mod report;
mod top;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::capture::{decode::ReasonNames, Availability, Capture};
use crate::enrich::{monotonic_ns, Enricher};
use crate::event::{Event, EventBody, Target};
use crate::explain::{Engine, EngineOptions, Finding, Update};
use crate::report::{Clock, Summary};

#[derive(Parser)]
#[command(name = "tracer", version, about = "Explains, from inside the kernel, why Nginx answers 502 Bad Gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trace for a while (or until Ctrl-C), then print one finding per cause and upstream.
    Diagnose(TraceArgs),
    /// Print each failed upstream connection as it happens, and findings as they open or change.
    Watch(WatchArgs),
    /// A live terminal view: one row per upstream target, refreshed every second (s: sort, q: quit).
    Top(TraceArgs),
    /// Show what this kernel offers and what tracer will therefore see; attaches nothing.
    Doctor,
}

#[derive(Args, Clone)]
struct TraceArgs {
    /// Where `watch --metrics` serves (set from `WatchArgs`; not a flag of every command).
    #[arg(skip)]
    metrics: Option<std::net::SocketAddr>,
    /// How long to trace (e.g. 30s, 2m, 500ms); default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Only upstream TCP targets on this port (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = parse_port)]
    ports: Vec<u16>,
    /// Only this Unix socket path (repeatable).
    #[arg(long = "unix", value_name = "PATH", value_parser = parse_unix_path)]
    unix_paths: Vec<String>,
    /// Only attempts made by processes with this command name, e.g. nginx (repeatable).
    #[arg(long = "client-comm", value_name = "NAME", value_parser = parse_comm)]
    client_comms: Vec<String>,
    /// Print the kernel programs' debug log (aya-log) to stderr.
    #[arg(long)]
    debug_kernel: bool,
    /// Nginx error log whose lines written while tracing are matched to the findings
    /// (repeatable; default: the error_log files of every running Nginx's configuration).
    #[arg(long = "nginx-error-log", value_name = "PATH")]
    nginx_error_logs: Vec<std::path::PathBuf>,
    /// Only findings in this network namespace (its inode, as `readlink /proc/PID/ns/net` shows).
    #[arg(long, value_name = "INODE")]
    netns: Option<u32>,
    /// Only findings whose client or listener cgroup path contains TEXT (a container id, a unit).
    #[arg(long, value_name = "TEXT", value_parser = parse_cgroup)]
    cgroup: Option<String>,
    /// `auto`: function hooks (fentry, else kprobe) where the kernel allows, tracepoints for
    /// the rest; `kprobes`: the same without trying fentry; `tracepoints`: tracepoints only.
    /// Default: $TRACER_BACKEND, else auto.
    #[arg(long, value_parser = capture::fhooks::BackendChoice::parse)]
    backend: Option<capture::fhooks::BackendChoice>,
    /// Name every hook on the `tracing:` line (default: counts per kind).
    #[arg(long)]
    verbose: bool,
}

#[derive(Args, Clone)]
struct WatchArgs {
    #[command(flatten)]
    trace: TraceArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics (127.0.0.1:9464 when ADDR is not given).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = metrics::DEFAULT_ADDR, value_parser = metrics::parse_addr)]
    metrics: Option<std::net::SocketAddr>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let value: f64 = num.parse().map_err(|_| format!("'{s}' is not a duration (use e.g. 30s, 2m, 500ms)"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("'{s}' has an unknown unit (use ms, s, m or h)")),
    };
    if !(secs > 0.0 && secs < 365.0 * 86400.0) {
        return Err(format!("'{s}' must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("'{s}' is not a TCP port (1-65535)")),
        Ok(p) => Ok(p),
    }
}

fn parse_unix_path(s: &str) -> Result<String, String> {
    let p = s.strip_prefix("unix:").unwrap_or(s);
    if p.is_empty() {
        return Err("an empty Unix socket path names nothing".into());
    }
    if p.len() > 107 {
        return Err(format!("{p:?} is longer than a Unix socket path can be (107 bytes)"));
    }
    // Nginx and every other client connect to absolute paths (or abstract names): a relative
    // path would be compared with absolute ones and match nothing, a false all-clear.
    if !p.starts_with('/') && !p.starts_with('@') {
        return Err(format!(
            "{p:?} is not an absolute Unix socket path (give it as nginx names it, e.g. /run/gunicorn.sock, or @name for an abstract socket)"
        ));
    }
    Ok(p.to_string())
}

fn parse_cgroup(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("an empty cgroup filter matches nothing".into());
    }
    Ok(s.to_string())
}

fn parse_comm(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("an empty command name matches nothing".into());
    }
    // The kernel keeps 15 bytes of a command name.
    Ok(s.chars().take(15).collect())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand { ExitCode::from(2) } else { ExitCode::SUCCESS };
            }
            // One line: what is wrong; the usage is one `--help` away.
            let rendered = e.render().to_string();
            let first = rendered.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
            note!("tracer: {} (see `tracer --help`)", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).format_timestamp(None).init();

    let result = match cli.command {
        Command::Doctor => doctor(),
        Command::Diagnose(args) => run_trace(args, Mode::Diagnose),
        Command::Watch(w) => run_trace(TraceArgs { metrics: w.metrics, ..w.trace }, Mode::Watch),
        Command::Top(args) => top::preflight(args.json).and_then(|()| run_trace(args, Mode::Top)),
    };
    match result {
        Ok(code) => code,
        // `tracer ... | head -1`: the reader took what it wanted. Everything is detached by
        // now (the capture is dropped on the way out); end quietly with the status a shell
        // gives `cat` killed by SIGPIPE (128 + 13).
        Err(_) if stdout_gone() => ExitCode::from(141),
        Err(e) => {
            note!("tracer: error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn doctor() -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let ok = kernel::doctor::doctor_report(&mut out, &capture::probe_function_hooks)?;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Diagnose,
    Watch,
    Top,
}

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("tracer must run as root (it loads eBPF programs and reads other processes' sockets): run it with sudo");
    }
    Ok(())
}

/// The signal (SIGINT, SIGTERM or SIGHUP) that asked tracer to stop, 0 while none has.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn note_stop_signal(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
}

/// Makes SIGINT, SIGTERM and SIGHUP (an ssh session dropping) ask for the orderly end instead
/// of killing tracer, from the first instant of a trace: a signal during start-up (probing,
/// attaching, reading Nginx's files) is remembered and honoured once start-up is done.
/// tokio's handlers, added later for the main loop, chain to this one (signal-hook-registry
/// calls the previous handler), so the flag stays right. No signal is ever blocked.
fn install_stop_handlers() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(SigHandler::Handler(note_stop_signal), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("installing the {signal} handler"))?;
    }
    Ok(())
}

fn stop_requested() -> bool {
    STOP_SIGNAL.load(Ordering::SeqCst) != 0
}

/// Set once writing to stdout failed because nobody reads it any more (EPIPE: `| head -1`
/// exited; EIO: the terminal hung up).
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

fn stdout_gone() -> bool {
    STDOUT_GONE.load(Ordering::SeqCst)
}

/// stdout, noting when its reader has gone so that the exit can be quiet instead of an error.
struct Stdout<'a>(std::io::StdoutLock<'a>);

impl Stdout<'_> {
    fn lock() -> Stdout<'static> {
        Stdout(std::io::stdout().lock())
    }

    fn note(result: std::io::Result<usize>) -> std::io::Result<usize> {
        if let Err(e) = &result {
            if e.kind() == std::io::ErrorKind::BrokenPipe || e.raw_os_error() == Some(libc::EIO) {
                STDOUT_GONE.store(true, Ordering::SeqCst);
            }
        }
        result
    }
}

impl Write for Stdout<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Stdout::note(self.0.write(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Stdout::note(self.0.flush().map(|()| 0)).map(|_| ())
    }
}

/// Refuses, before anything is attached, what names nothing usable: `--netns` and `--cgroup`
/// filters that match nothing on the host when tracing starts (they would end in "No failed
/// upstream connections seen.", a false all-clear; a namespace inode cannot be known before
/// the namespace exists, and a cgroup filter is meant for a container or unit that runs), and
/// `--nginx-error-log` files that are not regular files (a FIFO would block the open).
fn validate_args(args: &TraceArgs) -> Result<()> {
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

impl ReasonNames for kernel::btf::BtfNames {
    fn drop_reason(&self, value: u32) -> Option<String> {
        self.drop_reason_name(value)
    }
    fn rst_reason(&self, value: u32) -> Option<String> {
        self.rst_reason_name(value)
    }
}

/// Which findings and attempts the user asked to see.
struct Filter {
    ports: Vec<u16>,
    unix_paths: Vec<String>,
    comms: Vec<String>,
}

impl Filter {
    fn target(&self, t: &Target) -> bool {
        if self.ports.is_empty() && self.unix_paths.is_empty() {
            return true;
        }
        match t {
            Target::Tcp(a) => self.ports.contains(&a.port()),
            Target::Unix(p) => self.unix_paths.iter().any(|u| u == p),
        }
    }
    fn comm(&self, comm: &str) -> bool {
        self.comms.is_empty() || self.comms.iter().any(|c| c == comm)
    }
    fn update(&self, u: &Update) -> bool {
        match u {
            Update::Attempt(a) => self.target(&a.target) && self.comm(&a.client.comm),
            Update::Finding(f) => self.finding(f),
        }
    }
    fn finding(&self, f: &Finding) -> bool {
        self.target(&f.target) && (self.comms.is_empty() || f.clients.iter().any(|c| self.comm(&c.comm)))
    }
}

fn run_trace(args: TraceArgs, mode: Mode) -> Result<ExitCode> {
    // First: a SIGTERM, SIGINT or SIGHUP from now on ends in the report, exit 0.
    install_stop_handlers()?;
    require_root()?;
    validate_args(&args)?;
    let facts = kernel::facts::probe_kernel()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(trace(args, mode, facts))
}

/// How often pending attempts are concluded and counters read.
const TICK: Duration = Duration::from_millis(250);
/// Do not ask sock_diag about the same target more often than this.
const PROBE_EVERY_NS: u64 = 200_000_000;

async fn trace(args: TraceArgs, mode: Mode, facts: kernel::facts::KernelFacts) -> Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    let filter = Filter { ports: args.ports.clone(), unix_paths: args.unix_paths.clone(), comms: args.client_comms.clone() };
    // Filters naming TCP ports only: the syscall tracepoints serve Unix sockets alone, and an
    // enabled syscall tracepoint sends every syscall of every task through the kernel's slow
    // path (measured: a few % of an Nginx proxy's throughput). Leave them out.
    let tcp_only = !args.ports.is_empty() && args.unix_paths.is_empty();
    let available: Vec<Availability<'_>> = facts
        .tracepoints
        .iter()
        .map(|t| match tcp_only && t.category == "syscalls" {
            true => Availability { category: t.category, name: t.name, available: false, why_not: Some("not needed: the filters name TCP ports only".into()) },
            false => Availability { category: t.category, name: t.name, available: t.available, why_not: t.why_not.clone() },
        })
        .collect();

    // These only wake the loop below: `install_stop_handlers` (chained to) already notes
    // every stop signal, those sent during start-up included.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    // Bound before anything is attached: an address in use fails at once.
    let metrics_listener = match args.metrics {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };

    let choice = match args.backend {
        Some(c) => c,
        None => match std::env::var("TRACER_BACKEND") {
            Ok(v) if !v.is_empty() => capture::fhooks::BackendChoice::parse(&v).map_err(|e| anyhow::anyhow!("TRACER_BACKEND: {e}"))?,
            _ => capture::fhooks::BackendChoice::Auto,
        },
    };
    let plan = capture::fhooks::FnHookPlan { choice, functions: &facts.functions, kprobes: &facts.kprobes };
    let mut capture = Capture::start(&facts.config, &available, args.debug_kernel, &plan)?;
    let clock = wall_clock();
    let mut engine = Engine::new(EngineOptions::default());
    let mut enricher = Enricher::new();
    // Who listens where right now, so a listener that dies a second from now is still named.
    let mut owners = Vec::new();
    let mut paths = Vec::new();
    for ev in enricher.snapshot_listeners() {
        engine.push(&ev);
        if let EventBody::ListenerSeen { target, .. } = &ev.body {
            if ev.task.pid != 0 {
                owners.push(ev.task.pid);
                if let Some(info) = enrich::cgroup::process_info_event(&ev.task, ev.ts_ns, ev.netns) {
                    engine.push(&info);
                }
            }
            if let Target::Unix(p) = target {
                paths.push(p.clone());
            }
        }
    }
    owners.sort_unstable();
    owners.dedup();
    capture.watch_listeners(&owners, &paths);
    let _ = enricher.poll_overflows();
    let operator_args = operator::OperatorArgs {
        error_logs: args.nginx_error_logs.clone(),
        netns: args.netns,
        cgroup: args.cgroup.clone(),
    };
    let mut ops = operator::Operator::start(&operator_args, &mut enricher)?;

    let started_ns = monotonic_ns();
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    note!("tracing: {}", if args.verbose { capture.describe_hooks() } else { capture.describe() });
    if let Ok(signal) = nix::sys::signal::Signal::try_from(STOP_SIGNAL.load(Ordering::SeqCst)) {
        // The report that follows covers no time: say so, lest it read as an all-clear.
        note!("tracer: {signal} arrived during start-up: stopping now; the report below covers no tracing time");
    }
    let metrics = metrics_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            note!("metrics: http://{addr}/metrics");
        }
        let m = metrics::Metrics::new();
        metrics::spawn_server(listener, m.registry());
        m.observe_capture(&capture);
        m
    });
    // After the `tracing:` line, which stays on the normal screen.
    let mut top = if mode == Mode::Top { Some(top::TopView::start(clock)?) } else { None };

    let mut out = Stdout::lock();
    // Configured targets nobody listens on: at start, before any finding line (README).
    if mode == Mode::Watch && args.json {
        for v in ops.config_check_json() {
            writeln!(out, "{v}")?;
        }
        out.flush()?;
    }
    let mut batch: Vec<Event> = Vec::with_capacity(1024);
    let mut last_probe: HashMap<(u32, Target), u64> = HashMap::new();
    let mut ticker = tokio::time::interval(TICK);
    let mut ticks: u64 = 0;
    let mut reported_lost: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        // A stop signal during start-up, or one that arrived while the last batch was absorbed.
        if stop_requested() {
            break;
        }
        let sleep_until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = capture.wait_and_drain(&mut batch, &facts.names) => { r?; }
            _ = ticker.tick() => {
                ticks += 1;
                let now = monotonic_ns();
                if ticks % 4 == 0 {
                    for ev in enricher.poll_overflows() { engine.push(&ev); }
                    // The kernel's accept-wait histograms (function hook on inet_csk_accept).
                    for ev in capture.accept_waits.as_ref().map(|a| a.events(now)).unwrap_or_default() { engine.push(&ev); }
                }
                lost_events(&capture, &mut reported_lost, now, &mut engine);
                let updates = engine.tick(now);
                if mode == Mode::Watch { print_updates(&mut out, &updates, &filter, &clock, args.json, &mut ops, || engine.findings())?; }
                if let Some(m) = &metrics {
                    m.observe(updates.iter().filter(|u| filter.update(u)), |f| upstream_of(&ops, f));
                    m.observe_capture(&capture);
                }
                if let Some(view) = &mut top {
                    let quit = view.tick(&capture, || {
                        let fs: Vec<Finding> = engine.findings().into_iter().filter(|f| filter.finding(f) && ops.keep(f)).collect();
                        fs.into_iter().map(|f| { let u = upstream_of(&ops, &f); (f, u) }).collect()
                    })?;
                    if quit { break; }
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
            _ = sleep_until_deadline => break,
        }
        if !batch.is_empty() {
            absorb(&mut batch, &mut engine, &mut enricher, &mut last_probe);
        }
    }

    drop(top); // the terminal is restored before anything is printed
    // Orderly end: take what the kernel already wrote, then conclude everything.
    capture.drain(&mut batch, &facts.names);
    absorb(&mut batch, &mut engine, &mut enricher, &mut last_probe);
    let now = monotonic_ns();
    lost_events(&capture, &mut reported_lost, now, &mut engine);
    for ev in capture.accept_waits.as_ref().map(|a| a.events(now)).unwrap_or_default() {
        engine.push(&ev);
    }
    let updates = engine.finish();
    let (emitted, lost) = capture.counters()?;
    let hooks: Vec<String> = capture.hooks.iter().filter(|h| h.active).map(|h| h.hook.clone()).collect();
    drop(capture); // detaches every program before we print

    let mut findings: Vec<Finding> = engine.findings().into_iter().filter(|f| filter.finding(f)).collect();
    ops.note_processes(&findings);
    findings.retain(|f| ops.keep(f));
    let context = ops.finish(&findings);
    let summary = Summary {
        duration_s: (now.saturating_sub(started_ns)) as f64 / 1e9,
        events: emitted.values().sum(),
        lost_events: lost,
        hooks,
        findings: findings.len() as u64,
    };
    if mode == Mode::Watch {
        // The last attempts as lines; the findings they changed come once, in the report below.
        let attempts: Vec<Update> = updates.into_iter().filter(|u| matches!(u, Update::Attempt(_))).collect();
        print_updates(&mut out, &attempts, &filter, &clock, args.json, &mut ops, Vec::new)?;
    }
    if args.json {
        // `watch` printed its config_check lines at start; `diagnose` puts them first too.
        if mode != Mode::Watch {
            for v in ops.config_check_json() {
                writeln!(out, "{v}")?;
            }
        }
        for (f, log_lines) in findings.iter().zip(&context.explained) {
            let mut v = report::json::finding_json(f, &clock);
            ops.annotate_json(&mut v, f, log_lines);
            writeln!(out, "{v}")?;
        }
        for v in ops.extra_json(&context) {
            writeln!(out, "{v}")?;
        }
        writeln!(out, "{}", report::json::summary_json(&summary, &clock))?;
    } else {
        report::text::write_findings(&mut out, &findings, &summary, &clock)?;
        ops.write_text(&mut out, &findings, &context)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The Nginx upstream a finding's target is configured in (metrics labels, `top`).
fn upstream_of(ops: &operator::Operator, f: &Finding) -> Option<String> {
    ops.configured(f).map(|c| c.upstream.clone())
}

/// Maps the kernel's monotonic clock to wall-clock time (measured once, at start).
fn wall_clock() -> Clock {
    let mono = monotonic_ns() as i128;
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
    Clock::fixed(wall - mono)
}

/// Feeds a batch to the engine in time order, asking sock_diag about listeners where the
/// kernel could not measure them itself (listeners older than tracer, Unix listeners).
fn absorb(batch: &mut Vec<Event>, engine: &mut Engine, enricher: &mut Enricher, last_probe: &mut HashMap<(u32, Target), u64>) {
    // Records from different CPUs interleave in the ring: restore time order.
    batch.sort_by_key(|e| e.ts_ns);
    let me = std::process::id();
    for ev in batch.drain(..) {
        // tracer's own listener (--metrics) is not an upstream anyone meant.
        if ev.task.pid == me && matches!(ev.body, EventBody::TcpListenStart { .. } | EventBody::TcpListenStop { .. }) {
            continue;
        }
        let probe = match &ev.body {
            EventBody::TcpSynRetransmit { flow, queue: None, .. } => Some((ev.netns, Target::Tcp(flow.dst))),
            // The kernel recorded the caller's netns: it decides which sock_diag to ask.
            EventBody::UnixConnectFailed { path, errno } if *errno == libc::EAGAIN || *errno == libc::ECONNREFUSED => {
                Some((ev.netns, Target::Unix(path.clone())))
            }
            _ => None,
        };
        engine.push(&ev);
        // A new listener: its owner's parent, cgroup and unit, while it is alive to be read.
        if matches!(ev.body, EventBody::TcpListenStart { .. } | EventBody::UnixBind { .. }) {
            if let Some(info) = enrich::cgroup::process_info_event(&ev.task, ev.ts_ns, ev.netns) {
                engine.push(&info);
            }
        }
        if let Some(key) = probe {
            let due = last_probe.get(&key).is_none_or(|t| ev.ts_ns.saturating_sub(*t) >= PROBE_EVERY_NS);
            if due {
                last_probe.insert(key.clone(), ev.ts_ns);
                if let Some(seen) = enricher.probe_target(key.0, &key.1) {
                    engine.push(&seen);
                }
            }
        }
    }
    if last_probe.len() > 10_000 {
        last_probe.clear();
    }
}

/// Turns kernel lost-event counters into `Lost` events (only the increase since last time).
fn lost_events(capture: &Capture, reported: &mut BTreeMap<String, u64>, now: u64, engine: &mut Engine) {
    let Ok((_, lost)) = capture.counters() else { return };
    for (kind, count) in lost {
        let before = reported.get(&kind).copied().unwrap_or(0);
        if count > before {
            note!("tracer: warning: the kernel lost {} {kind} events (ring buffer full)", count - before);
            engine.push(&Event { ts_ns: now, netns: 0, sock: 0, task: Default::default(), body: EventBody::Lost { kind: kind.clone(), count: count - before } });
            reported.insert(kind, count);
        }
    }
}

/// `watch` lines for one tick's updates: each attempt, and each finding that opened or
/// changed. A JSON finding line carries the same Nginx context as the final report
/// (`Operator::annotate_json`: upstream, config line, cgroups), with `log_lines` counting the
/// error-log lines matched so far: the logs are read now and matched, as the report does at
/// the end, against every finding kept so far (`all_findings`, asked only when a JSON finding
/// line is printed), so a live count never holds a line the report gives another finding.
fn print_updates(
    out: &mut impl Write,
    updates: &[Update],
    filter: &Filter,
    clock: &Clock,
    json: bool,
    ops: &mut operator::Operator,
    all_findings: impl FnOnce() -> Vec<Finding>,
) -> Result<()> {
    let mut all_findings = Some(all_findings);
    // (the findings kept, the log lines each explains), read once per tick.
    let mut live: Option<(Vec<Finding>, operator::Context)> = None;
    for u in updates {
        if let (Update::Finding(f), true) = (u, json) {
            if !filter.finding(f) || !ops.keep(f) {
                continue;
            }
            if live.is_none() {
                let mut kept: Vec<Finding> =
                    all_findings.take().map(|all| all()).unwrap_or_default().into_iter().filter(|k| filter.finding(k)).collect();
                ops.note_processes(&kept);
                kept.retain(|k| ops.keep(k));
                let context = ops.finish(&kept);
                live = Some((kept, context));
            }
            let log_lines: &[String] = live
                .as_ref()
                .and_then(|(kept, context)| {
                    let i = kept.iter().position(|k| (k.cause, &k.target, k.netns) == (f.cause, &f.target, f.netns))?;
                    context.explained.get(i).map(Vec::as_slice)
                })
                .unwrap_or(&[]);
            let mut v = report::json::finding_json(f, clock);
            ops.annotate_json(&mut v, f, log_lines);
            writeln!(out, "{v}")?;
            continue;
        }
        match u {
            Update::Attempt(a) => {
                if !filter.target(&a.target) || !filter.comm(&a.client.comm) {
                    continue;
                }
                if json {
                    writeln!(out, "{}", report::json::attempt_json(a, clock))?;
                } else {
                    report::text::write_attempt(out, a, clock)?;
                }
            }
            Update::Finding(f) => {
                // --netns and --cgroup too, as in the report.
                if !filter.finding(f) || !ops.keep(f) {
                    continue;
                }
                report::text::write_watch_finding(out, f, clock)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod watch_tests {
    use super::*;
    use crate::event::{FlowAddr, TaskInfo};

    const REFUSED: &str = r#"2026/11/24 10:05:53 [error] 812#812: *3 connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1, server: , request: "GET / HTTP/1.1", upstream: "http://127.0.0.1:8000/", host: "127.0.0.1:8080""#;

    /// A dead-listener finding for 127.0.0.1:8000 made by the engine (an nginx worker, pid 812,
    /// in a network namespace no running Nginx is in), after `attempts` refused connects.
    fn engine_with_refusals(attempts: u64) -> Engine {
        let mut e = Engine::new(EngineOptions::default());
        let nginx = TaskInfo { pid: 812, tid: 812, uid: 33, comm: "nginx".into() };
        for i in 0..attempts {
            let flow = FlowAddr { src: format!("127.0.0.1:{}", 40000 + i).parse().unwrap(), dst: "127.0.0.1:8000".parse().unwrap() };
            let t0 = 1_000_000_000 * (i + 1);
            let body = EventBody::TcpRstSentNoSocket { flow, reason: None };
            e.push(&Event { ts_ns: t0, netns: 1, sock: 0, task: nginx.clone(), body });
            let body = EventBody::TcpAttemptFailed { flow, sk_err: 111, syn_retransmits: 0, rst_received: true, start_ns: t0 };
            e.push(&Event { ts_ns: t0 + 10, netns: 1, sock: 7 + i, task: nginx.clone(), body });
        }
        e
    }

    fn append(path: &std::path::Path, line: &str) {
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        writeln!(f, "{line}").unwrap();
    }

    /// Live `watch --json` finding lines carry the report's Nginx keys, and `log_lines` counts
    /// the error-log lines matched so far; the lines each tick reads stay for the end.
    #[test]
    fn live_json_finding_lines_carry_the_nginx_context_and_log_lines_so_far() {
        let dir = std::env::temp_dir().join(format!("tracer-ut-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("error.log");
        std::fs::write(&log, format!("{REFUSED}\n")).unwrap(); // before tracing: not counted
        let args = operator::OperatorArgs { error_logs: vec![log.clone()], netns: None, cgroup: None };
        let mut ops = operator::Operator::start(&args, &mut Enricher::new()).unwrap();
        let filter = Filter { ports: vec![], unix_paths: vec![], comms: vec![] };
        let clock = Clock::fixed(0);
        let line = |engine: &mut Engine, ops: &mut operator::Operator| {
            let updates = engine.finish();
            let mut out = Vec::new();
            print_updates(&mut out, &updates, &filter, &clock, true, ops, || engine.findings()).unwrap();
            let text = String::from_utf8(out).unwrap();
            let findings: Vec<serde_json::Value> =
                text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|v| v["type"] == "finding").collect();
            assert_eq!(findings.len(), 1, "{text}");
            findings[0].clone()
        };

        let mut engine = engine_with_refusals(1);
        append(&log, REFUSED);
        let v = line(&mut engine, &mut ops);
        for key in ["upstream", "config_line", "config_place", "log_lines", "log_example"] {
            assert!(v.get(key).is_some(), "live finding line lacks {key:?}: {v}");
        }
        assert_eq!(v["log_lines"], 1, "{v}");
        assert_eq!(v["log_example"], REFUSED, "{v}");
        assert!(v["clients"][0].get("cgroup").is_some(), "clients carry their cgroup: {v}");

        // The next tick: one more refusal, one more line; the first is still counted.
        let mut engine = engine_with_refusals(2);
        append(&log, REFUSED);
        let v = line(&mut engine, &mut ops);
        assert_eq!((v["count"].as_u64(), v["log_lines"].as_u64()), (Some(2), Some(2)), "{v}");

        // The end reads nothing new and still matches both lines.
        let end = ops.finish(&engine.findings());
        assert_eq!(end.explained, vec![vec![REFUSED.to_string(), REFUSED.to_string()]]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace_args(argv: &[&str]) -> Result<TraceArgs, clap::Error> {
        let mut all = vec!["tracer", "diagnose"];
        all.extend_from_slice(argv);
        Cli::try_parse_from(all).map(|cli| match cli.command {
            Command::Diagnose(args) => args,
            _ => unreachable!("parsed as diagnose"),
        })
    }

    #[test]
    fn unix_paths_must_be_absolute_or_abstract() {
        assert_eq!(parse_unix_path("/run/gunicorn.sock").unwrap(), "/run/gunicorn.sock");
        assert_eq!(parse_unix_path("unix:/run/g.sock").unwrap(), "/run/g.sock");
        assert_eq!(parse_unix_path("@abstract").unwrap(), "@abstract");
        for relative in ["relative/path", "g.sock", "./g.sock", "unix:run/g.sock"] {
            let e = parse_unix_path(relative).unwrap_err();
            assert!(e.contains("not an absolute Unix socket path") && !e.contains('\n'), "{relative}: {e}");
        }
        // At argument parsing: a usage error (exit 2 in main).
        let e = trace_args(&["--unix", "relative/path"]).err().expect("refused");
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        // Escaped, one line, whatever the path holds.
        let e = parse_unix_path("a\nFIREWALL DROP\x1b[2J").unwrap_err();
        assert!(!e.contains('\n') && !e.contains('\x1b'), "{e}");
    }

    #[test]
    fn filters_naming_nothing_are_refused_in_one_line() {
        let own = enrich::netns::own_netns_inode().expect("own netns");
        validate_args(&trace_args(&["--netns", &own.to_string()]).unwrap()).expect("the namespace tracer runs in exists");
        // Namespace inodes are allocated from 0xF0000000 up: 12345 is never one.
        let e = validate_args(&trace_args(&["--netns", "12345"]).unwrap()).unwrap_err().to_string();
        assert!(e.starts_with("--netns 12345: no network namespace has this inode now") && !e.contains('\n'), "{e}");

        let e = validate_args(&trace_args(&["--cgroup", "no-such-cgroup-\u{1b}[2J"]).unwrap()).unwrap_err().to_string();
        assert!(e.starts_with("--cgroup \"no-such-cgroup-\\u{1b}[2J\": no cgroup path contains"), "{e}");
        assert!(!e.contains('\n') && !e.contains('\x1b'), "{e}");
        if let Some(own) = enrich::cgroup::cgroup_of(std::process::id()) {
            validate_args(&trace_args(&["--cgroup", &own.path]).unwrap()).expect("tracer's own cgroup exists");
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
            let e = validate_args(&trace_args(&["--nginx-error-log", path.to_str().unwrap()]).unwrap()).unwrap_err();
            let e = format!("{e:#}");
            assert!(e.contains(path.to_str().unwrap()) && e.contains("regular file") && !e.contains('\n'), "{kind}: {e}");
        }
        let missing = dir.join("missing.log");
        assert!(validate_args(&trace_args(&["--nginx-error-log", missing.to_str().unwrap()]).unwrap()).is_err());
        validate_args(&trace_args(&["--nginx-error-log", file.to_str().unwrap()]).unwrap()).expect("a regular file");
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

    #[test]
    fn a_stop_signal_is_noted_not_fatal() {
        install_stop_handlers().unwrap();
        assert!(!stop_requested());
        // SIGHUP's default action would end this test process.
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
        assert!(stop_requested());
        assert_eq!(STOP_SIGNAL.load(Ordering::SeqCst), libc::SIGHUP);
        STOP_SIGNAL.store(0, Ordering::SeqCst);
    }

    #[test]
    fn stdout_notes_a_reader_that_went_away() {
        assert!(Stdout::note(Ok(3)).is_ok());
        assert!(!stdout_gone());
        let _ = Stdout::note(Err(std::io::Error::from_raw_os_error(libc::EAGAIN)));
        assert!(!stdout_gone(), "only EPIPE and EIO mean the reader is gone");
        let _ = Stdout::note(Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)));
        assert!(stdout_gone());
        STDOUT_GONE.store(false, Ordering::SeqCst);
    }
}
