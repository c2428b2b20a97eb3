//! `cargo xtask dist`: what a production host installs, in target/dist/:
//! - `tracer-<version>-x86_64-linux-musl`: tracer built for musl, statically linked, with the
//!   kernel programs embedded: one file that runs without the host's libc;
//! - `tracer_<version>_amd64.deb` (`dpkg-deb --build` of a staged tree): that binary as
//!   /usr/bin/tracer, its man pages (clap_mangen) and bash, zsh and fish completions
//!   (clap_complete), both written by the binary itself, the systemd unit
//!   deploy/systemd/tracer.service and the Prometheus rules deploy/prometheus/tracer-rules.yml
//!   as an example.
//!
//! `check` is what `cargo xtask test` runs on them: the package's contents, the binary alone in
//! an empty chroot, `systemd-analyze verify` and `security` of the unit as installed,
//! `promtool check rules` and `promtool test rules`, and a metrics address in use.
use std::{
    fs,
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};

use crate::{
    setup::{setup, MUSL_TARGET},
    util::{cargo, root, run, show, target_dir},
};

/// tracer's version (the workspace's, which xtask shares).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `dist` wrote.
pub struct Artefacts {
    pub binary: PathBuf,
    pub deb: PathBuf,
}

/// Where each file of the package comes from, and its mode. The paths are those of Debian 12
/// (units under /lib, which dpkg still spells so on a merged /usr).
const UNIT: &str = "lib/systemd/system/tracer.service";
const RULES_EXAMPLE: &str = "usr/share/doc/tracer/examples/tracer-rules.yml";
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "usr/share/bash-completion/completions/tracer"),
    ("zsh", "usr/share/zsh/vendor-completions/_tracer"),
    ("fish", "usr/share/fish/vendor_completions.d/tracer.fish"),
];
const MAN_DIR: &str = "usr/share/man/man1";

/// The static release build (after setup). Cargo rebuilds nothing when it is fresh, so the
/// kernel matrix and `dist` share one build.
pub fn static_binary() -> Result<PathBuf> {
    setup()?;
    let mut cmd = cargo();
    cmd.args(["build", "--release", "-p", "tracer", "--target", MUSL_TARGET])
        // A leftover AYA_BUILD_SKIP=1 would embed an empty eBPF object.
        .env_remove("AYA_BUILD_SKIP");
    run(&mut cmd)?;
    let bin = target_dir().join(MUSL_TARGET).join("release").join("tracer");
    ensure!(bin.exists(), "the build finished but {} is missing", bin.display());
    Ok(bin)
}

pub fn dist() -> Result<Artefacts> {
    let built = static_binary()?;
    let dir = target_dir().join("dist");
    // Only this build's artefacts: an older version's files would be shipped by mistake.
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    let binary = dir.join(format!("tracer-{VERSION}-x86_64-linux-musl"));
    fs::copy(&built, &binary)?;
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755))?;
    println!("dist: {}", binary.display());

    let stage = target_dir().join("dist-stage").join(format!("tracer_{VERSION}_amd64"));
    stage_package(&stage, &binary)?;
    let deb = dir.join(format!("tracer_{VERSION}_amd64.deb"));
    run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&stage).arg(&deb))?;
    println!("dist: {}", deb.display());
    Ok(Artefacts { binary, deb })
}

