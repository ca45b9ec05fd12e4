//! Per-flow metrics of the kernel's view (`probe`, and the connections `run` makes), aggregated
//! by destination group and process name — never by address or port.
//!
//! Budget: at most `comm_budget` process names have series of their own; flows of any other
//! name count under `~other`. A (group, name) series untouched for `ttl`, with no connection
//! open, is removed, and its name gives its slot back.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, histogram::Histogram},
    registry::{Registry, Unit},
};
use strum::{EnumCount as _, IntoEnumIterator as _};

use crate::domain::{Comm, DestGroups, FlowOutcome, FlowUpdate, FlowUpdateKind, SampleKind};

/// The `comm` label of flows whose process name is past the budget.
pub const OTHER_COMM: &str = "~other";

/// One (destination group, process name) series set.
struct Series {
    connects_ok: u64,
    connects_failed: [u64; FlowOutcome::COUNT],
    closed: [u64; FlowOutcome::COUNT],
    bytes_sent: u64,
    bytes_received: u64,
    retransmits: u64,
    resets_sent: u64,
    resets_received: u64,
    active: u64,
    connect: Histogram,
    touched: Duration,
}

impl Series {
    fn new(now: Duration) -> Self {
        Self {
            connects_ok: 0,
            connects_failed: [0; FlowOutcome::COUNT],
            closed: [0; FlowOutcome::COUNT],
            bytes_sent: 0,
            bytes_received: 0,
            retransmits: 0,
            resets_sent: 0,
            resets_received: 0,
            active: 0,
            connect: super::calls::connect_buckets(),
            touched: now,
        }
    }
}

/// A process name's series: one per destination group, at the group's index in
/// [`DestGroups::names`], created when a flow of that group first shows.
struct CommSeries {
    seen: Duration,
    by_dest: Vec<Option<Series>>,
}

impl CommSeries {
    fn new(groups: usize, now: Duration) -> Self {
        Self {
            seen: now,
            by_dest: (0..groups).map(|_| None).collect(),
        }
    }
}

/// Process names are looked up once per flow update (~ one per kernel event): keyed by the
/// kernel's inline name itself, with a fast seeded hash, not SipHash.
type Hasher = foldhash::fast::RandomState;

struct State {
    /// Process names with series of their own (at most `comm_budget`).
    comms: HashMap<Comm, CommSeries, Hasher>,
    /// The series of names past the budget, labelled `~other`.
    other: CommSeries,
    /// Flow updates counted under `~other` because the budget was full.
    overflowed: u64,
    removed: u64,
}

impl State {
    /// Every series with its (destination group, process name) labels.
    fn labelled<'a>(
        &'a self,
        dest_labels: &'a [String],
    ) -> impl Iterator<Item = (&'a str, &'a str, &'a Series)> {
        self.comms
            .iter()
            .map(|(comm, slot)| (comm.as_str(), slot))
            .chain([(OTHER_COMM, &self.other)])
            .flat_map(move |(comm, slot)| {
                slot.by_dest
                    .iter()
                    .zip(dest_labels)
                    .filter_map(move |(s, dest)| s.as_ref().map(|s| (dest.as_str(), comm, s)))
            })
    }
}

/// How flows are labelled: by destination group, and by process name within a budget; idle
/// series expire after `ttl`.
#[derive(Clone, Debug)]
pub struct FlowLabels {
    pub dest: DestGroups,
    pub comm_budget: usize,
    pub ttl: Duration,
}

pub struct FlowMetrics {
    dest: DestGroups,
    /// Every destination group's label, in `DestGroups::names` order.
    dest_labels: Vec<String>,
    comm_budget: usize,
    ttl: Duration,
    state: Mutex<State>,
}

impl fmt::Debug for FlowMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowMetrics")
            .field("comm_budget", &self.comm_budget)
            .finish_non_exhaustive()
    }
}

