//! Offsets of the few kernel struct fields the programs read directly (`sock.sk_err`,
//! `tcp_sock.srtt_us`, and — on kernels without the length tracepoints — `tcp_sock.bytes_sent`,
//! `bytes_retrans`, `bytes_received`, `write_seq` and `copied_seq`; for the BTF tracepoints, the
//! head of `sock_common`, `sk_protocol` and the IPv6 addresses; a retransmitted skb's
//! `tcp_gso_segs`), found in the running kernel's
//! BTF at load time. Without BTF the probe still runs; those facts are then reported
//! as unknown.

use netscope_common::sock_head;

use super::{ProbeError, btf::Btf};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Kernel struct offsets (bytes), `None` when not found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub sock_sk_err: Option<u32>,
    pub tcp_sock_srtt_us: Option<u32>,
    /// `tcp_sock.bytes_sent`, `bytes_retrans` and `bytes_received` (RFC 4898, Linux ≥ 4.19),
    /// read at close where the kernel has no `sock_send_length`/`sock_recv_length` tracepoints.
    pub tcp_sock_bytes_sent: Option<u32>,
    pub tcp_sock_bytes_retrans: Option<u32>,
    pub tcp_sock_bytes_received: Option<u32>,
    /// `tcp_sock.write_seq` and `copied_seq`: without the length tracepoints, the kprobes
    /// count a live connection's bytes from them.
    pub tcp_sock_write_seq: Option<u32>,
    pub tcp_sock_copied_seq: Option<u32>,
    /// `struct sock_common`'s head is where `netscope_common::sock_head` says (and
    /// `__sk_common` opens `struct sock`): the BTF tracepoints can take the tuple from it.
    pub sock_head_as_expected: bool,
    /// `sock.sk_protocol` (not a bitfield: Linux ≥ 5.6), `sock_common.skc_v6_daddr` and
    /// `skc_v6_rcv_saddr` (`CONFIG_IPV6`), read by the BTF tracepoints.
    pub sock_protocol: Option<u32>,
    pub sock_v6_daddr: Option<u32>,
    pub sock_v6_rcv_saddr: Option<u32>,
    /// `inet_sock.inet_sport`: the local port, still set when a failed connect reaches CLOSE.
    pub inet_sport: Option<u32>,
    /// `tcp_skb_cb.tcp_gso_segs` as an offset in `sk_buff` (`TCP_SKB_CB(skb)` is `skb->cb`):
    /// the segments a retransmitted skb holds.
    pub skb_gso_segs: Option<u32>,
}

impl KernelOffsets {
    /// A closed connection's byte totals can be read from `tcp_sock` (tcplife's way).
    pub fn has_tcp_totals(&self) -> bool {
        self.tcp_sock_bytes_sent.is_some()
            && self.tcp_sock_bytes_retrans.is_some()
            && self.tcp_sock_bytes_received.is_some()
    }

    /// The BTF tracepoints can read what they need from the socket.
    pub fn has_sock_fields(&self) -> bool {
        self.sock_head_as_expected && self.sock_protocol.is_some() && self.inet_sport.is_some()
    }

    pub fn from_btf(btf: &Btf) -> Self {
        let common = |field| btf.member_offset("sock_common", field);
        let sock_head_as_expected = btf.member_offset("sock", "__sk_common") == Some(0)
            && [
                ("skc_daddr", sock_head::DADDR),
                ("skc_rcv_saddr", sock_head::RCV_SADDR),
                ("skc_dport", sock_head::DPORT),
                ("skc_family", sock_head::FAMILY),
            ]
            .into_iter()
            .all(|(field, offset)| common(field) == Some(offset));
        Self {
            sock_head_as_expected,
            sock_protocol: btf.member_offset("sock", "sk_protocol"),
            sock_v6_daddr: common("skc_v6_daddr"),
            sock_v6_rcv_saddr: common("skc_v6_rcv_saddr"),
            inet_sport: btf.member_offset("inet_sock", "inet_sport"),
            sock_sk_err: btf.member_offset("sock", "sk_err"),
            tcp_sock_srtt_us: btf.member_offset("tcp_sock", "srtt_us"),
            tcp_sock_bytes_sent: btf.member_offset("tcp_sock", "bytes_sent"),
            tcp_sock_bytes_retrans: btf.member_offset("tcp_sock", "bytes_retrans"),
            tcp_sock_bytes_received: btf.member_offset("tcp_sock", "bytes_received"),
            tcp_sock_write_seq: btf.member_offset("tcp_sock", "write_seq"),
            tcp_sock_copied_seq: btf.member_offset("tcp_sock", "copied_seq"),
            skb_gso_segs: btf
                .member_offset("sk_buff", "cb")
                .zip(btf.member_offset("tcp_skb_cb", "tcp_gso_segs"))
                .map(|(cb, segs)| cb + segs),
        }
    }

    pub fn load() -> Result<Self, ProbeError> {
        let bytes = std::fs::read(VMLINUX_BTF).map_err(|e| ProbeError::Btf(e.to_string()))?;
        let btf = Btf::parse(bytes).map_err(|e| ProbeError::Btf(e.to_string()))?;
        Ok(Self::from_btf(&btf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_has_the_fields_when_btf_is_present() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            eprintln!("skipped: {VMLINUX_BTF} missing");
            return;
        }
        let offsets = KernelOffsets::load().unwrap();
        let sk_err = offsets.sock_sk_err.expect("sock.sk_err in BTF");
        let srtt = offsets.tcp_sock_srtt_us.expect("tcp_sock.srtt_us in BTF");
        // Sanity: both lie well inside their structs (struct sock is ~700+ bytes).
        assert!(sk_err > 0 && sk_err < 4096, "{sk_err}");
        assert!(srtt > sk_err && srtt < 8192, "{srtt}");
        assert!(offsets.sock_head_as_expected, "{offsets:?}");
        let protocol = offsets.sock_protocol.expect("sock.sk_protocol in BTF");
        assert!(
            protocol > sock_head::FAMILY && protocol < 4096,
            "{protocol}"
        );
        assert!(
            offsets.inet_sport.is_some() && offsets.has_sock_fields(),
            "{offsets:?}"
        );
        // skb->cb lies in sk_buff's first cache lines, tcp_gso_segs after seq and end_seq.
        let segs = offsets
            .skb_gso_segs
            .expect("sk_buff.cb + tcp_skb_cb.tcp_gso_segs");
        assert!((8..256).contains(&segs), "{segs}");
    }
}