/// The package's tree: files, modes, DEBIAN/control and the maintainer scripts.
fn stage_package(stage: &Path, binary: &Path) -> Result<()> {
    if stage.exists() {
        fs::remove_dir_all(stage)?;
    }
    let put = |rel: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let path = stage.join(rel);
        fs::create_dir_all(path.parent().expect("a file under the stage"))?;
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put("usr/bin/tracer", &fs::read(binary)?, 0o755)?;
    put(UNIT, &fs::read(root().join("deploy/systemd/tracer.service"))?, 0o644)?;
    put(RULES_EXAMPLE, &fs::read(root().join("deploy/prometheus/tracer-rules.yml"))?, 0o644)?;
    put("usr/share/doc/tracer/copyright", COPYRIGHT.as_bytes(), 0o644)?;
    // The binary writes its own completions and man pages: they describe exactly its options.
    for (shell, rel) in COMPLETIONS {
        put(rel, &output_of(Command::new(binary).args(["completions", shell]))?, 0o644)?;
    }
    let man = stage.join(MAN_DIR);
    fs::create_dir_all(&man)?;
    output_of(Command::new(binary).arg("manpages").arg(&man))?;
    for page in fs::read_dir(&man)? {
        let page = page?.path();
        // -n: no name or time stamp in the header, so the same page packs the same.
        run(Command::new("gzip").args(["-9n"]).arg(&page))?;
    }
    let installed_kib = du_kib(stage)?;
    put("DEBIAN/control", control(installed_kib).as_bytes(), 0o644)?;
    put("DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    put("DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    put("DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;
    Ok(())
}

fn control(installed_kib: u64) -> String {
    format!(
        "Package: tracer\n\
         Version: {VERSION}\n\
         Architecture: amd64\n\
         Maintainer: tracer developers <tracer@invalid>\n\
         Installed-Size: {installed_kib}\n\
         Section: admin\n\
         Priority: optional\n\
         Description: explains Nginx 502 and 504 answers from the kernel (eBPF)\n \
         tracer watches the Linux kernel while Nginx connects to its upstreams and says\n \
         why a connection failed: a dead listener, a full accept queue, a firewall drop or\n \
         reject, a killed or resetting upstream, a keep-alive race, a timeout.\n \
         .\n \
         The binary is static (musl) with its kernel programs embedded. tracer.service\n \
         runs `tracer watch --metrics 127.0.0.1:9464`: findings in the journal, metrics\n \
         for Prometheus; example alerting rules are in /usr/share/doc/tracer/examples.\n"
    )
}

const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
Upstream-Name: tracer\n\n\
Files: *\n\
Copyright: the tracer developers\n\
License: MIT or Apache-2.0\n";

// The service is not enabled or started by the installation: `systemctl enable --now tracer`
// is the operator's choice. An upgrade restarts a running tracer on the new binary.
const POSTINST: &str = "#!/bin/sh\nset -e\n\
if [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then\n\
\tsystemctl daemon-reload >/dev/null 2>&1 || true\n\
\tsystemctl try-restart tracer.service >/dev/null 2>&1 || true\n\
fi\n";
const PRERM: &str = "#!/bin/sh\nset -e\n\
if [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then\n\
\tsystemctl disable --now tracer.service >/dev/null 2>&1 || true\n\
fi\n";
const POSTRM: &str = "#!/bin/sh\nset -e\n\
if [ -d /run/systemd/system ]; then\n\
\tsystemctl daemon-reload >/dev/null 2>&1 || true\n\
fi\n";

/// `du -sk` of the tree, what dpkg shows as the installed size.
fn du_kib(dir: &Path) -> Result<u64> {
    let out = output_of(Command::new("du").arg("-sk").arg(dir))?;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("cannot read `du -sk {}`", dir.display()))
}

/// Runs a command (printing it) and returns its stdout; fails, with its stderr, unless it
/// exits 0.
fn output_of(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = checked(cmd)?;
    ensure!(
        out.status.success(),
        "`{}` failed ({}): {}",
        show(cmd).trim_start_matches("$ "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

/// Runs a command (printing it), stdin closed, killed after a minute; returns its output
/// whatever its exit status.
fn checked(cmd: &mut Command) -> Result<Output> {
    eprintln!("{}", show(cmd));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", show(cmd).trim_start_matches("$ ")))?;
    let stdout = xtask::kit::read_to_end(child.stdout.take().expect("piped"));
    let stderr = xtask::kit::read_to_end(child.stderr.take().expect("piped"));
    let Some(status) = xtask::kit::wait_timeout(&mut child, Duration::from_secs(60)) else {
        xtask::kit::kill_and_reap(&mut child);
        bail!("`{}` did not finish within 60 s", show(cmd).trim_start_matches("$ "));
    };
    Ok(Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() })
}

// ---------------------------------------------------------------------------------------
// The checks `cargo xtask test` runs on the artefacts
// ---------------------------------------------------------------------------------------

/// Every check, each printing `dist check: <what> ok`; the first failure ends them with the
/// reason.
pub fn check(a: &Artefacts) -> Result<()> {
    let scratch = target_dir().join("dist-check");
    if scratch.exists() {
        fs::remove_dir_all(&scratch)?;
    }
    fs::create_dir_all(&scratch)?;
    check_package_contents(&a.deb)?;
    check_alone_in_a_chroot(&a.binary, &scratch.join("chroot"))?;
    let installed = scratch.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&a.deb).arg(&installed))?;
    check_unit(&installed)?;
    check_docs(&installed)?;
    check_rules(&installed)?;
    check_address_in_use(&a.binary)?;
    fs::remove_dir_all(&scratch)?;
    Ok(())
}

/// The files a production host gets, with their owners and modes (`dpkg-deb -c`), and the
/// control fields (`dpkg-deb -f`).
fn check_package_contents(deb: &Path) -> Result<()> {
    let listing = String::from_utf8(output_of(Command::new("dpkg-deb").arg("-c").arg(deb))?)?;
    println!("{listing}");
    let mut wanted: Vec<(String, &str)> = vec![
        ("./usr/bin/tracer".into(), "-rwxr-xr-x"),
        (format!("./{UNIT}"), "-rw-r--r--"),
        (format!("./{RULES_EXAMPLE}"), "-rw-r--r--"),
        ("./usr/share/doc/tracer/copyright".into(), "-rw-r--r--"),
    ];
    wanted.extend(COMPLETIONS.iter().map(|(_, rel)| (format!("./{rel}"), "-rw-r--r--")));
    for page in ["tracer", "tracer-diagnose", "tracer-watch", "tracer-top", "tracer-doctor"] {
        wanted.push((format!("./{MAN_DIR}/{page}.1.gz"), "-rw-r--r--"));
    }
    for (path, mode) in &wanted {
        let line = listing
            .lines()
            .find(|l| l.split_whitespace().nth(5) == Some(path.as_str()))
            .with_context(|| format!("the package has no {path}"))?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        ensure!(fields[0] == *mode && fields[1] == "root/root", "{path}: {} {} (want {mode} root/root)", fields[0], fields[1]);
    }
    // Nothing outside the paths a Debian package may own.
    for l in listing.lines() {
        let path = l.split_whitespace().nth(5).unwrap_or("");
        let allowed = matches!(path, "./" | "./lib/") || path.starts_with("./usr/") || path.starts_with("./lib/systemd/");
        ensure!(allowed, "unexpected path in the package: {path}");
    }
    let field = |name: &str| -> Result<String> {
        Ok(String::from_utf8(output_of(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))?)?.trim().to_string())
    };
    ensure!(field("Package")? == "tracer", "Package: {}", field("Package")?);
    ensure!(field("Version")? == VERSION, "Version: {} (want {VERSION})", field("Version")?);
    ensure!(field("Architecture")? == "amd64", "Architecture: {}", field("Architecture")?);
    // A static binary needs no library package.
    ensure!(field("Depends")?.is_empty(), "Depends: {}", field("Depends")?);
    println!("dist check: package contents (dpkg-deb -c, -f) ok");
    Ok(())
}

