//! `netscope-agent probe --check`: which hook serves each fact on this kernel, or why none can —
//! from tracefs (the tracepoints), kernel BTF (struct offsets), the kernel version (ring buffer,
//! TCX) and this process's capabilities. Nothing is loaded.

use crate::domain::kernel::fact;
pub use crate::domain::kernel::{CheckReport, Fact};

use super::{KernelOffsets, Tracefs, privileges};
use aya::util::KernelVersion;

/// The facts whose hook a loaded probe knows better than a check: kprobes can fail to attach,
/// and `probe` leaves the per-message hooks out unless asked.
pub const BYTES_PER_CALL: &str = "bytes per call";
pub const BYTES_PER_CONNECTION: &str = "bytes per connection";
pub const CONNECT_LATENCY: &str = "connect latency";
/// How a connection's bytes are known without the length tracepoints.
pub const TCP_TOTALS: &str = "tcp_sock counters at close (BTF)";

/// The running kernel's release (`uname -r`), or "unknown".
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Inspects this machine.
pub fn check() -> CheckReport {
    check_with(KernelOffsets::load().ok())
}

/// The report for this machine with kernel BTF offsets already read (`None`: no BTF).
pub fn check_with(offsets: Option<KernelOffsets>) -> CheckReport {
    let version = KernelVersion::current().ok();
    let found = Found::new(Tracefs::locate().ok(), offsets);
    let tc_mode = if super::uses_tcx() {
        "TCX"
    } else {
        "clsact (netlink)"
    };
    CheckReport {
        kernel: kernel_release(),
        btf: found.btf,
        ring_buffer: version.is_some_and(|v| v >= KernelVersion::new(5, 8, 0)),
        tc_mode,
        missing_capabilities: privileges::missing_capabilities(),
        facts: found.facts(tc_mode),
    }
}

/// What this kernel has, as far as the facts' hooks go.
struct Found {
    tracefs: Option<Tracefs>,
    btf: bool,
    offsets: KernelOffsets,
    /// Both length tracepoints (Linux ≥ 6.4): read from tracefs once, two facts depend on it.
    length_tracepoints: bool,
}

impl Found {
    fn new(tracefs: Option<Tracefs>, offsets: Option<KernelOffsets>) -> Self {
        let mut found = Self {
            tracefs,
            btf: offsets.is_some(),
            offsets: offsets.unwrap_or_default(),
            length_tracepoints: false,
        };
        found.length_tracepoints = found.tracepoint("sock", "sock_send_length").is_some()
            && found.tracepoint("sock", "sock_recv_length").is_some();
        found
    }

    /// Each fact, required or not, with its hook here or why there is none.
    fn facts(&self, tc_mode: &str) -> Vec<Fact> {
        let no_btf = (!self.btf).then_some("no kernel BTF");
        let bytes_per_call = self.bytes_per_call();
        let no_call_hook = bytes_per_call.is_none().then_some(
            "needs sock:sock_send_length (Linux ≥ 6.4) or kprobes with BTF; pooled calls carry none",
        );
        let o = &self.offsets;
        vec![
            fact(CONNECT_LATENCY, true, self.connect_latency(), None),
            fact(
                BYTES_PER_CONNECTION,
                true,
                self.bytes_per_connection(),
                None,
            ),
            fact(BYTES_PER_CALL, false, bytes_per_call, no_call_hook),
            fact(
                "retransmits",
                true,
                self.tracepoint("tcp", "tcp_retransmit_skb"),
                None,
            ),
            fact("resets", true, self.resets(), None),
            fact(
                "wire counters",
                false,
                Some(format!("TC classifier ({tc_mode})")),
                Some("per --tc-iface"),
            ),
            fact(
                "srtt",
                false,
                o.tcp_sock_srtt_us
                    .map(|_| "tcp_sock.srtt_us (BTF)".to_owned()),
                no_btf,
            ),
            fact(
                "errno",
                false,
                o.sock_sk_err.map(|_| "sock.sk_err (BTF)".to_owned()),
                no_btf,
            ),
        ]
    }

    fn tracepoint(&self, category: &str, name: &str) -> Option<String> {
        self.tracefs
            .as_ref()
            .is_some_and(|t| t.format(category, name).is_ok())
            .then(|| format!("tracepoint {category}:{name}"))
    }

    /// The BTF tracepoint where BTF gives the socket fields it reads, else the classic one.
    fn connect_latency(&self) -> Option<String> {
        self.tracepoint("sock", "inet_sock_set_state")
            .map(|_| self.kind().describe().to_owned())
    }

    /// The kind the tracepoints would attach as (the probe's own choice, nothing forced).
    fn kind(&self) -> super::TracepointKind {
        super::TracepointKind::choose(&self.offsets, false)
    }

    fn bytes_per_connection(&self) -> Option<String> {
        if self.length_tracepoints {
            Some(
                super::LiveBytes::LengthTracepoints
                    .describe_as(self.kind())
                    .to_owned(),
            )
        } else {
            self.offsets.has_tcp_totals().then(|| TCP_TOTALS.to_owned())
        }
    }

    fn bytes_per_call(&self) -> Option<String> {
        let o = &self.offsets;
        let path = if self.length_tracepoints {
            super::LiveBytes::LengthTracepoints
        } else if super::kprobes_available()
            && o.tcp_sock_write_seq.is_some()
            && o.tcp_sock_copied_seq.is_some()
        {
            super::LiveBytes::SeqKprobes
        } else {
            return None;
        };
        Some(path.describe_as(self.kind()).to_owned())
    }

    fn resets(&self) -> Option<String> {
        self.tracepoint("tcp", "tcp_send_reset")
            .zip(self.tracepoint("tcp", "tcp_receive_reset"))
            .map(|_| "tracepoints tcp:tcp_send_reset/tcp_receive_reset".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_required_fact_without_a_hook_fails_the_check() {
        let mut r = CheckReport {
            kernel: "5.10.0".into(),
            btf: true,
            ring_buffer: true,
            tc_mode: "clsact (netlink)",
            missing_capabilities: vec![],
            facts: vec![
                fact("connect latency", true, Some("tracepoint x".into()), None),
                fact("bytes per call", false, None, Some("needs 6.4")),
            ],
        };
        assert!(r.ok(), "an optional fact may be missing");
        assert!(
            r.render()
                .contains("bytes per call         NONE  (needs 6.4)"),
            "{}",
            r.render()
        );
        r.facts[0].hook = None;
        assert!(!r.ok());
    }
}
