//! What is handed to the kernel at load: the privileges checked first, the programs' load-time
//! configuration (tracepoint field offsets from tracefs, `tcp_sock` offsets from BTF, filters,
//! wake-up threshold), the object with its map sizes, and the filter maps' contents.

use std::{net::IpAddr, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, LpmTrie, lpm_trie::Key},
};
use netscope_common::{OFFSET_NONE, ProbeConfig, names};

use super::{
    EMBEDDED_OBJECT, Filters, KernelOffsets, Probe, ProbeError, ProbeOptions, Tracefs, privileges,
};

/// The capabilities the probe needs, then whether a seccomp filter denies `bpf()` or
/// `perf_event_open()` in spite of them: each said in one error.
pub(super) fn check_privileges() -> Result<(), ProbeError> {
    let missing = privileges::missing_capabilities();
    if !missing.is_empty() {
        return Err(ProbeError::Privileges {
            missing: missing.join(", "),
        });
    }
    let denied = privileges::denied_by_seccomp();
    if !denied.is_empty() {
        return Err(ProbeError::Seccomp {
            calls: denied
                .iter()
                .map(|c| format!("{c}()"))
                .collect::<Vec<_>>()
                .join(" and "),
        });
    }
    Ok(())
}

/// The object (embedded, or `options.object`), with its configuration and map sizes.
pub(super) fn load_object(
    options: &ProbeOptions,
    config: &ProbeConfig,
) -> Result<Ebpf, ProbeError> {
    let owned;
    let object: &[u8] = match &options.object {
        Some(path) => {
            owned = read_object(path)?;
            &owned
        }
        None => EMBEDDED_OBJECT,
    };
    EbpfLoader::new()
        .override_global(names::GLOBAL_CONFIG, config, true)
        .map_max_entries(names::MAP_EVENTS, options.ring_bytes)
        .map_max_entries(names::MAP_SOCKS, options.max_connections)
        .map_max_entries(names::MAP_WIRE, options.max_wire_flows)
        .load(object)
        .map_err(ProbeError::Load)
}

impl Probe {
    /// Fills the filter maps the programs consult for each new connection.
    pub(super) fn fill_filters(&mut self, filters: &Filters) -> Result<(), ProbeError> {
        const PRESENT: u8 = 1;
        let map_err = |map| move |source| ProbeError::Map { map, source };
        let mut tgids: BpfHashMap<_, u32, u8> = self.map_mut(names::MAP_FILTER_TGID)?;
        for tgid in &filters.tgids {
            tgids
                .insert(tgid, &PRESENT, 0)
                .map_err(map_err(names::MAP_FILTER_TGID))?;
        }
        let mut cgroups: BpfHashMap<_, u64, u8> = self.map_mut(names::MAP_FILTER_CGROUP)?;
        for id in &filters.cgroup_ids {
            cgroups
                .insert(id, &PRESENT, 0)
                .map_err(map_err(names::MAP_FILTER_CGROUP))?;
        }
        let mut dports: BpfHashMap<_, u16, u8> = self.map_mut(names::MAP_FILTER_DPORT)?;
        for port in &filters.dports {
            dports
                .insert(port, &PRESENT, 0)
                .map_err(map_err(names::MAP_FILTER_DPORT))?;
        }
        let mut v4: LpmTrie<_, [u8; 4], u8> = self.map_mut(names::MAP_FILTER_DST_V4)?;
        for cidr in &filters.destinations {
            if let IpAddr::V4(a) = cidr.addr {
                v4.insert(&Key::new(cidr.prefix_len.into(), a.octets()), &PRESENT, 0)
                    .map_err(map_err(names::MAP_FILTER_DST_V4))?;
            }
        }
        let mut v6: LpmTrie<_, [u8; 16], u8> = self.map_mut(names::MAP_FILTER_DST_V6)?;
        for cidr in &filters.destinations {
            if let IpAddr::V6(a) = cidr.addr {
                v6.insert(&Key::new(cidr.prefix_len.into(), a.octets()), &PRESENT, 0)
                    .map_err(map_err(names::MAP_FILTER_DST_V6))?;
            }
        }
        Ok(())
    }
}

