//! The one way NetScope's kernel object is built. `cargo xtask build-ebpf` and the agent's
//! `build.rs` both call [`build_ebpf`], with the same toolchain, flags and target directory, so
//! they produce (and share) the same object.

use std::{
    env, fmt, fs,
    path::{Path, PathBuf},
    process::Command,
};

/// Name of the kernel crate's binary (the object file's name) that the agent embeds.
pub const EBPF_BIN: &str = "netscope";
/// The empty programs that only `bench probe` loads, in an object of their own.
pub const EBPF_BASELINE_BIN: &str = "netscope-baseline";
/// The kernel target (this project supports little-endian hosts).
pub const EBPF_TARGET: &str = "bpfel-unknown-none";

#[derive(Debug)]
pub enum BuildError {
    Toolchain(String),
    Spawn(String, std::io::Error),
    Failed(String),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Toolchain(m) => write!(f, "{m}"),
            Self::Spawn(cmd, e) => write!(f, "cannot run `{cmd}`: {e} (run ./xtask.sh setup)"),
            Self::Failed(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for BuildError {}

/// The nightly pinned in `netscope-ebpf/rust-toolchain.toml`.
pub fn ebpf_toolchain(workspace: &Path) -> Result<String, BuildError> {
    let file = workspace.join("netscope-ebpf/rust-toolchain.toml");
    let text = fs::read_to_string(&file)
        .map_err(|e| BuildError::Toolchain(format!("cannot read {}: {e}", file.display())))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .next()
        .ok_or_else(|| BuildError::Toolchain(format!("no `channel` in {}", file.display())))
}

/// The kernel crate's two objects, as built.
#[derive(Clone, Debug)]
pub struct EbpfObjects {
    /// NetScope's programs: what the agent embeds and the DaemonSet runs.
    pub netscope: PathBuf,
    /// The empty baseline programs of `bench probe`.
    pub baseline: PathBuf,
}

impl EbpfObjects {
    /// Where the objects land for a given workspace.
    pub fn in_workspace(workspace: &Path) -> Self {
        let dir = workspace
            .join("target/ebpf")
            .join(EBPF_TARGET)
            .join("release");
        Self {
            netscope: dir.join(EBPF_BIN),
            baseline: dir.join(EBPF_BASELINE_BIN),
        }
    }
}

fn rustup() -> PathBuf {
    let from_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|h| h.join("bin/rustup"));
    match from_home {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("rustup"),
    }
}

/// Builds the kernel object (release, BTF, `-Z build-std=core`) into `target/ebpf` with the
/// pinned nightly and returns its path. Incremental: a no-op build takes about a second.
pub fn build_ebpf(workspace: &Path) -> Result<EbpfObjects, BuildError> {
    let toolchain = ebpf_toolchain(workspace)?;
    let mut cmd = Command::new(rustup());
    cmd.args(["run", &toolchain, "cargo", "build", "--release", "--bins"])
        .args(["--package", "netscope-ebpf", "--target", EBPF_TARGET])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(workspace.join("target/ebpf"))
        .current_dir(workspace.join("netscope-ebpf"));
    // A build script's environment describes the host build: none of it applies here.
    for key in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO",
    ] {
        cmd.env_remove(key);
    }
    let shown = format!("rustup run {toolchain} cargo build --package netscope-ebpf …");
    let status = cmd
        .status()
        .map_err(|e| BuildError::Spawn(shown.clone(), e))?;
    if !status.success() {
        return Err(BuildError::Failed(format!(
            "`{shown}` failed ({status}); is bpf-linker installed? run ./xtask.sh setup"
        )));
    }
    let objects = EbpfObjects::in_workspace(workspace);
    for object in [&objects.netscope, &objects.baseline] {
        if !object.exists() {
            return Err(BuildError::Failed(format!(
                "the build succeeded but {} is missing",
                object.display()
            )));
        }
    }
    Ok(objects)
}
