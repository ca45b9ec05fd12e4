//! Ring records of synthetic connections, shared by the criterion bench (`benches/flows.rs`) and
//! the cachegrind path (`examples/ring_path.rs`).

use netscope_common::{AF_INET, ConnEvent, EventHeader, EventKind, FlowTuple, SRTT_UNKNOWN};

/// Connection `i`'s record of `kind`, as the kernel writes it: connection `i` starts at
/// `10_000 + i × 1,000` ns (one per µs), is established 50 ns later and closes after 500 ns
/// having moved 4 KiB each way; its source address and port are its own.
pub fn record(kind: EventKind, i: u32) -> ConnEvent {
    let mut saddr = [0u8; 16];
    saddr[..4].copy_from_slice(&[10, 0, (i >> 8) as u8, i as u8]);
    let mut daddr = [0u8; 16];
    daddr[..4].copy_from_slice(&[10, 1, 0, 1]);
    let start = 10_000 + u64::from(i) * 1_000;
    let closed = kind != EventKind::Established;
    ConnEvent {
        header: EventHeader {
            kind: kind as u32,
            len: kind.record_len() as u32,
            ts_ns: if closed { start + 500 } else { start + 50 },
            tgid: 10,
            pid: 11,
            cgroup_id: 1,
            sock_id: 0xffff_0000_0000 + u64::from(i) * 0x100,
        },
        tuple: FlowTuple {
            family: AF_INET,
            sport: 20_000 + (i % 40_000) as u16,
            dport: 443,
            _pad: 0,
            saddr,
            daddr,
        },
        comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
        start_ns: start,
        established_ns: start + 50,
        closed_ns: if closed { start + 500 } else { 0 },
        srtt_us: SRTT_UNKNOWN,
        bytes_sent: if closed { 4096 } else { 0 },
        bytes_received: if closed { 4096 } else { 0 },
        ..ConnEvent::default()
    }
}
