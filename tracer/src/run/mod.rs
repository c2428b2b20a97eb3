//! One trace, from start-up to the report: attach, feed the engine each batch and tick, print
//! what the command prints, and end in order on a stop signal, the deadline or `q`.

mod feed;
mod filter;
pub mod signals;
pub mod stdout;
mod validate;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::capture::{self, decode::ReasonNames, Availability, Capture};
use crate::cli::TraceArgs;
use crate::enrich::{self, monotonic_ns, Enricher};
use crate::event::{Event, EventBody, Target};
use crate::explain::{Engine, EngineOptions, Finding, Update};
use crate::report::{self, Clock, Summary};
use crate::{kernel, metrics, operator, top};

use feed::{absorb, lost_events};
use filter::Filter;
use signals::{install_stop_handlers, stop_requested};
use stdout::Stdout;
use validate::validate_args;
use watch::print_updates;

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
    fn drop_reason(&self, value: u32) -> Option<String> {
        self.drop_reason_name(value)
    }
    fn rst_reason(&self, value: u32) -> Option<String> {
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
    if let Some(signal) = signals::stopped_by() {
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
