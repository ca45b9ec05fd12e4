//! The programmable upstream (`demo::upstream`) in a child process of its own, for the pipeline
//! and API benches: this process's CPU time is then the agent's (or the bare client's) alone,
//! read exactly from the kernel (`getrusage`), and the upstream shares neither the agent's
//! runtime nor its allocator, as on a real node.
//!
//! Protocol ([`SelfChild`]): the child (`netscope-bench upstream`, hidden) prints its address
//! as its first line on stdout, then serves until its stdin closes, so no upstream outlives a
//! bench.

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
};

use netscope_agent::demo::upstream::Upstream;

use crate::child::SelfChild;

/// A running upstream child; killed on drop.
pub struct UpstreamProcess {
    _child: SelfChild,
    pub addr: SocketAddr,
}

impl UpstreamProcess {
    pub fn start() -> Result<Self, String> {
        let (child, first) = SelfChild::start(&["upstream"])?;
        let addr = first
            .parse()
            .map_err(|_| format!("upstream: expected its address, got {first:?}"))?;
        Ok(Self {
            _child: child,
            addr,
        })
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