impl FlowMetrics {
    pub fn register(registry: &mut Registry, labels: FlowLabels) -> Arc<Self> {
        let dest_labels: Vec<String> = labels.dest.names().map(String::from).collect();
        let m = Arc::new(Self {
            state: Mutex::new(State {
                comms: HashMap::default(),
                other: CommSeries::new(dest_labels.len(), Duration::ZERO),
                overflowed: 0,
                removed: 0,
            }),
            dest_labels,
            dest: labels.dest,
            comm_budget: labels.comm_budget,
            ttl: labels.ttl,
        });
        registry.register_collector(Box::new(Arc::clone(&m)));
        m
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one flow update. Its time is the coarse monotonic clock's: only expiry, minutes
    /// later, reads it, and it costs a fraction of a precise clock read on every update.
    pub fn record(&self, update: &FlowUpdate) {
        self.record_at(update, crate::clock::coarse_monotonic());
    }

    fn record_at(&self, update: &FlowUpdate, now: Duration) {
        let f = &update.flow;
        let dest = self.dest.index_of(f.remote.ip());
        let mut st = self.lock();
        let slot = self.comm_slot(&mut st, f.comm, now);
        slot.seen = now;
        let Some(s) = slot.by_dest.get_mut(dest) else {
            return; // not a group of `dest`: cannot happen, `by_dest` has one per group
        };
        let s = s.get_or_insert_with(|| Series::new(now));
        s.touched = now;
        match update.kind {
            FlowUpdateKind::Established => {
                s.connects_ok += 1;
                s.active += 1;
                if let Some(ns) = f.connect_latency_ns {
                    s.connect.observe(ns as f64 / 1e9);
                }
            }
            FlowUpdateKind::Failed => {
                let o = f.outcome.unwrap_or(FlowOutcome::Failed);
                s.connects_failed[o as usize] += 1;
            }
            FlowUpdateKind::Closed => {
                s.active = s.active.saturating_sub(1);
                s.closed[f.outcome.unwrap_or(FlowOutcome::Closed) as usize] += 1;
                s.bytes_sent += f.bytes_sent;
                s.bytes_received += f.bytes_received;
                s.retransmits += u64::from(f.retransmits);
                s.resets_sent += u64::from(f.resets_sent);
                s.resets_received += u64::from(f.resets_received);
            }
        }
    }

    /// The process name's series: its own while within budget, else `~other`'s. A name not
    /// seen before takes a free slot, after expiry when the budget is full.
    fn comm_slot<'s>(&self, st: &'s mut State, comm: Comm, now: Duration) -> &'s mut CommSeries {
        if st.comms.len() >= self.comm_budget && !st.comms.contains_key(&comm) {
            self.expire(st, now);
            if st.comms.len() >= self.comm_budget {
                st.overflowed += 1;
                return &mut st.other;
            }
        }
        let groups = self.dest_labels.len();
        st.comms
            .entry(comm)
            .or_insert_with(|| CommSeries::new(groups, now))
    }

    /// Removes series idle past the TTL with nothing open, and the names left with no series
    /// and not seen within the TTL (their budget slots are free again).
    fn expire(&self, st: &mut State, now: Duration) {
        let ttl = self.ttl;
        let mut removed = 0;
        let mut prune = |slot: &mut CommSeries| {
            for series in &mut slot.by_dest {
                if series
                    .as_ref()
                    .is_some_and(|s| s.active == 0 && now.saturating_sub(s.touched) >= ttl)
                {
                    *series = None;
                    removed += 1;
                }
            }
            slot.by_dest.iter().any(Option::is_some) || now.saturating_sub(slot.seen) < ttl
        };
        st.comms.retain(|_, slot| prune(slot));
        prune(&mut st.other);
        st.removed += removed;
    }

    /// Series (destination group × process name) now.
    pub fn series(&self) -> usize {
        self.lock().labelled(&self.dest_labels).count()
    }
}

/// A value of a series, with at most one label besides `dest` and `comm`.
type Labelled = (Option<(&'static str, &'static str)>, u64);

