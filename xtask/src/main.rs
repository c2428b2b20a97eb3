//! Orchestration for tracer (aya style): `cargo xtask <setup|build|run|test|demo>`.
//! Every subcommand first installs what is missing on a fresh Debian 12 machine (`setup`).
mod bench;
mod cmd_build;
mod demo;
mod dist;
mod interrupt;
mod setup;
mod test;
mod util;
mod vm;

use std::os::unix::process::CommandExt;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set up, build, run, test and demo tracer"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what tracer needs (apt packages, nightly + rust-src, bpf-linker, tracefs), skipping what is present.
    Setup,
    /// Setup, then build tracer (release by default; its build.rs builds the eBPF programs).
    Build {
        /// Release build (the default).
        #[arg(long, conflicts_with = "debug")]
        release: bool,
        /// Debug build instead.
        #[arg(long)]
        debug: bool,
    },
    /// Setup, build (release) and run `target/release/tracer ARGS`; with no ARGS, the demo.
    Run {
        /// Arguments for tracer, after `--` (e.g. `-- diagnose --duration 30s`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, unit tests, the privileged suites, the dist artefacts and their checks, the kernel matrix.
    Test,
    /// Setup, then write target/dist/: the static (musl) binary and the Debian package
    /// (binary, man pages, completions, tracer.service, example Prometheus rules).
    Dist {
        /// Then check them as `cargo xtask test` does (package contents, the binary alone in a
        /// chroot, systemd-analyze, promtool).
        #[arg(long)]
        check: bool,
    },
    /// The kernel matrix: Debian 6.1 and 6.12 kernels under QEMU (TCG), every cause with function hooks on, then off.
    VmTest,
    /// Benchmark (not a test): overhead A/B against no tracer and bpftrace, failure floods with
    /// exact counts, start/stop, churn; prints a table and writes bench/results/*.json.
    Bench(bench::BenchArgs),
    /// A two-minute live demo: Nginx + Gunicorn in a network namespace, Gunicorn killed, the 502 explained.
    Demo,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Build { release: _, debug } => cmd_build::build(!debug).map(|_| ()),
        Cmd::Run { args } => run(args),
        Cmd::Test => test::test(),
        Cmd::Dist { check } => dist::dist().and_then(|a| if check { dist::check(&a) } else { Ok(()) }),
        Cmd::Demo => demo::demo(),
        Cmd::Bench(args) => bench::bench(args),
        Cmd::VmTest => vm::vm_test(),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        // 128 + SIGINT, as a shell reports a Ctrl-C.
        std::process::exit(if interrupt::interrupted() { 130 } else { 1 });
    }
}

fn run(mut args: Vec<String>) -> Result<()> {
    if args.first().map(String::as_str) == Some("--") {
        args.remove(0);
    }
    if args.is_empty() {
        return demo::demo();
    }
    let bin = cmd_build::build(true)?;
    eprintln!("$ {} {}", bin.display(), args.join(" "));
    // exec: tracer gets the terminal's Ctrl-C itself and its exit code is ours.
    let err = std::process::Command::new(&bin).args(&args).exec();
    Err(err).with_context(|| format!("cannot exec {}", bin.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(argv: &[&str]) -> Vec<String> {
        match Cli::try_parse_from(argv).expect("parses").cmd {
            Cmd::Run { args } => args,
            _ => panic!("not run"),
        }
    }

    #[test]
    fn run_passes_tracer_arguments_through() {
        let a = run_args(&["xtask", "run", "--", "diagnose", "--duration", "30s"]);
        let a: Vec<&str> = a.iter().map(String::as_str).filter(|s| *s != "--").collect();
        assert_eq!(a, ["diagnose", "--duration", "30s"]);
        assert_eq!(run_args(&["xtask", "run", "watch", "--json"]), ["watch", "--json"]);
        assert!(run_args(&["xtask", "run"]).is_empty());
    }

    #[test]
    fn dist_checks_only_when_asked() {
        assert!(matches!(Cli::try_parse_from(["xtask", "dist"]).unwrap().cmd, Cmd::Dist { check: false }));
        assert!(matches!(Cli::try_parse_from(["xtask", "dist", "--check"]).unwrap().cmd, Cmd::Dist { check: true }));
    }

    #[test]
    fn build_flags() {
        assert!(Cli::try_parse_from(["xtask", "build", "--release", "--debug"]).is_err());
        assert!(matches!(
            Cli::try_parse_from(["xtask", "build"]).unwrap().cmd,
            Cmd::Build { debug: false, .. }
        ));
    }
}
