//! The kernel programs' diagnostics in the agent's logs. The programs write aya-log records
//! into the `AYA_LOGS` ring only on their rare error paths — the first read failure, missing
//! load-time offset, full ring or full socket table on each CPU (later ones are only counted);
//! a thread of the agent (`kernel-log`) waits on that ring and hands each record to the `log`
//! facade, which the JSON subscriber prints like any other line (`log.target` is the kernel
//! module that wrote it, e.g. `netscope::probes`). Nothing of this runs on the programs'
//! success paths.

use std::{
    os::fd::AsRawFd as _,
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use aya::Ebpf;
use aya_log::EbpfLogger;

/// How long the thread sleeps between looks at `stop` when no record arrives.
const POLL_MS: i32 = 250;

/// Forwards the kernel's log records until dropped.
pub struct KernelLog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KernelLog {
    /// Takes the programs' log ring out of `ebpf` and starts forwarding it. `None` (said in a
    /// warning) when the object has no log ring — an object built without aya-log (`--object`
    /// from an older build).
    pub fn start(ebpf: &mut Ebpf) -> Option<Self> {
        let mut logger = match EbpfLogger::init(ebpf) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "the kernel programs' log ring is unavailable: their diagnostics are only counted");
                return None;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("kernel-log".into())
            .spawn(move || {
                let fd = logger.as_raw_fd();
                while !stopping.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd, the ring's descriptor, alive with `logger`.
                    unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
                    // aya-log unwraps a record it cannot decode: that ends the forwarding, not
                    // the agent.
                    if std::panic::catch_unwind(AssertUnwindSafe(|| logger.flush())).is_err() {
                        tracing::error!(
                            "a kernel log record could not be decoded: kernel diagnostics are only counted from now on"
                        );
                        return;
                    }
                }
                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| logger.flush()));
            })
            .ok()?;
        Some(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for KernelLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
