//! Micro-benchmarks of the agent's per-event and per-call hot paths (criterion, run by
//! `cargo xtask bench flows`):
//! - a ring record decoded and applied to the flow table (`FlowPipeline::on_event`: conversion,
//!   table insert or update, bus publish), in events per second on one core — the target is at
//!   least 2 M/s;
//! - the per-call deltas of a pooled connection (`CallDeltas::facts`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    hint::black_box,
    sync::{Arc, Mutex},
};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use netscope_agent::{
    bus::BroadcastBus,
    clock::MonoClock,
    domain::{Flow, FlowState, Turn},
    flows::{
        AttemptSpan, CallDeltas, ConnectionView, Counters, FlowPipeline, FlowTable,
        convert::{CountedCalls, flow_from_event},
    },
};
use netscope_common::{ConnEvent, EventKind};

#[path = "support/records.rs"]
mod records;

/// The records of `n` connections' lives as the ring holds them: each one's `Established`,
/// then its `Closed`.
fn ring_records(n: u32) -> Vec<Vec<u8>> {
    [EventKind::Established, EventKind::Closed]
        .into_iter()
        .flat_map(|kind| (0..n).map(move |i| records::record(kind, i).as_bytes().to_vec()))
        .collect()
}

fn decode_and_apply(c: &mut Criterion) {
    const CONNECTIONS: u32 = 10_000;
    let records = ring_records(CONNECTIONS);
    let mut group = c.benchmark_group("ring");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("decode + flow table + bus, per event", |b| {
        b.iter_batched(
            || {
                let table = Arc::new(Mutex::new(FlowTable::new(100_000, 60_000_000_000)));
                FlowPipeline::new(table, Arc::new(BroadcastBus::new(65_536)))
            },
            |flows| {
                for record in &records {
                    let (kind, event) = ConnEvent::from_bytes(black_box(record)).unwrap();
                    flows.on_event(kind, event);
                }
                flows
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

fn call_deltas(c: &mut Criterion) {
    // 1,000 open connections, as the conversion makes them from their `Established` records.
    let clock = MonoClock::with_offset(0);
    let flows: Vec<Flow> = ring_records(1_000)
        .iter()
        .take(1_000)
        .map(|r| {
            let (kind, event) = ConnEvent::from_bytes(r).unwrap();
            flow_from_event(kind, &event, &clock, CountedCalls::BOTH)
        })
        .collect();
    assert!(flows.iter().all(|f| f.state == FlowState::Established));
    let mut deltas = CallDeltas::default();
    let mut sent = 0;
    let mut group = c.benchmark_group("correlation");
    group.throughput(Throughput::Elements(flows.len() as u64));
    group.bench_function("per-call deltas of pooled connections", |b| {
        b.iter(|| {
            // Every iteration is one more exchange on each connection: a new turn to claim.
            sent += 100;
            let turn = Turn {
                start_mono_ns: sent,
                sent: sent - 100,
                received: (sent - 100) * 2,
                retransmits: 0,
            };
            let span = AttemptSpan {
                started_mono_ns: sent - 1,
                ended_mono_ns: sent + 1,
            };
            for f in &flows {
                let view = ConnectionView {
                    now: Counters {
                        sent,
                        received: sent * 2,
                        retransmits: 0,
                    },
                    turns: [turn, Turn::default()],
                };
                black_box(deltas.facts(f, &view, span));
            }
        });
    });
    group.finish();
}

criterion_group!(benches, decode_and_apply, call_deltas);
criterion_main!(benches);
