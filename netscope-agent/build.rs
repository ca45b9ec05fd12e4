//! Builds the kernel objects with the same code as `cargo xtask build-ebpf` and hands NetScope's
//! to `include_bytes_aligned!` (the empty baseline, built beside it, is for `netscope-bench`
//! only). Set NETSCOPE_EBPF_OBJECT to embed a prebuilt object instead.

use std::{env, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    println!("cargo:rerun-if-env-changed=NETSCOPE_EBPF_OBJECT");
    if let Ok(object) = env::var("NETSCOPE_EBPF_OBJECT") {
        println!("cargo:rerun-if-changed={object}");
        println!("cargo:rustc-env=NETSCOPE_EBPF_OBJECT={object}");
        return ExitCode::SUCCESS;
    }
    let Some(workspace) = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|p| p.parent().map(PathBuf::from))
    else {
        eprintln!("CARGO_MANIFEST_DIR is not set");
        return ExitCode::FAILURE;
    };
    for input in [
        "netscope-ebpf/src",
        "netscope-ebpf/Cargo.toml",
        "netscope-ebpf/rust-toolchain.toml",
        "netscope-common/src",
        "netscope-common/Cargo.toml",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }
    match xtask::build_ebpf(&workspace) {
        Ok(objects) => {
            let netscope = objects.netscope.display();
            println!("cargo:rustc-env=NETSCOPE_EBPF_OBJECT={netscope}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("building the eBPF object failed: {e}");
            ExitCode::FAILURE
        }
    }
}
