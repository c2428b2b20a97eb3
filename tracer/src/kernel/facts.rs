//! What the running kernel offers tracer, gathered once at start-up: the `Config` the kernel
//! programs need (tracepoint field offsets from tracefs, struct offsets and enum values from
//! BTF), which tracepoints exist, and whether other hook kinds would work.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::Context;
use tracer_common::{
    Config, DropSites, KernelEnums, KernelOffsets, TpKfreeSkbFields, TpSockFields, TpSyscallFields,
    DROP_SITE_FUNCTIONS, FIELD_ABSENT,
};

use super::btf::{BtfNames, KernelBtf};
use super::hooks::{self, HookSpec, Layout, TracepointHook};
use super::tracefs::{self, TracepointFormat};

/// Everything tracer learned about the running kernel.
#[derive(Clone, Debug)]
pub struct KernelFacts {
    pub config: Config,
    pub tracepoints: Vec<TracepointInfo>,
    pub names: BtfNames,
    pub tracefs: PathBuf,
    pub kprobes: Availability,
    pub fentry: Availability,
    pub kernel_release: String,
    /// Prototypes of the kernel functions the function-hook backend attaches to, from BTF
    /// (None: this kernel's BTF has no such function).
    pub functions: Vec<(&'static str, Option<super::btf::FnPrototype>)>,
}

impl KernelFacts {
    /// Whether this kernel can show this host refusing a connection: packet drops with a
    /// reason or a known drop site (skb:kfree_skb usable), or the resets it sends from no
    /// socket (tcp:tcp_send_reset with `reason`, 6.10 and later; before, it does not fire for
    /// them). Without either, a refusal with no local evidence proves nothing about where it
    /// came from (rules: refused_unattributed).
    pub fn local_refusals_visible(&self) -> bool {
        local_refusals_visible(&self.config, &self.tracepoints)
    }
}

/// `KernelFacts::local_refusals_visible` from the config and tracepoints (doctor has no facts).
pub fn local_refusals_visible(config: &Config, tracepoints: &[TracepointInfo]) -> bool {
    let usable = |name: &str| tracepoints.iter().any(|t| t.available && t.full_name() == name);
    usable("skb:kfree_skb") || (usable("tcp:tcp_send_reset") && config.send_reset.reason != FIELD_ABSENT)
}

/// One tracepoint tracer uses, and whether this kernel has it in a form tracer can read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracepointInfo {
    pub category: &'static str,
    pub name: &'static str,
    pub available: bool,
    /// Why it cannot be used (missing, or a required field missing or of another size).
    pub why_not: Option<String>,
    /// Which causes it proves, in words.
    pub serves: &'static str,
    /// Remarks on an available tracepoint: optional fields this kernel lacks, or the layout
    /// variant in use.
    pub notes: Vec<String>,
}

