//! The programmable upstream (`demo::upstream`) in a child process of its own, for the pipeline
//! and API benches: this process's CPU time is then the agent's (or the bare client's) alone,
//! read exactly from the kernel (`getrusage`), and the upstream shares neither the agent's
//! runtime nor its allocator, as on a real node.
//!
//! Protocol: the child (`netscope-bench upstream`, hidden) prints its address as its first line
//! on stdout, then serves until its stdin closes — which happens when the parent exits, however
//! it exits, so no upstream outlives a bench.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

use netscope_agent::demo::upstream::Upstream;

/// A running upstream child; killed on drop.
pub struct UpstreamProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl UpstreamProcess {
    pub fn start() -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("this executable: {e}"))?;
        let mut child = Command::new(exe)
            .arg("upstream")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the upstream: {e}"))?;
        let mut first = String::new();
        let stdout = child.stdout.take().ok_or("upstream: no stdout")?;
        BufReader::new(stdout)
            .read_line(&mut first)
            .map_err(|e| format!("upstream: reading its address: {e}"))?;
        let addr = first
            .trim()
            .parse()
            .map_err(|_| format!("upstream: expected its address, got {first:?}"))?;
        Ok(Self { child, addr })
    }
}

impl Drop for UpstreamProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child: the upstream on one runtime thread, its address on stdout, until stdin closes.
pub fn upstream_main() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let up = rt
        .block_on(Upstream::start(SocketAddr::from(([127, 0, 0, 1], 0))))
        .map_err(|e| e.to_string())?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", up.addr).map_err(|e| e.to_string())?;
    stdout.flush().map_err(|e| e.to_string())?;
    // Serve until the parent is gone (EOF, or an error reading, on stdin).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(up);
    Ok(())
}
