//! One trace, from start-up to the report: attach, feed the engine each batch and tick, print
//! what the command prints, and end in order on a stop signal, the deadline or `q`.

mod feed;
mod filter;
pub mod signals;
pub mod stdout;
mod validate;
mod watch;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::capture::fhooks::BackendChoice;
use crate::capture::{self, decode::ReasonNames, Availability, Capture};
use crate::cli::TraceArgs;
use crate::enrich::{monotonic_ns, Enricher};
use crate::event::Event;
use crate::explain::{Engine, EngineOptions, Finding, Update};
use crate::kernel::facts::KernelFacts;
use crate::report::{self, Clock, Summary};
use crate::{kernel, metrics, operator, top};

use feed::Feed;
use filter::Filter;
use signals::{install_stop_handlers, stop_requested};
use stdout::Stdout;
use validate::validate_args;
use watch::{kept_updates, print_updates};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
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

impl ReasonNames for kernel::btf::BtfNames {
    fn drop_reason(&self, value: u32) -> Option<std::sync::Arc<str>> {
        self.drop_reason_name(value)
    }
    fn rst_reason(&self, value: u32) -> Option<std::sync::Arc<str>> {
        self.rst_reason_name(value)
    }
}

pub fn run_trace(args: TraceArgs, mode: Mode) -> Result<ExitCode> {
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
/// Every this many ticks, sock_diag's overflow poll and the accept-wait histograms are read.
const POLL_EVERY_TICKS: u64 = 4;

async fn trace(args: TraceArgs, mode: Mode, facts: KernelFacts) -> Result<ExitCode> {
    // These only wake the loop: `install_stop_handlers` (chained to) already notes every stop
    // signal, those sent during start-up included.
    let mut stops = StopSignals::install()?;
    // Bound before anything is attached: an address in use fails at once.
    let metrics_listener = match args.metrics {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    // Said before `tracing:`, so whoever waits for that line knows where to scrape; a scrape
    // that comes before the server task runs waits in the listener's queue.
    if let Some(addr) = metrics_listener.as_ref().and_then(|l| l.local_addr().ok()) {
        note!("metrics: http://{addr}/metrics");
    }
    let mut trace = Trace::start(args, mode, facts)?;
    trace.metrics = metrics_listener.map(|listener| start_metrics(listener, &trace.capture));
    // After the `tracing:` line, which stays on the normal screen.
    if mode == Mode::Top {
        trace.top = Some(top::TopView::start(trace.clock)?);
    }
    trace.begin()?;
    trace.run(&mut stops).await?;
    trace.end()?;
    Ok(ExitCode::SUCCESS)
}

/// tokio's SIGINT, SIGTERM and SIGHUP streams, to wake the loop.
struct StopSignals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl StopSignals {
    fn install() -> Result<StopSignals> {
        Ok(StopSignals {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }
}

/// What woke the loop.
enum Wake {
    Records,
    Tick,
    Stop,
}

/// One trace's state, from attaching to the report.
struct Trace {
    args: TraceArgs,
    mode: Mode,
    facts: KernelFacts,
    filter: Filter,
    capture: Capture,
    engine: Engine,
    feed: Feed,
    ops: operator::Operator,
    clock: Clock,
    metrics: Option<metrics::Metrics>,
    top: Option<top::TopView>,
    out: Stdout<'static>,
    batch: Vec<Event>,
    started_ns: u64,
}

impl Trace {
    /// Attaches the kernel programs, takes the listener snapshot and reads Nginx's files.
    fn start(args: TraceArgs, mode: Mode, facts: KernelFacts) -> Result<Trace> {
        let filter = Filter { ports: args.ports.clone(), unix_paths: args.unix_paths.clone(), comms: args.client_comms.clone() };
        let nginx = crate::nginx::discover();
        let syscalls = SyscallHooks::choose(&args, nginx.is_empty() || crate::nginx::may_connect_unix(&nginx));
        let available = available_tracepoints(&facts, syscalls);
        let plan = capture::fhooks::FnHookPlan { choice: backend_choice(&args)?, set_state: args.set_state_hook.and_then(|c| c.0), functions: &facts.functions, kprobes: &facts.kprobes };
        let repeat_window_ns = if args.each_attempt { 0 } else { capture::REPEAT_WINDOW_NS };
        let config = tracer_common::Config { repeat_window_ns, ..facts.config };
        let mut capture = Capture::start(&config, &available, args.debug_kernel, &plan)?;
        let clock = wall_clock();
        let mut engine =
            Engine::new(EngineOptions { local_refusals_unseen: !facts.local_refusals_visible(), ..EngineOptions::default() });
        let mut feed = Feed::new(Enricher::new());
        // A table a killed tracer left (`--trace-rules`) goes first, whatever this run does.
        feed.enricher.remove_leftover_trace_tables();
        if args.trace_rules {
            feed.trace_rules(&args.ports, args.netns);
            note!("tracer: --trace-rules: table inet {} added to the namespaces' rulesets until tracer ends", crate::enrich::nftrace::TRACE_TABLE);
        }
        let (owners, paths) = feed.snapshot_listeners(&mut engine);
        capture.watch_listeners(&owners, &paths);
        let operator_args =
            operator::OperatorArgs { error_logs: args.nginx_error_logs.clone(), netns: args.netns, cgroup: args.cgroup.clone() };
        let ops = operator::Operator::start(&operator_args, nginx, &mut feed.enricher)?;
        engine.set_read_timeouts(ops.read_timeouts());
        note!("tracing: {}", if args.verbose { capture.describe_hooks() } else { capture.describe() });
        if let Some(signal) = signals::stopped_by() {
            // The report that follows covers no time: say so, lest it read as an all-clear.
            note!("tracer: {signal} arrived during start-up: stopping now; the report below covers no tracing time");
        }
        Ok(Trace {
            args,
            mode,
            facts,
            filter,
            capture,
            engine,
            feed,
            ops,
            clock,
            metrics: None,
            top: None,
            out: Stdout::lock(),
            batch: Vec::with_capacity(1024),
            started_ns: monotonic_ns(),
        })
    }

    /// `watch --json`: configured targets nobody listens on, before any finding line (README).
    fn begin(&mut self) -> Result<()> {
        if self.mode == Mode::Watch && self.args.json {
            self.write_config_check()?;
            self.out.flush()?;
        }
        Ok(())
    }

    /// Until a stop signal, the deadline or `q` in `top`.
    async fn run(&mut self, stops: &mut StopSignals) -> Result<()> {
        let deadline = self.args.duration.map(|d| tokio::time::Instant::now() + d);
        let mut ticker = tokio::time::interval(TICK);
        let mut ticks: u64 = 0;
        // A stop signal during start-up, or one that arrived while the last batch was absorbed.
        while !stop_requested() {
            let sleep_until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                r = self.capture.wait_and_drain(&mut self.batch, &self.facts.names) => { r?; Wake::Records }
                _ = ticker.tick() => Wake::Tick,
                _ = stops.int.recv() => Wake::Stop,
                _ = stops.term.recv() => Wake::Stop,
                _ = stops.hup.recv() => Wake::Stop,
                _ = sleep_until_deadline => Wake::Stop,
            };
            match wake {
                Wake::Stop => break,
                Wake::Tick => {
                    ticks += 1;
                    if self.tick(ticks)? {
                        break;
                    }
                }
                Wake::Records => {}
            }
            if !self.batch.is_empty() {
                self.feed.absorb(&mut self.batch, &mut self.engine);
            }
        }
        Ok(())
    }

    /// Concludes what is due and shows it: `watch` lines, metrics, the `top` view. True when
    /// the user quit `top`.
    fn tick(&mut self, ticks: u64) -> Result<bool> {
        let now = monotonic_ns();
        if ticks % POLL_EVERY_TICKS == 0 {
            self.feed.poll(&self.capture, now, &mut self.engine);
            // Nginx masters that started, reloaded or exited; error-log lines written since.
            if self.ops.tick() {
                self.engine.set_read_timeouts(self.ops.read_timeouts());
            }
            if self.capture.has_deferred() && self.ops.may_connect_unix() {
                let attached = self.capture.attach_deferred();
                note!("tracing: an Nginx now configures a Unix socket upstream: attached {}", attached.join(", "));
            }
        }
        self.feed.lost_events(&self.capture, now, &mut self.engine);
        let updates = self.engine.tick(now);
        // A finding the report leaves out is neither printed nor counted.
        let shown = self.mode == Mode::Watch || self.metrics.is_some();
        let kept = if shown { kept_updates(&updates, &self.filter, &mut self.ops) } else { Vec::new() };
        if self.mode == Mode::Watch {
            let engine = &self.engine;
            print_updates(&mut self.out, &kept, &self.filter, &self.clock, self.args.json, &mut self.ops, || engine.findings())?;
        }
        if let Some(m) = &self.metrics {
            m.observe(kept, |f| upstream_of(&self.ops, f));
            m.observe_capture(&self.capture);
        }
        let Some(view) = &mut self.top else { return Ok(false) };
        let (engine, filter, ops) = (&self.engine, &self.filter, &mut self.ops);
        view.tick(&self.capture, || {
            let kept: Vec<Finding> = engine.findings().into_iter().filter(|f| filter.finding(f) && ops.keep(f)).collect();
            kept.into_iter().map(|f| (upstream_of(ops, &f), f)).map(|(upstream, f)| (f, upstream)).collect()
        })
    }

    /// Orderly end: the terminal back, what the kernel already wrote taken, everything
    /// concluded, every program detached, then the report.
    fn end(mut self) -> Result<()> {
        drop(self.top.take());
        self.capture.drain(&mut self.batch, &self.facts.names);
        self.feed.absorb(&mut self.batch, &mut self.engine);
        let now = monotonic_ns();
        self.feed.lost_events(&self.capture, now, &mut self.engine);
        self.feed.accept_waits(&self.capture, now, &mut self.engine);
        let updates = self.engine.finish();
        let (emitted, lost) = self.capture.counters()?;
        let hooks: Vec<String> = self.capture.hooks.iter().filter(|h| h.active).map(|h| h.hook.clone()).collect();
        drop(self.capture); // detaches every program before we print

        let (findings, context) = kept_with_context(self.engine.findings(), &self.filter, &mut self.ops);
        let summary = Summary {
            duration_s: (now.saturating_sub(self.started_ns)) as f64 / 1e9,
            events: emitted.values().sum(),
            lost_events: lost,
            hooks,
            findings: findings.len() as u64,
        };
        let mut report = Report { args: &self.args, mode: self.mode, filter: &self.filter, clock: &self.clock, ops: &mut self.ops, out: &mut self.out };
        if self.mode == Mode::Watch {
            // The last attempts as lines; the findings they changed come once, in the report below.
            let attempts: Vec<Update> = updates.into_iter().filter(|u| matches!(u, Update::Attempt(_))).collect();
            let kept = kept_updates(&attempts, report.filter, report.ops);
            print_updates(report.out, &kept, report.filter, report.clock, report.args.json, report.ops, Vec::new)?;
        }
        match self.args.json {
            true => report.json(&findings, &context, &summary)?,
            false => report.text(&findings, &context, &summary)?,
        }
        self.out.flush()?;
        Ok(())
    }

    fn write_config_check(&mut self) -> Result<()> {
        for v in self.ops.config_check_json() {
            writeln!(self.out, "{v}")?;
        }
        Ok(())
    }
}

/// The findings the filters keep (`--port`/`--unix`/`--client-comm`, then `--netns`/`--cgroup`,
/// which need the processes' cgroups read while they live), and the Nginx context of each:
/// the same for the live `watch --json` lines and the closing report.
pub(crate) fn kept_with_context(all: Vec<Finding>, filter: &Filter, ops: &mut operator::Operator) -> (Vec<Finding>, operator::Context) {
    let mut kept: Vec<Finding> = all.into_iter().filter(|f| filter.finding(f)).collect();
    ops.note_processes(&kept);
    kept.retain(|f| ops.keep(f));
    let context = ops.finish(&kept);
    (kept, context)
}

/// The closing report, in text or JSON lines.
struct Report<'a> {
    args: &'a TraceArgs,
    mode: Mode,
    filter: &'a Filter,
    clock: &'a Clock,
    ops: &'a mut operator::Operator,
    out: &'a mut Stdout<'static>,
}

impl Report<'_> {
    fn json(&mut self, findings: &[Finding], context: &operator::Context, summary: &Summary) -> Result<()> {
        // `watch` printed its config_check lines at start; `diagnose` puts them first too.
        if self.mode != Mode::Watch {
            for v in self.ops.config_check_json() {
                writeln!(self.out, "{v}")?;
            }
        }
        for (f, log_lines) in findings.iter().zip(&context.explained) {
            let mut v = report::json::finding_json(f, self.clock);
            self.ops.annotate_json(&mut v, f, log_lines);
            writeln!(self.out, "{v}")?;
        }
        for v in self.ops.extra_json(context) {
            writeln!(self.out, "{v}")?;
        }
        writeln!(self.out, "{}", report::json::summary_json(summary, self.clock))?;
        Ok(())
    }

    fn text(&mut self, findings: &[Finding], context: &operator::Context, summary: &Summary) -> Result<()> {
        let places = self.ops.places(findings);
        report::text::write_findings(self.out, findings, summary, self.clock, &places)?;
        self.ops.write_text(self.out, findings, context)?;
        Ok(())
    }
}

/// When the syscall tracepoints are attached. They serve Unix sockets alone, and an enabled
/// syscall tracepoint sends every syscall of every task on the host through the kernel's slow
/// path (a few % of an Nginx proxy's throughput, on top of their programs' time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyscallHooks {
    /// Filters naming TCP ports only.
    Never,
    /// `--unix`, no Nginx running, or an Nginx that configures a Unix upstream (or whose
    /// configuration is partly unreadable).
    AtStart,
    /// Until an Nginx starts or reloads with a Unix upstream (`Capture::attach_deferred`).
    WhenNeeded,
}

