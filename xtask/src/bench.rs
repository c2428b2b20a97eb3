//! `cargo xtask bench`: what tracer costs, measured (NOT a test: it prints figures and writes
//! them as JSON under bench/results/).
//!
//! Everything runs in one fresh network namespace `tracer-bench-<pid>` on its loopback; tracer
//! and bpftrace run in the host namespace (they see every namespace). Each A/B is measured in
//! one run, in alternating rounds (the order flips every round), and reported as medians:
//!
//! 1. healthy proxied traffic: Nginx -> an Nginx `return 200` upstream, a new upstream
//!    connection per request, load from wrk; rounds without tracer, with `tracer watch`, with
//!    a bpftrace script counting the same tracepoints (written from tracer's `--verbose` hook
//!    list); then each one's kernel time per request (`kernel.bpf_stats_enabled`). Nginx
//!    runs through sections 1 and 2, as on the hosts tracer is for;
//! 2. failure floods: bench/refuse_flood.c (socket/connect/close to a closed port) alone, with
//!    `tracer diagnose`, with bpftrace; every tracer round must report exactly the generator's
//!    count with zero lost events; kernel time per refused attempt, tracer and bpftrace. Plus a burst of connects whose SYNs an nft rule drops;
//! 3. start and stop: exec -> `tracing:` line, SIGTERM -> exit with every program detached;
//! 4. churn: a listener restarting hundreds of times under load, and thousands of connects
//!    that never finish (SYNs dropped, sockets held open, then closed): kernel map occupancy
//!    and tracer's RSS at start and end.
//!
//! Every loop is bounded in count and time; every process, the namespace (with its nft table)
//! and every BPF program are cleaned up on every exit path (Drop guards, Ctrl-C included).
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::{json, Value};
use xtask::kit::{
    collect_lines, wait_ready, wait_timeout_polling, Listener, Netns, ProcessGroup, ReadyLine, ReadyWait, SharedLines,
};

use crate::{
    cmd_build::release_or_env,
    interrupt::{check_interrupted, install_handlers, pause},
    util::{probe, root, run, show, target_dir},
};

/// Options of `cargo xtask bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Rounds of each A/B (the order of the variants flips every round).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Seconds of wrk load per HTTP round.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub http_seconds: u32,
    /// Seconds of each refused-connect flood round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub flood_seconds: u32,
    /// Start/stop measurements.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub starts: u32,
    /// Only these sections (http, flood, startstop, churn); all by default.
    #[arg(long = "only", value_name = "SECTION")]
    pub only: Vec<String>,
    /// Do not write bench/results/*.json.
    #[arg(long)]
    pub no_save: bool,
}

const FRONT_PORT: u16 = 8080;
const UPSTREAM_PORT: u16 = 8081;
const CLOSED_PORT: u16 = 9000;
const DROPPED_PORT: u16 = 9001;
const CHURN_PORT: u16 = 9002;
const NFT_TABLE: &str = "tracer_bench";
const CHURN_PHASES: usize = 4;
/// Generous bound on any single wait.
const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Processes and the namespace
// ---------------------------------------------------------------------------------------

/// A process the bench started (own process group); SIGTERM to its group, SIGKILL after 3 s
/// and to leftovers (Nginx workers) when it is dropped.
struct Proc {
    name: &'static str,
    child: ProcessGroup,
    lines: SharedLines,
    readers: Vec<thread::JoinHandle<()>>,
    spawned: Instant,
    first_match: mpsc::Receiver<Instant>,
}

impl Proc {
    /// Spawns `cmd` (stdout to `stdout_to`, or collected), collecting stderr lines (and stdout
    /// lines when collected). `ready` is a line prefix whose first appearance is timed.
    fn spawn(name: &'static str, cmd: &mut Command, stdout_to: Option<&Path>, ready: &'static str) -> Result<Proc> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0).stdin(Stdio::null()).stderr(Stdio::piped());
        match stdout_to {
            Some(p) => cmd.stdout(fs::File::create(p)?),
            None => cmd.stdout(Stdio::piped()),
        };
        let spawned = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("cannot start {}", show(cmd)))?;
        let lines = SharedLines::new();
        let (ready_line, first_match) = ReadyLine::new(ready);
        let ready_line = (!ready.is_empty()).then_some(ready_line);
        let mut readers = vec![collect_lines(child.stderr.take().unwrap(), &lines, ready_line.clone())];
        if let Some(out) = child.stdout.take() {
            readers.push(collect_lines(out, &lines, ready_line));
        }
        let child = ProcessGroup::new(child, Signal::SIGTERM, Duration::from_secs(3));
        Ok(Proc { name, child, lines, readers, spawned, first_match })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the `ready` line; returns the time from spawn to it.
    fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let poll = Duration::from_millis(10);
        match wait_ready(&self.first_match, &mut self.child, timeout, poll, check_interrupted)? {
            ReadyWait::Ready(at) => Ok(at.duration_since(self.spawned)),
            ReadyWait::Exited(st) => bail!("{} exited ({st}) before it was ready: {}", self.name, self.output().join(" | ")),
            ReadyWait::TimedOut => bail!("{} was not ready within {timeout:?}", self.name),
        }
    }

    fn output(&self) -> Vec<String> {
        self.lines.snapshot()
    }

    /// Sends `sig` to the process (not its group) and waits for it; the time it took.
    fn stop(&mut self, sig: Signal, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        let _ = kill(Pid::from_raw(self.pid() as i32), sig);
        // Polled every 500 µs: the exit is timed.
        if wait_timeout_polling(&mut self.child, timeout, Duration::from_micros(500)).is_none() {
            self.child.stop();
            bail!("{} did not exit within {timeout:?} of {sig}", self.name);
        }
        let took = t0.elapsed();
        self.join_readers();
        Ok(took)
    }

    /// Waits (bounded) for the process to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            if let Ok(Some(st)) = self.child.try_wait() {
                self.join_readers();
                if !st.success() {
                    bail!("{} failed ({st}): {}", self.name, self.output().join(" | "));
                }
                return Ok(());
            }
            if Instant::now() >= end {
                self.child.stop();
                bail!("{} did not finish within {timeout:?}", self.name);
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // The group first: the readers end when its last process closes the pipes.
        self.child.stop();
        self.join_readers();
    }
}

/// The bench's network namespace `tracer-bench-<pid>` (deleting it also deletes its nft table).
fn bench_netns() -> Result<Netns> {
    Netns::create(format!("tracer-bench-{}", std::process::id()))
}

// ---------------------------------------------------------------------------------------
// Small measurements
// ---------------------------------------------------------------------------------------

fn clk_tck() -> f64 {
    let v = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    if v > 0 {
        v as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (ut, st): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((ut + st) / clk_tck())
}

/// A `Vm*` line of /proc/PID/status, in KiB.
fn vm_kib(pid: u32, key: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// BPF object ids (`prog_id` or `map_id`) held by a process's file descriptors.
fn bpf_ids(pid: u32, key: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return ids };
    for e in dir.flatten() {
        if let Ok(s) = fs::read_to_string(e.path()) {
            for l in s.lines() {
                if let Some(v) = l.strip_prefix(key).and_then(|v| v.trim_start_matches(':').trim().parse().ok()) {
                    if !ids.contains(&v) {
                        ids.push(v);
                    }
                }
            }
        }
    }
    ids.sort();
    ids
}

fn prog_exists(id: u32) -> bool {
    probe(Command::new("bpftool").args(["prog", "show", "id", &id.to_string()])).0
}

/// Programs named tracer_* loaded anywhere (other tracer runs included).
fn tracer_progs_loaded() -> usize {
    let (_, out) = probe(Command::new("bpftool").args(["prog", "list"]));
    out.lines().filter(|l| l.contains(" name tracer_")).count()
}

/// Element counts of tracer's per-socket maps (by name), read with bpftool. The attempt
/// records live in an array (every slot always "exists"): their count is the kernel's own,
/// the COUNTERS slot `ATTEMPT_RECORDS_HELD` summed over CPUs.
fn map_occupancy(pid: u32) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for id in bpf_ids(pid, "map_id") {
        let (ok, info) = probe(Command::new("bpftool").args(["-j", "map", "show", "id", &id.to_string()]));
        if !ok {
            continue;
        }
        let Ok(info): Result<Value, _> = serde_json::from_str(&info) else { continue };
        let name = info["name"].as_str().unwrap_or("").to_string();
        if name == "COUNTERS" {
            let records = attempt_records_held(id);
            out.insert("ATTEMPTS".to_string(), json!({"entries": records, "max_entries": tracer_common::ATTEMPT_RECORDS}));
            continue;
        }
        if !["LISTENERS", "UNIX_CONNECTS"].contains(&name.as_str()) {
            continue;
        }
        let (ok, dump) = probe(Command::new("bpftool").args(["-j", "map", "dump", "id", &id.to_string()]));
        let n = if ok { serde_json::from_str::<Value>(&dump).ok().and_then(|v| v.as_array().map(|a| a.len())) } else { None };
        out.insert(name, json!({"entries": n, "max_entries": info["max_entries"]}));
    }
    out
}

