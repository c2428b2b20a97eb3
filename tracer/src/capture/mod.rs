//! Load the kernel programs, hand them this kernel's facts, attach them, and read their events.
//!
//! Everything attached here is owned by `Capture`; dropping it (normal exit, Ctrl-C, SIGTERM,
//! an error on the way up) closes the program and link fds, which detaches every program.
pub mod decode;
pub mod fhooks;
pub mod repeats;


use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{BtfTracePoint, RawTracePoint, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use std::collections::VecDeque;
use std::os::fd::AsFd;
use tokio::io::unix::AsyncFd;
use tracer_common::{BtfOffsets, Config, EventKind, RepeatSlot, StashedReset, ATTEMPT_RECORDS_HELD, KIND_SLOTS, LOST_BASE};

use crate::event::{Event, EventBody};
use crate::event::{KindCounts, RecordKind};
use crate::kernel::hooks;
use crate::kernel::hooks::SetStateVia;
pub use crate::kernel::hooks::{CaptureHealth, HookState};
use decode::ReasonNames;

/// How often the ring buffer is drained when the kernel did not wake us: its programs submit
/// without a wake-up until a batch has piled up (tracer-ebpf maps.rs), so an event waits at
/// most this long, and a flood costs one wake-up per batch instead of one per event.
pub const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// How long a reset from no socket may wait in the kernel for its attempt before userspace
/// sends it on (`Capture::drain`): well inside the engine's grace for late evidence (300 ms).
const RESET_HOLD_NS: u64 = 50_000_000;
/// Stamps of the resets sent on from userspace, kept to drop the kernel's own copy later.
const RESETS_SENT_ON_KEPT: usize = 256;

/// How long one refused attempt sent in full stands for the identical ones after it on its
/// CPU, which the kernel only counts (tracer-ebpf/src/repeats.rs): a flood sends about one
/// attempt per second per CPU and owner, each with its own proof, and the findings' counts
/// stay exact. `--each-attempt` sends every one.
pub const REPEAT_WINDOW_NS: u64 = 1_000_000_000;

/// The kernel object built by tracer/build.rs from tracer-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// The program on sock:inet_sock_set_state (classic; `tracer_set_state_raw` is its raw twin).
const SET_STATE: &str = "tracer_set_state";
/// The program on skb:kfree_skb (classic; `tracer_kfree_skb_raw` is its raw twin).
const KFREE_SKB: &str = "tracer_kfree_skb";

/// How tracer reaches the kernel: tracepoints only, or function hooks (fentry/fexit, else
/// kprobe/kretprobe) where they load, per function, and the tracepoints for everything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Tracepoints,
    FunctionHooks,
}

impl Backend {
    pub fn describe(&self) -> &'static str {
        match self {
            Backend::Tracepoints => "tracepoints",
            Backend::FunctionHooks => "function-hooks+tracepoints",
        }
    }
}

/// Whether a tracepoint is usable on this kernel, as found by `kernel::facts`.
pub struct Availability<'a> {
    pub category: &'a str,
    pub name: &'a str,
    pub available: bool,
    pub why_not: Option<String>,
    /// Available, but left out until something needs it (`Capture::attach_deferred`);
    /// `why_not` says why it waits.
    pub deferred: bool,
}

