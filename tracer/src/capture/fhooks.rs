//! The function-hook backend: per kernel function, fentry/fexit first, kprobe/kretprobe when
//! trampolines are refused, nothing (the tracepoint programs then serve that cause) when
//! neither loads. The program variant is chosen from the function's prototype in the running
//! kernel's BTF (e.g. `inet_csk_accept` lost three arguments in 6.10): a prototype no
//! variant was written for is never hooked.

use aya::{
    maps::{MapData, PerCpuHashMap},
    programs::{FEntry, FExit, KProbe},
    Btf, Ebpf,
};
use tracer_common::{AcceptWaitKey, ACCEPT_WAIT_SLOTS, FN_ACCEPT, FN_CONN_REQUEST, FN_TCP_CONNECT, FN_UNIX_CONNECT, FN_UNIX_PEER};

use super::HookState;
use crate::kernel::btf::FnPrototype;
use crate::kernel::facts::Availability;

/// Which backend the user allows (`--backend`, or TRACER_BACKEND).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// Function hooks where they load, tracepoints for the rest (the default).
    Auto,
    /// Like `Auto` without trying fentry/fexit: kprobes or tracepoints (tests the fallback).
    Kprobes,
    /// Tracepoints only: the function hooks are not even tried.
    Tracepoints,
}

impl BackendChoice {
    pub fn parse(s: &str) -> Result<BackendChoice, String> {
        match s {
            "auto" | "functions" | "fentry" => Ok(BackendChoice::Auto),
            "kprobes" | "kprobe" => Ok(BackendChoice::Kprobes),
            "tracepoints" | "tracepoint" => Ok(BackendChoice::Tracepoints),
            _ => Err(format!("'{s}' is not a backend (use auto, kprobes or tracepoints)")),
        }
    }
}

/// What start-up needs to decide the function hooks: prototypes from BTF, kprobe support.
pub struct FnHookPlan<'a> {
    pub choice: BackendChoice,
    pub functions: &'a [(&'static str, Option<FnPrototype>)],
    pub kprobes: &'a Availability,
}

/// One hooked kernel function: its programs per prototype, and what it serves.
struct FnSpec {
    function: &'static str,
    bit: u32,
    serves: &'static str,
    /// Without this hook, which tracepoints serve the same cause.
    fallback: &'static str,
    /// (parameter types of a prototype, fentry/fexit program for it, is fexit).
    trampoline: &'static [(&'static [&'static str], &'static str, bool)],
    /// kprobe program, kretprobe program (if any); used for any prototype whose leading
    /// arguments match `kprobe_args`.
    kprobe: (&'static str, Option<&'static str>),
    kprobe_args: &'static [&'static str],
}

const SOCK: &str = "struct sock *";

const SPECS: &[FnSpec] = &[
    FnSpec {
        function: "tcp_connect",
        bit: FN_TCP_CONNECT,
        serves: "who connects where: the attempt's owner as the SYN leaves",
        fallback: "sock:inet_sock_set_state CLOSE->SYN_SENT",
        trampoline: &[(&[SOCK], "tracer_fe_tcp_connect", false)],
        kprobe: ("tracer_kp_tcp_connect", None),
        kprobe_args: &[SOCK],
    },
    FnSpec {
        function: "inet_csk_accept",
        bit: FN_ACCEPT,
        serves: "who accepts from which listener, and how long each connection waited in the accept queue",
        fallback: "no tracepoint measures accept-queue waits: not measured",
        trampoline: &[
            // before 6.10
            (&[SOCK, "int", "int *", "bool"], "tracer_fx_accept4", true),
            // 6.10 and later
            (&[SOCK, "struct proto_accept_arg *"], "tracer_fx_accept2", true),
        ],
        kprobe: ("tracer_kp_accept", Some("tracer_kr_accept")),
        kprobe_args: &[SOCK],
    },
    FnSpec {
        function: "tcp_conn_request",
        bit: FN_CONN_REQUEST,
        serves: "SYNs hitting a full accept queue, with the queue length and maximum at that moment (backlog_full)",
        fallback: "tcp:tcp_retransmit_skb (the queue read at SYN retransmits) and ListenOverflows",
        trampoline: &[(
            &["struct request_sock_ops *", "struct tcp_request_sock_ops *", SOCK, "struct sk_buff *"],
            "tracer_fe_conn_request",
            false,
        )],
        kprobe: ("tracer_kp_conn_request", None),
        kprobe_args: &["struct request_sock_ops *", "struct tcp_request_sock_ops *", SOCK, "struct sk_buff *"],
    },
    FnSpec {
        function: "unix_stream_connect",
        bit: FN_UNIX_CONNECT,
        serves: "Unix socket connects: the error and the path (unix_missing, unix_stale, unix_backlog_full, unix_permission_denied)",
        fallback: "syscalls:sys_enter_connect + sys_exit_connect",
        trampoline: &[(&["struct socket *", "struct sockaddr *", "int", "int"], "tracer_fx_unix_connect", true)],
        kprobe: ("tracer_kp_unix_connect", Some("tracer_kr_unix_connect")),
        kprobe_args: &["struct socket *", "struct sockaddr *", "int"],
    },
    FnSpec {
        function: "unix_find_other",
        bit: FN_UNIX_PEER,
        serves: "the listener a Unix connect reaches: its queue length and maximum when the connect fails with EAGAIN (unix_backlog_full)",
        fallback: "the listener's queue from a sock_diag snapshot",
        trampoline: &[
            // 5.19 .. 6.12
            (&["struct net *", "struct sockaddr_un *", "int", "int"], "tracer_fx_unix_peer4", true),
            // later (a `flags` argument)
            (&["struct net *", "struct sockaddr_un *", "int", "int", "int"], "tracer_fx_unix_peer5", true),
        ],
        // Only the return value is read: a kretprobe alone.
        kprobe: ("tracer_kr_unix_peer", None),
        kprobe_args: &[],
    },
];