/// The attempt records held, from the per-CPU COUNTERS map `id`: each CPU's slot adds its
/// inserts and subtracts its removes as a wrapping u64.
fn attempt_records_held(id: u32) -> Option<u64> {
    let key = tracer_common::ATTEMPT_RECORDS_HELD.to_le_bytes().map(|b| b.to_string());
    let mut args = vec!["-j".to_string(), "map".into(), "lookup".into(), "id".into(), id.to_string(), "key".into()];
    args.extend(key);
    let (ok, out) = probe(Command::new("bpftool").args(&args));
    let v: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
    let per_cpu = v["values"].as_array()?;
    let mut held = 0u64;
    for cpu in per_cpu {
        let bytes: Vec<u8> = cpu["value"].as_array()?.iter().filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok()).collect();
        held = held.wrapping_add(u64::from_le_bytes(bytes.try_into().ok()?));
    }
    Some(held)
}

/// Kernel-side cost of tracer's programs: `kernel.bpf_stats_enabled` on for the duration of
/// `f`, then each program's run time and run count (bpftool), keyed by program name.
fn with_bpf_stats<T>(pid: u32, f: impl FnOnce() -> Result<T>) -> Result<(T, BTreeMap<String, (u64, u64)>)> {
    const KNOB: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = fs::read_to_string(KNOB).unwrap_or_else(|_| "0".into());
    fs::write(KNOB, "1").context("enabling kernel.bpf_stats_enabled")?;
    let out = f();
    let mut stats = BTreeMap::new();
    for id in bpf_ids(pid, "prog_id") {
        let (ok, info) = probe(Command::new("bpftool").args(["-j", "prog", "show", "id", &id.to_string()]));
        if let (true, Ok(v)) = (ok, serde_json::from_str::<Value>(&info)) {
            let name = v["name"].as_str().unwrap_or("?").to_string();
            stats.insert(name, (v["run_time_ns"].as_u64().unwrap_or(0), v["run_cnt"].as_u64().unwrap_or(0)));
        }
    }
    let _ = fs::write(KNOB, before.trim());
    Ok((out?, stats))
}

/// Per program of process `pid` (by name): the runs the kernel skipped because a BPF program
/// was already running on that CPU (`recursion_misses`, 5.12+), where non-zero.
fn recursion_misses(pid: u32) -> BTreeMap<String, u64> {
    let mut misses = BTreeMap::new();
    for id in bpf_ids(pid, "prog_id") {
        let (ok, info) = probe(Command::new("bpftool").args(["-j", "prog", "show", "id", &id.to_string()]));
        if let (true, Ok(v)) = (ok, serde_json::from_str::<Value>(&info)) {
            if let Some(n) = v["recursion_misses"].as_u64().filter(|n| *n > 0) {
                misses.insert(v["name"].as_str().unwrap_or("?").to_string(), n);
            }
        }
    }
    misses
}

/// `{"total_ns_per_unit", "programs": {name: {"ns_per_call", "calls_per_unit", "ns_per_unit"}}}`.
fn cost_json(stats: &BTreeMap<String, (u64, u64)>, units: u64) -> Value {
    let units = units.max(1) as f64;
    let total: u64 = stats.values().map(|(t, _)| t).sum();
    let progs: BTreeMap<&String, Value> = stats
        .iter()
        .filter(|(_, (_, c))| *c > 0)
        .map(|(n, (t, c))| {
            (n, json!({"ns_per_call": *t as f64 / *c as f64, "calls_per_unit": *c as f64 / units, "ns_per_unit": *t as f64 / units}))
        })
        .collect();
    json!({"total_ns_per_unit": total as f64 / units, "programs": progs})
}

fn total_ns(cost: &Value) -> f64 {
    cost["total_ns_per_unit"].as_f64().unwrap_or(0.0)
}

/// `1661 / 1710 / 2058`: every run's total, lowest first.
fn fmt_totals(totals: &Value) -> String {
    totals.as_array().map(|v| v.iter().map(|t| format!("{:.0}", t.as_f64().unwrap_or(0.0))).collect::<Vec<_>>().join(" / ")).unwrap_or_default()
}

/// `set_state 1500 (2.0x), rst_send 500 (1.0x), ...`: where the kernel time goes.
fn cost_line(cost: &Value) -> String {
    let mut v: Vec<(String, f64, f64)> = cost["programs"]
        .as_object()
        .map(|m| m.iter().map(|(k, p)| (k.trim_start_matches("tracer_").to_string(), p["ns_per_unit"].as_f64().unwrap_or(0.0), p["calls_per_unit"].as_f64().unwrap_or(0.0))).collect())
        .unwrap_or_default();
    v.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    v.iter().filter(|x| x.1 >= 1.0).map(|(n, ns, c)| format!("{n} {ns:.0} ns ({c:.2} calls)")).collect::<Vec<_>>().join(", ")
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// `1.23ms`, `456.78us`, `1.20s` (wrk's units) -> milliseconds.
fn wrk_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * mul)
}

/// The figures of one wrk run.
#[derive(Clone, Debug, Default)]
struct WrkRun {
    rps: f64,
    p99_ms: f64,
    requests: u64,
    errors: u64,
}

fn parse_wrk(out: &str) -> Result<WrkRun> {
    let mut r = WrkRun::default();
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().context("wrk Requests/sec")?;
        } else if let Some(v) = t.strip_prefix("99%") {
            r.p99_ms = wrk_ms(v).ok_or_else(|| anyhow!("wrk 99% line: {t}"))?;
        } else if t.contains("requests in") {
            r.requests = t.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            r.errors += v.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
        }
    }
    if r.rps <= 0.0 {
        bail!("wrk printed no Requests/sec: {out}");
    }
    Ok(r)
}

/// One JSON object from the generator's single output line.
fn parse_generator(lines: &[String]) -> Result<Value> {
    lines
        .iter()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok().filter(|v| v.get("mode").is_some()))
        .ok_or_else(|| anyhow!("the load generator printed no result: {}", lines.join(" | ")))
}

/// tracer's JSON lines: findings and the summary.
struct TracerReport {
    findings: Vec<Value>,
    summary: Value,
}

/// The bench's findings only (those in its namespace, inode `netns`): the host may run other
/// traffic while the bench runs.
fn parse_tracer(path: &Path, netns: u64) -> Result<TracerReport> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut findings = Vec::new();
    let mut summary = Value::Null;
    for l in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(l) else { continue };
        match v["type"].as_str() {
            Some("finding") if v["netns"].as_u64() == Some(netns) => findings.push(v),
            Some("summary") => summary = v,
            _ => {}
        }
    }
    if summary.is_null() {
        bail!("tracer printed no summary line ({})", path.display());
    }
    Ok(TracerReport { findings, summary })
}