pub struct Capture {
    // Field order matters for drop order: the ring and logger borrow nothing, but keep the
    // object (which owns programs and links) last so readers go first.
    ring: AsyncFd<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    /// The resets from no socket the kernel holds per CPU for their attempts to claim
    /// (tracer-ebpf/src/probes/send_reset.rs), and the stamps of those sent on from here.
    stashed_resets: Option<PerCpuArray<MapData, StashedReset>>,
    resets_sent_on: VecDeque<u64>,
    /// The refused attempts the kernel counts per CPU instead of sending (tracer-ebpf
    /// repeats.rs), and the classes they are counted for.
    repeats: Option<PerCpuArray<MapData, RepeatSlot>>,
    repeat_classes: repeats::RepeatClasses,
    logger: Option<AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>>,
    pub hooks: Vec<HookState>,
    pub backend: Backend,
    /// Per hooked kernel function: which program serves it, or why none does.
    pub fn_hooks: Vec<fhooks::FnHookOutcome>,
    /// The kernel's accept-wait histograms (filled while inet_csk_accept is hooked).
    pub accept_waits: Option<fhooks::AcceptWaits>,
    /// Tracepoints left out at start until needed: (program, category, name).
    deferred: Vec<(&'static str, &'static str, &'static str)>,
    /// The tracepoints attached raw or as BTF tracepoints (`sock:inet_sock_set_state`,
    /// `skb:kfree_skb`): `--verbose` names them `raw_tp:...`, `tp_btf:...`; the summary and
    /// the metrics keep the tracepoint's name.
    raw_hooks: Vec<RawHook>,
    _ebpf: Ebpf,
}

impl Capture {
    /// Loads and attaches. `available` says which tracepoints exist with the fields we need.
    /// On any error nothing stays attached (the partially set-up object is dropped).
    pub fn start(config: &Config, available: &[Availability<'_>], debug: bool, plan: &fhooks::FnHookPlan<'_>) -> Result<Capture> {
        if EBPF_OBJECT.is_empty() {
            bail!("this tracer binary was built without its kernel programs (AYA_BUILD_SKIP=1): rebuild with `cargo xtask build`");
        }
        // The socket members tracer_set_state_btf loads, as constants its verifier knows.
        let btf_offsets = BtfOffsets::of(config);
        let mut ebpf = EbpfLoader::new()
            .override_global("TRACER_BTF_OFFSETS", &btf_offsets, true)
            .load(EBPF_OBJECT)
            .map_err(|e| anyhow!("loading tracer's eBPF object failed: {e} (is this kernel >= 5.8 with BPF ring buffers, and are you root?)"))?;

        let mut config = *config;
        config.debug = debug as u32;
        // Keys where the kernel places each socket's attempt record: no one outside can
        // aim sockets at one set of the table (tracer-ebpf/src/attempts.rs).
        config.attempt_seed = ahash::RandomState::new().hash_one(std::process::id());
        // Every segment the stack refuses for want of a socket is reported by tcp_send_reset
        // (no socket) and then freed by kfree_skb as NO_SOCKET; only RSTs are never answered,
        // and they say nothing about a listener. With tcp_send_reset attached the NO_SOCKET
        // drop proves nothing more, and skipping it saves a third of a refusal flood's events.
        let no_socket_drop = config.enums.drop_no_socket;
        // Only since 6.10 does tcp_send_reset fire for resets sent with no socket (the same
        // rework gave it its `reason` field): before, e.g. on 6.1 (cargo xtask vm-test), the
        // NO_SOCKET drop is the only sign of a dead listener and must stay.
        let fold_no_socket = config.send_reset.reason != tracer_common::FIELD_ABSENT
            && available.iter().any(|a| a.category == "tcp" && a.name == "tcp_send_reset" && a.available);
        if fold_no_socket {
            config.enums.drop_no_socket = tracer_common::FIELD_ABSENT;
        }
        write_config(&mut ebpf, &config)?;

        let logger = if debug {
            match aya_log::EbpfLogger::init(&mut ebpf) {
                // SAFETY: the logger owns its ring buffer's fd, open for as long as it lives.
                Ok(l) => Some(unsafe { AsyncFd::register(l) }.map_err(|e| anyhow!("polling the aya-log buffer: {e}"))?),
                Err(e) => {
                    log::warn!("kernel debug log unavailable: {e}");
                    None
                }
            }
        } else {
            None
        };

        // Function hooks first; then tell the tracepoint programs which work they took over.
        let (fn_hooks, fn_bits) = fhooks::start(&mut ebpf, plan, true);
        if fn_bits != 0 {
            config.fn_hooks.active = fn_bits;
            write_config(&mut ebpf, &config)?;
        }
        // sock:inet_sock_set_state fires ten times per healthy proxied request: the best
        // program this kernel takes for it is loaded here, and attached with the others below.
        // The after-connect checks (probes/conn_end.rs), tail-called by set_state, are its twin
        // of the same kind. Without them (a kernel that refuses the program) set_state goes on
        // alone: they are off.
        let best = SetStateVia::best_for(&config);
        // `--set-state-hook`: that kind or nothing (to compare or test the kinds, or to step
        // around one that misbehaves on some kernel).
        let forced = plan.set_state.is_some();
        let best = match plan.set_state {
            Some(want) if want < best => {
                bail!("--set-state-hook {}: this kernel's BTF lacks a member that program reads (`tracer doctor` says which kind fits); use --set-state-hook auto", want.name())
            }
            Some(want) => want,
            None => best,
        };
        // Parsed only for the BTF tracepoint, and dropped once its programs are loaded.
        let btf = match best {
            SetStateVia::Btf => Btf::from_sys_fs().map_err(|e| log::warn!("kernel BTF for tp_btf: {e}")).ok(),
            _ => None,
        };
        let mut set_state_via = load_set_state(&mut ebpf, best, btf.as_ref(), forced)?;
        if config.conn.enabled != 0 {
            if let Err(e) = load_conn_end(&mut ebpf, set_state_via, btf.as_ref()) {
                log::warn!("after-connect checks off: {e:#}");
                config.conn.enabled = 0;
                write_config(&mut ebpf, &config)?;
            }
        }
        drop(btf);
        // skb:kfree_skb fires for every packet the host frees as dropped (once per healthy
        // proxied request on loopback): raw, a drop that is not ours leaves without a helper call.
        let kfree_skb_raw = hooks::kfree_skb_raw(&config);
        let mut raw_hooks = Vec::new();
        let mut hooks: Vec<HookState> = fn_hooks.iter().map(|o| o.hook_state()).collect();
        let mut deferred = Vec::new();
        for (spec, tp) in hooks::tracepoints() {
            let avail = available.iter().find(|a| a.category == tp.category && a.name == tp.name);
            let replaced_by = tp.replaced_by.filter(|f| fn_bits & hooks::function_bit(f) != 0);
            let why_not = match (avail, replaced_by) {
                (_, Some(function)) => Some(format!("not needed: {function} is hooked")),
                (Some(a), None) if a.available && a.deferred => {
                    deferred.push((tp.program, tp.category, tp.name));
                    Some(a.why_not.clone().unwrap_or_else(|| "not needed yet".into()))
                }
                (Some(a), None) if a.available && tp.program == KFREE_SKB && kfree_skb_raw => {
                    match attach_raw(&mut ebpf, "tracer_kfree_skb_raw", tp.name) {
                        Ok(()) => {
                            raw_hooks.push(RawHook { hook: tp.full_name(), kind: "raw_tp" });
                            None
                        }
                        Err(e) => {
                            log::warn!("raw tracepoint kfree_skb: {e:#}; using the classic tracepoint");
                            attach(&mut ebpf, tp.program, tp.category, tp.name).err().map(|e| format!("{e:#}"))
                        }
                    }
                }
                (_, None) if tp.program == SET_STATE && set_state_via != SetStateVia::Classic => {
                    match attach_set_state(&mut ebpf, set_state_via) {
                        Ok(()) => {
                            raw_hooks.push(RawHook { hook: tp.full_name(), kind: set_state_via.name() });
                            None
                        }
                        Err(e) if forced => return Err(forced_refusal(set_state_via, &e)),
                        Err(e) => {
                            // The classic tracepoint then, with its own after-connect program
                            // (neither loads when the kernel tied the tail-call slot to the
                            // first program's kind: the hook is then reported as failed).
                            log::warn!("{} inet_sock_set_state: {e:#}; using the classic tracepoint", set_state_via.name());
                            set_state_via = SetStateVia::Classic;
                            if config.conn.enabled != 0 && load_conn_end(&mut ebpf, SetStateVia::Classic, None).is_err() {
                                config.conn.enabled = 0;
                                write_config(&mut ebpf, &config)?;
                            }
                            match avail {
                                Some(a) if a.available => attach(&mut ebpf, tp.program, tp.category, tp.name).err().map(|e| format!("{e:#}")),
                                _ => Some("not available on this kernel".into()),
                            }
                        }
                    }
                }
                (Some(a), None) if a.available => attach(&mut ebpf, tp.program, tp.category, tp.name).err().map(|e| format!("{e:#}")),
                (Some(a), None) => Some(a.why_not.clone().unwrap_or_else(|| "not available on this kernel".into())),
                (None, None) => Some("not probed".into()),
            };
            if spec.required && replaced_by.is_none() {
                if let Some(why) = &why_not {
                    bail!("cannot attach {} ({why}): tracer needs it to follow connection attempts; run `tracer doctor`", tp.full_name());
                }
            }
            hooks.push(HookState { hook: tp.full_name(), active: why_not.is_none(), why_not });
        }

        if fold_no_socket && !hooks.iter().any(|h| h.active && h.hook == "tcp:tcp_send_reset") {
            // tcp_send_reset did not attach after all: the NO_SOCKET drops are needed.
            config.enums.drop_no_socket = no_socket_drop;
            write_config(&mut ebpf, &config)?;
        }
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").ok_or_else(|| anyhow!("eBPF object has no EVENTS map"))?)?;
        // SAFETY: the RingBuf owns its map's fd, open for as long as it lives.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow!("polling the ring buffer: {e}"))?;
        let counters = PerCpuArray::try_from(ebpf.take_map("COUNTERS").ok_or_else(|| anyhow!("eBPF object has no COUNTERS map"))?)?;
        let backend = if fn_bits != 0 { Backend::FunctionHooks } else { Backend::Tracepoints };
        let accept_waits = fhooks::AcceptWaits::take(&mut ebpf, fn_bits);
        let stashed_resets = ebpf.take_map("STASHED_RESETS").and_then(|m| PerCpuArray::try_from(m).ok());
        let repeats = ebpf.take_map("REPEATS").and_then(|m| PerCpuArray::try_from(m).ok());
        Ok(Capture {
            ring,
            counters,
            stashed_resets,
            resets_sent_on: VecDeque::new(),
            repeats,
            repeat_classes: repeats::RepeatClasses::default(),
            logger,
            hooks,
            backend,
            fn_hooks,
            accept_waits,
            deferred,
            raw_hooks,
            _ebpf: ebpf,
        })
    }

    /// Attaches the tracepoints left out at start until something needs them (the Unix
    /// connect hooks, once an Nginx configures a Unix socket upstream). Returns the hooks now
    /// active; one that fails to attach stays inactive with the error as its reason.
    pub fn attach_deferred(&mut self) -> Vec<String> {
        let mut attached = Vec::new();
        for (program, category, name) in std::mem::take(&mut self.deferred) {
            let full = format!("{category}:{name}");
            let why_not = attach(&mut self._ebpf, program, category, name).err().map(|e| format!("{e:#}"));
            if why_not.is_none() {
                attached.push(full.clone());
            }
            if let Some(h) = self.hooks.iter_mut().find(|h| h.hook == full) {
                h.active = why_not.is_none();
                h.why_not = why_not;
            }
        }
        attached
    }

    /// Whether some tracepoints still wait for `attach_deferred`.
    pub fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Tells the lifecycle programs about listeners that existed before tracing started:
    /// their owners (exits, signals, OOM kills are then reported) and Unix socket paths
    /// (unlinks are then reported). Listeners created while tracing are added in the kernel.
    pub fn watch_listeners(&mut self, pids: &[u32], paths: &[String]) {
        if let Some(map) = self._ebpf.map_mut("WATCHED_PIDS") {
            if let Ok(mut m) = aya::maps::HashMap::<_, u32, u32>::try_from(map) {
                for p in pids {
                    let _ = m.insert(p, 1, 0);
                }
            }
        }
        if let Some(map) = self._ebpf.map_mut("WATCHED_PATHS") {
            if let Ok(mut m) = aya::maps::HashMap::<_, [u8; tracer_common::UNIX_PATH_MAX], u32>::try_from(map) {
                for p in paths.iter().filter(|p| !p.starts_with('@') && p.len() < tracer_common::UNIX_PATH_MAX) {
                    // NUL-padded, as the kernel reads it from unlink()'s argument.
                    let mut key = [0u8; tracer_common::UNIX_PATH_MAX];
                    key[..p.len()].copy_from_slice(p.as_bytes());
                    let _ = m.insert(key, 1, 0);
                }
            }
        }
    }

    /// The `tracing:` line's content, short: the backend and how many hooks of each kind are
    /// active (`describe_hooks` has the list; `tracer doctor` explains each one).
    pub fn describe(&self) -> String {
        describe_counts(self.backend.describe(), &self.hooks)
    }

    /// The full list (`--verbose`): `backend=B hooks=a,b,c inactive=x (why); y (why)`. (The VM
    /// tests read which hook served each function from the JSON summary's `hooks`.)
    pub fn describe_hooks(&self) -> String {
        let active: Vec<String> = self
            .hooks
            .iter()
            .filter(|h| h.active)
            .map(|h| match self.raw_hooks.iter().find(|r| r.hook == h.hook) {
                Some(r) => format!("{}:{}", r.kind, h.hook),
                None => h.hook.clone(),
            })
            .collect();
        let inactive: Vec<String> = self
            .hooks
            .iter()
            .filter(|h| !h.active)
            .map(|h| format!("{} ({})", h.hook, h.why_not.as_deref().unwrap_or("?")))
            .collect();
        let mut s = format!("backend={} hooks={}", self.backend.describe(), active.join(","));
        if !inactive.is_empty() {
            s.push_str(&format!(" inactive={}", inactive.join("; ")));
        }
        s
    }

    /// Waits until the kernel has written something (or the logger has lines), then decodes
    /// every record available into `out`.
    pub async fn wait_and_drain(&mut self, out: &mut Vec<Event>, names: &dyn ReasonNames) -> Result<()> {
        match &mut self.logger {
            Some(logger) => {
                tokio::select! {
                    _ = tokio::time::sleep(DRAIN_EVERY) => {}
                    guard = self.ring.readable_mut() => { guard?.clear_ready(); }
                    guard = logger.readable_mut() => {
                        let mut guard = guard?;
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                }
            }
            None => {
                // The kernel wakes us only when a lot is unread (maps.rs, WAKEUP_BYTES): below
                // that, look every DRAIN_EVERY.
                if let Ok(guard) = tokio::time::timeout(DRAIN_EVERY, self.ring.readable_mut()).await {
                    guard?.clear_ready();
                }
            }
        }
        self.drain(out, names);
        Ok(())
    }

    /// Decodes every record now in the ring buffer (no waiting), then sends on the resets the
    /// kernel has held too long.
    pub fn drain(&mut self, out: &mut Vec<Event>, names: &dyn ReasonNames) {
        // The counts first, then the ring: an exemplar is sent before its class counts a
        // repeat (capture/repeats.rs).
        let readings = self.read_repeat_slots();
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            let from = out.len();
            decode::decode_into(&item, names, out, &mut self.repeat_classes);
            // A held reset sent on from here, sent by the kernel after all when the next one
            // took its place: the event is out already.
            if !self.resets_sent_on.is_empty() && out.len() == from + 1 {
                if let EventBody::TcpRstSentNoSocket { .. } = out[from].body {
                    if let Some(i) = self.resets_sent_on.iter().position(|ts| *ts == out[from].ts_ns) {
                        self.resets_sent_on.remove(i);
                        out.truncate(from);
                    }
                }
            }
        }
        let now = crate::enrich::monotonic_ns();
        for (cpu, slot, tally, last_ns) in readings {
            self.repeat_classes.reading(cpu, slot, tally, last_ns, now, out);
        }
        self.send_on_held_resets(out, names, now);
    }

    /// (cpu, slot, tally, last_ns) of every slot a known class is counted in.
    fn read_repeat_slots(&self) -> Vec<(u32, u32, u64, u64)> {
        let Some(map) = &self.repeats else { return Vec::new() };
        let mut readings = Vec::new();
        for slot in self.repeat_classes.slots() {
            let Ok(per_cpu) = map.get(&slot, 0) else { continue };
            for (cpu, s) in per_cpu.iter().enumerate() {
                if s.tally != 0 {
                    readings.push((cpu as u32, slot, s.tally, s.last_ns));
                }
            }
        }
        readings
    }

    /// A reset from no socket waits on its CPU for the refused attempt's close there (which
    /// is at once, on loopback and veth). One still held after `RESET_HOLD_NS` had its attempt
    /// close elsewhere, or none here: it is sent on as the event it is, once.
    fn send_on_held_resets(&mut self, out: &mut Vec<Event>, names: &dyn ReasonNames, now: u64) {
        let Some(map) = &self.stashed_resets else { return };
        let Ok(per_cpu) = map.get(&0, 0) else { return };
        for held in per_cpu.iter().filter(|r| r.held() && r.ts_ns.saturating_add(RESET_HOLD_NS) < now) {
            if self.resets_sent_on.contains(&held.ts_ns) {
                continue;
            }
            out.push(decode::reset_from_no_socket(&held.flow, held.reason, held.ts_ns, names));
            if self.resets_sent_on.len() >= RESETS_SENT_ON_KEPT {
                self.resets_sent_on.pop_front();
            }
            self.resets_sent_on.push_back(held.ts_ns);
        }
    }

    /// What capture publishes about itself (metrics and `top` read it): the hooks and the
    /// kernel's counters (empty when they cannot be read).
    pub fn health(&self) -> CaptureHealth {
        let (emitted, mut lost) = self.counters().unwrap_or_default();
        for (kind, n) in self.skipped_runs() {
            *lost.entry(kind).or_insert(0) += n;
        }
        CaptureHealth { hooks: self.hooks.clone(), emitted, lost, attempt_records: self.attempt_records() }
    }

    /// Runs of tracer's programs the kernel skipped because another BPF program was already
    /// running on that CPU (`recursion_misses`: raw tracepoints since 5.12, classic ones since
    /// 6.7), totalled by the kind of event each program reports. A skipped run is an event never
    /// sent, or evidence (a reset, a drop) its attempt never got: the summary counts them as
    /// lost, so a count that may be short says so.
    pub fn skipped_runs(&self) -> KindCounts {
        let mut skipped = KindCounts::new();
        for (name, prog) in self._ebpf.programs() {
            let (Some(kind), Ok(fd)) = (reported_kind(name), prog.fd()) else { continue };
            if let Some(n) = recursion_misses(fd.as_fd()).filter(|n| *n > 0) {
                *skipped.entry(RecordKind(kind)).or_insert(0) += n;
            }
        }
        skipped
    }

    /// The attempt records the kernel holds (tracer-ebpf/src/attempts.rs): each CPU's counter
    /// adds its inserts and subtracts its removes as a wrapping u64, so only the sum means
    /// anything.
    pub fn attempt_records(&self) -> Option<u64> {
        let per_cpu = self.counters.get(&ATTEMPT_RECORDS_HELD, 0).ok()?;
        Some(per_cpu.iter().fold(0u64, |sum, n| sum.wrapping_add(*n)))
    }

    /// Events emitted and lost (ring buffer full) per kind, summed over CPUs.
    pub fn counters(&self) -> Result<(KindCounts, KindCounts)> {
        let mut emitted = KindCounts::new();
        let mut lost = KindCounts::new();
        for kind in EventKind::ALL {
            let k = kind as u32;
            debug_assert!(k < KIND_SLOTS);
            let sum = |slot: u32| -> Result<u64> { Ok(self.counters.get(&slot, 0)?.iter().sum()) };
            let e = sum(k)?;
            let l = sum(LOST_BASE + k)?;
            if e > 0 {
                emitted.insert(RecordKind(kind), e);
            }
            if l > 0 {
                lost.insert(RecordKind(kind), l);
            }
        }
        Ok((emitted, lost))
    }
}

/// The kind of event a program of ours reports (what a skipped run of it may lose).
fn reported_kind(program: &str) -> Option<EventKind> {
    let name = program.strip_prefix("tracer_")?;
    Some(match name {
        "set_state" | "set_state_raw" | "set_state_btf" | "fe_tcp_connect" | "kp_tcp_connect" => EventKind::TcpAttemptFailed,
        "conn_end" | "conn_end_raw" | "conn_end_btf" => EventKind::TcpConnEnded,
        "rst_send" => EventKind::TcpRstSentNoSocket,
        "rst_recv" => EventKind::TcpRstReceived,
        "kfree_skb" | "kfree_skb_raw" => EventKind::SkbDropped,
        "icmp_send" => EventKind::IcmpSent,
        "retrans" => EventKind::TcpSynRetransmit,
        "fe_conn_request" | "kp_conn_request" => EventKind::TcpListenOverflow,
        "bind" => EventKind::UnixBind,
        "unlinkat" | "unlink" => EventKind::UnixUnlink,
        "proc_exit" => EventKind::ProcessExit,
        "sig_gen" => EventKind::SignalGenerated,
        "oom" => EventKind::OomVictim,
        n if n.contains("accept") => EventKind::TcpAccepted,
        n if n.contains("unix_peer") => EventKind::UnixPeerQueue,
        n if n.starts_with("conn_") || n.contains("unix_connect") => EventKind::UnixConnectFailed,
        _ => return None,
    })
}

/// `bpf_prog_info.recursion_misses` of a loaded program (0 on kernels without the field: the
/// kernel leaves the fields it does not know zero). `None` when the kernel refuses the query.
fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
    use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};
    use std::os::fd::AsRawFd;
    // SAFETY: both are plain C structs for which all-zero is a valid value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // `info` is the union member BPF_OBJ_GET_INFO_BY_FD reads.
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = std::mem::size_of::<bpf_prog_info>() as u32;
    attr.info.info = std::ptr::addr_of_mut!(info) as u64;
    // SAFETY: the kernel writes at most info_len bytes into `info`, which outlives the call.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long, std::ptr::addr_of_mut!(attr), std::mem::size_of::<bpf_attr>())
    };
    (r == 0).then_some(info.recursion_misses)
}