impl TracepointInfo {
    /// `category:name`.
    pub fn full_name(&self) -> String {
        format!("{}:{}", self.category, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    Yes,
    No(String),
    Unknown(String),
}

/// Probes the running kernel: BTF, tracefs (mounting it if needed), tracepoint formats,
/// kprobes. Fails with a one-line explanation when BTF or tracefs is missing.
pub fn probe_kernel() -> anyhow::Result<KernelFacts> {
    let kernel_release = kernel_release();
    let btf = KernelBtf::load()?;
    let offsets = btf.offsets()?;
    let enums = btf.enums()?;
    let names = btf.names();
    let tracefs = tracefs::ensure_tracefs()?;
    let (mut config, tracepoints) = tracepoint_config(&tracefs, offsets, enums);
    config.fn_hooks = btf.fn_hook_config()?;
    // The exit status of a listener's owner (listener lifecycle); absent: exits show no code.
    config.lifecycle.task_exit_code = btf.offset_of_sized("task_struct", &["exit_code"], 4).unwrap_or(FIELD_ABSENT);
    btf_members(&btf, &mut config);
    let functions = btf.function_prototypes(&hooks::function_names());
    Ok(KernelFacts {
        functions,
        config,
        tracepoints,
        names,
        kprobes: kprobes_availability(Some(&tracefs), &kernel_release),
        fentry: fentry_availability(),
        tracefs,
        kernel_release,
    })
}

/// The members from BTF that decide how sock:inet_sock_set_state is hooked
/// (`SetStateVia::best_for`) and what its programs read: the connection's counters, the
/// socket's members, the connecting task's.
pub fn btf_members(btf: &KernelBtf, config: &mut Config) {
    config.conn = btf.conn_config();
    config.sock = btf.sock_fields();
    config.task = btf.task_fields();
}

/// `uname -r`, from /proc (no libc call needed).
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// A `Config` with every field absent (programs given it do nothing).
pub fn empty_config(offsets: KernelOffsets, enums: KernelEnums) -> Config {
    Config {
        set_state: TpSockFields::ABSENT,
        retransmit: TpSockFields::ABSENT,
        receive_reset: TpSockFields::ABSENT,
        send_reset: TpSockFields::ABSENT,
        icmp_send: TpSockFields::ABSENT,
        kfree_skb: TpKfreeSkbFields {
            skbaddr: FIELD_ABSENT,
            protocol: FIELD_ABSENT,
            reason: FIELD_ABSENT,
            location: FIELD_ABSENT,
        },
        connect_enter: SYSCALL_ABSENT,
        connect_exit: SYSCALL_ABSENT,
        bind_enter: SYSCALL_ABSENT,
        offsets,
        enums,
        debug: 0,
        _pad: 0,
        fn_hooks: tracer_common::FnHookConfig::default(),
        lifecycle: tracer_common::LifecycleConfig::ABSENT,
        conn: tracer_common::ConnConfig::ABSENT,
        sock: tracer_common::SockFields::ABSENT,
        drop_sites: DropSites::default(),
        attempt_seed: 0,
        // Built from the rest when the config is written (capture::write_config).
        transitions: [tracer_common::transition::NONE; tracer_common::TCP_STATE_SLOTS * tracer_common::TCP_STATE_SLOTS],
        repeat_window_ns: 0,
        task: tracer_common::TaskFields::ABSENT,
    }
}

const SYSCALL_ABSENT: TpSyscallFields =
    TpSyscallFields { fd: FIELD_ABSENT, addr: FIELD_ABSENT, addrlen: FIELD_ABSENT, ret: FIELD_ABSENT };

/// Why `layout` cannot be used with `format`, if it cannot.
fn layout_mismatch(format: &TracepointFormat, layout: &Layout) -> Option<String> {
    for spec in layout.fields.iter().filter(|s| s.required) {
        match format.field(spec.name) {
            None => return Some(format!("has no field `{}`", spec.name)),
            Some(f) => {
                if let Some(size) = spec.size {
                    if f.size != size {
                        return Some(format!(
                            "field `{}` is {} bytes, tracer reads {size}",
                            spec.name, f.size
                        ));
                    }
                }
            }
        }
    }
    None
}

/// Writes the offsets of `layout`'s fields into `config`; returns notes on optional fields
/// this kernel lacks or has in another size (those stay FIELD_ABSENT).
fn apply_layout(config: &mut Config, format: &TracepointFormat, layout: &Layout) -> Vec<String> {
    let mut notes = Vec::new();
    for spec in &layout.fields {
        match format.field(spec.name) {
            Some(f) if spec.size.is_none_or(|s| s == f.size) => *(spec.slot)(config) = f.offset,
            Some(f) => notes.push(format!(
                "optional field `{}` is {} bytes (tracer reads {}): not read",
                spec.name,
                f.size,
                spec.size.unwrap_or(0)
            )),
            None => notes.push(format!("optional field `{}` absent: not read", spec.name)),
        }
    }
    notes
}

/// Resolves one tracepoint against its format file, filling `config` when usable.
fn resolve_tracepoint(
    config: &mut Config,
    spec: &HookSpec,
    tracepoint: &TracepointHook,
    format: anyhow::Result<TracepointFormat>,
) -> TracepointInfo {
    let mut info = TracepointInfo {
        category: tracepoint.category,
        name: tracepoint.name,
        available: false,
        why_not: None,
        serves: spec.serves,
        notes: Vec::new(),
    };
    let format = match format {
        Ok(f) => f,
        Err(e) => {
            info.why_not = Some(format!("{e:#}"));
            return info;
        }
    };
    let mut first_mismatch = None;
    for (i, layout) in tracepoint.layouts.iter().enumerate() {
        match layout_mismatch(&format, layout) {
            None => {
                info.available = true;
                info.notes = apply_layout(config, &format, layout);
                if i > 0 {
                    info.notes.insert(0, format!("layout: {}", layout.label));
                }
                return info;
            }
            Some(why) => {
                first_mismatch.get_or_insert(why);
            }
        }
    }
    info.why_not = first_mismatch.map(|why| format!("{} {why}", tracepoint.full_name()));
    info
}

/// Reads every tracepoint's format under `tracefs` and builds the `Config` (debug off).
/// Tracepoints that are missing or unusable are reported, their fields left FIELD_ABSENT.
pub fn tracepoint_config(
    tracefs: &Path,
    offsets: KernelOffsets,
    enums: KernelEnums,
) -> (Config, Vec<TracepointInfo>) {
    let (mut config, mut infos) = tracepoint_config_with(offsets, enums, |category, name| {
        if !tracefs::tracepoint_exists(tracefs, category, name) {
            anyhow::bail!("this kernel has no tracepoint {category}:{name}");
        }
        tracefs::read_format(tracefs, category, name)
    });
    if config.send_reset.reason == FIELD_ABSENT {
        if let Some(info) = infos.iter_mut().find(|i| i.available && i.category == "tcp" && i.name == "tcp_send_reset") {
            info.notes.push("before 6.10 it does not fire for a reset sent from no socket: it proves no dead listener here".into());
        }
    }
    if config.kfree_skb.location != FIELD_ABSENT {
        let sites = fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms").and_then(|t| drop_sites(&t));
        use_drop_sites(&mut config, &mut infos, sites);
    }
    (config, infos)
}

/// The address ranges of the `DROP_SITE_FUNCTIONS` in a /proc/kallsyms text: each from its
/// address to the next higher symbol's. Fails when the addresses are hidden (all zero:
/// kernel.kptr_restrict, or no CAP_SYSLOG) or none of the functions is listed.
pub fn drop_sites(kallsyms: &str) -> anyhow::Result<DropSites> {
    let mut addresses = Vec::new();
    let mut starts = [0u64; DROP_SITE_FUNCTIONS.len()];
    for line in kallsyms.lines() {
        // "ffffffff81000000 T name [module]"
        let mut words = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (words.next(), words.next(), words.next()) else { continue };
        let Ok(addr) = u64::from_str_radix(addr, 16) else { continue };
        addresses.push(addr);
        if kind.eq_ignore_ascii_case("t") {
            if let Some(i) = DROP_SITE_FUNCTIONS.iter().position(|f| *f == name) {
                if starts[i] == 0 {
                    starts[i] = addr;
                }
            }
        }
    }
    if addresses.iter().all(|a| *a == 0) {
        anyhow::bail!(
            "/proc/kallsyms shows no addresses (kernel.kptr_restrict hides them: run as root with kptr_restrict at most 1)"
        );
    }
    if starts.iter().all(|s| *s == 0) {
        anyhow::bail!("/proc/kallsyms lists none of {}", DROP_SITE_FUNCTIONS.join(", "));
    }
    addresses.sort_unstable();
    let mut sites = DropSites::default();
    for (range, start) in sites.ranges.iter_mut().zip(starts) {
        let next = addresses.partition_point(|a| *a <= start);
        if start != 0 && next < addresses.len() {
            *range = [start, addresses[next]];
        }
    }
    Ok(sites)
}

/// Puts the drop sites in `config`, with a note on kfree_skb saying which were found; without
/// any, kfree_skb (which then has neither reasons nor sites) is unusable, and says why.
fn use_drop_sites(config: &mut Config, infos: &mut [TracepointInfo], sites: anyhow::Result<DropSites>) {
    let Some(info) = infos.iter_mut().find(|i| i.category == "skb" && i.name == "kfree_skb") else { return };
    match sites {
        Ok(sites) => {
            let named = |found: bool| -> Vec<&str> {
                DROP_SITE_FUNCTIONS.iter().zip(sites.ranges).filter(|(_, r)| (r[0] != 0) == found).map(|(f, _)| *f).collect()
            };
            info.notes.push(format!("drop sites from /proc/kallsyms: {}", named(true).join(", ")));
            let missing = named(false);
            if !missing.is_empty() {
                info.notes.push(format!("not in /proc/kallsyms (their drops unseen): {}", missing.join(", ")));
            }
            config.drop_sites = sites;
        }
        Err(e) => {
            info.available = false;
            info.why_not = Some(format!("skb:kfree_skb has no drop reasons on this kernel, and its drop sites are unknown: {e:#}"));
            info.notes.clear();
            config.kfree_skb = empty_config(KernelOffsets::default(), config.enums).kfree_skb;
        }
    }
}

/// `tracepoint_config` with the format source given (tests feed recorded texts).
fn tracepoint_config_with(
    offsets: KernelOffsets,
    enums: KernelEnums,
    mut read: impl FnMut(&str, &str) -> anyhow::Result<TracepointFormat>,
) -> (Config, Vec<TracepointInfo>) {
    let mut config = empty_config(offsets, enums);
    let infos = hooks::tracepoints()
        .map(|(spec, tp)| resolve_tracepoint(&mut config, spec, tp, read(tp.category, tp.name)))
        .collect();
    (config, infos)
}

/// Whether kprobe programs can attach here. Config from /boot/config-<release> when present,
/// else the symbol table: `register_kprobe` exists exactly when CONFIG_KPROBES=y.
/// (/proc/config.gz is not read: that needs a gzip decoder tracer does not carry.)
pub fn kprobes_availability(tracefs: Option<&Path>, release: &str) -> Availability {
    const NOT_SET: &str = "CONFIG_KPROBES is not set";
    let built = match fs::read_to_string(format!("/boot/config-{release}")) {
        Ok(text) => kconfig_value(&text, "CONFIG_KPROBES").as_deref() == Some("y"),
        Err(_) => match kallsyms_has("register_kprobe") {
            Ok(found) => found,
            Err(e) => {
                return Availability::Unknown(format!("cannot read kernel config or /proc/kallsyms: {e}"))
            }
        },
    };
    if !built {
        return Availability::No(NOT_SET.to_string());
    }
    // aya attaches kprobes through the perf kprobe PMU, older tools through kprobe_events.
    let pmu = Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let events = tracefs.is_some_and(|t| t.join("kprobe_events").exists());
    if pmu || events {
        Availability::Yes
    } else {
        Availability::No(
            "kprobes are built in but neither the kprobe PMU nor kprobe_events exists".to_string(),
        )
    }
}

/// Whether BPF trampolines (fentry/fexit) work is only known by loading a program: the
/// kernel may have them built and still refuse (EPERM in some VMs). `doctor` and `diagnose`
/// try per hook and report the outcome; this only says what the configuration allows.
pub fn fentry_availability() -> Availability {
    let release = kernel_release();
    match fs::read_to_string(format!("/boot/config-{release}")) {
        Ok(text) if kconfig_value(&text, "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS").as_deref() != Some("y") => {
            Availability::No("CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS is not set".to_string())
        }
        _ => Availability::Unknown("known by loading a program: see the function hooks below".to_string()),
    }
}

/// `CONFIG_X=value` from a kernel config text; "n" for `# CONFIG_X is not set`.
fn kconfig_value(text: &str, key: &str) -> Option<String> {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(key) {
            if let Some(value) = rest.strip_prefix('=') {
                return Some(value.trim().to_string());
            }
        }
        if line.trim() == format!("# {key} is not set") {
            return Some("n".to_string());
        }
    }
    None
}

/// Whether /proc/kallsyms lists a symbol (names are listed even when addresses are hidden).
fn kallsyms_has(symbol: &str) -> anyhow::Result<bool> {
    let file = fs::File::open("/proc/kallsyms").context("/proc/kallsyms")?;
    let mut lines = 0usize;
    for line in BufReader::new(file).lines() {
        let line = line.context("/proc/kallsyms")?;
        lines += 1;
        // "ffffffff81000000 T name [module]"
        if line.split_whitespace().nth(2) == Some(symbol) {
            return Ok(true);
        }
    }
    if lines == 0 {
        anyhow::bail!("/proc/kallsyms is empty");
    }
    Ok(false)
}

/// The privileges of this process that matter to tracer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Privileges {
    pub euid: u32,
    pub cap_bpf: bool,
    pub cap_perfmon: bool,
    pub cap_sys_admin: bool,
    pub cap_net_admin: bool,
}

