//! Per-call facts of a connection: what the kernel counted on it *during one attempt*.
//!
//! The kernel delimits turns (see `netscope-ebpf`'s `turns`): a turn starts at a send that
//! follows received data, holding the connection's counters at that instant; the kernel keeps
//! the last two. HTTP/1.1 runs one exchange at a time on a connection, so an attempt owns
//! exactly one turn: the one that started between the attempt's start and the moment its
//! response was read. Its share ends where the next turn starts, or at the counters now when
//! it is the last one.
//!
//! Why turns, and not "counters at the end of the previous call": by the time a call asks, its
//! connection may be back in the pool and the next call may already have sent on it. Counters
//! read then hold part of the next call (that call then reports too little). The kernel records
//! the boundary when the next request is sent, so a late reader still gets exactly its own
//! share.
//!
//! Each turn is claimed once (a connection's claims only move forward). When no turn matches —
//! a kernel that counts no live bytes, or a turn older than the two kept — the bytes are
//! unknown, never guessed; except that a connection opened inside the attempt and already
//! closed has totals that are all the attempt's.

use std::collections::HashMap;

use crate::domain::{Flow, FlowState, Turn, outcome::NetworkFacts};

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

    /// The counters at the start of `turn`.
    pub fn at(turn: &Turn) -> Self {
        Self {
            sent: turn.sent,
            received: turn.received,
            retransmits: turn.retransmits,
        }
    }
}

/// A connection as the kernel shows it now: its counters and its last two turns, newest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionView {
    pub now: Counters,
    pub turns: [Turn; 2],
}

impl ConnectionView {
    /// A flow's own view: final counters and turns once it is closed.
    pub fn of(flow: &Flow) -> Self {
        Self {
            now: Counters::of(flow),
            turns: flow.turns,
        }
    }
}

/// An attempt's bounds on CLOCK_MONOTONIC: its start, and the moment its response was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptSpan {
    pub started_mono_ns: u64,
    pub ended_mono_ns: u64,
}

impl AttemptSpan {
    fn contains(&self, t: u64) -> bool {
        (self.started_mono_ns..=self.ended_mono_ns).contains(&t)
    }
}

/// Claims kept at most by default (connections idle in pools).
pub const MAX_CLAIMS: usize = 65_536;

/// The last turn claimed on every open connection, keyed by the flow's identity.
#[derive(Debug)]
pub struct CallDeltas {
    claimed: HashMap<(u64, u64), u64>,
    max: usize,
}

impl Default for CallDeltas {
    fn default() -> Self {
        Self::new(MAX_CLAIMS)
    }
}

impl CallDeltas {
    /// Keeps at most `max` claims; past it, they are all forgotten (a turn could then be
    /// claimed twice only by two attempts whose spans both contain its start).
    pub fn new(max: usize) -> Self {
        Self {
            claimed: HashMap::new(),
            max: max.max(1),
        }
    }

    /// The facts of an attempt over `span` that used `flow`, which the kernel shows as `view`.
    pub fn facts(&mut self, flow: &Flow, view: &ConnectionView, span: AttemptSpan) -> NetworkFacts {
        let key = (flow.id.sock_id, flow.id.start_mono_ns);
        let claimed = self.claimed.get(&key).copied().unwrap_or(0);
        let [last, prev] = view.turns;
        // Oldest first: an attempt takes the earliest unclaimed turn inside its span.
        let mine = [(prev, Counters::at(&last)), (last, view.now)]
            .into_iter()
            .find(|(t, _)| t.start_mono_ns > claimed && span.contains(t.start_mono_ns));
        let opened_here = flow.id.start_mono_ns >= span.started_mono_ns;
        let (new_connection, share) = match mine {
            Some((turn, end)) => {
                self.claim(key, turn.start_mono_ns);
                let first = turn.sent == 0 && turn.received == 0;
                (first, Some(minus(end, Counters::at(&turn))))
            }
            None if opened_here && flow.is_finished() => (true, Some(view.now)),
            None => (opened_here, None),
        };
        if flow.state != FlowState::Established {
            self.claimed.remove(&key);
        }
        NetworkFacts {
            matched: true,
            local: Some(flow.local),
            remote: Some(flow.remote),
            new_connection: Some(new_connection),
            connect_latency_ns: flow.connect_latency_ns,
            bytes_sent: share.map(|c| c.sent),
            bytes_received: share.map(|c| c.received),
            retransmits: share.map(|c| c.retransmits),
            srtt_us: flow.srtt_us,
            connect_errno: None,
        }
    }

    fn claim(&mut self, key: (u64, u64), turn_start: u64) {
        if self.claimed.len() >= self.max && !self.claimed.contains_key(&key) {
            self.claimed.clear();
        }
        self.claimed.insert(key, turn_start);
    }

    /// Claims held now.
    pub fn len(&self) -> usize {
        self.claimed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.claimed.is_empty()
    }
}

