//! `cargo xtask vm-test`: the kernel matrix. Boots Debian 11's 5.10 (the supported floor) and
//! Debian 12's 6.1 and 6.12 cloud kernels under
//! QEMU with software emulation (`-accel tcg -cpu max`; KVM is not available on the
//! project's machines) with a small initramfs: busybox, the static (musl) tracer binary that
//! `cargo xtask dist` ships, the shared libraries vm-init needs, a few sock_diag modules of
//! that kernel, and `vm-init` (xtask/src/bin/vm-init.rs) as /init. vm-init produces every cause that needs no Nginx,
//! twice (function hooks allowed, then forced off), checks tracer's findings and prints a
//! per-hook table and a success marker on the serial console, which this side reads.
//!
//! Installs what it needs (qemu-system-x86, busybox-static, cpio) and caches the kernel
//! packages under target/vm/. The host kernel's own row comes from running tracer here.
//! At most one VM per CPU runs at a time (TRACER_VM_PARALLEL overrides): each is one
//! single-threaded TCG vCPU, and the cases wait on timers that a starved vCPU stretches.
use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::util::{cargo, probe, require_root, run, target_dir};
use xtask::kit::read_lines;

/// Where a kernel package comes from.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// The machine's own apt configuration (Debian 12 on the project's machines).
    System,
    /// Another Debian suite's archive, read through a temporary sources list and lists
    /// directory so the machine's apt configuration stays untouched: (base URL, suite) lines.
    Suites(&'static [(&'static str, &'static str)]),
}

/// One kernel of the matrix.
struct KernelSpec {
    label: &'static str,
    /// apt package name pattern (newest match wins).
    pattern: &'static str,
    source: Source,
    /// In the run without TRACER_VM_KERNELS. A kernel joins the default matrix once every
    /// pass on it is green.
    default: bool,
}

/// Debian 11's archive and its security updates (which carry the newest 5.10 builds).
const BULLSEYE: &[(&str, &str)] =
    &[("http://deb.debian.org/debian", "bullseye"), ("http://deb.debian.org/debian-security", "bullseye-security")];

const KERNELS: &[KernelSpec] = &[
    KernelSpec { label: "5.10", pattern: r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64$", source: Source::Suites(BULLSEYE), default: true },
    KernelSpec { label: "6.1", pattern: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$", source: Source::System, default: true },
    KernelSpec { label: "6.12", pattern: r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$", source: Source::System, default: true },
];

/// The kernels to boot: those TRACER_VM_KERNELS names (comma-separated labels), else the
/// default matrix. An unknown label is an error rather than a silently smaller matrix.
fn selected_kernels(only: Option<&str>) -> Result<Vec<&'static KernelSpec>> {
    let Some(only) = only.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(KERNELS.iter().filter(|k| k.default).collect());
    };
    let mut picked = Vec::new();
    for label in only.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let spec = KERNELS.iter().find(|k| k.label == label).ok_or_else(|| {
            anyhow!("TRACER_VM_KERNELS names {label:?}; known kernels: {}", KERNELS.iter().map(|k| k.label).collect::<Vec<_>>().join(","))
        })?;
        if !picked.iter().any(|k: &&KernelSpec| k.label == label) {
            picked.push(spec);
        }
    }
    Ok(picked)
}

/// Modules packed into the initramfs (with what they depend on) when the kernel has them as
/// modules: sock_diag for tracer's listener snapshots, nf_tables with reject for the firewall
/// scenarios (nft itself is packed when the host has it).
const MODULES: &[&str] = &["inet_diag", "tcp_diag", "unix_diag", "nft_reject_inet"];

/// (Debian package, the program it provides). xz unpacks 6.12's compressed modules.
const PACKAGES: &[(&str, &str)] =
    &[("qemu-system-x86", "qemu-system-x86_64"), ("busybox-static", "busybox"), ("cpio", "cpio"), ("xz-utils", "xz")];

/// Per VM: boot, both passes, power-off.
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

mod summary;
use summary::{hook_of, summary_hooks, HOOKED};

