//! What the kernel-matrix test reads from tracer: the `hooks` of the summary line of
//! `tracer diagnose --json` (the hooks that attached), shared by the host side (vm.rs) and
//! the VM's /init (bin/vm-init.rs).

use serde_json::Value;

/// The kernel functions tracer hooks when it can (tracer's hook registry, kernel/hooks.rs).
pub const HOOKED: [&str; 5] = ["tcp_connect", "inet_csk_accept", "tcp_conn_request", "unix_stream_connect", "unix_find_other"];

/// The `hooks` list of the summary among `tracer diagnose --json`'s output lines.
pub fn summary_hooks(objects: &[Value]) -> Option<Vec<String>> {
    let summary = objects.iter().find(|v| v["type"] == "summary")?;
    Some(summary["hooks"].as_array()?.iter().filter_map(|h| h.as_str().map(String::from)).collect())
}

/// What served `function`: `fentry:tcp_connect`, `kprobe+kretprobe:inet_csk_accept`, or
/// `none -> tracepoints`.
pub fn hook_of(summary_hooks: &[String], function: &str) -> String {
    summary_hooks
        .iter()
        .find(|h| h.ends_with(&format!(":{function}")) && !h.starts_with("syscalls"))
        .cloned()
        .unwrap_or_else(|| "none -> tracepoints".to_string())
}