fn read_object(path: &Path) -> Result<Vec<u8>, ProbeError> {
    std::fs::read(path).map_err(|source| ProbeError::Object {
        path: path.to_path_buf(),
        source,
    })
}

/// Builds the programs' load-time configuration from this kernel's tracepoint formats and BTF.
pub(super) fn probe_config(
    tracefs: &Tracefs,
    offsets: &KernelOffsets,
    options: &ProbeOptions,
) -> Result<ProbeConfig, ProbeError> {
    let skaddr = |category, name| tracefs.format(category, name)?.offset("skaddr", 8);
    let retransmit = tracefs.format("tcp", "tcp_retransmit_skb")?;
    // The length tracepoints exist from Linux 6.4; before, bytes come from tcp_sock at close.
    let length = |name| match tracefs.format("sock", name) {
        Ok(format) => format.sock_length_offsets().map(Some),
        Err(ProbeError::TracepointMissing { .. }) => Ok(None),
        Err(e) => Err(e),
    };
    let (send_length, recv_length) = (length("sock_send_length")?, length("sock_recv_length")?);
    let length_hooks = options.per_message_hooks && send_length.is_some() && recv_length.is_some();
    Ok(ProbeConfig {
        set_state: tracefs
            .format("sock", "inet_sock_set_state")?
            .set_state_offsets()?,
        send_length: send_length.unwrap_or(ProbeConfig::UNSET.send_length),
        recv_length: recv_length.unwrap_or(ProbeConfig::UNSET.recv_length),
        retransmit_skaddr: retransmit.offset("skaddr", 8)?,
        retransmit_skbaddr: retransmit.offset("skbaddr", 8)?,
        retransmit_err: retransmit.optional_offset("err", 4)?.unwrap_or(OFFSET_NONE),
        send_reset_skaddr: skaddr("tcp", "tcp_send_reset")?,
        receive_reset_skaddr: skaddr("tcp", "tcp_receive_reset")?,
        destroy_skaddr: skaddr("tcp", "tcp_destroy_sock")?,
        tc_attached: u32::from(!options.tc_interfaces.is_empty()),
        helper_reads: u32::from(options.helper_reads_only),
        length_hooks: u32::from(length_hooks),
        sock_sk_err: offsets.sock_sk_err.unwrap_or(OFFSET_NONE),
        tcp_srtt_us: offsets.tcp_sock_srtt_us.unwrap_or(OFFSET_NONE),
        filters: options.filters.bits(),
        tcp_bytes_sent: offsets.tcp_sock_bytes_sent.unwrap_or(OFFSET_NONE),
        tcp_bytes_retrans: offsets.tcp_sock_bytes_retrans.unwrap_or(OFFSET_NONE),
        tcp_bytes_received: offsets.tcp_sock_bytes_received.unwrap_or(OFFSET_NONE),
        tcp_write_seq: offsets.tcp_sock_write_seq.unwrap_or(OFFSET_NONE),
        wakeup_bytes: options.wakeup_bytes,
        tcp_copied_seq: offsets.tcp_sock_copied_seq.unwrap_or(OFFSET_NONE),
        sock_protocol: offsets.sock_protocol.unwrap_or(OFFSET_NONE),
        sock_v6_daddr: offsets.sock_v6_daddr.unwrap_or(OFFSET_NONE),
        sock_v6_rcv_saddr: offsets.sock_v6_rcv_saddr.unwrap_or(OFFSET_NONE),
        inet_sport: offsets.inet_sport.unwrap_or(OFFSET_NONE),
        skb_gso_segs: offsets.skb_gso_segs.unwrap_or(OFFSET_NONE),
        _pad: 0,
    })
}
