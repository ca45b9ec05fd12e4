//! Which program attaches where, and the attaching: tracepoints (the list below is the one
//! attach table; as BTF tracepoints where they all load), TC classifiers (TCX from Linux 6.6,
//! a clsact qdisc before), and the `tcp_sendmsg`/`tcp_cleanup_rbuf` kprobes where the length
//! tracepoints are missing.

use std::{ffi::CString, path::Path};

use aya::{
    Btf,
    programs::{BtfTracePoint, KProbe, SchedClassifier, TcAttachType, TracePoint, tc},
    util::KernelVersion,
};

use super::{LiveBytes, Probe, ProbeError, ProbeOptions, TracepointKind};

struct TracepointSpec {
    program: &'static str,
    category: &'static str,
    name: &'static str,
    /// The same program as a BTF tracepoint: it gets the kernel's own arguments, where a
    /// classic tracepoint first builds a record of the event in a per-CPU buffer (for every
    /// socket's every state change, or every send and receive on the node), and runs even when
    /// it interrupts another tracing program or a `bpf()` map call (a classic one is then
    /// skipped: a retransmission, in softirq, went uncounted that way).
    btf_program: &'static str,
}

impl TracepointSpec {
    /// The length tracepoints attach only where they are the live-bytes path.
    fn per_message(&self) -> bool {
        self.category == "sock" && self.name != "inet_sock_set_state"
    }
}

const TRACEPOINTS: [TracepointSpec; 7] = [
    TracepointSpec {
        program: "ns_set_state",
        category: "sock",
        name: "inet_sock_set_state",
        btf_program: "ns_set_state_btf",
    },
    TracepointSpec {
        program: "ns_send_length",
        category: "sock",
        name: "sock_send_length",
        btf_program: "ns_send_length_btf",
    },
    TracepointSpec {
        program: "ns_recv_length",
        category: "sock",
        name: "sock_recv_length",
        btf_program: "ns_recv_length_btf",
    },
    TracepointSpec {
        program: "ns_retransmit",
        category: "tcp",
        name: "tcp_retransmit_skb",
        btf_program: "ns_retransmit_btf",
    },
    TracepointSpec {
        program: "ns_send_reset",
        category: "tcp",
        name: "tcp_send_reset",
        btf_program: "ns_send_reset_btf",
    },
    TracepointSpec {
        program: "ns_recv_reset",
        category: "tcp",
        name: "tcp_receive_reset",
        btf_program: "ns_recv_reset_btf",
    },
    TracepointSpec {
        program: "ns_destroy_sock",
        category: "tcp",
        name: "tcp_destroy_sock",
        btf_program: "ns_destroy_sock_btf",
    },
];

/// Without the length tracepoints (Linux < 6.4), live bytes and turns come from kprobes:
/// (program, kernel function).
const SEQ_KPROBES: [(&str, &str); 2] = [
    ("ns_tcp_sendmsg", "tcp_sendmsg"),
    ("ns_tcp_cleanup_rbuf", "tcp_cleanup_rbuf"),
];

/// The kernel can create kprobes (`CONFIG_KPROBES`): the kprobe PMU exists.
pub fn kprobes_available() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
}

/// The (egress, ingress) classifier programs.
const TC_PROGRAMS: (&str, &str) = ("ns_tc_egress", "ns_tc_ingress");

/// TC classifiers attach as TCX links from Linux 6.6; before, through a clsact qdisc.
pub fn uses_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

impl Probe {
    /// Attaches the tracepoints, the TC classifiers where asked, and the kprobes where they
    /// are the live-bytes path (falling back to no live bytes, said in a warning, if the
    /// kprobes cannot attach).
    pub(super) fn attach(&mut self, options: &ProbeOptions) -> Result<(), ProbeError> {
        self.attach_tracepoints()?;
        if !options.tc_interfaces.is_empty() {
            self.attach_tc(&options.tc_interfaces)?;
        }
        if self.live_bytes == LiveBytes::SeqKprobes
            && let Err(e) = self.attach_seq_kprobes()
        {
            tracing::warn!(error = %e, "kprobes unavailable: live per-call bytes are unknown");
            self.live_bytes = LiveBytes::None;
        }
        Ok(())
    }

