//! The command line: what each command takes, and the one-line refusals of values that
//! cannot name anything (parsed by clap in main.rs, run by `run`).

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::{capture, metrics};

/// `tracer --version`: the package version and the git commit it was built from (tracer/build.rs).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("TRACER_GIT_COMMIT"), ")");

#[derive(Parser)]
#[command(name = "tracer", version = VERSION, about = "Explains, from inside the kernel, why Nginx answers 502 Bad Gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Trace for a while (or until Ctrl-C), then print one finding per cause and upstream.
    Diagnose(TraceArgs),
    /// Print each failed upstream connection as it happens, and findings as they open or change.
    Watch(WatchArgs),
    /// A live terminal view: one row per upstream target, refreshed every second (s: sort, q: quit).
    Top(TraceArgs),
    /// Show what this kernel offers and what tracer will therefore see; attaches nothing.
    Doctor,
    /// Print the shell completion script for SHELL (bash, zsh or fish) on stdout.
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Write the man pages (tracer.1, tracer-watch.1, ...) into the existing directory DIR.
    Manpages {
        dir: std::path::PathBuf,
    },
}

/// The shells the Debian package ships completions for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// `tracer completions SHELL`: the script clap_complete writes from these definitions.
pub fn completions(shell: CompletionShell) -> Vec<u8> {
    use clap::CommandFactory;
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    // Into memory first: clap_complete panics when its writer fails (stdout closed).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tracer", &mut script);
    script
}

/// `tracer manpages DIR`: tracer(1) and a page per command, in roff (clap_mangen).
pub fn write_manpages(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use clap::CommandFactory;
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory: give an existing directory to write the man pages into", dir.display());
    }
    clap_mangen::generate_to(Cli::command(), dir).with_context(|| format!("cannot write the man pages into {}", dir.display()))
}

#[derive(Args, Clone)]
pub struct TraceArgs {
    /// Where `watch --metrics` serves (set from `WatchArgs`; not a flag of every command).
    #[arg(skip)]
    pub metrics: Option<std::net::SocketAddr>,
    /// How long to trace (e.g. 30s, 2m, 500ms); default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only upstream TCP targets on this port (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = parse_port)]
    pub ports: Vec<u16>,
    /// Only this Unix socket path (repeatable).
    #[arg(long = "unix", value_name = "PATH", value_parser = parse_unix_path)]
    pub unix_paths: Vec<String>,
    /// Only attempts made by processes with this command name, e.g. nginx (repeatable).
    #[arg(long = "client-comm", value_name = "NAME", value_parser = parse_comm)]
    pub client_comms: Vec<String>,
    /// Print the kernel programs' debug log (aya-log) to stderr.
    #[arg(long)]
    pub debug_kernel: bool,
    /// Nginx error log whose lines written while tracing are matched to the findings
    /// (repeatable; default: the error_log files of every running Nginx's configuration).
    #[arg(long = "nginx-error-log", value_name = "PATH")]
    pub nginx_error_logs: Vec<std::path::PathBuf>,
    /// Only findings in this network namespace (its inode, as `readlink /proc/PID/ns/net` shows).
    #[arg(long, value_name = "INODE")]
    pub netns: Option<u32>,
    /// Only findings whose client or listener cgroup path contains TEXT (a container id, a unit).
    #[arg(long, value_name = "TEXT", value_parser = parse_cgroup)]
    pub cgroup: Option<String>,
    /// `auto`: function hooks (fentry, else kprobe) where the kernel allows, tracepoints for
    /// the rest; `kprobes`: the same without trying fentry; `tracepoints`: tracepoints only.
    /// Default: $TRACER_BACKEND, else auto.
    #[arg(long, value_parser = capture::fhooks::BackendChoice::parse)]
    pub backend: Option<capture::fhooks::BackendChoice>,
    /// How sock:inet_sock_set_state is hooked: `auto` (the best this kernel takes: tp_btf, else
    /// raw_tp, else tracepoint), or that kind or an error (`tracer doctor` says which fit).
    #[arg(long, value_name = "KIND", value_parser = crate::kernel::hooks::SetStateVia::parse)]
    pub set_state_hook: Option<crate::kernel::hooks::SetStateChoice>,
    /// Name every hook on the `tracing:` line (default: counts per kind).
    #[arg(long)]
    pub verbose: bool,
    /// Send every refused connect from the kernel as an event of its own (`watch --json`: one
    /// attempt line each). By default the identical ones after the first in each second (same
    /// client process, target, namespace and proof) are counted in the kernel and reported as
    /// one attempt line with their `count`; the findings' counts are the same either way.
    #[arg(long)]
    pub each_attempt: bool,
    /// Name the exact rule of each firewall drop with nftables tracing. CHANGES THE RULESET:
    /// adds table `inet tracer_trace` (`meta nftrace set 1` for the SYNs to the traced ports)
    /// to every network namespace (only `--netns`'s when given) and removes it when tracer
    /// ends (a table left by a killed
    /// tracer is removed at the next start). Off by default: without it the rule is found by
    /// reading the ruleset, and undecidable matches give candidates.
    #[arg(long)]
    pub trace_rules: bool,
}

#[derive(Args, Clone)]
pub struct WatchArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics (127.0.0.1:9464 when ADDR is not given).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = metrics::DEFAULT_ADDR, value_parser = metrics::parse_addr)]
    pub metrics: Option<std::net::SocketAddr>,
}

