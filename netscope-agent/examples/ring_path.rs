//! The ring reader's per-event path, once, for an instruction count: `cargo xtask bench
//! ring-instructions` runs it under cachegrind, whose counts do not move with this VM's noise
//! (criterion's timings of the same path swing by ±25 % from one run to the next here).
//!
//! 30,000 connections, each an `Established` then a `Closed` record as the ring holds them,
//! decoded and applied through `FlowPipeline::on_event` to a table of 10,000 flows that keeps
//! finished ones 10 ms (one connection per µs of kernel time): after the first 10,000, every
//! connection also expires one, as the agent's table does in steady state.
//! `--endpoint-index`: `run`'s table (indexed by endpoints for request correlation).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use netscope_agent::{
    bus::BroadcastBus,
    flows::{FlowPipeline, FlowTable},
};
use netscope_common::{AF_INET, ConnEvent, EventHeader, EventKind, FlowTuple, SRTT_UNKNOWN};

const CONNECTIONS: u32 = 30_000;

fn record(kind: EventKind, i: u32) -> ConnEvent {
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

fn main() {
    let indexed = std::env::args().any(|a| a == "--endpoint-index");
    let table = FlowTable::new(10_000, 10_000_000);
    let table = if indexed {
        table
    } else {
        table.without_endpoint_index()
    };
    let flows = FlowPipeline::new(
        Arc::new(Mutex::new(table)),
        Arc::new(BroadcastBus::new(4_096)),
    );
    let mut bytes = Vec::with_capacity(size_of::<ConnEvent>());
    for i in 0..CONNECTIONS {
        for kind in [EventKind::Established, EventKind::Closed] {
            bytes.clear();
            bytes.extend_from_slice(record(kind, i).as_bytes());
            let (kind, event) = ConnEvent::from_bytes(std::hint::black_box(&bytes)).unwrap();
            flows.on_event(kind, event);
        }
    }
    println!("events={}", 2 * CONNECTIONS);
}