impl TracerReport {
    fn count(&self, cause: &str, target: &str) -> u64 {
        self.findings
            .iter()
            .filter(|f| f["cause"] == cause && f["target"] == target)
            .map(|f| f["count"].as_u64().unwrap_or(0))
            .sum()
    }
    /// Findings on `target` with another cause: (cause, count).
    fn others(&self, cause: &str, target: &str) -> Vec<(String, u64)> {
        self.findings
            .iter()
            .filter(|f| f["cause"] != cause && f["target"] == target)
            .map(|f| (f["cause"].as_str().unwrap_or("?").to_string(), f["count"].as_u64().unwrap_or(0)))
            .collect()
    }
    fn events(&self) -> u64 {
        self.summary["events"].as_u64().unwrap_or(0)
    }
    fn lost(&self) -> BTreeMap<String, u64> {
        self.summary["lost_events"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// The bench
// ---------------------------------------------------------------------------------------

struct Bench {
    args: BenchArgs,
    tracer: PathBuf,
    generator: PathBuf,
    tmp: PathBuf,
    ns: Netns,
    /// Command lines used, by role (the first of each).
    commands: BTreeMap<String, String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    None,
    Tracer,
    /// bpftrace counting the tracepoints tracer attached in the same setting (`Bench::baseline`).
    Bpftrace,
    /// bpftrace with empty programs on the same tracepoints: the floor any program there pays
    /// (kernel cost runs only).
    Empty,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::None => "no tracer",
            Variant::Tracer => "tracer",
            Variant::Bpftrace => "bpftrace",
            Variant::Empty => "empty",
        }
    }
    /// Round r's order: flipped every round so drift and warm-up hit every variant alike.
    fn order(r: u32) -> [Variant; 3] {
        if r % 2 == 0 {
            [Variant::None, Variant::Tracer, Variant::Bpftrace]
        } else {
            [Variant::Bpftrace, Variant::Tracer, Variant::None]
        }
    }
}

/// What is attached during one round.
enum Attached {
    None,
    Tracer { proc: Proc, out: PathBuf, cpu_at_start: f64 },
    Bpftrace(Proc),
}

impl Bench {
    fn note(&mut self, role: &str, cmd: &Command) {
        self.commands.entry(role.to_string()).or_insert_with(|| show(cmd).trim_start_matches("$ ").to_string());
    }