/// The outcome for one function.
#[derive(Clone, Debug)]
pub struct FnHookOutcome {
    pub function: &'static str,
    /// BTF prototype as C, or why there is none.
    pub prototype: String,
    /// `fentry:tcp_connect`, `kprobe:tcp_conn_request`, ... or None.
    pub active: Option<String>,
    /// The program (variant) serving it, e.g. `tracer_fx_accept4` for the 4-argument prototype.
    pub program: Option<&'static str>,
    /// Why fentry/fexit, then kprobe, were not used.
    pub why_not: Vec<String>,
    pub serves: &'static str,
    pub fallback: &'static str,
}

impl FnHookOutcome {
    pub fn hook_state(&self) -> HookState {
        match &self.active {
            Some(h) => HookState { hook: h.clone(), active: true, why_not: None, serves: self.serves },
            None => HookState {
                hook: self.function.to_string(),
                active: false,
                why_not: Some(format!("{} -> tracepoints", self.why_not.join("; "))),
                serves: self.serves,
            },
        }
    }

    /// One line for `doctor` and the logs: `tcp_connect: fentry:tcp_connect` or
    /// `tcp_conn_request: none (fentry: ...; kprobe: ...) -> tracepoints`.
    pub fn line(&self) -> String {
        match &self.active {
            Some(h) => match self.program {
                Some(p) => format!("{}: {h} (program {p})", self.function),
                None => format!("{}: {h}", self.function),
            },
            None => format!("{}: none ({}) -> tracepoints ({})", self.function, self.why_not.join("; "), self.fallback),
        }
    }
}

