//! What the demo (`cargo xtask demo`), the bench (`cargo xtask bench`) and tracer's
//! integration tests (tracer/tests/common) set up alike, written once so that the three
//! clean up the same way:
//! - `process`: a service started in a process group of its own and the guard that stops
//!   that group (`ProcessGroup`), the threads that read a child's output (`read_lines`,
//!   `collect_lines`, `read_to_end`), and bounded waits for a child (to exit, or to say it
//!   is ready: `ReadyLine`, `wait_ready`);
//! - `netns`: the network-namespace guard (created fresh, deleted with everything inside it
//!   on drop) and the bounded wait for a listener inside it;
//! - `nginx_conf`: the Nginx configuration they run.
//!
//! Every wait here has a deadline; the callers decide what a timeout means (an error for
//! xtask, a panic for a test) and how a wait is interrupted (Ctrl-C for xtask).
mod netns;
mod nginx_conf;
mod process;

pub use netns::{ListenWait, Listener, Netns};
pub use nginx_conf::NginxConf;
pub use process::{
    children_of, collect_lines, kill_and_reap, read_lines, read_to_end, spawn_group_logged, stop_group, wait_ready,
    wait_timeout, wait_timeout_polling, ProcessGroup, ReadyLine, ReadyWait, SharedLines,
};
