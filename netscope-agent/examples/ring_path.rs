//! The ring reader's per-event path, once, for an instruction count: `cargo xtask bench
//! ring-instructions` runs it under cachegrind, whose counts do not move with this VM's noise
//! (criterion's timings of the same path swing by ±25 % from one run to the next here).
//!
//! 30,000 connections, each an `Established` then a `Closed` record as the ring holds them,
//! decoded and applied through `FlowPipeline::on_event` to a table of 10,000 flows that keeps
//! finished ones 10 ms (one connection per µs of kernel time): after the first 10,000, every
//! connection also expires one, as the agent's table does in steady state.
//! `--endpoint-index`: `run`'s path — its table (indexed by endpoints for request correlation)
//! and its flow metrics (the agent's default label budget: 100 process names, 600 s TTL).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use netscope_agent::{
    bus::BroadcastBus,
    domain::DestGroups,
    flows::{FlowPipeline, FlowTable},
    metrics::{MetricsBuilder, Recorder, flows::FlowLabels},
};
use netscope_common::{ConnEvent, EventKind};

const CONNECTIONS: u32 = 30_000;

#[path = "../benches/support/records.rs"]
mod records;

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
    let flows = if indexed {
        let labels = FlowLabels {
            dest: DestGroups::default(),
            comm_budget: 100,
            ttl: std::time::Duration::from_secs(600),
        };
        flows.with_recorder(Recorder::register(&mut MetricsBuilder::new(), Some(labels)))
    } else {
        flows
    };
    let mut bytes = Vec::with_capacity(size_of::<ConnEvent>());
    for i in 0..CONNECTIONS {
        for kind in [EventKind::Established, EventKind::Closed] {
            bytes.clear();
            bytes.extend_from_slice(records::record(kind, i).as_bytes());
            let (kind, event) = ConnEvent::from_bytes(std::hint::black_box(&bytes)).unwrap();
            flows.on_event(kind, event);
        }
    }
    println!("events={}", 2 * CONNECTIONS);
}