/// Loads (and, with `attach`, attaches) the function hooks this kernel allows. Returns the
/// outcome per function and the `FN_*` bits of those attached. Never fails: a hook that does
/// not load is reported, and its cause stays with the tracepoints.
pub fn start(ebpf: &mut Ebpf, plan: &FnHookPlan<'_>, attach: bool) -> (Vec<FnHookOutcome>, u32) {
    let mut outcomes = Vec::new();
    let mut bits = 0;
    let btf = match plan.choice {
        BackendChoice::Tracepoints => None,
        BackendChoice::Auto => Some(Btf::from_sys_fs().map_err(|e| format!("kernel BTF for trampolines: {e}"))),
        BackendChoice::Kprobes => Some(Err("skipped (--backend kprobes)".to_string())),
    };
    for spec in SPECS {
        let proto = plan.functions.iter().find(|(n, _)| *n == spec.function).and_then(|(_, p)| p.clone());
        let mut o = FnHookOutcome {
            function: spec.function,
            prototype: proto.as_ref().map(|p| p.render()).unwrap_or_else(|| "not in this kernel's BTF".into()),
            active: None,
            program: None,
            why_not: Vec::new(),
            serves: spec.serves,
            fallback: spec.fallback,
        };
        let Some(btf) = &btf else {
            o.why_not.push("function hooks off (--backend tracepoints)".into());
            outcomes.push(o);
            continue;
        };
        let Some(proto) = proto else {
            o.why_not.push(format!("{} has no BTF prototype here", spec.function));
            outcomes.push(o);
            continue;
        };
        let types = proto.types();

        // fentry / fexit: the variant written for this exact prototype.
        let variant = spec.trampoline.iter().find(|(want, _, _)| types.as_slice() == *want);
        let kind = |fexit: bool| if fexit { "fexit" } else { "fentry" };
        match (variant, btf) {
            (None, _) => o.why_not.push(format!("fentry: no program variant for {}", proto.render())),
            (Some(_), Err(e)) => o.why_not.push(format!("fentry: {e}")),
            (Some((_, program, fexit)), Ok(btf)) => match trampoline(ebpf, program, *fexit, spec.function, btf, attach) {
                Ok(()) => {
                    o.active = Some(format!("{}:{}", kind(*fexit), spec.function));
                    o.program = Some(program);
                }
                Err(e) => o.why_not.push(format!("{}: {e}", kind(*fexit))),
            },
        }

        // kprobe / kretprobe.
        if o.active.is_none() {
            let leading_ok = types.len() >= spec.kprobe_args.len() && types[..spec.kprobe_args.len()] == *spec.kprobe_args;
            if !leading_ok {
                o.why_not.push(format!("kprobe: arguments of {} differ from what the program reads", proto.render()));
            } else if let Availability::No(why) = plan.kprobes {
                o.why_not.push(format!("kprobes: {why}"));
            } else {
                match kprobes(ebpf, spec.kprobe.0, spec.kprobe.1, spec.function, attach) {
                    Ok(()) => {
                        o.program = Some(spec.kprobe.0);
                        o.active = Some(match spec.kprobe.1 {
                            Some(_) => format!("kprobe+kretprobe:{}", spec.function),
                            None if spec.kprobe.0.starts_with("tracer_kr_") => format!("kretprobe:{}", spec.function),
                            None => format!("kprobe:{}", spec.function),
                        })
                    }
                    Err(e) => o.why_not.push(format!("kprobe: {e}")),
                }
            }
        }
        if o.active.is_some() && attach {
            bits |= spec.bit;
        }
        outcomes.push(o);
    }
    (outcomes, bits)
}

/// The kernel's accept-queue wait histograms (inet_csk_accept's hook counts them per listener
/// address and bucket, per CPU); read about once a second and at the end.
pub struct AcceptWaits {
    map: PerCpuHashMap<MapData, AcceptWaitKey, [u64; ACCEPT_WAIT_SLOTS]>,
}

impl AcceptWaits {
    /// Takes the map out of the object when inet_csk_accept is hooked.
    pub fn take(ebpf: &mut Ebpf, fn_bits: u32) -> Option<AcceptWaits> {
        if fn_bits & FN_ACCEPT == 0 {
            return None;
        }
        let map = PerCpuHashMap::try_from(ebpf.take_map("ACCEPT_WAITS")?).ok()?;
        Some(AcceptWaits { map })
    }

    /// Totals per listener as events for the engine (absolute counts, summed over CPUs).
    pub fn events(&self, now_ns: u64) -> Vec<crate::event::Event> {
        use crate::event::{Event, EventBody};
        let mut out = Vec::new();
        for item in self.map.iter().flatten() {
            let (key, per_cpu) = item;
            let mut counts = [0u64; ACCEPT_WAIT_SLOTS];
            for cpu in per_cpu.iter() {
                for (c, v) in counts.iter_mut().zip(cpu.iter()) {
                    *c += v;
                }
            }
            let flow = tracer_common::Flow { family: key.family, sport: 0, dport: key.port, _pad: 0, saddr: [0; 16], daddr: key.addr };
            let listener = super::decode::flow_addr(&flow).dst;
            out.push(Event {
                ts_ns: now_ns,
                netns: key.netns,
                sock: 0,
                task: Default::default(),
                body: EventBody::AcceptWaitTotals { listener, counts },
            });
        }
        out
    }
}

