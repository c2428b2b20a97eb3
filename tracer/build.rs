//! Builds the kernel programs (crate tracer-ebpf, nightly, bpfel-unknown-none) with aya-build
//! and leaves the object in OUT_DIR/tracer, where main.rs embeds it.
//!
//! With AYA_BUILD_SKIP=1 the eBPF build is skipped (for quick userspace-only unit test runs)
//! and an empty object is written instead; the loader then refuses to run with a clear error.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let skip = env::var("AYA_BUILD_SKIP").map(|v| v == "1" || v.eq_ignore_ascii_case("true")).unwrap_or(false);
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        fs::write(out_dir.join("tracer"), [])?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.parent().expect("workspace root").join("tracer-ebpf");
    let ebpf_dir = ebpf_dir.to_str().expect("utf-8 path");
    aya_build::build_ebpf(
        [aya_build::Package { name: "tracer-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
