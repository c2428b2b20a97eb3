//! What the running kernel offers: BTF offsets and enum values, tracefs formats, doctor.
//! Kernel-specific knowledge lives here (no offsets or enum numbers are constants: all are
//! read at start-up from /sys/kernel/btf/vmlinux and the tracefs format files).

pub mod btf;
pub mod doctor;
pub mod facts;
pub mod hooks;
pub mod tracefs;