impl SyscallHooks {
    /// `nginx_may_connect_unix`: `nginx::may_connect_unix` of the masters running, or no
    /// master running at all.
    fn choose(args: &TraceArgs, nginx_may_connect_unix: bool) -> SyscallHooks {
        match (args.ports.is_empty(), args.unix_paths.is_empty(), nginx_may_connect_unix) {
            (false, true, _) => SyscallHooks::Never,
            (_, false, _) | (true, true, true) => SyscallHooks::AtStart,
            (true, true, false) => SyscallHooks::WhenNeeded,
        }
    }
}

/// The tracepoints to attach, with the syscall tracepoints as `SyscallHooks` says.
fn available_tracepoints<'a>(facts: &'a KernelFacts, syscalls: SyscallHooks) -> Vec<Availability<'a>> {
    facts
        .tracepoints
        .iter()
        .map(|t| {
            let mut a = Availability { category: t.category, name: t.name, available: t.available, why_not: t.why_not.clone(), deferred: false };
            if t.category == "syscalls" && t.available {
                match syscalls {
                    SyscallHooks::Never => {
                        a.available = false;
                        a.why_not = Some("not needed: the filters name TCP ports only".into());
                    }
                    SyscallHooks::WhenNeeded => {
                        a.deferred = true;
                        a.why_not = Some("not needed yet: no Nginx upstream is a Unix socket (attached when an Nginx configures one)".into());
                    }
                    SyscallHooks::AtStart => {}
                }
            }
            a
        })
        .collect()
}

