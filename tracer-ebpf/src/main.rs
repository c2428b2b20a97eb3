//! tracer's kernel programs: classic tracepoints only (they load on every kernel we target,
//! including ones without kprobes or BPF trampolines).
//!
//! Every kernel-specific number (tracepoint field offsets, struct member offsets, enum values)
//! arrives from userspace in the `CONFIG` map, read from tracefs formats and BTF at start-up.
//! Programs are tiny and filter early: most of what they see is not a failed upstream
//! connection, and they return before doing any work for it.
#![no_std]
#![no_main]

mod attempts;
mod maps;
mod packet;
mod probes;
mod read;
mod repeats;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