/// For `doctor`: loads the kernel object and tries to load (never attach) each function
/// hook, fentry/fexit then kprobe, so the report says what `diagnose` would use.
pub fn probe_function_hooks(config: &Config, plan: &fhooks::FnHookPlan<'_>) -> Result<Vec<fhooks::FnHookOutcome>> {
    if EBPF_OBJECT.is_empty() {
        bail!("this tracer binary was built without its kernel programs");
    }
    let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT).map_err(|e| anyhow!("loading tracer's eBPF object failed: {e}"))?;
    write_config(&mut ebpf, config)?;
    Ok(fhooks::start(&mut ebpf, plan, false).0)
}

impl From<&Capture> for CaptureHealth {
    fn from(capture: &Capture) -> CaptureHealth {
        capture.health()
    }
}

impl Drop for Capture {
    /// Detaches every program at once. Each detach waits for the kernel's RCU grace periods
    /// (tens of milliseconds); one after the other, a dozen programs took over a second to
    /// let go on SIGTERM. From one thread each, the waits overlap.
    fn drop(&mut self) {
        std::thread::scope(|s| {
            for (_, prog) in self._ebpf.programs_mut() {
                s.spawn(move || unload(prog));
            }
        });
    }
}

/// Detaches and unloads one program (the rest of `Ebpf`'s drop then has nothing left to do).
fn unload(prog: &mut aya::programs::Program) {
    use aya::programs::Program as P;
    let _ = match prog {
        P::TracePoint(p) => p.unload(),
        P::BtfTracePoint(p) => p.unload(),
        P::RawTracePoint(p) => p.unload(),
        P::KProbe(p) => p.unload(),
        P::FEntry(p) => p.unload(),
        P::FExit(p) => p.unload(),
        _ => Ok(()),
    };
}