pub fn vm_test() -> Result<()> {
    require_root("vm-test")?;
    let started = Instant::now();
    packages()?;
    let vm_dir = target_dir().join("vm");
    fs::create_dir_all(&vm_dir)?;

    // The static binary `cargo xtask dist` ships, so the matrix tests what ships (one build
    // for both within `cargo xtask test`).
    let tracer = crate::dist::static_binary()?;
    run(cargo().args(["build", "--release", "-p", "xtask", "--bin", "vm-init"]))?;
    let init = target_dir().join("release").join("vm-init");

    // The host kernel's row: what tracer picks here (tracepoints only on Firecracker).
    let host = host_hooks(&tracer)?;

    // TRACER_VM_KERNELS=5.10,6.1 picks kernels (default: the default matrix, 5.10, 6.1 and 6.12).
    let mut kernels = Vec::new();
    for spec in selected_kernels(std::env::var("TRACER_VM_KERNELS").ok().as_deref())? {
        kernels.push((spec.label, kernel(&vm_dir, spec)?));
    }

    let base = vm_dir.join("base");
    base_initramfs(&base, &tracer, &init)?;

    let mut queue = Vec::new();
    for (label, k) in &kernels {
        let initrd = initramfs(&vm_dir, &base, k)?;
        let log = vm_dir.join(format!("console-{label}.log"));
        queue.push((label.to_string(), k.clone(), initrd, log));
    }
    // Up to one VM per CPU at once (each is one single-threaded TCG vCPU), taken in matrix
    // order by a few workers.
    let parallel = vm_parallelism(std::env::var("TRACER_VM_PARALLEL").ok().as_deref(), thread::available_parallelism().map_or(1, |n| n.get()));
    println!("vm-test: {} kernels, {parallel} at a time", queue.len());
    queue.reverse();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
    let mut results = Vec::new();
    let (tx, rx) = mpsc::channel();
    for _ in 0..parallel {
        let (tx, queue) = (tx.clone(), queue.clone());
        thread::spawn(move || loop {
            let Some((label, k, initrd, log)) = queue.lock().ok().and_then(|mut q| q.pop()) else { break };
            let r = boot(&label, &k, &initrd, &log);
            let _ = tx.send((label, log, r));
        });
    }
    drop(tx);
    for r in rx {
        results.push(r);
    }
    results.sort_by(|a, b| version_key(&a.0).cmp(&version_key(&b.0)));

    // The table.
    println!();
    println!("vm-test: which program served each hooked kernel function (pass 1: --backend auto; pass 2: --backend kprobes; pass 3: --backend tracepoints; kernels without drop reasons add pass 4, blind: tracepoints with kernel.kptr_restrict=2)");
    println!("{:<28} {:<20} {:<34} {:<38} tracepoints", "kernel", "function", "auto", "kprobes");
    for f in HOOKED {
        let h = |m: &BTreeMap<String, String>| m.get(f).cloned().unwrap_or_else(|| "?".into());
        println!("{:<28} {:<20} {:<34} {:<38} {}", format!("host {}", host.0), f, h(&host.1), h(&host.2), h(&host.3));
    }
    let mut failed = Vec::new();
    for (label, log, r) in &results {
        match r {
            Ok(out) => {
                for f in HOOKED {
                    let get = |pass: &str| out.hooks.get(&(pass.to_string(), f.to_string())).cloned().unwrap_or_else(|| "?".into());
                    println!("{:<28} {:<20} {:<34} {:<38} {}", out.release, f, get("functions"), get("kprobes"), get("tracepoints"));
                }
                if !out.success {
                    failed.push(format!("{label}: {} (console log: {})", out.failures.join("; "), log.display()));
                }
            }
            Err(e) => failed.push(format!("{label}: {e:#} (console log: {})", log.display())),
        }
    }
    println!();
    for (label, _, r) in &results {
        if let Ok(out) = r {
            for line in &out.cases {
                println!("{label:<5} {line}");
            }
            println!("{label:<5} boot to tracing {:.1} s, whole VM run {:.1} s", out.boot_s, out.total_s);
        }
    }
    println!("vm-test: matrix took {:.0} s", started.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!("kernel matrix failed: {}", failed.join(" | "));
    }
    println!("vm-test: all kernels passed");
    Ok(())
}

