//! tracer: explains, from inside the kernel, why Nginx answers 502 Bad Gateway.
//!
//! Data flows one way: kernel programs -> `capture` (decode) -> `explain` (pure) -> `report`.
//! `enrich` adds userspace measurements (sock_diag, /proc) to the same event stream; `run`
//! drives it all for one command; `cli` is the command line the binary parses.

/// A line on stderr that never panics: with `2>&1 | head` its reader may be gone, and a
/// warning must not become a crash (`eprintln!` panics when the write fails).
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod capture;
pub mod cli;
pub mod enrich;
pub mod event;
pub mod explain;
pub mod kernel;
pub mod metrics;
pub mod nginx;
pub mod operator;
pub mod report;
pub mod run;
pub mod top;