/// A tracepoint attached other than as the classic one: `--verbose` names it `kind:hook`.
struct RawHook {
    hook: String,
    /// `raw_tp` or `tp_btf`.
    kind: &'static str,
}

/// Loads `program` (without attaching) as the `via` kind of program on inet_sock_set_state.
fn load_state_program(ebpf: &mut Ebpf, program: &str, via: SetStateVia, btf: Option<&Btf>) -> Result<()> {
    let prog = ebpf.program_mut(program).ok_or_else(|| anyhow!("program {program} missing from the eBPF object"))?;
    let loaded = match via {
        SetStateVia::Btf => {
            let btf = btf.ok_or_else(|| anyhow!("no kernel BTF"))?;
            let p: &mut BtfTracePoint = prog.try_into()?;
            p.load("inet_sock_set_state", btf)
        }
        SetStateVia::Raw => <&mut RawTracePoint>::try_from(prog)?.load(),
        SetStateVia::Classic => <&mut TracePoint>::try_from(prog)?.load(),
    };
    loaded.map_err(|e| anyhow!("{program}: load refused: {e}"))
}

/// Loads the best program on inet_sock_set_state from `best` down that this kernel takes
/// (the classic one is loaded when attached); returns its kind. `forced`: `best` or an error.
fn load_set_state(ebpf: &mut Ebpf, best: SetStateVia, btf: Option<&Btf>, forced: bool) -> Result<SetStateVia> {
    let mut via = best;
    while via != SetStateVia::Classic {
        match load_state_program(ebpf, via.programs(SET_STATE).0, via, btf) {
            Ok(()) => return Ok(via),
            // One line: a verifier's refusal quotes its log.
            Err(e) if forced => return Err(forced_refusal(via, &e)),
            Err(e) => {
                // Possible on older kernels (a verifier that refuses the BTF tracepoint's loads):
                // `--verbose` and `doctor` name the kind attached.
                log::info!("{} inet_sock_set_state: {e:#}; trying the next kind", via.name());
                via = via.fallback();
            }
        }
    }
    Ok(via)
}