/// How many VMs run at once: TRACER_VM_PARALLEL when it is a positive number, else one per
/// CPU.
fn vm_parallelism(setting: Option<&str>, cpus: usize) -> usize {
    setting.and_then(|s| s.trim().parse::<usize>().ok()).filter(|n| *n > 0).unwrap_or(cpus.max(1))
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().filter(|(_, bin)| !probe(Command::new("sh").args(["-c", &format!("command -v {bin}")])).0).map(|(p, _)| *p).collect();
    if missing.is_empty() {
        println!("vm-test: packages {} (present)", PACKAGES.iter().map(|p| p.0).collect::<Vec<_>>().join(" "));
        return Ok(());
    }
    let install = |cmd: &mut Command| run(cmd.env("DEBIAN_FRONTEND", "noninteractive").args(["install", "-y", "-q", "--no-install-recommends"]).args(&missing));
    if install(&mut Command::new("apt-get")).is_err() {
        run(Command::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").args(["update", "-q"]))?;
        install(&mut Command::new("apt-get"))?;
    }
    Ok(())
}

type HookMap = BTreeMap<String, String>;

/// The host kernel's rows: what tracer picks here with each backend (the host's causes are
/// covered by the scenario suite).
fn host_hooks(tracer: &Path) -> Result<(String, HookMap, HookMap, HookMap)> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let one = |backend: &str| -> Result<HookMap> {
        let out = Command::new(tracer)
            .args(["diagnose", "--verbose", "--duration", "300ms", "--json", "--backend", backend])
            .stdin(Stdio::null())
            .output()
            .context("running tracer on the host")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let objects: Vec<serde_json::Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let hooks = summary_hooks(&objects)
            .ok_or_else(|| anyhow!("tracer printed no JSON summary on the host: {}", String::from_utf8_lossy(&out.stderr)))?;
        println!("vm-test: [host] --backend {backend}: hooks {}", hooks.join(","));
        Ok(HOOKED.iter().map(|f| (f.to_string(), hook_of(&hooks, f))).collect())
    };
    Ok((release, one("auto")?, one("kprobes")?, one("tracepoints")?))
}

#[derive(Clone, Debug)]
struct Kernel {
    package: String,
    root: PathBuf,
    vmlinuz: PathBuf,
    modules: PathBuf,
}