/// `--backend`, else $TRACER_BACKEND, else auto.
fn backend_choice(args: &TraceArgs) -> Result<BackendChoice> {
    if let Some(choice) = args.backend {
        return Ok(choice);
    }
    match std::env::var("TRACER_BACKEND") {
        Ok(v) if !v.is_empty() => BackendChoice::parse(&v).map_err(|e| anyhow::anyhow!("TRACER_BACKEND: {e}")),
        _ => Ok(BackendChoice::Auto),
    }
}

/// Serves `/metrics` from the listener bound at start.
fn start_metrics(listener: tokio::net::TcpListener, capture: &Capture) -> metrics::Metrics {
    let m = metrics::Metrics::new();
    metrics::spawn_server(listener, m.registry());
    m.observe_capture(capture);
    m
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

#[cfg(test)]
mod tests {
    use super::SyscallHooks;
    use crate::cli::diagnose_args;

    /// The syscall tracepoints slow every syscall on the host: attached at start only when a
    /// Unix connect may need explaining, never for TCP port filters alone, and otherwise left
    /// for an Nginx that configures a Unix upstream.
    #[test]
    fn syscall_hooks_are_attached_only_when_a_unix_connect_may_need_explaining() {
        let choose = |argv: &[&str], nginx_unix: bool| SyscallHooks::choose(&diagnose_args(argv).unwrap(), nginx_unix);
        assert_eq!(choose(&["--port", "8000"], true), SyscallHooks::Never);
        assert_eq!(choose(&["--port", "8000", "--unix", "/run/a.sock"], false), SyscallHooks::AtStart);
        assert_eq!(choose(&["--unix", "/run/a.sock"], false), SyscallHooks::AtStart);
        assert_eq!(choose(&[], true), SyscallHooks::AtStart);
        assert_eq!(choose(&[], false), SyscallHooks::WhenNeeded);
    }
}