/// The one-line error for a `--set-state-hook` kind the kernel refused to load or attach.
fn forced_refusal(via: SetStateVia, e: &anyhow::Error) -> anyhow::Error {
    anyhow!("--set-state-hook {}: {}; use --set-state-hook auto", via.name(), hooks::brief(&format!("{e:#}")))
}

/// Attaches the program `load_set_state` loaded (a BTF or raw tracepoint).
fn attach_set_state(ebpf: &mut Ebpf, via: SetStateVia) -> Result<()> {
    let program = via.programs(SET_STATE).0;
    let prog = ebpf.program_mut(program).ok_or_else(|| anyhow!("program {program} missing from the eBPF object"))?;
    match via {
        SetStateVia::Btf => <&mut BtfTracePoint>::try_from(prog)?.attach().map(|_| ()),
        SetStateVia::Raw => <&mut RawTracePoint>::try_from(prog)?.attach("inet_sock_set_state").map(|_| ()),
        SetStateVia::Classic => bail!("the classic tracepoint is attached by name"),
    }
    .map_err(|e| anyhow!("attach refused: {e}"))
}

/// Loads the after-connect program of the same kind as the set_state program (a tail call
/// keeps the program type) into slot 0 of `CONN_END` (not attached: set_state tail-calls it).
fn load_conn_end(ebpf: &mut Ebpf, via: SetStateVia, btf: Option<&Btf>) -> Result<()> {
    let name = via.programs(SET_STATE).1;
    load_state_program(ebpf, name, via, btf)?;
    let program = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    let fd = program.fd()?.try_clone()?;
    let map = ebpf.map_mut("CONN_END").ok_or_else(|| anyhow!("eBPF object has no CONN_END map"))?;
    let mut slots: ProgramArray<&mut MapData> = ProgramArray::try_from(map)?;
    slots.set(0, &fd, 0).context("filling the CONN_END slot")?;
    Ok(())
}

