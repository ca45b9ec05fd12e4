//! This executable again, as a child process under a hidden subcommand (the upstream, the
//! memory bench's connection sink, the probe bench's workloads): what a bench measures then
//! runs apart from what serves it, so that CPU and memory figures are the measured process's
//! alone.
//!
//! Protocol of a long-lived child ([`SelfChild`]): its first line on stdout says it is ready
//! (and may carry what the parent needs, e.g. an address); it serves until its stdin closes —
//! which happens when the parent exits, however it exits — or until it is killed on drop.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
};

/// The path of this executable.
pub fn this_exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("this executable: {e}"))
}

/// A long-lived child of this executable; killed and reaped on drop.
pub struct SelfChild {
    child: Child,
}

impl SelfChild {
    /// Starts `this-executable ARGS…` (in this thread's network namespace) and waits for its
    /// first line, returned without its line end.
    pub fn start(args: &[&str]) -> Result<(Self, String), String> {
        let what = args.first().copied().unwrap_or("child");
        let mut child = Command::new(this_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the {what}: {e}"))?;
        let stdout = child.stdout.take();
        // Held from here on: a failure below kills and reaps it.
        let this = Self { child };
        let mut first = String::new();
        BufReader::new(stdout.ok_or_else(|| format!("{what}: no stdout"))?)
            .read_line(&mut first)
            .map_err(|e| format!("{what}: reading its first line: {e}"))?;
        Ok((this, first.trim_end().to_owned()))
    }
}

impl Drop for SelfChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