    /// The connection tracepoints; the length ones only where they are the live-bytes path.
    /// As BTF tracepoints when chosen and all of them load; else (said in a warning) as
    /// classic ones.
    fn attach_tracepoints(&mut self) -> Result<(), ProbeError> {
        let per_message = self.live_bytes == LiveBytes::LengthTracepoints;
        let wanted: Vec<&TracepointSpec> = TRACEPOINTS
            .iter()
            .filter(|spec| per_message || !spec.per_message())
            .collect();
        if self.tracepoint_kind == TracepointKind::Btf
            && let Err(e) = self.load_btf_twins(&wanted)
        {
            tracing::warn!(error = %e, "BTF tracepoints did not load: using the classic ones");
            self.tracepoint_kind = TracepointKind::Classic;
        }
        for spec in wanted {
            let err = |program| move |source| ProbeError::Program { program, source };
            if self.tracepoint_kind == TracepointKind::Btf {
                let name = spec.btf_program;
                let program: &mut BtfTracePoint = self.program_mut(name)?;
                program.attach().map_err(err(name))?;
                continue;
            }
            let name = spec.program;
            let program: &mut TracePoint = self.program_mut(name)?;
            program.load().map_err(err(name))?;
            self.loaded.push(name);
            let program: &mut TracePoint = self.program_mut(name)?;
            program
                .attach(spec.category, spec.name)
                .map_err(err(name))?;
        }
        Ok(())
    }

    /// Loads every wanted BTF tracepoint program (none is attached yet: a failure leaves
    /// nothing that would run twice beside the classic programs).
    fn load_btf_twins(&mut self, wanted: &[&TracepointSpec]) -> Result<(), ProbeError> {
        let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Btf(e.to_string()))?;
        let twins: Vec<(&str, &'static str)> = wanted
            .iter()
            .map(|spec| (spec.name, spec.btf_program))
            .collect();
        for &(tracepoint, name) in &twins {
            let program: &mut BtfTracePoint = self.program_mut(name)?;
            program
                .load(tracepoint, &btf)
                .map_err(|source| ProbeError::Program {
                    program: name,
                    source,
                })?;
        }
        self.loaded.extend(twins.into_iter().map(|(_, name)| name));
        Ok(())
    }

    /// The classifiers on each interface: TCX links from 6.6, a clsact qdisc before.
    fn attach_tc(&mut self, interfaces: &[String]) -> Result<(), ProbeError> {
        let (egress, ingress) = TC_PROGRAMS;
        let tcx = uses_tcx();
        for name in [egress, ingress] {
            let program: &mut SchedClassifier = self.program_mut(name)?;
            program.load().map_err(|source| ProbeError::Program {
                program: name,
                source,
            })?;
            self.loaded.push(name);
        }
        for iface in interfaces {
            let c_iface = CString::new(iface.as_str()).map_err(|_| ProbeError::Interface {
                iface: iface.clone(),
                reason: "interface names cannot contain NUL".to_owned(),
            })?;
            if !tcx {
                // Before TCX, classifiers hang off a clsact qdisc; one that exists is fine.
                if let Err(e) = tc::qdisc_add_clsact(&c_iface) {
                    let exists = matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST));
                    if !exists {
                        return Err(ProbeError::Interface {
                            iface: iface.clone(),
                            reason: format!("cannot add clsact qdisc: {e}"),
                        });
                    }
                }
            }
            for (name, direction) in [
                (egress, TcAttachType::Egress),
                (ingress, TcAttachType::Ingress),
            ] {
                let program: &mut SchedClassifier = self.program_mut(name)?;
                program
                    .attach(&c_iface, direction)
                    .map_err(|e| ProbeError::Interface {
                        iface: iface.clone(),
                        reason: format!("cannot attach {name}: {e}"),
                    })?;
            }
        }
        Ok(())
    }

    /// The kprobe fallback for live bytes (kernels without the length tracepoints).
    fn attach_seq_kprobes(&mut self) -> Result<(), ProbeError> {
        for (name, function) in SEQ_KPROBES {
            let err = |source| ProbeError::Program {
                program: name,
                source,
            };
            let program: &mut KProbe = self.program_mut(name)?;
            program.load().map_err(err)?;
            self.loaded.push(name);
            let program: &mut KProbe = self.program_mut(name)?;
            program.attach(function, 0).map_err(err)?;
        }
        Ok(())
    }
}