/// Tracepoint `name` as a raw tracepoint, with program `program`.
fn attach_raw(ebpf: &mut Ebpf, program: &str, name: &str) -> Result<()> {
    let prog: &mut RawTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("program {program} missing from the eBPF object"))?
        .try_into()?;
    prog.load().map_err(|e| anyhow!("load refused: {e}"))?;
    prog.attach(name).map_err(|e| anyhow!("attach refused: {e}"))?;
    Ok(())
}

fn attach(ebpf: &mut Ebpf, program: &str, category: &str, name: &str) -> Result<()> {
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("program {program} missing from the eBPF object"))?
        .try_into()?;
    prog.load().map_err(|e| anyhow!("load refused: {e}"))?;
    prog.attach(category, name).map_err(|e| anyhow!("attach refused: {e}"))?;
    Ok(())
}

/// The kind of a hook named like `fentry:tcp_connect`, `kprobe+kretprobe:inet_csk_accept` or
/// `tcp:tcp_send_reset` (a tracepoint, named by its category).
fn hook_kind(hook: &str) -> &str {
    match hook.split_once(':') {
        Some((kind, _)) if kind.starts_with("fentry") || kind.starts_with("fexit") || kind.starts_with("kprobe") || kind.starts_with("kretprobe") => kind,
        _ => "tracepoint",
    }
}