impl Privileges {
    /// Loading tracepoint programs needs CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN.
    pub fn can_load_tracepoints(&self) -> bool {
        self.cap_sys_admin || (self.cap_bpf && self.cap_perfmon)
    }
}

// UAPI capability numbers (linux/capability.h): stable ABI, not kernel internals.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// This process's effective uid and capabilities (CapEff in /proc/self/status).
pub fn privileges() -> Privileges {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    privileges_from_status(&status, nix::unistd::geteuid().as_raw())
}

fn privileges_from_status(status: &str, euid: u32) -> Privileges {
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| cap_eff & (1u64 << cap) != 0;
    Privileges {
        euid,
        cap_bpf: has(CAP_BPF),
        cap_perfmon: has(CAP_PERFMON),
        cap_sys_admin: has(CAP_SYS_ADMIN),
        cap_net_admin: has(CAP_NET_ADMIN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const KFREE_SKB_6_18: &str = "name: kfree_skb
ID: 2310
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;
";

    /// tcp_send_reset before 6.10 (TP_STORE_ADDR_PORTS, no reason), e.g. 6.1.
    const TCP_SEND_RESET_6_1: &str = "name: tcp_send_reset
format:
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:38;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:58;\tsize:16;\tsigned:0;
";

    fn config_from(texts: &HashMap<&str, &str>) -> (Config, Vec<TracepointInfo>) {
        tracepoint_config_with(KernelOffsets::default(), zero_enums(), |cat, name| {
            let key = format!("{cat}:{name}");
            match texts.get(key.as_str()) {
                Some(t) => TracepointFormat::parse(t),
                None => anyhow::bail!("this kernel has no tracepoint {key}"),
            }
        })
    }

    fn zero_enums() -> KernelEnums {
        KernelEnums {
            tcp_established: 1,
            tcp_syn_sent: 2,
            tcp_close: 7,
            tcp_listen: 10,
            drop_no_socket: FIELD_ABSENT,
            drop_netfilter_drop: FIELD_ABSENT,
            drop_tcp_listen_overflow: FIELD_ABSENT,
            ipproto_tcp: 6,
        }
    }

    /// set_state's transition table, for Linux's TCP state numbers: the changes of a healthy
    /// connection are none of its business except the few it acts on, and the table follows
    /// the after-connect checks and the function hooks.
    #[test]
    fn the_transition_table_acts_on_the_changes_set_state_follows() {
        use tracer_common::{transition as act, FN_ACCEPT, FN_TCP_CONNECT, TCP_STATE_SLOTS};
        const EST: u32 = 1;
        const SYN_SENT: u32 = 2;
        const SYN_RECV: u32 = 3;
        const FIN_WAIT1: u32 = 4;
        const FIN_WAIT2: u32 = 5;
        const TIME_WAIT: u32 = 6;
        const CLOSE: u32 = 7;
        const CLOSE_WAIT: u32 = 8;
        const LAST_ACK: u32 = 9;
        const LISTEN: u32 = 10;
        let mut cfg = empty_config(KernelOffsets::default(), zero_enums());
        cfg.conn.enabled = 1;
        cfg.conn.tcp_close_wait = CLOSE_WAIT;
        cfg.conn.tcp_fin_wait1 = FIN_WAIT1;
        cfg.conn.tcp_last_ack = LAST_ACK;
        cfg.fn_hooks.tcp_syn_recv = SYN_RECV;
        let at = |table: &[u8; 256], old: u32, new: u32| table[old as usize * TCP_STATE_SLOTS + new as usize];

        let t = cfg.transition_table().unwrap();
        assert_eq!(at(&t, CLOSE, SYN_SENT), act::CONNECT);
        assert_eq!(at(&t, SYN_SENT, EST), act::SYN_SENT_LEFT);
        assert_eq!(at(&t, SYN_SENT, CLOSE), act::SYN_SENT_LEFT);
        assert_eq!(at(&t, EST, CLOSE_WAIT), act::PEER_FIN);
        assert_eq!(at(&t, EST, FIN_WAIT1), act::LOCAL_FIN);
        assert_eq!(at(&t, EST, CLOSE), act::RESET);
        assert_eq!(at(&t, CLOSE_WAIT, CLOSE), act::RESET);
        assert_eq!(at(&t, CLOSE_WAIT, LAST_ACK), act::LAST_ACK);
        assert_eq!(at(&t, CLOSE, LISTEN), act::LISTEN_START);
        assert_eq!(at(&t, LISTEN, CLOSE), act::LISTEN_STOP);
        // A healthy connection's other changes, and a child leaving its listener's state.
        for (old, new) in [(SYN_RECV, EST), (FIN_WAIT1, FIN_WAIT2), (FIN_WAIT2, CLOSE), (LAST_ACK, CLOSE), (LISTEN, SYN_RECV), (TIME_WAIT, CLOSE)] {
            assert_eq!(at(&t, old, new), act::NONE, "{old} -> {new}");
        }
        assert_eq!(t.iter().filter(|&&a| a != act::NONE).count(), 10 + 14, "SYN_SENT's row is all act::SYN_SENT_LEFT");

        // Without the after-connect checks, an established connection's end is not looked at.
        cfg.conn.enabled = 0;
        let t = cfg.transition_table().unwrap();
        for (old, new) in [(EST, CLOSE_WAIT), (EST, FIN_WAIT1), (EST, CLOSE), (CLOSE_WAIT, CLOSE), (CLOSE_WAIT, LAST_ACK)] {
            assert_eq!(at(&t, old, new), act::NONE, "{old} -> {new}");
        }
        // tcp_connect's hook records the owner; inet_csk_accept's wants the queued children.
        cfg.fn_hooks.active = FN_TCP_CONNECT | FN_ACCEPT;
        let t = cfg.transition_table().unwrap();
        assert_eq!(at(&t, CLOSE, SYN_SENT), act::NONE);
        assert_eq!(at(&t, SYN_RECV, EST), act::QUEUED);

        // A state numbered past the table is refused, not folded onto another.
        cfg.conn.tcp_last_ack = 16;
        assert_eq!(cfg.transition_table(), Err(16));
    }

    fn info<'a>(infos: &'a [TracepointInfo], name: &str) -> &'a TracepointInfo {
        infos.iter().find(|i| i.name == name).unwrap()
    }

    #[test]
    fn fills_set_state_and_kfree_skb_from_recorded_formats() {
        let texts = HashMap::from([
            ("sock:inet_sock_set_state", super::super::tracefs::tests::INET_SOCK_SET_STATE_6_18),
            ("skb:kfree_skb", KFREE_SKB_6_18),
        ]);
        let (config, infos) = config_from(&texts);
        let s = config.set_state;
        assert_eq!((s.skaddr, s.oldstate, s.newstate), (8, 16, 20));
        assert_eq!((s.sport, s.dport, s.family, s.protocol), (24, 26, 28, 30));
        assert_eq!((s.saddr, s.daddr, s.saddr_v6, s.daddr_v6), (32, 36, 40, 56));
        assert_eq!((s.skbaddr, s.state, s.reason), (FIELD_ABSENT, FIELD_ABSENT, FIELD_ABSENT));
        assert_eq!(
            (config.kfree_skb.skbaddr, config.kfree_skb.protocol, config.kfree_skb.reason),
            (8, 32, 36)
        );
        assert!(info(&infos, "inet_sock_set_state").available);
        assert!(info(&infos, "kfree_skb").available);
        let missing = info(&infos, "tcp_retransmit_skb");
        assert!(!missing.available);
        assert!(missing.why_not.as_deref().unwrap().contains("no tracepoint tcp:tcp_retransmit_skb"));
        assert_eq!(config.retransmit, TpSockFields::ABSENT);
        assert_eq!(config.debug, 0);
    }

    #[test]
    fn send_reset_sockaddr_layout_since_6_10() {
        let texts = HashMap::from([("tcp:tcp_send_reset", super::super::tracefs::tests::TCP_SEND_RESET_6_18)]);
        let (config, infos) = config_from(&texts);
        let r = config.send_reset;
        assert!(info(&infos, "tcp_send_reset").available);
        assert_eq!((r.skbaddr, r.skaddr, r.state, r.reason), (8, 16, 24, 28));
        assert_eq!((r.saddr, r.daddr), (32, 60));
        assert_eq!(
            (r.sport, r.dport, r.family, r.saddr_v6),
            (FIELD_ABSENT, FIELD_ABSENT, FIELD_ABSENT, FIELD_ABSENT)
        );
        assert!(info(&infos, "tcp_send_reset").notes[0].starts_with("layout: addresses as sockaddr"));
    }

    #[test]
    fn send_reset_port_layout_before_6_10() {
        let texts = HashMap::from([("tcp:tcp_send_reset", TCP_SEND_RESET_6_1)]);
        let (config, infos) = config_from(&texts);
        let r = config.send_reset;
        let i = info(&infos, "tcp_send_reset");
        assert!(i.available);
        assert_eq!((r.sport, r.dport, r.family, r.saddr, r.daddr_v6), (28, 30, 32, 34, 58));
        assert_eq!(r.reason, FIELD_ABSENT);
        assert!(i.notes.iter().any(|n| n.contains("`reason` absent")), "{:?}", i.notes);
    }

    /// tcp_retransmit_skb on 5.10 (tcp_event_sk_skb before the tcp tracepoints gained `family`).
    const TCP_RETRANSMIT_SKB_5_10: &str = "name: tcp_retransmit_skb
format:
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";

    /// tcp_receive_reset on 5.10 (tcp_event_sk, no `family`).
    const TCP_RECEIVE_RESET_5_10: &str = "name: tcp_receive_reset
format:
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 sport;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:18;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:20;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:24;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:28;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:44;\tsize:16;\tsigned:0;
\tfield:__u64 sock_cookie;\toffset:64;\tsize:8;\tsigned:0;
";

    #[test]
    fn tcp_tracepoints_without_family_load_on_5_10() {
        // The kernel programs take the family from saddr_v6 (tracer_common::family_of_saddr_v6).
        let texts = HashMap::from([
            ("tcp:tcp_retransmit_skb", TCP_RETRANSMIT_SKB_5_10),
            ("tcp:tcp_receive_reset", TCP_RECEIVE_RESET_5_10),
        ]);
        let (config, infos) = config_from(&texts);
        assert!(info(&infos, "tcp_retransmit_skb").available, "{:?}", info(&infos, "tcp_retransmit_skb").why_not);
        assert!(info(&infos, "tcp_receive_reset").available, "{:?}", info(&infos, "tcp_receive_reset").why_not);
        let r = config.retransmit;
        assert_eq!((r.skbaddr, r.skaddr, r.state, r.sport, r.dport), (8, 16, 24, 28, 30));
        assert_eq!((r.family, r.saddr, r.daddr, r.saddr_v6, r.daddr_v6), (FIELD_ABSENT, 32, 36, 40, 56));
        let x = config.receive_reset;
        assert_eq!((x.skaddr, x.sport, x.dport, x.family, x.saddr_v6, x.daddr_v6), (8, 16, 18, FIELD_ABSENT, 28, 44));
    }

    #[test]
    fn wrong_size_of_required_field_makes_tracepoint_unavailable() {
        // A reason of another size, and no location to fall back on.
        let bad = KFREE_SKB_6_18.replace("reason;\toffset:36;\tsize:4", "reason;\toffset:36;\tsize:2").replace("location", "caller");
        let texts = HashMap::from([("skb:kfree_skb", bad.as_str())]);
        let (config, infos) = config_from(&texts);
        let i = info(&infos, "kfree_skb");
        assert!(!i.available);
        assert!(i.why_not.as_deref().unwrap().contains("`reason` is 2 bytes"), "{:?}", i.why_not);
        assert_eq!(config.kfree_skb.reason, FIELD_ABSENT);
        assert_eq!(config.kfree_skb.skbaddr, FIELD_ABSENT, "nothing written for an unusable tracepoint");
    }

    #[test]
    fn missing_required_field_makes_tracepoint_unavailable() {
        // Neither a reason nor a location: no layout fits; the first one's want is named.
        let old = KFREE_SKB_6_18.lines().filter(|l| !l.contains("reason") && !l.contains("location")).collect::<Vec<_>>().join("\n");
        let texts = HashMap::from([("skb:kfree_skb", old.as_str())]);
        let (_, infos) = config_from(&texts);
        assert_eq!(info(&infos, "kfree_skb").why_not.as_deref(), Some("skb:kfree_skb has no field `reason`"));
    }

    /// 5.10's format: 6.18's without `rx_sk` and `reason`, so `protocol` moves up to 24.
    fn kfree_skb_5_10() -> String {
        let lines = KFREE_SKB_6_18.lines().filter(|l| !l.contains("rx_sk") && !l.contains("reason"));
        lines.map(|l| format!("{}\n", l.replace("offset:32", "offset:24"))).collect()
    }

    #[test]
    fn kfree_skb_before_5_17_reads_the_drop_location() {
        let format = kfree_skb_5_10();
        let texts = HashMap::from([("skb:kfree_skb", format.as_str())]);
        let (mut config, mut infos) = config_from(&texts);
        let k = config.kfree_skb;
        assert_eq!((k.skbaddr, k.location, k.protocol, k.reason), (8, 16, 24, FIELD_ABSENT));
        assert!(info(&infos, "kfree_skb").notes[0].contains("drop sites instead of drop reasons"));
        // With reasons, the location is not read.
        let (with_reasons, _) = config_from(&HashMap::from([("skb:kfree_skb", KFREE_SKB_6_18)]));
        assert_eq!(with_reasons.kfree_skb.location, FIELD_ABSENT);

        // Drop sites found: kept, and named in the notes.
        let sites = drop_sites(KALLSYMS).unwrap();
        use_drop_sites(&mut config, &mut infos, Ok(sites));
        assert_eq!(config.drop_sites, sites);
        assert!(info(&infos, "kfree_skb").available);
        assert!(info(&infos, "kfree_skb").notes.iter().any(|n| n == "drop sites from /proc/kallsyms: nf_hook_slow, tcp_v4_rcv, tcp_v6_rcv"));

        // None: the tracepoint is unusable, and says why.
        let (mut config, mut infos) = config_from(&texts);
        let hidden: String = KALLSYMS.lines().map(|l| format!("0000000000000000{}\n", &l[16..])).collect();
        use_drop_sites(&mut config, &mut infos, drop_sites(&hidden));
        let i = info(&infos, "kfree_skb");
        assert!(!i.available);
        assert!(i.why_not.as_deref().unwrap().contains("kptr_restrict"), "{:?}", i.why_not);
        assert_eq!(config.kfree_skb.location, FIELD_ABSENT);
    }

    const KALLSYMS: &str = "ffffffff81a10000 T tcp_v4_rcv
ffffffff81a0f000 t tcp_v4_fill_cb
ffffffff81a11200 T tcp_v4_destroy_sock
ffffffff819c0000 T nf_hook_slow
ffffffff819c0180 T nf_hook_slow_list
ffffffff81b20000 T tcp_v6_rcv
ffffffff81b21000 t tcp_v6_early_demux
ffffffff81b20000 t __pfx_alias [ipv6]
";

    #[test]
    fn drop_sites_span_to_the_next_symbol() {
        let s = drop_sites(KALLSYMS).unwrap();
        assert_eq!(s.ranges, [[0xffffffff819c0000, 0xffffffff819c0180], [0xffffffff81a10000, 0xffffffff81a11200], [0xffffffff81b20000, 0xffffffff81b21000]]);
        let v4_only = drop_sites("ffffffff81a10000 T tcp_v4_rcv\nffffffff81a11200 T tcp_v4_destroy_sock\n").unwrap();
        assert_eq!(v4_only.ranges[0], [0, 0]);
        assert_eq!(v4_only.ranges[2], [0, 0]);
        let e = drop_sites("ffffffff81a10000 T something_else\n").unwrap_err();
        assert_eq!(e.to_string(), "/proc/kallsyms lists none of nf_hook_slow, tcp_v4_rcv, tcp_v6_rcv");
    }

    #[test]
    fn parses_capabilities() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let p = privileges_from_status(status, 0);
        assert!(p.cap_bpf && p.cap_perfmon && p.cap_sys_admin && p.cap_net_admin);
        let p = privileges_from_status("CapEff:\t0000000000001000\n", 1000);
        assert!(p.cap_net_admin && !p.cap_sys_admin && !p.cap_bpf);
        assert!(!p.can_load_tracepoints());
        assert_eq!(p.euid, 1000);
    }

    #[test]
    fn reads_kconfig_values() {
        let text = "CONFIG_KPROBES_ON_FTRACE=y\n# CONFIG_KPROBES is not set\nCONFIG_BPF=y\n";
        assert_eq!(kconfig_value(text, "CONFIG_KPROBES").as_deref(), Some("n"));
        assert_eq!(kconfig_value(text, "CONFIG_BPF").as_deref(), Some("y"));
        assert_eq!(kconfig_value(text, "CONFIG_NOPE"), None);
    }

    /// On this machine (see TOOLCHAIN.md) kprobes are compiled out.
    #[test]
    fn kprobes_on_this_machine() {
        let avail = kprobes_availability(Some(Path::new("/sys/kernel/tracing")), &kernel_release());
        println!("kprobes: {avail:?}");
        let config_says_off = fs::read("/proc/config.gz").is_ok()
            && !Path::new("/sys/bus/event_source/devices/kprobe").exists()
            && kallsyms_has("register_kprobe").ok() == Some(false);
        if config_says_off {
            assert_eq!(avail, Availability::No("CONFIG_KPROBES is not set".to_string()));
        }
    }

    #[test]
    fn probes_this_kernel() {
        if super::super::btf::tests::kernel_btf().is_none() {
            return;
        }
        if !nix::unistd::geteuid().is_root() && tracefs::find_tracefs().is_none() {
            note!("skipped: tracefs not mounted and not root");
            return;
        }
        let facts = probe_kernel().unwrap();
        for tp in &facts.tracepoints {
            println!(
                "{} available={} why_not={:?} notes={:?}",
                tp.full_name(),
                tp.available,
                tp.why_not,
                tp.notes
            );
        }
        // Every tracepoint of KERNEL-NOTES.md exists on the project's 6.18 machines.
        if facts.kernel_release.starts_with("6.18") {
            assert!(facts.tracepoints.iter().all(|t| t.available));
            assert_eq!(facts.config.send_reset.family, FIELD_ABSENT);
            assert_ne!(facts.config.send_reset.reason, FIELD_ABSENT);
        }
        assert_eq!(facts.config.debug, 0);
        let btf = super::super::btf::tests::kernel_btf().unwrap();
        assert_eq!(facts.config.offsets, btf.offsets().unwrap());
        assert_eq!(facts.config.enums, btf.enums().unwrap());
    }
}