/// The newest package matching `pattern`, downloaded and unpacked under target/vm (cached).
fn kernel(vm_dir: &Path, spec: &KernelSpec) -> Result<Kernel> {
    let pattern = spec.pattern;
    let apt = Apt::new(spec.source)?;
    let search = || probe(apt.cmd("apt-cache").args(["search", "--names-only", pattern])).1;
    let mut names: Vec<String> = Vec::new();
    if matches!(spec.source, Source::System) {
        names = search().lines().filter_map(|l| l.split_whitespace().next()).map(String::from).collect();
    }
    if names.is_empty() {
        let _ = run(apt.cmd("apt-get").env("DEBIAN_FRONTEND", "noninteractive").args(["update", "-q"]));
        names = search().lines().filter_map(|l| l.split_whitespace().next()).map(String::from).collect();
    }
    names.sort_by_key(|n| version_key(n));
    let package = match names.pop() {
        Some(n) => n,
        None => {
            // Offline: the newest one already unpacked.
            let mut cached: Vec<String> = fs::read_dir(vm_dir)?
                .flatten()
                .filter(|e| e.path().join("root/boot").is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(pattern.trim_start_matches('^').split('\\').next().unwrap_or("x")))
                .collect();
            cached.sort_by_key(|n| version_key(n));
            cached.pop().ok_or_else(|| anyhow!("no Debian package matches {pattern} (apt-cache search) and none is cached under {}", vm_dir.display()))?
        }
    };
    let dir = vm_dir.join(&package);
    let root = dir.join("root");
    if !root.join("boot").is_dir() {
        fs::create_dir_all(&dir)?;
        let have_deb = fs::read_dir(&dir)?.flatten().any(|e| e.path().extension().is_some_and(|x| x == "deb"));
        if !have_deb {
            // apt's sandbox user cannot write under target/: download as root into the dir.
            run(apt.cmd("apt-get").current_dir(&dir).args(["download", "-q", &package]))?;
        }
        let deb = fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| anyhow!("apt-get download {package} left no .deb in {}", dir.display()))?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    let vmlinuz = fs::read_dir(root.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .ok_or_else(|| anyhow!("{package} has no /boot/vmlinuz-*"))?;
    let version = vmlinuz.file_name().unwrap().to_string_lossy().trim_start_matches("vmlinuz-").to_string();
    let modules = root.join("lib/modules").join(&version);
    let modules = if modules.is_dir() { modules } else { root.join("usr/lib/modules").join(&version) };
    println!("vm-test: kernel {package} ({})", vmlinuz.display());
    Ok(Kernel { package, root, vmlinuz, modules })
}

/// apt as the machine is configured, or pointed at another suite through a temporary sources
/// list and lists directory (removed on drop). Its fetcher runs as the _apt user, so the
/// lists live in a fresh directory under the system temp dir rather than under target/.
struct Apt {
    temp: Option<PathBuf>,
}

impl Apt {
    fn new(source: Source) -> Result<Apt> {
        let Source::Suites(suites) = source else { return Ok(Apt { temp: None }) };
        let temp = std::env::temp_dir().join(format!("tracer-vm-apt-{}-{}", std::process::id(), suites.first().map_or("none", |s| s.1)));
        if temp.exists() {
            fs::remove_dir_all(&temp)?;
        }
        fs::create_dir_all(temp.join("lists/partial"))?;
        fs::write(temp.join("sources.list"), sources_list(suites))?;
        // _apt reads the lists it fetched.
        run(Command::new("chmod").args(["-R", "a+rX"]).arg(&temp))?;
        Ok(Apt { temp: Some(temp) })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        if let Some(t) = &self.temp {
            c.arg("-o")
                .arg(format!("Dir::Etc::SourceList={}", t.join("sources.list").display()))
                .args(["-o", "Dir::Etc::SourceParts=/dev/null"])
                .arg("-o")
                .arg(format!("Dir::State::Lists={}", t.join("lists").display()))
                // No package cache built from these lists in /var/cache/apt.
                .args(["-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache="]);
        }
        c
    }
}

impl Drop for Apt {
    fn drop(&mut self) {
        if let Some(t) = &self.temp {
            let _ = fs::remove_dir_all(t);
        }
    }
}

/// A one-line-style sources.list for `suites`, signed by Debian's archive keyring (which on
/// Debian 12 still holds the bullseye keys).
fn sources_list(suites: &[(&str, &str)]) -> String {
    suites
        .iter()
        .map(|(url, suite)| format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {url} {suite} main\n"))
        .collect()
}

/// Numbers in a package name, for "newest" ordering.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

/// busybox, tracer, vm-init as /init, and every shared library they load (per ldd).
fn base_initramfs(base: &Path, tracer: &Path, init: &Path) -> Result<()> {
    if base.exists() {
        fs::remove_dir_all(base)?;
    }
    for d in ["bin", "dev", "proc", "sys", "tmp", "modules", "run"] {
        fs::create_dir_all(base.join(d))?;
    }
    let busybox = which("busybox")?;
    fs::copy(&busybox, base.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", base.join("bin/sh"))?;
    fs::copy(tracer, base.join("bin/tracer"))?;
    fs::copy(init, base.join("init"))?;
    let mut bins = vec![tracer.to_path_buf(), init.to_path_buf()];
    // nft for the firewall scenarios, when the host has it (setup installs nftables).
    if let Ok(nft) = which("nft") {
        fs::copy(&nft, base.join("bin/nft"))?;
        bins.push(nft);
    }
    for bin in &bins {
        let (ok, out) = probe(Command::new("ldd").arg(bin));
        if !ok {
            continue; // static
        }
        for line in out.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = line.split("=>").last().unwrap_or("").split_whitespace().next().unwrap_or("");
            if !path.starts_with('/') {
                continue;
            }
            let src = Path::new(path);
            let dst = base.join(path.trim_start_matches('/'));
            fs::create_dir_all(dst.parent().unwrap())?;
            // Copy the file the link points to, under the link's name.
            fs::copy(src, &dst).with_context(|| format!("copying {path}"))?;
        }
    }
    Ok(())
}

/// The base tree plus this kernel's sock_diag modules, as an uncompressed newc cpio.
fn initramfs(vm_dir: &Path, base: &Path, k: &Kernel) -> Result<PathBuf> {
    let stage = vm_dir.join(format!("stage-{}", k.package));
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    run(Command::new("cp").arg("-a").arg(base).arg(&stage))?;
    for (i, (name, bytes)) in modules_in_load_order(&k.modules, MODULES)?.into_iter().enumerate() {
        fs::write(stage.join("modules").join(format!("{i:02}-{name}.ko")), bytes)?;
    }
    let out = vm_dir.join(format!("initramfs-{}.cpio", k.package));
    run(Command::new("sh")
        .current_dir(&stage)
        .args(["-c", &format!("find . | cpio -o -H newc --quiet > '{}'", out.display())]))?;
    let _ = &k.root;
    Ok(out)
}

/// `wanted` and every module they depend on (from each module's own `depends=` modinfo), as
/// (name, uncompressed bytes), dependencies first. Built-in or absent modules are skipped.
fn modules_in_load_order(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut stack = vec![modules_dir.join("kernel")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                if let Some(stem) = n.strip_suffix(".ko").or_else(|| n.strip_suffix(".ko.xz")) {
                    files.insert(stem.replace('-', "_"), p);
                }
            }
        }
    }
    let read = |p: &Path| -> Result<Vec<u8>> {
        if p.extension().is_some_and(|x| x == "xz") {
            let out = Command::new("xz").arg("-dc").arg(p).output().context("xz -dc (package xz-utils)")?;
            if !out.status.success() {
                bail!("xz -dc {} failed", p.display());
            }
            Ok(out.stdout)
        } else {
            Ok(fs::read(p)?)
        }
    };
    fn visit(
        name: &str,
        files: &BTreeMap<String, PathBuf>,
        read: &dyn Fn(&Path) -> Result<Vec<u8>>,
        out: &mut Vec<(String, Vec<u8>)>,
        depth: usize,
    ) -> Result<()> {
        if depth > 16 || out.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        let Some(path) = files.get(name) else { return Ok(()) }; // built in, or not built
        let bytes = read(path)?;
        // modinfo: "depends=a,b\0" in the .modinfo section.
        let deps: Vec<String> = bytes
            .windows(8)
            .position(|w| w == b"depends=")
            .map(|at| {
                let rest = &bytes[at + 8..];
                let end = rest.iter().position(|b| *b == 0).unwrap_or(0);
                String::from_utf8_lossy(&rest[..end]).split(',').filter(|s| !s.is_empty()).map(|s| s.replace('-', "_")).collect()
            })
            .unwrap_or_default();
        for d in deps {
            visit(&d, files, read, out, depth + 1)?;
        }
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name.to_string(), bytes));
        }
        Ok(())
    }
    let mut out = Vec::new();
    for w in wanted {
        visit(w, &files, &read, &mut out, 0)?;
    }
    Ok(out)
}

