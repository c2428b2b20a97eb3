//! The `tracer` command: parses the command line and hands each command to the library.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use tracer::cli::{Cli, Command, TraceArgs};
use tracer::note;
use tracer::run::{run_trace, stdout::stdout_gone, Mode};
use tracer::{kernel, top};

/// The static build's allocator (see tracer/Cargo.toml: musl's malloc is slow under tracer's
/// event load).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand { ExitCode::from(2) } else { ExitCode::SUCCESS };
            }
            // One line: what is wrong; the usage is one `--help` away.
            let rendered = e.render().to_string();
            let first = rendered.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
            note!("tracer: {} (see `tracer --help`)", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).format_timestamp(None).init();

    let result = match cli.command {
        Command::Doctor => doctor(),
        Command::Diagnose(args) => run_trace(args, Mode::Diagnose),
        Command::Watch(w) => run_trace(TraceArgs { metrics: w.metrics, ..w.trace }, Mode::Watch),
        Command::Top(args) => top::preflight(args.json).and_then(|()| run_trace(args, Mode::Top)),
        Command::Completions { shell } => {
            use std::io::Write as _;
            std::io::stdout().lock().write_all(&tracer::cli::completions(shell)).map(|()| ExitCode::SUCCESS).map_err(Into::into)
        }
        Command::Manpages { dir } => tracer::cli::write_manpages(&dir).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        // `tracer ... | head -1`: the reader took what it wanted. Everything is detached by
        // now (the capture is dropped on the way out); end quietly with the status a shell
        // gives `cat` killed by SIGPIPE (128 + 13).
        Err(_) if stdout_gone() => ExitCode::from(141),
        Err(e) => {
            note!("tracer: error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn doctor() -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let ok = kernel::doctor::doctor_report(&mut out, &tracer::capture::probe_function_hooks)?;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