/// "backend=function-hooks+tracepoints, 15 hooks: 11 tracepoint, 3 fentry, 1 kprobe+kretprobe; 2 inactive (tracer doctor, or --verbose, lists them)".
fn describe_counts(backend: &str, hooks: &[HookState]) -> String {
    let mut kinds: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for h in hooks.iter().filter(|h| h.active) {
        *kinds.entry(hook_kind(&h.hook)).or_default() += 1;
    }
    let mut kinds: Vec<(&str, usize)> = kinds.into_iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let active: usize = kinds.iter().map(|(_, n)| n).sum();
    let per_kind = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ");
    let inactive = hooks.iter().filter(|h| !h.active).count();
    let mut s = format!("backend={backend}, {active} hooks: {per_kind}");
    if inactive > 0 {
        s.push_str(&format!("; {inactive} inactive"));
    }
    s.push_str(" (the list: --verbose; what each needs: tracer doctor)");
    s
}

#[cfg(test)]
mod describe_tests {
    use super::*;

    #[test]
    fn the_tracing_line_counts_hooks_per_kind_and_stays_short() {
        let hook = |name: &str, active: bool| HookState { hook: name.into(), active, why_not: (!active).then(|| "not in this kernel -> tracepoints".into()) };
        let mut hooks: Vec<HookState> = (0..14).map(|i| hook(&format!("syscalls:sys_enter_thing_with_a_long_name_{i}"), true)).collect();
        hooks.push(hook("fentry:tcp_connect", true));
        hooks.push(hook("fentry:tcp_conn_request", true));
        hooks.push(hook("kprobe+kretprobe:inet_csk_accept", true));
        hooks.push(hook("unix_find_other", false));
        let line = describe_counts("function-hooks+tracepoints", &hooks);
        assert_eq!(
            line,
            "backend=function-hooks+tracepoints, 17 hooks: 14 tracepoint, 2 fentry, 1 kprobe+kretprobe; 1 inactive (the list: --verbose; what each needs: tracer doctor)"
        );
        assert!(line.len() < 200, "{}", line.len());
    }