/// The binary with nothing else: a chroot holding only that file. `--version` names the
/// version and this checkout's commit; `doctor` runs (it may fail for lack of /proc and /sys,
/// but with its own one-line error: a dynamic binary would not start at all).
fn check_alone_in_a_chroot(binary: &Path, chroot: &Path) -> Result<()> {
    fs::create_dir_all(chroot)?;
    fs::copy(binary, chroot.join("tracer"))?;
    let entries: Vec<_> = fs::read_dir(chroot)?.collect::<Result<_, _>>()?;
    ensure!(entries.len() == 1, "the chroot holds more than the binary");

    let out = checked(Command::new("chroot").arg(chroot).args(["/tracer", "--version"]))?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        out.status.success(),
        "`tracer --version` alone in a chroot failed ({}): {}{}",
        out.status,
        said,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let commit = String::from_utf8(output_of(Command::new("git").arg("-C").arg(root()).args(["rev-parse", "--short=12", "HEAD"]))?)?;
    let want = format!("tracer {VERSION} (git {})", commit.trim());
    ensure!(said == want, "`tracer --version` said {said:?}, want {want:?}");
    println!("dist check: `tracer --version` alone in an empty chroot: {said}");

    let out = checked(Command::new("chroot").arg(chroot).args(["/tracer", "doctor"]))?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // 126/127: chroot could not execute it (no loader, wrong format).
    let code = out.status.code();
    ensure!(
        code.is_some() && !matches!(code, Some(126) | Some(127)),
        "`tracer doctor` alone in a chroot did not run ({}): {stdout}{stderr}",
        out.status
    );
    ensure!(!stderr.contains("panicked"), "`tracer doctor` panicked in the chroot: {stderr}");
    // Without /proc and /sys it says so in its own words: its report ending in "tracer cannot
    // run here:" and the reasons, or a one-line error.
    let reason = if out.status.success() {
        "runs".to_string()
    } else if let Some(at) = stdout.find("tracer cannot run here:") {
        stdout[at..].lines().nth(1).unwrap_or("").trim().to_string()
    } else {
        let line = stderr.trim();
        ensure!(
            line.starts_with("tracer: ") && line.lines().count() == 1,
            "`tracer doctor` in a chroot without /proc and /sys must fail in its own words, got ({}): {stdout}{stderr}",
            out.status
        );
        line.to_string()
    };
    println!("dist check: `tracer doctor` alone in an empty chroot ran ({}): {reason}", out.status);
    Ok(())
}