fn trampoline(ebpf: &mut Ebpf, program: &str, fexit: bool, function: &str, btf: &Btf, attach: bool) -> Result<(), String> {
    let prog = ebpf.program_mut(program).ok_or_else(|| format!("program {program} missing from the eBPF object"))?;
    if fexit {
        let p: &mut FExit = prog.try_into().map_err(|e| format!("{e}"))?;
        p.load(function, btf).map_err(|e| format!("load refused ({})", short(&e)))?;
        if attach {
            if let Err(e) = p.attach() {
                let _ = p.unload();
                return Err(format!("attach refused ({})", short(&e)));
            }
        } else {
            let _ = p.unload();
        }
    } else {
        let p: &mut FEntry = prog.try_into().map_err(|e| format!("{e}"))?;
        p.load(function, btf).map_err(|e| format!("load refused ({})", short(&e)))?;
        if attach {
            if let Err(e) = p.attach() {
                let _ = p.unload();
                return Err(format!("attach refused ({})", short(&e)));
            }
        } else {
            let _ = p.unload();
        }
    }
    Ok(())
}

fn kprobes(ebpf: &mut Ebpf, entry: &str, ret: Option<&str>, function: &str, attach: bool) -> Result<(), String> {
    let mut loaded: Vec<&str> = Vec::new();
    let result = (|| {
        for program in std::iter::once(entry).chain(ret) {
            let prog = ebpf.program_mut(program).ok_or_else(|| format!("program {program} missing from the eBPF object"))?;
            let p: &mut KProbe = prog.try_into().map_err(|e| format!("{e}"))?;
            p.load().map_err(|e| format!("load refused ({})", short(&e)))?;
            loaded.push(program);
            if attach {
                p.attach(function, 0).map_err(|e| format!("attach refused ({})", short(&e)))?;
            }
        }
        Ok(())
    })();
    if result.is_err() || !attach {
        // All or nothing: an entry probe without its return probe only fills a map.
        for program in loaded {
            if let Some(prog) = ebpf.program_mut(program) {
                if let Ok(p) = <&mut KProbe>::try_from(prog) {
                    let _ = p.unload();
                }
            }
        }
    }
    result
}

/// An aya error with its source chain, on one line (`EPERM` and friends show at the end).
fn short(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    // The verifier's own words: its last lines that are not statistics.
    let verifier: Vec<&str> = s
        .split("Verifier output:")
        .nth(1)
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("verification time")
                && !l.starts_with("processed ")
                && !l.starts_with("stack depth")
        })
        .collect();
    let verifier = verifier[verifier.len().saturating_sub(2)..].join(" / ");
    let s = s.replace('\n', " ");
    // "... returned Operation not permitted (os error 1). Verifier output: ..." -> "EPERM".
    let Some(at) = s.find("(os error ") else { return s };
    let code: i32 = s[at + 10..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().unwrap_or(0);
    let name = match code {
        1 => "EPERM".to_string(),
        2 => "ENOENT".to_string(),
        7 => "E2BIG".to_string(),
        13 => "EACCES".to_string(),
        22 => "EINVAL".to_string(),
        95 => "EOPNOTSUPP".to_string(),
        524 => "ENOTSUPP".to_string(),
        n => format!("errno {n}"),
    };
    if verifier.is_empty() {
        name
    } else {
        format!("{name}; verifier: {verifier}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_has_a_variant_and_a_kprobe_signature() {
        for spec in SPECS {
            assert!(!spec.trampoline.is_empty());
            for (types, _, _) in spec.trampoline {
                assert!(types.len() >= spec.kprobe_args.len());
                assert_eq!(&types[..spec.kprobe_args.len()], spec.kprobe_args, "{}", spec.function);
            }
        }
        assert_eq!(BackendChoice::parse("tracepoints"), Ok(BackendChoice::Tracepoints));
        assert_eq!(BackendChoice::parse("auto"), Ok(BackendChoice::Auto));
        assert_eq!(BackendChoice::parse("kprobes"), Ok(BackendChoice::Kprobes));
        assert!(BackendChoice::parse("ebpf").is_err());
    }

    #[test]
    fn inactive_hooks_say_why_and_what_serves_instead() {
        let o = FnHookOutcome {
            function: "tcp_conn_request",
            prototype: String::new(),
            active: None,
            program: None,
            why_not: vec!["fentry: load refused (EPERM)".into(), "kprobes: CONFIG_KPROBES is not set".into()],
            serves: "x",
            fallback: "tcp:tcp_retransmit_skb",
        };
        assert_eq!(
            o.line(),
            "tcp_conn_request: none (fentry: load refused (EPERM); kprobes: CONFIG_KPROBES is not set) -> tracepoints (tcp:tcp_retransmit_skb)"
        );
        assert!(!o.hook_state().active);
    }
}