    /// Every kernel program names the kind of event a skipped run of it may lose: read from
    /// the probes' sources, so a new program without a kind fails here, not silently in the
    /// summary's lost count.
    #[test]
    fn every_kernel_program_has_the_kind_its_skipped_runs_lose() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tracer-ebpf/src/probes");
        let mut programs = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("probes directory") {
            let text = std::fs::read_to_string(entry.expect("entry").path()).expect("probe source");
            for line in text.lines() {
                if let Some(rest) = line.trim_start().strip_prefix("pub fn tracer_") {
                    programs.push(format!("tracer_{}", rest.split('(').next().unwrap_or_default()));
                }
            }
        }
        assert!(programs.len() >= 30, "{programs:?}");
        let unmapped: Vec<&String> = programs.iter().filter(|p| reported_kind(p).is_none()).collect();
        assert!(unmapped.is_empty(), "{unmapped:?}");
        assert_eq!(reported_kind("tracer_rst_send"), Some(EventKind::TcpRstSentNoSocket));
        assert_eq!(reported_kind("tracer_set_state_raw"), Some(EventKind::TcpAttemptFailed));
        assert_eq!(reported_kind("tracer_conn_end_btf"), Some(EventKind::TcpConnEnded));
        assert_eq!(reported_kind("tracer_kr_unix_connect"), Some(EventKind::UnixConnectFailed));
        assert_eq!(reported_kind("tracer_fx_unix_peer4"), Some(EventKind::UnixPeerQueue));
        assert_eq!(reported_kind("tracer_conn_enter"), Some(EventKind::UnixConnectFailed));
        assert_eq!(reported_kind("something_else"), None);
    }
}

/// Writes the kernel facts into the CONFIG map's one slot, with set_state's transition table built from them (so the table
/// always follows the hooks active and the after-connect checks' state).
fn write_config(ebpf: &mut Ebpf, config: &Config) -> Result<()> {
    let mut config = *config;
    config.transitions = config.transition_table().map_err(|state| {
        anyhow!("this kernel numbers a TCP state {state}, beyond the {} tracer's transition table holds: report it with `tracer doctor`'s output", tracer_common::TCP_STATE_SLOTS)
    })?;
    let map = ebpf.map_mut("CONFIG").ok_or_else(|| anyhow!("eBPF object has no CONFIG map"))?;
    let mut cfg_map: Array<&mut MapData, Config> = Array::try_from(map)?;
    cfg_map.set(0, config, 0).context("writing the kernel facts into the CONFIG map")
}