    fn tracer_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.tracer);
        c.args(args);
        c
    }

    /// Starts tracer (`args`), waits for its `tracing:` line.
    fn start_tracer(&mut self, role: &str, args: &[&str], out: PathBuf) -> Result<Attached> {
        let mut cmd = self.tracer_cmd(args);
        self.note(role, &cmd);
        let mut p = Proc::spawn("tracer", &mut cmd, Some(&out), "tracing:")?;
        p.wait_ready(WAIT)?;
        let cpu_at_start = cpu_seconds(p.pid()).unwrap_or(0.0);
        Ok(Attached::Tracer { proc: p, out, cpu_at_start })
    }

    /// bpftrace counting exactly the tracepoints tracer attaches with `tracer_args` here (read
    /// from its `--verbose` `tracing:` line): the baseline a user would reach for, on the same
    /// hooks. Written to the bench's directory; the script's path.
    fn baseline(&mut self, tracer_args: &[&str]) -> Result<PathBuf> {
        let mut args = tracer_args.to_vec();
        args.push("--verbose");
        let mut cmd = self.tracer_cmd(&args);
        let mut p = Proc::spawn("tracer", &mut cmd, Some(&self.tmp.join("hooks.out")), "tracing:")?;
        p.wait_ready(WAIT)?;
        let line = p.output().into_iter().find(|l| l.starts_with("tracing:")).unwrap_or_default();
        p.stop(Signal::SIGINT, Duration::from_secs(30))?;
        let hooks = line.split_once("hooks=").map(|(_, h)| h.split(' ').next().unwrap_or("")).unwrap_or("");
        // `raw_tp:sock:x` is the tracepoint sock:x attached raw; function hooks (fentry:,
        // kprobe:) do not occur on the bench's kernel.
        let tracepoints: Vec<&str> = hooks.split(',').map(|h| h.trim_start_matches("raw_tp:").trim_start_matches("tp_btf:")).filter(|h| h.matches(':').count() == 1).collect();
        if tracepoints.is_empty() {
            bail!("cannot read tracer's hooks from its `tracing:` line: {line}");
        }
        let mut script = String::from("// Counting the tracepoints tracer attached (written by cargo xtask bench).\n");
        for (i, tp) in tracepoints.iter().enumerate() {
            script.push_str(&format!("tracepoint:{tp} {{ @c{i} = count(); }}\n"));
        }
        let name = if tracer_args.first() == Some(&"watch") { "count-watch.bt" } else { "count-diagnose.bt" };
        let path = self.tmp.join(name);
        fs::write(&path, &script)?;
        let mut empty = String::from("// Empty programs on the tracepoints tracer attached: the floor (cargo xtask bench).\n");
        for tp in &tracepoints {
            empty.push_str(&format!("tracepoint:{tp} {{ }}\n"));
        }
        fs::write(empty_script(&path), &empty)?;
        println!("  bpftrace baseline: the {} tracepoints tracer attached ({})", tracepoints.len(), tracepoints.join(", "));
        self.commands.insert(format!("bpftrace baseline ({name})"), format!("bpftrace {} # {}", path.display(), tracepoints.join(" ")));
        Ok(path)
    }

    fn start_bpftrace(&mut self, script: &Path) -> Result<Attached> {
        let mut cmd = Command::new("bpftrace");
        let probes = fs::read_to_string(script).map(|s| s.lines().filter(|l| l.starts_with("tracepoint:")).count()).unwrap_or(1);
        cmd.arg(script);
        let mut p = Proc::spawn("bpftrace", &mut cmd, None, "Attaching")?;
        p.wait_ready(WAIT)?;
        // "Attaching N probes..." comes before the attach itself: wait until all are there.
        let end = Instant::now() + Duration::from_secs(20);
        while bpf_ids(p.pid(), "prog_id").len() < probes && Instant::now() < end {
            pause(Duration::from_millis(50))?;
        }
        Ok(Attached::Bpftrace(p))
    }

    fn attach(&mut self, v: Variant, tracer_args: &[&str], baseline: &Path, role: &str, r: u32) -> Result<Attached> {
        let a = match v {
            Variant::None => Attached::None,
            Variant::Tracer => {
                let out = self.tmp.join(format!("{}-{r}.jsonl", role.replace(' ', "-")));
                self.start_tracer(role, tracer_args, out)?
            }
            Variant::Bpftrace => self.start_bpftrace(baseline)?,
            Variant::Empty => self.start_bpftrace(&empty_script(baseline))?,
        };
        // Let the attach settle (and page in) before measuring.
        pause(Duration::from_millis(300))?;
        Ok(a)
    }

    /// Kernel time per unit of work, by `kernel.bpf_stats_enabled`, of tracer and of the
    /// bpftrace baseline on the same traffic (`work` returns the units done): separate runs,
    /// since the accounting itself costs a little, one pair per round in alternating order.
    /// One run can land 10-20 % off the next, so one run proves little: each side's median
    /// run is reported (its per-program breakdown) with every run's total. A third side, empty
    /// programs on the same tracepoints, is the floor: what the kernel charges for running any
    /// program there, before it does anything. JSON: {tracer, bpftrace, empty, ratio (tracer /
    /// bpftrace, of the medians), floor_ratio (empty / bpftrace), tracer_runs, bpftrace_runs,
    /// empty_runs}.
    fn kernel_costs(&mut self, tracer_args: &[&str], baseline: &Path, role: &str, work: &mut dyn FnMut(&mut Bench) -> Result<u64>) -> Result<Value> {
        let mut runs: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
        for r in 0..self.args.rounds.max(1) {
            let order = if r % 2 == 0 { [Variant::Tracer, Variant::Bpftrace, Variant::Empty] } else { [Variant::Empty, Variant::Bpftrace, Variant::Tracer] };
            for v in order {
                let a = self.attach(v, tracer_args, baseline, role, 99)?;
                let pid = match &a {
                    Attached::Tracer { proc, .. } | Attached::Bpftrace(proc) => proc.pid(),
                    Attached::None => 0,
                };
                let (units, stats) = with_bpf_stats(pid, || work(self))?;
                self.detach(a)?;
                let cost = cost_json(&stats, units);
                println!(
                    "  kernel cost (bpf_stats run {}), {}: {:.0} ns per unit: {}",
                    r + 1,
                    v.name(),
                    total_ns(&cost),
                    cost_line(&cost)
                );
                runs.entry(v.name()).or_default().push(cost);
            }
        }
        let mut costs = serde_json::Map::new();
        for (name, mut side) in runs {
            side.sort_by(|a, b| total_ns(a).total_cmp(&total_ns(b)));
            let totals: Vec<f64> = side.iter().map(total_ns).collect();
            costs.insert(format!("{name}_runs"), json!(totals));
            // The middle run (the upper one of an even count), with its breakdown.
            costs.insert(name.to_string(), side.swap_remove(side.len() / 2));
        }
        let ratio = total_ns(&costs["tracer"]) / total_ns(&costs["bpftrace"]).max(1.0);
        let floor_ratio = total_ns(&costs["empty"]) / total_ns(&costs["bpftrace"]).max(1.0);
        println!(
            "  kernel cost: tracer / bpftrace counting = {ratio:.2}x, empty programs / bpftrace counting = {floor_ratio:.2}x (median runs; tracer {}, bpftrace {}, empty {} ns per unit)",
            fmt_totals(&costs["tracer_runs"]),
            fmt_totals(&costs["bpftrace_runs"]),
            fmt_totals(&costs["empty_runs"])
        );
        costs.insert("ratio".into(), json!(ratio));
        costs.insert("floor_ratio".into(), json!(floor_ratio));
        Ok(Value::Object(costs))
    }

    /// Nginx for the whole bench, as on a production host: the proxy the HTTP section loads,
    /// and present (idle) during the floods, where tracer reads its configuration (TCP
    /// upstreams only: the syscall tracepoints are not needed).
    fn start_nginx(&mut self) -> Result<Proc> {
        let conf = self.tmp.join("nginx.conf");
        fs::write(&conf, self.nginx_conf())?;
        let mut cmd = self.ns.command("nginx");
        cmd.arg("-c").arg(&conf).arg("-p").arg(&self.tmp).arg("-e").arg(self.tmp.join("error.log"));
        self.note("nginx", &cmd);
        let mut nginx = Proc::spawn("nginx", &mut cmd, None, "")?;
        let end = Instant::now() + Duration::from_secs(30);
        while !(self.ns.listening(&Listener::Tcp(FRONT_PORT)) && self.ns.listening(&Listener::Tcp(UPSTREAM_PORT))) {
            if let Ok(Some(st)) = nginx.child.try_wait() {
                bail!("nginx exited ({st}): {}", nginx.output().join(" | "));
            }
            if Instant::now() > end {
                bail!("nginx did not listen within 30 s");
            }
            pause(Duration::from_millis(50))?;
        }
        Ok(nginx)
    }

    // ---- 1. healthy proxied traffic ------------------------------------------------------

    /// The proxy, and the fast upstream: a second server block answering 200 itself. No
    /// upstream keepalive: one new upstream TCP connection per request.
    fn nginx_conf(&self) -> String {
        xtask::kit::NginxConf {
            dir: &self.tmp,
            user: "root",
            workers: 1,
            worker_connections: 4096,
            error_log_level: Some("warn"),
            extra_http: &format!("server {{ listen 127.0.0.1:{UPSTREAM_PORT}; location / {{ return 200 \"ok\\n\"; }} }}"),
            listen: &format!("127.0.0.1:{FRONT_PORT}"),
            proxy_pass: &format!("http://127.0.0.1:{UPSTREAM_PORT}"),
            connect_timeout: "3s",
            read_timeout: None,
        }
        .render()
    }

    fn wrk(&mut self, secs: u32) -> Result<WrkRun> {
        let mut cmd = self.ns.command("wrk");
        cmd.args(["-t1", "-c32", &format!("-d{secs}s"), "--latency", &format!("http://127.0.0.1:{FRONT_PORT}/")]);
        self.note(if secs == self.args.http_seconds { "load (wrk)" } else { "load (wrk, warm-up)" }, &cmd);
        let mut p = Proc::spawn("wrk", &mut cmd, None, "")?;
        p.wait_exit(Duration::from_secs(secs as u64 + 30))?;
        parse_wrk(&p.output().join("\n"))
    }

    fn http(&mut self) -> Result<Value> {
        println!("\n== 1. healthy proxied traffic: wrk -> Nginx -> Nginx upstream (new connection per request)");
        const ARGS: &[&str] = &["watch", "--json"];
        // Warm-up (not counted).
        let warm = self.wrk(2)?;
        if warm.errors > 0 {
            bail!("nginx answered errors during the warm-up ({} of {})", warm.errors, warm.requests);
        }
        let baseline = self.baseline(ARGS)?;
        let mut runs: BTreeMap<&str, Vec<WrkRun>> = BTreeMap::new();
        let secs = self.args.http_seconds;
        for r in 0..self.args.rounds {
            for v in Variant::order(r) {
                let attached = self.attach(v, ARGS, &baseline, "tracer watch", r)?;
                let w = self.wrk(secs)?;
                println!(
                    "  round {} {:<9}: {:>9.0} req/s  p99 {:>7.3} ms  ({} requests, {} errors)",
                    r + 1,
                    v.name(),
                    w.rps,
                    w.p99_ms,
                    w.requests,
                    w.errors
                );
                self.detach(attached)?;
                runs.entry(v.name()).or_default().push(w);
            }
        }
        let cost = self.kernel_costs(ARGS, &baseline, "tracer watch", &mut |b: &mut Bench| Ok(b.wrk(secs)?.requests))?;
        let med = |v: Variant, f: fn(&WrkRun) -> f64| median(&runs[v.name()].iter().map(f).collect::<Vec<_>>());
        let rps = |v| med(v, |w| w.rps);
        let p99 = |v| med(v, |w| w.p99_ms);
        let errors: u64 = runs.values().flatten().map(|w| w.errors).sum();
        let (n, t, b) = (rps(Variant::None), rps(Variant::Tracer), rps(Variant::Bpftrace));
        Ok(json!({
            "rps": {"none": n, "tracer": t, "bpftrace": b},
            "p99_ms": {"none": p99(Variant::None), "tracer": p99(Variant::Tracer), "bpftrace": p99(Variant::Bpftrace)},
            "tracer_vs_none": t / n,
            "bpftrace_vs_none": b / n,
            "tracer_vs_bpftrace": t / b,
            "p99_tracer_vs_none": p99(Variant::Tracer) / p99(Variant::None),
            "p99_bpftrace_vs_none": p99(Variant::Bpftrace) / p99(Variant::None),
            "errors": errors,
            "kernel_cost_per_request": cost["tracer"],
            "bpftrace_kernel_cost_per_request": cost["bpftrace"],
            "kernel_cost_vs_bpftrace": cost["ratio"],
            "empty_kernel_cost_per_request": cost["empty"],
            "floor_vs_bpftrace": cost["floor_ratio"],
            "kernel_cost_runs": {"tracer": cost["tracer_runs"], "bpftrace": cost["bpftrace_runs"], "empty": cost["empty_runs"]},
            "rounds": runs.iter().map(|(k, v)| (k.to_string(), v.iter().map(|w| json!({"rps": w.rps, "p99_ms": w.p99_ms, "requests": w.requests, "errors": w.errors})).collect::<Vec<_>>())).collect::<BTreeMap<_, _>>(),
        }))
    }

    /// Stops what a round attached; for tracer returns its parsed report and figures.
    fn detach(&mut self, a: Attached) -> Result<Option<(TracerReport, f64, u64)>> {
        match a {
            Attached::None => Ok(None),
            Attached::Bpftrace(mut p) => {
                p.stop(Signal::SIGINT, Duration::from_secs(20))?;
                Ok(None)
            }
            Attached::Tracer { mut proc, out, cpu_at_start } => {
                let cpu = cpu_seconds(proc.pid()).unwrap_or(0.0) - cpu_at_start;
                let hwm = vm_kib(proc.pid(), "VmHWM:").unwrap_or(0);
                // Runs the kernel skipped because a program was already running on that CPU
                // (its recursion guard): each is an event tracer never saw.
                let skipped = recursion_misses(proc.pid());
                if !skipped.is_empty() {
                    println!("  tracer programs skipped by the kernel's recursion guard: {skipped:?}");
                }
                proc.stop(Signal::SIGINT, Duration::from_secs(30))?;
                let errs: Vec<String> = proc.output().into_iter().filter(|l| l.starts_with("tracer:")).collect();
                for e in &errs {
                    println!("  tracer stderr: {e}");
                }
                let netns = fs::metadata(Path::new("/run/netns").join(&self.ns.name)).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).context("the bench namespace's inode")?;
                Ok(Some((parse_tracer(&out, netns)?, cpu, hwm)))
            }
        }
    }

    // ---- 2. failure floods ----------------------------------------------------------------

    fn generator(&mut self, role: &str, args: &[&str]) -> Result<Value> {
        let mut cmd = self.ns.command(&self.generator);
        cmd.args(args);
        self.note(role, &cmd);
        let mut p = Proc::spawn("refuse_flood", &mut cmd, None, "")?;
        p.wait_exit(Duration::from_secs(120))?;
        parse_generator(&p.output())
    }

    fn nft_drop_rule(&mut self) -> Result<()> {
        let rules = format!(
            "table inet {NFT_TABLE} {{\n  chain out {{\n    type filter hook output priority 0;\n    tcp dport {DROPPED_PORT} counter drop\n  }}\n}}\n"
        );
        let f = self.tmp.join("drop.nft");
        fs::write(&f, &rules)?;
        let mut cmd2 = self.ns.command("nft");
        cmd2.arg("-f").arg(&f);
        self.note("nft drop rule (file)", &cmd2);
        self.commands.insert("nft drop rule".into(), rules.split_whitespace().collect::<Vec<_>>().join(" "));
        run(&mut cmd2)?;
        Ok(())
    }

    /// Packets the nft drop rule has dropped so far (its `counter`): netfilter's own count, the
    /// truth a tracer count is held to (a SYN the stack never sent, for want of memory say,
    /// is dropped by nothing and is no firewall drop).
    fn nft_dropped(&self) -> Result<u64> {
        let mut cmd = self.ns.command("nft");
        cmd.args(["-j", "list", "table", "inet", NFT_TABLE]);
        let (ok, out) = probe(&mut cmd);
        if !ok {
            bail!("cannot read the nft drop rule's counter (nft -j list table inet {NFT_TABLE})");
        }
        let v: Value = serde_json::from_str(&out).context("nft -j output")?;
        let packets = v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item["rule"]["expr"].as_array())
            .flatten()
            .filter_map(|expr| expr["counter"]["packets"].as_u64())
            .sum();
        Ok(packets)
    }

    fn flood(&mut self) -> Result<Value> {
        println!("\n== 2. failure floods: refused connects (closed port) and nft-dropped SYNs");
        let secs = self.args.flood_seconds.to_string();
        let target = format!("127.0.0.1:{CLOSED_PORT}");
        let port = CLOSED_PORT.to_string();
        let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut tracer_rounds = Vec::new();
        const ARGS: &[&str] = &["diagnose", "--json"];
        let baseline = self.baseline(ARGS)?;
        for r in 0..self.args.rounds {
            for v in Variant::order(r) {
                let attached = self.attach(v, ARGS, &baseline, "tracer diagnose", r)?;
                let g = self.generator("refused flood", &["refuse", "127.0.0.1", &port, &secs, "10000000"])?;
                let rate = g["rate"].as_f64().unwrap_or(0.0);
                let refused = g["refused"].as_u64().unwrap_or(0);
                let gsecs = g["seconds"].as_f64().unwrap_or(1.0);
                if matches!(attached, Attached::Tracer { .. }) {
                    // Past the engine's grace period, so every attempt is concluded.
                    pause(Duration::from_millis(1200))?;
                }
                let rep = self.detach(attached)?;
                let mut line = format!("  round {} {:<9}: {:>8.0} refused connects/s", r + 1, v.name(), rate);
                if let Some((rep, cpu, hwm)) = rep {
                    let counted = rep.count("dead_listener", &target);
                    let others = rep.others("dead_listener", &target);
                    let lost = rep.lost();
                    let exact = counted == refused && lost.is_empty() && others.is_empty();
                    let events = rep.events();
                    write!(
                        line,
                        "; generator {refused} refused, tracer dead_listener {counted} ({}), {events} events, lost {lost:?}{}, {:.2} CPU s/M attempts, VmHWM {} MiB",
                        if exact { "EXACT" } else { "MISMATCH" },
                        if others.is_empty() { String::new() } else { format!(", other causes {others:?}") },
                        cpu / (refused.max(1) as f64) * 1e6,
                        hwm / 1024
                    )?;
                    tracer_rounds.push(json!({
                        "generator_refused": refused,
                        "generator_attempts": g["attempts"],
                        "tracer_count": counted,
                        "other_causes": others.iter().map(|(c, n)| json!({"cause": c, "count": n})).collect::<Vec<_>>(),
                        "exact": exact,
                        "events": events,
                        "events_per_s": events as f64 / gsecs,
                        "lost_events": lost,
                        "cpu_s": cpu,
                        // Per refused attempt, not per event: the kernel counts most of a
                        // flood's attempts instead of sending them.
                        "cpu_s_per_million_attempts": cpu / (refused.max(1) as f64) * 1e6,
                        "vm_hwm_kib": hwm,
                        "rate": rate,
                    }));
                }
                println!("{line}");
                rates.entry(v.name()).or_default().push(rate);
            }
        }
        let (n, t, b) = (median(&rates["no tracer"]), median(&rates["tracer"]), median(&rates["bpftrace"]));
        let all_exact = tracer_rounds.iter().all(|r| r["exact"] == true);
        let f = |k: &str| tracer_rounds.iter().filter_map(|r| r[k].as_f64()).collect::<Vec<_>>();
        let hwm_max = tracer_rounds.iter().filter_map(|r| r["vm_hwm_kib"].as_u64()).max().unwrap_or(0);

        let flood_cost = self.kernel_costs(ARGS, &baseline, "tracer diagnose", &mut |b: &mut Bench| {
            let g = b.generator("refused flood", &["refuse", "127.0.0.1", &port, &secs, "10000000"])?;
            Ok(g["attempts"].as_u64().unwrap_or(0))
        })?;

        // The nft-dropped burst: bounded in count and time.
        self.nft_drop_rule()?;
        let dtarget = format!("127.0.0.1:{DROPPED_PORT}");
        let a = self.attach(Variant::Tracer, &["diagnose", "--json", "--port", &DROPPED_PORT.to_string()], &baseline, "tracer diagnose (drop burst)", 0)?;
        let dropped_before = self.nft_dropped()?;
        let g = self.generator("nft-dropped burst", &["drop", "127.0.0.1", &DROPPED_PORT.to_string(), "2", "50000"])?;
        let nft_dropped = self.nft_dropped()? - dropped_before;
        pause(Duration::from_millis(1200))?;
        let (rep, cpu, hwm) = self.detach(a)?.expect("tracer attached");
        let attempts = g["attempts"].as_u64().unwrap_or(0);
        let counted = rep.count("firewall_drop", &dtarget);
        let others = rep.others("firewall_drop", &dtarget);
        let lost = rep.lost();
        // Held to netfilter's count of the SYNs it dropped; the generator's count is printed
        // beside it (they differ only if a SYN never reached the rule).
        let drop_exact = counted == nft_dropped && lost.is_empty() && others.is_empty() && g["other_errors"] == 0;
        println!(
            "  nft-dropped burst: generator {attempts} connects ({:.0}/s, connect() results {}), nft dropped {nft_dropped} SYNs, tracer firewall_drop {counted} ({}), lost {lost:?}{}",
            g["rate"].as_f64().unwrap_or(0.0),
            json!({"in_progress": g["in_progress"], "other": g["other_errors"]}),
            if drop_exact { "EXACT" } else { "MISMATCH" },
            if others.is_empty() { String::new() } else { format!(", other causes {others:?}") },
        );

        Ok(json!({
            "refused_per_s": {"none": n, "tracer": t, "bpftrace": b},
            "tracer_vs_none": t / n,
            "bpftrace_vs_none": b / n,
            "rates": rates,
            "tracer_rounds": tracer_rounds,
            "all_exact": all_exact,
            "events_per_s_median": median(&f("events_per_s")),
            "cpu_s_per_million_attempts_median": median(&f("cpu_s_per_million_attempts")),
            "vm_hwm_kib_max": hwm_max,
            "kernel_cost_per_attempt": flood_cost["tracer"],
            "bpftrace_kernel_cost_per_attempt": flood_cost["bpftrace"],
            "kernel_cost_vs_bpftrace": flood_cost["ratio"],
            "empty_kernel_cost_per_attempt": flood_cost["empty"],
            "floor_vs_bpftrace": flood_cost["floor_ratio"],
            "kernel_cost_runs": {"tracer": flood_cost["tracer_runs"], "bpftrace": flood_cost["bpftrace_runs"], "empty": flood_cost["empty_runs"]},
            "drop_burst": {
                "generator": g,
                "nft_dropped": nft_dropped,
                "tracer_count": counted,
                "other_causes": others.iter().map(|(c, n)| json!({"cause": c, "count": n})).collect::<Vec<_>>(),
                "lost_events": lost,
                "exact": drop_exact,
                "events": rep.events(),
                "cpu_s": cpu,
                "vm_hwm_kib": hwm,
            },
        }))
    }

    // ---- 3. start and stop ----------------------------------------------------------------

    fn startstop(&mut self) -> Result<Value> {
        println!("\n== 3. start and stop: exec -> `tracing:`, SIGTERM -> exit with everything detached");
        let mut starts = Vec::new();
        let mut stops = Vec::new();
        let mut all_detached = true;
        for i in 0..self.args.starts {
            let mut cmd = self.tracer_cmd(&["watch"]);
            self.note("start/stop", &cmd);
            let mut p = Proc::spawn("tracer", &mut cmd, Some(&self.tmp.join("startstop.out")), "tracing:")?;
            let start = p.wait_ready(WAIT)?;
            let progs = bpf_ids(p.pid(), "prog_id");
            pause(Duration::from_millis(200))?;
            let stop = p.stop(Signal::SIGTERM, Duration::from_secs(30))?;
            let left: Vec<u32> = progs.iter().copied().filter(|id| prog_exists(*id)).collect();
            all_detached &= left.is_empty() && !progs.is_empty();
            println!(
                "  run {}: start {:>6.1} ms, stop {:>6.1} ms, {} programs attached, {} left after exit",
                i + 1,
                start.as_secs_f64() * 1e3,
                stop.as_secs_f64() * 1e3,
                progs.len(),
                left.len()
            );
            starts.push(start.as_secs_f64());
            stops.push(stop.as_secs_f64());
        }
        let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
        Ok(json!({
            "start_s": {"median": median(&starts), "max": max(&starts), "all": starts},
            "stop_s": {"median": median(&stops), "max": max(&stops), "all": stops},
            "all_detached": all_detached,
            "tracer_programs_loaded_after_by_anyone": tracer_progs_loaded(),
        }))
    }

    // ---- 4. churn -------------------------------------------------------------------------

    fn churn(&mut self) -> Result<Value> {
        println!("\n== 4. churn: a listener restarting under load, and connects that never finish");
        if !self.commands.contains_key("nft drop rule") {
            self.nft_drop_rule()?;
        }
        let a = self.attach(Variant::Tracer, &["diagnose", "--json"], Path::new("-"), "tracer diagnose (churn)", 0)?;
        let pid = match &a {
            Attached::Tracer { proc, .. } => proc.pid(),
            _ => unreachable!(),
        };
        let sample = |label: &str| -> Value {
            let occ = map_occupancy(pid);
            let rss = vm_kib(pid, "VmRSS:").unwrap_or(0);
            println!("  {label:<28} tracer VmRSS {:>6} KiB, kernel maps {}", rss, serde_json::to_string(&occ).unwrap_or_default());
            json!({"vm_rss_kib": rss, "maps": occ})
        };
        let mut phases = vec![("start", sample("start"))];
        let port = CHURN_PORT.to_string();
        let dport = DROPPED_PORT.to_string();
        let mut results = Vec::new();
        // Identical phases: tracer's bounded tables fill during the first ones, after that its
        // memory must stay flat.
        for phase in 1..=CHURN_PHASES {
            // Restarting listener, refused/accepted connect loop and never-finishing connects, together.
            let mut churn = self.ns.command(&self.generator);
            churn.args(["churn", "127.0.0.1", &port, "300", "10", "5"]);
            self.note("churn: restarting listener", &churn);
            let mut churn = Proc::spawn("churn", &mut churn, None, "")?;
            pause(Duration::from_millis(50))?;
            let mut load = self.ns.command(&self.generator);
            load.args(["drop", "127.0.0.1", &port, "4", "400000"]);
            self.note("churn: connect loop", &load);
            let mut load = Proc::spawn("load", &mut load, None, "")?;
            let mut hold = self.ns.command(&self.generator);
            hold.args(["hold", "127.0.0.1", &dport, "10000", "3500"]);
            self.note("churn: never-finishing connects", &hold);
            let mut hold = Proc::spawn("hold", &mut hold, None, "")?;
            pause(Duration::from_millis(2000))?;
            phases.push(("busy", sample(&format!("phase {phase}, under load"))));
            hold.wait_exit(Duration::from_secs(60))?;
            load.wait_exit(Duration::from_secs(60))?;
            churn.wait_exit(Duration::from_secs(60))?;
            let r = json!({
                "listener": parse_generator(&churn.output())?,
                "load": parse_generator(&load.output())?,
                "hold": parse_generator(&hold.output())?,
            });
            println!("  phase {phase}: {}", serde_json::to_string(&r).unwrap_or_default());
            results.push(r);
            pause(Duration::from_millis(1500))?;
            phases.push(("end", sample(&format!("phase {phase}, after"))));
        }
        let (rep, cpu, hwm) = self.detach(a)?.expect("tracer attached");
        let rss = |i: usize| phases[i].1["vm_rss_kib"].as_u64().unwrap_or(0);
        let attempts_entries = |i: usize| phases[i].1["maps"]["ATTEMPTS"]["entries"].as_u64();
        // samples: start, then (busy, end) per phase.
        let after = |p: usize| rss(2 * p);
        let last = 2 * CHURN_PHASES;
        Ok(json!({
            "samples": phases.iter().map(|(k, v)| json!({"when": k, "sample": v})).collect::<Vec<_>>(),
            "phases": results,
            "rss_start_kib": rss(0),
            "rss_after_phase_kib": (1..=CHURN_PHASES).map(after).collect::<Vec<_>>(),
            "rss_end_kib": rss(last),
            "rss_before_last_phase_kib": after(CHURN_PHASES - 1),
            "attempts_map_busy": attempts_entries(1),
            "attempts_map_end": attempts_entries(last),
            "vm_hwm_kib": hwm,
            "cpu_s": cpu,
            "events": rep.events(),
            "lost_events": rep.lost(),
            "findings": rep.findings.iter().map(|f| json!({"cause": f["cause"], "target": f["target"], "count": f["count"]})).collect::<Vec<_>>(),
        }))
    }
}

