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
use tracer_common::{AcceptWaitKey, ACCEPT_WAIT_SLOTS, FN_ACCEPT};

use crate::kernel::facts::Availability;
use crate::kernel::hooks;
pub use crate::kernel::hooks::{BackendChoice, FnHookOutcome, FnHookPlan};

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
    for (hook, spec) in hooks::functions() {
        let proto = plan.functions.iter().find(|(n, _)| *n == spec.function).and_then(|(_, p)| p.clone());
        let mut o = FnHookOutcome {
            function: spec.function,
            prototype: proto.as_ref().map(|p| p.render()).unwrap_or_else(|| "not in this kernel's BTF".into()),
            active: None,
            program: None,
            why_not: Vec::new(),
            serves: hook.serves,
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
        let variant = spec.trampolines.iter().find(|t| types.as_slice() == t.params);
        let kind = |fexit: bool| if fexit { "fexit" } else { "fentry" };
        match (variant, btf) {
            (None, _) => o.why_not.push(format!("fentry: no program variant for {}", proto.render())),
            (Some(_), Err(e)) => o.why_not.push(format!("fentry: {e}")),
            (Some(t), Ok(btf)) => match trampoline(ebpf, t.program, t.fexit, spec.function, btf, attach) {
                Ok(()) => {
                    o.active = Some(format!("{}:{}", kind(t.fexit), spec.function));
                    o.program = Some(t.program);
                }
                Err(e) => o.why_not.push(format!("{}: {e}", kind(t.fexit))),
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

/// Loads an fentry or fexit program on `function` and, with `attach`, attaches it; without,
/// unloads it again (doctor only asks whether it loads). FEntry and FExit share no trait
/// for this, hence the macro.
fn trampoline(ebpf: &mut Ebpf, program: &str, fexit: bool, function: &str, btf: &Btf, attach: bool) -> Result<(), String> {
    macro_rules! load_then_attach {
        ($kind:ty) => {{
            let p: &mut $kind = ebpf
                .program_mut(program)
                .ok_or_else(|| format!("program {program} missing from the eBPF object"))?
                .try_into()
                .map_err(|e| format!("{e}"))?;
            p.load(function, btf).map_err(|e| format!("load refused ({})", short(&e)))?;
            if !attach {
                let _ = p.unload();
                return Ok(());
            }
            if let Err(e) = p.attach() {
                let _ = p.unload();
                return Err(format!("attach refused ({})", short(&e)));
            }
            Ok(())
        }};
    }
    if fexit {
        load_then_attach!(FExit)
    } else {
        load_then_attach!(FEntry)
    }
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