/// One counter or gauge family of the flow metrics.
struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: SampleKind,
    values: fn(&Series) -> Vec<Labelled>,
}

/// Outcomes with a count, labelled `key`.
fn by_outcome(key: &'static str, counts: &[u64; FlowOutcome::COUNT]) -> Vec<Labelled> {
    FlowOutcome::iter()
        .filter(|o| counts[*o as usize] > 0)
        .map(|o| (Some((key, o.into())), counts[o as usize]))
        .collect()
}

const FAMILIES: [Family; 6] = [
    Family {
        name: "flow_connects",
        help: "Outbound connects by destination group, process and result (ok or the failure)",
        unit: None,
        kind: SampleKind::Counter,
        values: |s| {
            let mut v = vec![(Some(("result", "ok")), s.connects_ok)];
            v.extend(by_outcome("result", &s.connects_failed));
            v
        },
    },
    Family {
        name: "flow_closed",
        help: "Established connections closed, by how they ended",
        unit: None,
        kind: SampleKind::Counter,
        values: |s| by_outcome("outcome", &s.closed),
    },
    Family {
        name: "flow_tcp",
        help: "TCP payload bytes of closed connections, by direction",
        unit: Some(Unit::Bytes),
        kind: SampleKind::Counter,
        values: |s| {
            vec![
                (Some(("direction", "sent")), s.bytes_sent),
                (Some(("direction", "received")), s.bytes_received),
            ]
        },
    },
    Family {
        name: "flow_retransmits",
        help: "TCP retransmits of closed connections",
        unit: None,
        kind: SampleKind::Counter,
        values: |s| vec![(None, s.retransmits)],
    },
    Family {
        name: "flow_resets",
        help: "TCP resets of closed connections, by direction",
        unit: None,
        kind: SampleKind::Counter,
        values: |s| {
            vec![
                (Some(("direction", "sent")), s.resets_sent),
                (Some(("direction", "received")), s.resets_received),
            ]
        },
    },
    Family {
        name: "flow_active_connections",
        help: "Outbound connections open now",
        unit: None,
        kind: SampleKind::Gauge,
        values: |s| vec![(None, s.active)],
    },
];

impl Family {
    /// Every series' values, labelled (dest, comm[, extra]).
    fn encode(
        &self,
        encoder: &mut DescriptorEncoder,
        series: &[(&str, &str, &Series)],
    ) -> fmt::Result {
        let mut metric = encoder.encode_descriptor(
            self.name,
            self.help,
            self.unit.as_ref(),
            super::metric_type(self.kind),
        )?;
        for &(dest, comm, s) in series {
            for (extra, v) in (self.values)(s) {
                let labels: Vec<(&str, &str)> = [("dest", dest), ("comm", comm)]
                    .into_iter()
                    .chain(extra)
                    .collect();
                super::encode_value(self.kind, v, metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Collector for FlowMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut st = self.lock();
        self.expire(&mut st, crate::clock::coarse_monotonic());
        let series: Vec<_> = st.labelled(&self.dest_labels).collect();
        let e = &mut encoder;
        for family in &FAMILIES {
            family.encode(e, &series)?;
        }
        let mut m = e.encode_descriptor(
            "flow_connect_duration",
            "SYN_SENT → ESTABLISHED, by destination group and process",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for &(dest, comm, s) in &series {
            s.connect
                .encode(m.encode_family(&[("dest", dest), ("comm", comm)])?)?;
        }
        let overflow = ConstCounter::new(st.overflowed);
        overflow.encode(e.encode_descriptor(
            "flow_comm_overflow",
            "Flow updates counted under comm=\"~other\" because the process-name budget was full",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(st.removed).encode(e.encode_descriptor(
            "flow_series_expired",
            "Flow series removed after their TTL",
            None,
            MetricType::Counter,
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "flows_tests.rs"]
mod tests;
