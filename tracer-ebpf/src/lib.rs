#![no_std]
// This lib target exists so the userspace crate can name tracer-ebpf as a build dependency
// (cargo then rebuilds tracer when the kernel programs change). The programs are in main.rs.