// ---------------------------------------------------------------------------------------
// Set-up, table, JSON
// ---------------------------------------------------------------------------------------

/// bpftrace and gcc, on top of what `setup` installs (idempotent).
fn bench_packages() -> Result<()> {
    crate::setup::ensure_apt_packages(&[&["bpftrace"], &["gcc"], &["wrk"], &["nginx", "nginx-light"]])
}

fn compile_generator() -> Result<PathBuf> {
    let src = root().join("bench/refuse_flood.c");
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    let bin = dir.join("refuse_flood");
    run(Command::new("gcc").args(["-O2", "-Wall", "-o"]).arg(&bin).arg(&src))?;
    Ok(bin)
}

fn git(args: &[&str]) -> String {
    probe(Command::new("git").arg("-C").arg(root()).args(args)).1.trim().to_string()
}

fn fmt_ratio(v: &Value) -> String {
    v.as_f64().map(|x| format!("{x:.3}x")).unwrap_or_else(|| "-".into())
}

fn fmt_num(v: &Value, prec: usize) -> String {
    v.as_f64().map(|x| format!("{x:.prec$}")).unwrap_or_else(|| "-".into())
}

fn goal(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// The table printed at the end (and stored in the JSON as text).
/// The table row of a section's kernel time per unit, tracer beside bpftrace, against the goal
/// ratio `at_most`: (row, goal met, the ratio as text).
fn kernel_cost_row(label: &str, section: &Value, unit: &str, at_most: f64) -> (String, bool, String) {
    let ratio = section["kernel_cost_vs_bpftrace"].as_f64().unwrap_or(f64::INFINITY);
    let row = format!(
        "{:<44} {:>12} {:>12} {:>12} {:>10} {:>10}  tr/bt <={at_most}x: {}\n",
        label,
        "",
        fmt_num(&section[format!("kernel_cost_{unit}")]["total_ns_per_unit"], 0),
        fmt_num(&section[format!("bpftrace_kernel_cost_{unit}")]["total_ns_per_unit"], 0),
        "",
        format!("{ratio:.2}x"),
        goal(ratio <= at_most)
    ) + &format!(
        "{:<44} tracer {} / bpftrace {} / empty {} (medians above)\n",
        "  every run, lowest first",
        fmt_totals(&section["kernel_cost_runs"]["tracer"]),
        fmt_totals(&section["kernel_cost_runs"]["bpftrace"]),
        fmt_totals(&section["kernel_cost_runs"]["empty"])
    ) + &floor_row(section, unit, at_most);
    let floor = section["floor_vs_bpftrace"].as_f64().map(|f| format!(" (empty programs on the same hooks: {f:.2}x)")).unwrap_or_default();
    (row, ratio <= at_most, format!("{ratio:.2}x{floor}"))
}

/// The floor under a kernel-cost goal: empty programs on the same tracepoints, and whether the
/// goal asks for less than they cost (then no program there can meet it).
fn floor_row(section: &Value, unit: &str, at_most: f64) -> String {
    let empty = section[format!("empty_kernel_cost_{unit}")]["total_ns_per_unit"].as_f64().unwrap_or(0.0);
    let counting = section[format!("bpftrace_kernel_cost_{unit}")]["total_ns_per_unit"].as_f64().unwrap_or(0.0);
    let goal_ns = at_most * counting;
    format!(
        "{:<44} {:>12} {:>12} {:>12} {:>10} {:>10}  goal {goal_ns:.0} ns{}\n",
        "  empty programs on the same hooks (floor)",
        "",
        "",
        format!("{empty:.0}"),
        "",
        format!("{:.2}x", empty / counting.max(1.0)),
        if empty > goal_ns { ": below the floor" } else { "" }
    )
}

/// The bpftrace script with empty programs beside the counting one (`Bench::baseline`).
fn empty_script(counting: &Path) -> PathBuf {
    let name = counting.file_name().and_then(|n| n.to_str()).unwrap_or("count.bt");
    counting.with_file_name(format!("empty-{name}"))
}

fn table(r: &Value, goals: &mut Vec<Value>) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "{:<44} {:>12} {:>12} {:>12} {:>10} {:>10}  goal", "measure", "no tracer", "tracer", "bpftrace", "tr/none", "bt/none");
    let mut add_goal = |name: &str, ok: bool, detail: String| {
        goals.push(json!({"goal": name, "met": ok, "detail": detail}));
    };
    if let Some(h) = r.get("http") {
        let tr = h["tracer_vs_none"].as_f64().unwrap_or(0.0);
        let bt = h["bpftrace_vs_none"].as_f64().unwrap_or(0.0);
        let ok = tr >= 0.98;
        let ok2 = tr >= bt - 0.005;
        let _ = writeln!(
            t,
            "{:<44} {:>12} {:>12} {:>12} {:>10} {:>10}  >=0.98x: {}; >= bpftrace: {}",
            "HTTP via nginx, requests/s (median)",
            fmt_num(&h["rps"]["none"], 0),
            fmt_num(&h["rps"]["tracer"], 0),
            fmt_num(&h["rps"]["bpftrace"], 0),
            fmt_ratio(&h["tracer_vs_none"]),
            fmt_ratio(&h["bpftrace_vs_none"]),
            goal(ok),
            goal(ok2)
        );
        let _ = writeln!(
            t,
            "{:<44} {:>12} {:>12} {:>12} {:>10} {:>10}",
            "HTTP via nginx, p99 latency ms (median)",
            fmt_num(&h["p99_ms"]["none"], 3),
            fmt_num(&h["p99_ms"]["tracer"], 3),
            fmt_num(&h["p99_ms"]["bpftrace"], 3),
            fmt_ratio(&h["p99_tracer_vs_none"]),
            fmt_ratio(&h["p99_bpftrace_vs_none"]),
        );
        let (row, met, kr) = kernel_cost_row("HTTP: BPF ns per proxied request", h, "per_request", 0.65);
        t.push_str(&row);
        add_goal("http: tracer BPF time per request <= 0.65x bpftrace counting", met, kr);
        add_goal("http throughput >= 0.98x no tracer", ok, format!("{tr:.3}x"));
        add_goal("http: tracer costs no more than bpftrace", ok2, format!("tracer {tr:.3}x, bpftrace {bt:.3}x"));
    }
    if let Some(f) = r.get("flood") {
        let tr = f["tracer_vs_none"].as_f64().unwrap_or(0.0);
        let ok = tr >= 0.92;
        let _ = writeln!(
            t,
            "{:<44} {:>12} {:>12} {:>12} {:>10} {:>10}  >=0.92x: {}",
            "refused connects/s, one-core loop (median)",
            fmt_num(&f["refused_per_s"]["none"], 0),
            fmt_num(&f["refused_per_s"]["tracer"], 0),
            fmt_num(&f["refused_per_s"]["bpftrace"], 0),
            fmt_ratio(&f["tracer_vs_none"]),
            fmt_ratio(&f["bpftrace_vs_none"]),
            goal(ok)
        );
        add_goal("refused flood rate with tracer >= 0.92x alone", ok, format!("{tr:.3}x"));
        let exact = f["all_exact"] == true;
        let rounds = f["tracer_rounds"].as_array().cloned().unwrap_or_default();
        let lost: u64 = rounds.iter().filter_map(|r| r["lost_events"].as_object()).flat_map(|m| m.values()).filter_map(|v| v.as_u64()).sum();
        let counts: Vec<String> = rounds.iter().map(|r| format!("{}/{}", r["tracer_count"], r["generator_refused"])).collect();
        let _ = writeln!(t, "{:<44} {:>12} {:>12}   tracer/generator per round: {}; lost {lost}  exact: {}", "refused flood: count exact, lost events", "", if exact { "EXACT" } else { "MISMATCH" }, counts.join(" "), goal(exact));
        add_goal("flood: tracer count == generator count, zero lost", exact, counts.join(" "));
        let d = &f["drop_burst"];
        let dexact = d["exact"] == true;
        let _ = writeln!(
            t,
            "{:<44} {:>12} {:>12}   tracer {} / nft dropped {} (generator {}); lost {}  exact: {}",
            "nft-dropped burst: count exact",
            "",
            if dexact { "EXACT" } else { "MISMATCH" },
            d["tracer_count"],
            d["nft_dropped"],
            d["generator"]["attempts"],
            d["lost_events"],
            goal(dexact)
        );
        add_goal("nft-dropped burst: count exact, zero lost", dexact, format!("{} / {} (nft's count)", d["tracer_count"], d["nft_dropped"]));
        let _ = writeln!(t, "{:<44} {:>12} {:>12}", "flood: tracer events/s sustained (median)", "", fmt_num(&f["events_per_s_median"], 0));
        let (row, met, kr) = kernel_cost_row("flood: BPF ns per refused attempt", f, "per_attempt", 1.2);
        t.push_str(&row);
        add_goal("flood: tracer BPF time per refused attempt <= 1.2x bpftrace counting", met, kr);
        let _ = writeln!(t, "{:<44} {:>12} {:>12}", "flood: tracer CPU s per million attempts", "", fmt_num(&f["cpu_s_per_million_attempts_median"], 2));
        let _ = writeln!(t, "{:<44} {:>12} {:>12}", "flood: tracer peak RSS (VmHWM) MiB", "", f["vm_hwm_kib_max"].as_u64().map(|k| format!("{:.1}", k as f64 / 1024.0)).unwrap_or("-".into()));
    }
    if let Some(s) = r.get("startstop") {
        let (st, sp) = (s["start_s"]["max"].as_f64().unwrap_or(9.9), s["stop_s"]["max"].as_f64().unwrap_or(9.9));
        let det = s["all_detached"] == true;
        let _ = writeln!(t, "{:<44} {:>12} {:>12}   max {:.3} s  < 1 s: {}", "start: exec -> `tracing:` s (median)", "", fmt_num(&s["start_s"]["median"], 3), st, goal(st < 1.0));
        let _ = writeln!(t, "{:<44} {:>12} {:>12}   max {:.3} s  < 1 s, all detached: {}", "stop: SIGTERM -> exit s (median)", "", fmt_num(&s["stop_s"]["median"], 3), sp, goal(sp < 1.0 && det));
        add_goal("start < 1 s", st < 1.0, format!("max {st:.3} s"));
        add_goal("stop < 1 s with everything detached", sp < 1.0 && det, format!("max {sp:.3} s, detached: {det}"));
    }
    if let Some(c) = r.get("churn") {
        let (a, b, e) = (c["rss_start_kib"].as_u64().unwrap_or(0), c["rss_before_last_phase_kib"].as_u64().unwrap_or(0), c["rss_end_kib"].as_u64().unwrap_or(0));
        let per_phase: Vec<String> = c["rss_after_phase_kib"].as_array().map(|v| v.iter().map(|x| x.to_string()).collect()).unwrap_or_default();
        let busy = c["attempts_map_busy"].as_u64();
        let end = c["attempts_map_end"].as_u64();
        // Flat: the last identical phase does not grow tracer's memory by more than 10%.
        let flat = b > 0 && e <= b + b / 10;
        let bounded = end.is_some_and(|n| n < 100);
        let _ = writeln!(t, "{:<44} {:>12} {:>12}   after each phase {} KiB  last phase flat: {}", "churn: tracer VmRSS KiB (start)", "", a, per_phase.join(" / "), goal(flat));
        let _ = writeln!(t, "{:<44} {:>12} {:>12}   under load {}, lost {}  bounded: {}", "churn: ATTEMPTS map entries (end)", "", end.map(|n| n.to_string()).unwrap_or("-".into()), busy.map(|n| n.to_string()).unwrap_or("-".into()), c["lost_events"], goal(bounded));
        add_goal("churn: userspace memory flat (bounded tables full, last phase)", flat, format!("RSS start {a} KiB, after each phase {} KiB", per_phase.join(" / ")));
        let _ = e;
        add_goal("churn: kernel per-socket state drains (every record removed at its end)", bounded, format!("ATTEMPTS under load {busy:?}, at end {end:?}"));
    }
    t
}