fn minus(end: Counters, start: Counters) -> Counters {
    Counters {
        sent: end.sent.saturating_sub(start.sent),
        received: end.received.saturating_sub(start.received),
        retransmits: end.retransmits.saturating_sub(start.retransmits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::flow::sample_flow;

    /// An open connection whose `connect()` was at `start` (monotonic ns).
    fn open(sock: u64, start: u64) -> Flow {
        let mut f = sample_flow(sock, 1);
        f.state = FlowState::Established;
        f.id.start_mono_ns = start;
        f
    }

    fn counters(sent: u64, received: u64, retransmits: u32) -> Counters {
        Counters {
            sent,
            received,
            retransmits,
        }
    }

    fn turn(start: u64, sent: u64, received: u64) -> Turn {
        Turn {
            start_mono_ns: start,
            sent,
            received,
            retransmits: 0,
        }
    }

    fn view(now: Counters, last: Turn, prev: Turn) -> ConnectionView {
        ConnectionView {
            now,
            turns: [last, prev],
        }
    }

    fn span(started: u64, ended: u64) -> AttemptSpan {
        AttemptSpan {
            started_mono_ns: started,
            ended_mono_ns: ended,
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
    fn a_connection_opened_for_the_attempt_counts_from_its_first_turn() {
        let mut d = CallDeltas::default();
        let flow = open(1, 110);
        let now = counters(300, 900, 1);
        let facts = d.facts(
            &flow,
            &view(now, turn(120, 0, 0), Turn::default()),
            span(100, 200),
        );
        assert_eq!(deltas(&facts), (Some(true), Some(300), Some(900), Some(1)));
        assert!(facts.matched);
    }

    #[test]
    fn a_reused_connection_reports_only_its_own_turn() {
        let mut d = CallDeltas::default();
        let flow = open(1, 10);
        let first = turn(20, 0, 0);
        d.facts(
            &flow,
            &view(counters(300, 900, 0), first, Turn::default()),
            span(10, 50),
        );
        let second = turn(120, 300, 900);
        let facts = d.facts(
            &flow,
            &view(counters(500, 1_400, 2), second, first),
            span(100, 200),
        );
        assert_eq!(deltas(&facts), (Some(false), Some(200), Some(500), Some(2)));
    }

    #[test]
    fn an_attempt_read_after_the_next_request_was_sent_still_gets_its_own_bytes() {
        // The race: attempt B read its response, its connection went back to the pool, and
        // attempt C sent its request before B's facts were computed.
        let mut d = CallDeltas::default();
        let flow = open(1, 10);
        let b = turn(120, 300, 900);
        let c = turn(190, 500, 1_400);
        let now = counters(560, 1_400, 0); // C's request is counted, its response not yet
        let facts = d.facts(&flow, &view(now, c, b), span(100, 200));
        assert_eq!(deltas(&facts), (Some(false), Some(200), Some(500), Some(0)));
        // C, later, gets the rest and not B's share again.
        let later = view(counters(600, 2_000, 0), c, b);
        let facts = d.facts(&flow, &later, span(180, 300));
        assert_eq!(deltas(&facts), (Some(false), Some(100), Some(600), Some(0)));
    }

    #[test]
    fn a_turn_is_claimed_once() {
        let mut d = CallDeltas::default();
        let flow = open(1, 10);
        let v = view(counters(10, 10, 0), turn(120, 0, 0), Turn::default());
        assert_eq!(d.facts(&flow, &v, span(100, 200)).bytes_sent, Some(10));
        let again = d.facts(&flow, &v, span(110, 210));
        assert_eq!(deltas(&again), (Some(false), None, None, None));
    }

    #[test]
    fn a_turn_outside_the_attempt_is_not_its_share() {
        let mut d = CallDeltas::default();
        // The kernel counts no live bytes (no turns), or the attempt's turn is older than the
        // two kept: unknown, not guessed.
        let facts = d.facts(
            &open(1, 10),
            &view(counters(5, 5, 0), Turn::default(), Turn::default()),
            span(100, 200),
        );
        assert_eq!(deltas(&facts), (Some(false), None, None, None));
        let facts = d.facts(
            &open(2, 10),
            &view(counters(5, 5, 0), turn(300, 1, 1), turn(250, 0, 0)),
            span(100, 200),
        );
        assert_eq!(deltas(&facts), (Some(false), None, None, None));
    }

    #[test]
    fn without_turns_a_connection_opened_and_closed_inside_the_attempt_is_all_its_own() {
        let mut d = CallDeltas::default();
        let mut flow = open(1, 150);
        flow.state = FlowState::Closed;
        let facts = d.facts(
            &flow,
            &view(counters(7, 8, 0), Turn::default(), Turn::default()),
            span(100, 200),
        );
        assert_eq!(deltas(&facts), (Some(true), Some(7), Some(8), Some(0)));
    }

    #[test]
    fn a_closed_connection_forgets_its_claim() {
        let mut d = CallDeltas::default();
        let mut flow = open(1, 10);
        d.facts(
            &flow,
            &view(counters(100, 100, 0), turn(20, 0, 0), Turn::default()),
            span(10, 50),
        );
        assert_eq!(d.len(), 1);
        flow.state = FlowState::Closed;
        let last = view(counters(150, 180, 0), turn(120, 100, 100), turn(20, 0, 0));
        let facts = d.facts(&flow, &last, span(100, 200));
        assert_eq!(deltas(&facts), (Some(false), Some(50), Some(80), Some(0)));
        assert!(d.is_empty());
    }

    #[test]
    fn past_its_bound_the_claims_are_forgotten() {
        let mut d = CallDeltas::new(2);
        for sock in 1..=3 {
            let v = view(counters(1, 1, 0), turn(20, 0, 0), Turn::default());
            d.facts(&open(sock, 10), &v, span(10, 50));
        }
        assert_eq!(d.len(), 1, "cleared, then the newest kept");
    }
}