fn which(bin: &str) -> Result<PathBuf> {
    let (ok, out) = probe(Command::new("sh").args(["-c", &format!("command -v {bin}")]));
    if !ok {
        bail!("{bin} not found on PATH");
    }
    Ok(PathBuf::from(out.trim()))
}

#[derive(Debug)]
struct VmOutcome {
    release: String,
    success: bool,
    failures: Vec<String>,
    hooks: BTreeMap<(String, String), String>,
    cases: Vec<String>,
    boot_s: f64,
    total_s: f64,
}

fn boot(label: &str, k: &Kernel, initrd: &Path, log: &Path) -> Result<VmOutcome> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "1G", "-smp", "1", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4 rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("vm-test: [{label}] booting {} under TCG", k.package);
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    read_lines(stdout, move |line| {
        let _ = tx.send(line);
    });
    read_lines(stderr, move |line| {
        let _ = tx2.send(format!("qemu: {line}"));
    });
    let mut logf = fs::File::create(log)?;
    let mut out = VmOutcome {
        release: String::new(),
        success: false,
        failures: Vec::new(),
        hooks: BTreeMap::new(),
        cases: Vec::new(),
        boot_s: 0.0,
        total_s: 0.0,
    };
    let mut done = false;
    let deadline = started + BOOT_TIMEOUT;
    while Instant::now() < deadline {
        let line = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(l) => l.trim_end_matches('\r').to_string(),
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let _ = writeln!(logf, "{line}");
        let Some(at) = line.find("VM-") else { continue };
        let msg = &line[at..];
        println!("vm-test: [{label}] {msg}");
        let words: Vec<&str> = msg.split_whitespace().collect();
        match words.first().copied() {
            Some("VM-KERNEL") => out.release = words.get(1).unwrap_or(&"?").to_string(),
            Some("VM-HOOK") if words.len() >= 4 => {
                out.hooks.insert((words[1].to_string(), words[2].to_string()), words[3..].join(" "));
            }
            Some("VM-STEP") if msg.contains("tracer ready") && out.boot_s == 0.0 => out.boot_s = started.elapsed().as_secs_f64(),
            Some("VM-CASE") => out.cases.push(msg.trim_start_matches("VM-CASE ").to_string()),
            Some("VM-DETAIL") => out.cases.push(msg.trim_start_matches("VM-DETAIL ").to_string()),
            Some("VM-FAIL") => out.failures.push(msg.to_string()),
            Some("VM-NOTE") => out.cases.push(msg.to_string()),
            Some("VM-TEST-SUCCESS") => {
                out.success = true;
                done = true;
            }
            Some("VM-TEST-FAILURE") => done = true,
            _ => {}
        }
        if done {
            break;
        }
    }
    // Power-off follows the marker; give it a moment, then make sure.
    let _ = crate::util::wait_timeout(&mut child, Duration::from_secs(10));
    let _ = child.kill();
    let _ = child.wait();
    out.total_s = started.elapsed().as_secs_f64();
    if !done {
        out.failures.push(format!("no VM-TEST-SUCCESS marker within {} s", BOOT_TIMEOUT.as_secs()));
    }
    if out.release.is_empty() {
        out.release = k.package.clone();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_matrix_is_5_10_6_1_and_6_12() {
        let labels: Vec<&str> = selected_kernels(None).unwrap().iter().map(|k| k.label).collect();
        assert_eq!(labels, ["5.10", "6.1", "6.12"]);
        let labels: Vec<&str> = selected_kernels(Some(" ")).unwrap().iter().map(|k| k.label).collect();
        assert_eq!(labels, ["5.10", "6.1", "6.12"]);
    }

    #[test]
    fn one_vm_per_cpu_unless_told() {
        assert_eq!(vm_parallelism(None, 2), 2);
        assert_eq!(vm_parallelism(Some("3"), 2), 3);
        assert_eq!(vm_parallelism(Some("0"), 2), 2);
        assert_eq!(vm_parallelism(Some("many"), 4), 4);
        assert_eq!(vm_parallelism(None, 0), 1);
    }

    #[test]
    fn picks_kernels_and_rejects_unknown_labels() {
        let labels: Vec<&str> = selected_kernels(Some("5.10")).unwrap().iter().map(|k| k.label).collect();
        assert_eq!(labels, ["5.10"]);
        let labels: Vec<&str> = selected_kernels(Some("6.12, 5.10,6.12")).unwrap().iter().map(|k| k.label).collect();
        assert_eq!(labels, ["6.12", "5.10"]);
        assert!(selected_kernels(Some("5.4")).is_err());
    }

    #[test]
    fn bullseye_sources_list_names_both_suites() {
        let list = sources_list(BULLSEYE);
        assert_eq!(list.lines().count(), 2);
        assert!(list.contains("http://deb.debian.org/debian bullseye main"));
        assert!(list.contains("http://deb.debian.org/debian-security bullseye-security main"));
        assert!(list.lines().all(|l| l.starts_with("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ")));
    }

    #[test]
    fn newest_5_10_package_wins() {
        let mut names = vec!["linux-image-5.10.0-9-cloud-amd64", "linux-image-5.10.0-46-cloud-amd64", "linux-image-5.10.0-44-cloud-amd64"];
        names.sort_by_key(|n| version_key(n));
        assert_eq!(names.last(), Some(&"linux-image-5.10.0-46-cloud-amd64"));
    }
}