/// `systemd-analyze verify` of the unit as the package installs it (`verify_unit`), then
/// `systemd-analyze security`: the hardening keeps the exposure at most 5.0.
fn check_unit(installed: &Path) -> Result<()> {
    verify_unit(installed)?;
    println!("dist check: systemd-analyze verify tracer.service ok");
    let out = checked(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--threshold=50", "--no-pager"])
            .arg(installed.join(UNIT)),
    )?;
    let said = String::from_utf8_lossy(&out.stdout);
    let overall = said.lines().find(|l| l.contains("Overall exposure level")).unwrap_or("").trim().to_string();
    ensure!(out.status.success(), "systemd-analyze security: exposure above 5.0 ({overall}):\n{said}");
    println!("dist check: systemd-analyze security: {overall}");
    Ok(())
}

/// `systemd-analyze verify tracer.service` under `installed` as root: a tree holding the
/// package's files (so /usr/bin/tracer exists) to which the host's targets are added, with
/// the package's man pages for its `Documentation=`. Any word from it fails (it only warns
/// about a value it cannot parse).
fn verify_unit(installed: &Path) -> Result<()> {
    let units = installed.join(UNIT);
    let units = units.parent().expect("the unit's directory");
    for entry in fs::read_dir("/lib/systemd/system")? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if name.ends_with(".target") || name == "sys-kernel-tracing.mount" {
            fs::copy(&path, units.join(&name))?;
        }
    }
    let out = checked(
        Command::new("systemd-analyze")
            .args(["verify", "--man=yes"])
            .arg(format!("--root={}", installed.display()))
            .arg("tracer.service")
            .env("MANPATH", installed.join("usr/share/man")),
    )?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify tracer.service ({}): {}", out.status, said.trim());
    Ok(())
}

/// The man pages render without a warning (`man --warnings -l`), and the bash completion
/// parses (`bash -n`; zsh and fish are not installed here to check theirs).
fn check_docs(installed: &Path) -> Result<()> {
    let man = installed.join(MAN_DIR);
    let mut pages = 0;
    for page in fs::read_dir(&man)? {
        let page = page?.path();
        let out = checked(Command::new("man").args(["--warnings", "-l"]).arg(&page).env("MANWIDTH", "80"))?;
        let warnings = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.success() && warnings.trim().is_empty(), "man -l {}: {warnings}", page.display());
        ensure!(String::from_utf8_lossy(&out.stdout).contains("tracer"), "{} renders empty", page.display());
        pages += 1;
    }
    output_of(Command::new("bash").arg("-n").arg(installed.join(COMPLETIONS[0].1)))?;
    println!("dist check: {pages} man pages render without warnings, the bash completion parses");
    Ok(())
}

/// `promtool check rules` on the rules as shipped, `promtool test rules` on their unit tests.
fn check_rules(installed: &Path) -> Result<()> {
    let out = output_of(Command::new("promtool").args(["check", "rules"]).arg(installed.join(RULES_EXAMPLE)))?;
    print!("{}", String::from_utf8_lossy(&out));
    let tests = root().join("deploy/prometheus/tracer-rules.test.yml");
    let out = output_of(Command::new("promtool").args(["test", "rules"]).arg(&tests))?;
    print!("{}", String::from_utf8_lossy(&out));
    println!("dist check: promtool check rules, promtool test rules ok");
    Ok(())
}