pub fn bench(args: BenchArgs) -> Result<()> {
    install_handlers()?;
    // TRACER_BENCH_BIN, to compare builds (before/after a change): any tracer binary.
    let tracer = release_or_env("TRACER_BENCH_BIN")?;
    bench_packages()?;
    // Another tracer on the same tracepoints runs its programs first and warms the cache
    // lines tracer's then read: a stray `tracer watch` once made every figure of an hour
    // 20-40 % low (README, Benchmark). Measure alone.
    let loaded = tracer_progs_loaded();
    if loaded > 0 {
        bail!("{loaded} tracer programs are already loaded (another tracer is running; `bpftool prog show | grep tracer_` lists them): stop it first, its programs would skew every figure");
    }
    let generator = compile_generator()?;
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);

    let load_before = loadavg();
    println!("bench: load average before: {load_before} ({} CPUs)", thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    let tmp = std::env::temp_dir().join(format!("tracer-bench-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let started = Instant::now();
    let ns = bench_netns()?;
    let mut b = Bench { args: args.clone(), tracer, generator, tmp: tmp.clone(), ns, commands: BTreeMap::new() };
    let mut results = serde_json::Map::new();
    let outcome = (|| -> Result<()> {
        // Nginx runs through both sections, as on the hosts tracer is for.
        let nginx = if want("http") || want("flood") { Some(b.start_nginx()?) } else { None };
        if want("http") {
            results.insert("http".into(), b.http()?);
        }
        if want("flood") {
            results.insert("flood".into(), b.flood()?);
        }
        drop(nginx);
        if want("startstop") {
            results.insert("startstop".into(), b.startstop()?);
        }
        if want("churn") {
            results.insert("churn".into(), b.churn()?);
        }
        Ok(())
    })();
    let commands = std::mem::take(&mut b.commands);
    drop(b); // namespace (and its nft table) gone
    let _ = fs::remove_dir_all(&tmp);
    outcome?;

    let load_after = loadavg();
    let results = Value::Object(results);
    let mut goals = Vec::new();
    let tbl = table(&results, &mut goals);
    println!("\n== results (load average before {load_before}, after {load_after})\n{tbl}");
    println!("command lines used:");
    for (role, c) in &commands {
        println!("  {role:<32} {c}");
    }
    let stamp = chrono_like_now();
    let doc = json!({
        "when_utc": stamp,
        "git_commit": git(&["rev-parse", "HEAD"]),
        "git_dirty": !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty(),
        "kernel": probe(Command::new("uname").arg("-r")).1.trim(),
        "cpus": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "duration_s": started.elapsed().as_secs_f64(),
        "options": {"rounds": args.rounds, "http_seconds": args.http_seconds, "flood_seconds": args.flood_seconds, "starts": args.starts, "only": args.only},
        "commands": commands,
        "results": results,
        "goals": goals,
        "table": tbl,
    });
    if !args.no_save {
        let dir = root().join("bench/results");
        fs::create_dir_all(&dir)?;
        let path = dir.join(format!("bench-{}.json", stamp.replace([':', '-'], "")));
        fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")?;
        println!("\nbench: results written to {}", path.display());
    }
    Ok(())
}

/// UTC now as `2026-11-24T10:00:00Z` (no date crate in xtask).
fn chrono_like_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil-from-days (Howard Hinnant).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}
