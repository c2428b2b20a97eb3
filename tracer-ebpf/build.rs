use which::which;

/// Rebuild the eBPF object when bpf-linker changes (it is found on PATH by rustc's bpf target).
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
