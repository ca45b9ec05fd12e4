//! Per-call facts of a connection: what the kernel counted on it *during one call*.
//!
//! HTTP/1.1 runs one request at a time on a connection, so the counters seen at the end of the
//! previous call on it are this call's baseline. A connection no earlier call used was opened
//! for this one — the client opens connections only for calls — when it started around the
//! call's start; it counts from zero. Otherwise (older than the call and never seen, e.g. its
//! baseline was evicted) the deltas are unknown, never guessed.

use std::collections::HashMap;

use crate::domain::{Flow, FlowState, outcome::NetworkFacts};

/// A connection's counters at some moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub sent: u64,
    pub received: u64,
    pub retransmits: u32,
}

impl Counters {
    /// The flow's own counters (final once it is closed).
    pub fn of(flow: &Flow) -> Self {
        Self {
            sent: flow.bytes_sent,
            received: flow.bytes_received,
            retransmits: flow.retransmits,
        }
    }
}

/// How far a flow's start (kernel monotonic → wall time) may lie before the call's start and
/// still be a connection opened for that call: the conversion is not exact.
pub const CLOCK_SLACK_NS: u64 = 50_000_000;

/// Baselines kept at most by default (connections idle in pools).
pub const MAX_BASELINES: usize = 65_536;

/// The baseline of every open connection a call used, keyed by the flow's identity.
#[derive(Debug)]
pub struct CallDeltas {
    baselines: HashMap<(u64, u64), Counters>,
    max: usize,
}

impl Default for CallDeltas {
    fn default() -> Self {
        Self::new(MAX_BASELINES)
    }
}

impl CallDeltas {
    /// Keeps at most `max` baselines; past it, they are all forgotten (those connections'
    /// next calls then report unknown deltas rather than wrong ones).
    pub fn new(max: usize) -> Self {
        Self {
            baselines: HashMap::new(),
            max: max.max(1),
        }
    }

    /// The facts of a call that used `flow`, whose counters are `now` at the call's end, and
    /// that started at `call_started_unix_ns`. Records `now` as the next call's baseline
    /// while the connection stays open.
    pub fn facts(&mut self, flow: &Flow, now: Counters, call_started_unix_ns: u64) -> NetworkFacts {
        let key = (flow.id.sock_id, flow.id.start_mono_ns);
        let (new_connection, base) = match self.baselines.get(&key) {
            Some(b) => (false, Some(*b)),
            None if flow.start_unix_ns + CLOCK_SLACK_NS >= call_started_unix_ns => {
                (true, Some(Counters::default()))
            }
            None => (false, None),
        };
        if flow.state == FlowState::Established {
            if self.baselines.len() >= self.max {
                self.baselines.clear();
            }
            self.baselines.insert(key, now);
        } else {
            self.baselines.remove(&key);
        }
        NetworkFacts {
            matched: true,
            local: Some(flow.local),
            remote: Some(flow.remote),
            new_connection: Some(new_connection),
            connect_latency_ns: flow.connect_latency_ns,
            bytes_sent: base.map(|b| now.sent.saturating_sub(b.sent)),
            bytes_received: base.map(|b| now.received.saturating_sub(b.received)),
            retransmits: base.map(|b| now.retransmits.saturating_sub(b.retransmits)),
            srtt_us: flow.srtt_us,
            connect_errno: None,
        }
    }

    /// Baselines held now.
    pub fn len(&self) -> usize {
        self.baselines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.baselines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::flow::sample_flow;

    const MS: u64 = 1_000_000;

    /// An open connection that started at `start_ms` (wall clock).
    fn open(sock: u64, start_ms: u64) -> Flow {
        let mut f = sample_flow(sock, 1);
        f.state = FlowState::Established;
        f.start_unix_ns = start_ms * MS;
        f
    }

    fn counters(sent: u64, received: u64, retransmits: u32) -> Counters {
        Counters {
            sent,
            received,
            retransmits,
        }
    }

    fn deltas(f: &NetworkFacts) -> (Option<bool>, Option<u64>, Option<u64>, Option<u32>) {
        (
            f.new_connection,
            f.bytes_sent,
            f.bytes_received,
            f.retransmits,
        )
    }

    #[test]
    fn a_connection_opened_for_the_call_counts_from_zero() {
        let mut d = CallDeltas::default();
        let flow = open(1, 1_000);
        let facts = d.facts(&flow, counters(300, 900, 1), 999 * MS);
        assert_eq!(deltas(&facts), (Some(true), Some(300), Some(900), Some(1)));
        assert!(facts.matched);
    }

    #[test]
    fn a_reused_connection_reports_only_what_this_call_moved() {
        let mut d = CallDeltas::default();
        let flow = open(1, 1_000);
        d.facts(&flow, counters(300, 900, 1), 1_000 * MS);
        let second = d.facts(&flow, counters(500, 1_400, 1), 5_000 * MS);
        assert_eq!(
            deltas(&second),
            (Some(false), Some(200), Some(500), Some(0))
        );
        let third = d.facts(&flow, counters(520, 1_410, 3), 9_000 * MS);
        assert_eq!(deltas(&third), (Some(false), Some(20), Some(10), Some(2)));
    }

    #[test]
    fn the_clock_slack_decides_whether_an_unseen_connection_is_new() {
        let mut d = CallDeltas::default();
        // Started 30 ms "before" the call by the converted clock: still this call's.
        let facts = d.facts(&open(1, 1_000), counters(10, 10, 0), 1_030 * MS);
        assert_eq!(facts.new_connection, Some(true));
        // Started 80 ms before and never seen: an older connection whose baseline is unknown.
        let facts = d.facts(&open(2, 1_000), counters(10, 10, 0), 1_080 * MS);
        assert_eq!(deltas(&facts), (Some(false), None, None, None));
    }

    #[test]
    fn a_closed_connection_forgets_its_baseline_and_its_successor_starts_fresh() {
        let mut d = CallDeltas::default();
        let mut flow = open(1, 1_000);
        d.facts(&flow, counters(100, 100, 0), 1_000 * MS);
        flow.state = FlowState::Closed;
        let last = d.facts(&flow, counters(150, 180, 0), 2_000 * MS);
        assert_eq!(deltas(&last), (Some(false), Some(50), Some(80), Some(0)));
        assert!(d.is_empty());
        // The same socket address reused by a new connection (new start): a new flow.
        let mut reborn = open(1, 3_000);
        reborn.id.start_mono_ns = 42;
        let facts = d.facts(&reborn, counters(7, 8, 0), 3_000 * MS);
        assert_eq!(deltas(&facts), (Some(true), Some(7), Some(8), Some(0)));
    }

    #[test]
    fn past_its_bound_the_baselines_are_forgotten_and_deltas_become_unknown() {
        let mut d = CallDeltas::new(2);
        for sock in 1..=2 {
            d.facts(&open(sock, 1_000), counters(1, 1, 0), 1_000 * MS);
        }
        assert_eq!(d.len(), 2);
        d.facts(&open(3, 1_000), counters(1, 1, 0), 1_000 * MS);
        assert_eq!(d.len(), 1, "cleared, then the newest kept");
        let facts = d.facts(&open(1, 1_000), counters(5, 5, 0), 9_000 * MS);
        assert_eq!(deltas(&facts), (Some(false), None, None, None));
    }
}