/// What the unit's journal shows when its metrics address is taken: tracer exits non-zero at
/// once with one line naming the address (before it needs any privilege).
fn check_address_in_use(binary: &Path) -> Result<()> {
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let out = checked(Command::new(binary).args(["watch", "--duration", "30s", "--metrics", &addr]))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "tracer served metrics on an address in use ({addr})");
    ensure!(
        stderr.trim().lines().count() == 1 && stderr.contains(&format!("cannot serve metrics on {addr}")),
        "`tracer watch --metrics {addr}` (in use) must say so in one line, said: {stderr}"
    );
    println!("dist check: metrics address in use: {}", stderr.trim());
    drop(taken);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_file_is_well_formed() {
        let c = control(9000);
        let mut fields = Vec::new();
        for line in c.lines() {
            if let Some(rest) = line.strip_prefix(' ') {
                // A continuation of the description: text, or " ." for an empty line.
                assert!(!rest.trim().is_empty(), "{line:?}");
            } else {
                let (k, v) = line.split_once(": ").unwrap_or_else(|| panic!("not a field: {line:?}"));
                assert!(!v.trim().is_empty(), "{line:?}");
                fields.push(k);
            }
        }
        for required in ["Package", "Version", "Architecture", "Maintainer", "Description", "Installed-Size"] {
            assert!(fields.contains(&required), "{required} missing:\n{c}");
        }
        assert!(c.contains(&format!("Version: {VERSION}\n")) && c.contains("Installed-Size: 9000\n") && c.ends_with('\n'), "{c}");
    }

    /// The shipped unit passes `verify_unit` in a tree like the package's; a value systemd
    /// cannot parse, a missing binary or a missing man page fails it. Skips, saying why,
    /// without systemd-analyze or man.
    #[test]
    fn unit_verification_passes_the_unit_and_fails_broken_ones() {
        for tool in ["systemd-analyze", "man"] {
            if Command::new(tool).arg("--version").output().is_err() {
                println!("skipped: {tool} is not installed (`cargo xtask setup` installs systemd and man-db)");
                return;
            }
        }
        let tree = std::env::temp_dir().join(format!("tracer-unit-{}", std::process::id()));
        let make = |unit: &str, with_binary: bool, with_pages: bool| {
            let _ = fs::remove_dir_all(&tree);
            fs::create_dir_all(tree.join("usr/lib/systemd/system")).unwrap();
            fs::create_dir_all(tree.join("usr/bin")).unwrap();
            fs::create_dir_all(tree.join(MAN_DIR)).unwrap();
            std::os::unix::fs::symlink("usr/lib", tree.join("lib")).unwrap();
            fs::write(tree.join(UNIT), unit).unwrap();
            if with_binary {
                fs::copy("/bin/true", tree.join("usr/bin/tracer")).unwrap();
            }
            if with_pages {
                for page in ["tracer", "tracer-watch"] {
                    fs::write(tree.join(MAN_DIR).join(format!("{page}.1")), format!(".TH {page} 1\n.SH NAME\n{page}\n")).unwrap();
                }
            }
        };
        let unit = fs::read_to_string(root().join("deploy/systemd/tracer.service")).unwrap();
        make(&unit, true, true);
        verify_unit(&tree).unwrap();
        make(&unit.replace("ProtectSystem=strict", "ProtectSystem=everything"), true, true);
        let e = verify_unit(&tree).unwrap_err().to_string();
        assert!(e.contains("ProtectSystem") || e.contains("protect system"), "{e}");
        make(&unit, false, true);
        assert!(verify_unit(&tree).unwrap_err().to_string().contains("/usr/bin/tracer"));
        make(&unit, true, false);
        assert!(verify_unit(&tree).unwrap_err().to_string().contains("man"));
        fs::remove_dir_all(&tree).unwrap();
    }

    /// The maintainer scripts parse (`sh -n`) and never fail the installation on a host
    /// without systemd (each systemctl is guarded and `|| true`).
    #[test]
    fn maintainer_scripts_parse() {
        for script in [POSTINST, PRERM, POSTRM] {
            assert!(script.starts_with("#!/bin/sh\nset -e\n"), "{script}");
            let out = Command::new("sh").args(["-n", "-c", script]).output().expect("sh");
            assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
            for l in script.lines().filter(|l| l.contains("systemctl")) {
                assert!(l.ends_with("|| true"), "{l}");
            }
        }
    }
}
