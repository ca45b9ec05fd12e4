//! Hands `bench probe` the path of the empty baseline object (NETSCOPE_EBPF_BASELINE_OBJECT),
//! which the agent's build script builds beside NetScope's: the bench loads it from there, and
//! no binary embeds it. Set NETSCOPE_EBPF_BASELINE_OBJECT to use a prebuilt one.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=NETSCOPE_EBPF_BASELINE_OBJECT");
    let baseline = env::var("NETSCOPE_EBPF_BASELINE_OBJECT").unwrap_or_else(|_| {
        let workspace = env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .and_then(|p| p.parent().map(PathBuf::from))
            .unwrap_or_default();
        xtask::EbpfObjects::in_workspace(&workspace)
            .baseline
            .display()
            .to_string()
    });
    println!("cargo:rustc-env=NETSCOPE_EBPF_BASELINE_OBJECT={baseline}");
}
