//! Hostile-input suite (issue 10): what a local user or a container can plant (a fake Nginx
//! master, escape sequences in socket paths, symlinks out of a container's root, FIFOs given
//! as logs), what a tired operator can type (filters that name nothing, signals at any time),
//! and what a big incident looks like (hundreds of targets). Each test asserts the corrected
//! behaviour.
//!
//! Runs only with TRACER_INTEGRATION=1 as root (`cargo xtask test` does both), one test at a
//! time; otherwise each privileged test prints `skipped: <reason>` and passes.

#[macro_use]
mod common;

/// Nginx discovery and files: never run a planted binary, never leave a container's root,
/// follow Nginx's own include rules, keep each namespace's Nginx to itself.
#[path = "hostile/nginx.rs"]
mod nginx;
/// Text output: escaped outside strings, fixes that follow the evidence, summary first.
#[path = "hostile/report.rs"]
mod report;
/// Metrics: lint-clean exposition, content negotiation, dual stack, bounded series.
#[path = "hostile/metrics.rs"]
mod metrics;
/// Command line and process life: odd log files, filters that name nothing, signals, pipes.
#[path = "hostile/cli.rs"]
mod cli;