/// `30s`, `2m`, `500ms`, `1h` (humantime's units), or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let parsed = match s.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(s),
    };
    let d = parsed.map_err(|e| format!("'{s}' is not a duration (use e.g. 30s, 2m, 500ms): {e}"))?;
    if d.is_zero() || d >= Duration::from_secs(365 * 86400) {
        return Err(format!("'{s}' must be a positive duration"));
    }
    Ok(d)
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("'{s}' is not a TCP port (1-65535)")),
        Ok(p) => Ok(p),
    }
}

fn parse_unix_path(s: &str) -> Result<String, String> {
    let p = s.strip_prefix("unix:").unwrap_or(s);
    if p.is_empty() {
        return Err("an empty Unix socket path names nothing".into());
    }
    if p.len() > 107 {
        return Err(format!("{p:?} is longer than a Unix socket path can be (107 bytes)"));
    }
    // Nginx and every other client connect to absolute paths (or abstract names): a relative
    // path would be compared with absolute ones and match nothing, a false all-clear.
    if !p.starts_with('/') && !p.starts_with('@') {
        return Err(format!(
            "{p:?} is not an absolute Unix socket path (give it as nginx names it, e.g. /run/gunicorn.sock, or @name for an abstract socket)"
        ));
    }
    Ok(p.to_string())
}

fn parse_cgroup(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("an empty cgroup filter matches nothing".into());
    }
    Ok(s.to_string())
}

fn parse_comm(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("an empty command name matches nothing".into());
    }
    // The kernel keeps 15 bytes of a command name.
    Ok(s.chars().take(15).collect())
}

/// `tracer diagnose ARGV...` parsed (tests).
#[cfg(test)]
pub(crate) fn diagnose_args(argv: &[&str]) -> Result<TraceArgs, clap::Error> {
    let mut all = vec!["tracer", "diagnose"];
    all.extend_from_slice(argv);
    Cli::try_parse_from(all).map(|cli| match cli.command {
        Command::Diagnose(args) => args,
        _ => unreachable!("parsed as diagnose"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_usual_units_and_refuse_the_rest_in_one_line() {
        for (text, expected) in [("30s", 30_000), ("2m", 120_000), ("500ms", 500), ("1h", 3_600_000), ("45", 45_000)] {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(expected)), "{text}");
        }
        for bad in ["nonsense", "0s", "30x", "", "400days"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.starts_with(&format!("'{bad}' ")) && !e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn unix_paths_must_be_absolute_or_abstract() {
        assert_eq!(parse_unix_path("/run/gunicorn.sock").unwrap(), "/run/gunicorn.sock");
        assert_eq!(parse_unix_path("unix:/run/g.sock").unwrap(), "/run/g.sock");
        assert_eq!(parse_unix_path("@abstract").unwrap(), "@abstract");
        for relative in ["relative/path", "g.sock", "./g.sock", "unix:run/g.sock"] {
            let e = parse_unix_path(relative).unwrap_err();
            assert!(e.contains("not an absolute Unix socket path") && !e.contains('\n'), "{relative}: {e}");
        }
        // At argument parsing: a usage error (exit 2 in main).
        let e = diagnose_args(&["--unix", "relative/path"]).err().expect("refused");
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        // Escaped, one line, whatever the path holds.
        let e = parse_unix_path("a\nFIREWALL DROP\x1b[2J").unwrap_err();
        assert!(!e.contains('\n') && !e.contains('\x1b'), "{e}");
    }

    #[test]
    fn version_names_the_package_version_and_the_commit() {
        assert!(VERSION.starts_with(&format!("{} (git ", env!("CARGO_PKG_VERSION"))) && VERSION.ends_with(')'), "{VERSION}");
        let commit = &VERSION[VERSION.find("(git ").unwrap() + 5..VERSION.len() - 1];
        assert!(commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())), "{VERSION}");
        let e = Cli::try_parse_from(["tracer", "--version"]).err().expect("--version stops parsing");
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
        assert_eq!(e.render().to_string().trim(), format!("tracer {VERSION}"));
    }

    #[test]
    fn completions_cover_every_command_in_each_shell() {
        for (shell, marker) in [(CompletionShell::Bash, "complete -F"), (CompletionShell::Zsh, "#compdef tracer"), (CompletionShell::Fish, "complete -c tracer")] {
            let script = String::from_utf8(completions(shell)).unwrap();
            assert!(script.contains(marker), "{shell:?}:\n{script}");
            for word in ["diagnose", "watch", "top", "doctor", "metrics", "nginx-error-log"] {
                assert!(script.contains(word), "{shell:?} lacks {word}");
            }
        }
        assert!(Cli::try_parse_from(["tracer", "completions", "powershell"]).is_err());
    }

    #[test]
    fn man_pages_are_written_per_command_or_refused_in_one_line() {
        let dir = std::env::temp_dir().join(format!("tracer-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_manpages(&dir).unwrap();
        let mut pages: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        pages.sort();
        assert_eq!(pages, ["tracer-completions.1", "tracer-diagnose.1", "tracer-doctor.1", "tracer-manpages.1", "tracer-top.1", "tracer-watch.1", "tracer.1"]);
        let main = std::fs::read_to_string(dir.join("tracer.1")).unwrap();
        assert!(main.starts_with(".ie \\n(.g .ds Aq \\(aq") || main.contains(".TH tracer 1"), "{main}");
        assert!(main.contains(VERSION), "the page names the version:\n{main}");
        let watch = std::fs::read_to_string(dir.join("tracer-watch.1")).unwrap();
        assert!(watch.contains("metrics"), "{watch}");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = write_manpages(std::path::Path::new("/nonexistent/man")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/man is not a directory") && !e.contains('\n'), "{e}");
    }

}
