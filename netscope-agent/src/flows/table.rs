//! The agent's bounded view of outbound connections: open flows, and finished ones kept for a
//! retention window so that late readers (request correlation, the API) still find them.

use std::{
    collections::{HashMap, VecDeque, hash_map::Entry},
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use crate::domain::{
    CounterSource, Flow, FlowCursor, FlowFilter, FlowId, FlowPage, FlowQuery, FlowUpdate,
    FlowUpdateKind, Sample,
};

/// What the table did, for metrics and the shutdown report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTableStats {
    pub inserted: u64,
    pub updated: u64,
    /// Finished flows dropped after their retention window.
    pub expired: u64,
    /// Finished flows dropped early to make room.
    pub evicted_for_room: u64,
    /// Flows not kept because the table was full of open flows.
    pub rejected_full: u64,
}

/// Keys come from the kernel (socket addresses, ports): a fast per-process-seeded hash, not
/// SipHash, which was a third of the per-event cost (`cargo xtask bench flows`: 1.8 → 2.6 M
/// events/s per core).
type Hasher = foldhash::fast::RandomState;

pub struct FlowTable {
    /// Behind an `Arc` shared with the update that published it: one allocation per kernel event
    /// and no copy of the ~370-byte flow. Held inline, removing an expired flow moved it out of
    /// a cold bucket — six cache lines — and the buckets stayed sized for flows at 7/8 load
    /// (`bench probe`: expiry was ~40 % of the ring reader's time once the table was full).
    flows: HashMap<FlowId, Arc<Flow>, Hasher>,
    /// The latest flow per endpoint pair, for request correlation; `None` where nothing
    /// correlates (see [`Self::without_endpoint_index`]).
    by_endpoints: Option<HashMap<Endpoints, FlowId, Hasher>>,
    /// Finished flows in the order they finished, with their end (ns since the Unix epoch): the
    /// expiry test reads no flow.
    finished: VecDeque<(FlowId, u64)>,
    capacity: usize,
    retention_ns: u64,
    stats: FlowTableStats,
}

impl FlowTable {
    /// `capacity` ≥ 1 flows at most; finished flows are kept `retention_ns` after their end.
    pub fn new(capacity: usize, retention_ns: u64) -> Self {
        Self {
            flows: HashMap::default(),
            by_endpoints: Some(HashMap::default()),
            finished: VecDeque::new(),
            capacity: capacity.max(1),
            retention_ns,
            stats: FlowTableStats::default(),
        }
    }

    /// No index by endpoints: [`Self::find`] finds nothing. For `probe`, which correlates no
    /// request: keeping the index was a third of its ring reader's CPU (`bench probe`: a cache
    /// miss to insert each new flow's endpoints and one to drop them when it expires).
    pub fn without_endpoint_index(mut self) -> Self {
        self.by_endpoints = None;
        self
    }

    pub fn stats(&self) -> FlowTableStats {
        self.stats
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn get(&self, id: &FlowId) -> Option<&Flow> {
        self.flows.get(id).map(Arc::as_ref)
    }

    /// The latest flow between these two endpoints.
    pub fn find(&self, local: SocketAddr, remote: SocketAddr) -> Option<&Flow> {
        self.by_endpoints
            .as_ref()?
            .get(&Endpoints::of(local, remote))
            .and_then(|id| self.get(id))
    }

    /// The latest failed connect to `remote` that started at or after `since_unix_ns`.
    pub fn failed_to(&self, remote: SocketAddr, since_unix_ns: u64) -> Option<&Flow> {
        self.finished
            .iter()
            .rev()
            .filter_map(|(id, _)| self.get(id))
            .find(|f| {
                f.state == crate::domain::FlowState::Failed
                    && f.remote == remote
                    && f.start_unix_ns >= since_unix_ns
            })
    }

    /// Records what one kernel event says about a flow and returns the update to publish.
    pub fn apply(&mut self, kind: FlowUpdateKind, flow: Flow, now_unix_ns: u64) -> FlowUpdate {
        let id = flow.id;
        let finished = flow.is_finished();
        // A flow's endpoints are indexed when they first appear or change (the source port is
        // 0 until the connect picks one): a close does not index them again.
        let (flow, indexed) = if let Some(slot) = self.flows.get_mut(&id) {
            let same = (slot.local, slot.remote) == (flow.local, flow.remote);
            // Nobody else holds the previous version (no bus subscriber kept its update, no
            // reader is looking at it): overwritten where it is, without a new allocation.
            // Otherwise those holders keep theirs unchanged and the table takes a new one.
            match Arc::get_mut(slot) {
                Some(kept) => *kept = flow,
                None => *slot = Arc::new(flow),
            }
            self.stats.updated += 1;
            (Arc::clone(slot), same)
        } else if self.make_room(now_unix_ns) {
            let flow = Arc::new(flow);
            self.flows.insert(id, Arc::clone(&flow));
            self.stats.inserted += 1;
            (flow, false)
        } else {
            self.stats.rejected_full += 1;
            return FlowUpdate {
                kind,
                flow: Arc::new(flow),
            };
        };
        if !indexed && let Some(index) = &mut self.by_endpoints {
            index.insert(Endpoints::of(flow.local, flow.remote), id);
        }
        if finished {
            let end = flow.end_unix_ns.unwrap_or(now_unix_ns);
            self.finished.push_back((id, end));
        }
        FlowUpdate { kind, flow }
    }

    /// Drops finished flows whose retention window has passed.
    pub fn evict_expired(&mut self, now_unix_ns: u64) {
        while let Some((id, end)) = self.finished.front().copied() {
            if now_unix_ns.saturating_sub(end) < self.retention_ns {
                break;
            }
            self.finished.pop_front();
            if self.remove(&id) {
                self.stats.expired += 1;
            }
        }
    }

    fn make_room(&mut self, now_unix_ns: u64) -> bool {
        if self.flows.len() < self.capacity {
            return true;
        }
        self.evict_expired(now_unix_ns);
        while self.flows.len() >= self.capacity {
            let Some((id, _)) = self.finished.pop_front() else {
                return false;
            };
            if self.remove(&id) {
                self.stats.evicted_for_room += 1;
            }
        }
        true
    }

    fn remove(&mut self, id: &FlowId) -> bool {
        let Some(flow) = self.flows.remove(id) else {
            return false;
        };
        if let Some(index) = &mut self.by_endpoints
            && let Entry::Occupied(entry) = index.entry(Endpoints::of(flow.local, flow.remote))
            && entry.get() == id
        {
            entry.remove();
        }
        true
    }
}

/// A flow's (local, remote) endpoints as an index key: three integers, which hash in a few
/// instructions (two `SocketAddr`s hashed field by field were ~6 % of `run`'s ring reader).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Endpoints {
    local: u128,
    remote: u128,
    ports: u32,
}

impl Endpoints {
    fn of(local: SocketAddr, remote: SocketAddr) -> Self {
        // IPv4 as IPv4-mapped IPv6: one key space, and a flow's addresses keep one family.
        let bits = |a: SocketAddr| match a.ip() {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
            std::net::IpAddr::V6(v6) => v6.to_bits(),
        };
        Self {
            local: bits(local),
            remote: bits(remote),
            ports: u32::from(local.port()) << 16 | u32::from(remote.port()),
        }
    }
}

fn lock(t: &Mutex<FlowTable>) -> std::sync::MutexGuard<'_, FlowTable> {
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FlowQuery for Mutex<FlowTable> {
    /// Newest first: the matching flows past the cursor are selected (`O(n)`), then only the
    /// page is sorted, under the lock the ring reader also takes.
    fn flows(&self, filter: &FlowFilter, after: Option<FlowCursor>, limit: usize) -> FlowPage {
        let table = lock(self);
        let mut hits: Vec<(FlowCursor, &Flow)> = table
            .flows
            .values()
            .map(Arc::as_ref)
            .filter(|f| filter.matches(f))
            .map(|f| (FlowCursor::of(f), f))
            .filter(|(c, _)| after.is_none_or(|a| *c < a))
            .collect();
        let more = hits.len() > limit;
        if more {
            hits.select_nth_unstable_by(limit, |a, b| b.0.cmp(&a.0));
            hits.truncate(limit);
        }
        hits.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
        FlowPage {
            next: more
                .then(|| hits.last().map(|(c, _)| c.to_string()))
                .flatten(),
            flows: hits.into_iter().map(|(_, f)| f.clone()).collect(),
            table_len: table.len(),
        }
    }
}

impl CounterSource for Mutex<FlowTable> {
    fn component(&self) -> &'static str {
        "flow_table"
    }

    fn samples(&self) -> Vec<Sample> {
        let (s, len) = {
            let t = lock(self);
            (t.stats(), t.len())
        };
        const H: &str = "What the agent's flow table did with flows (action)";
        vec![
            Sample::counter("flow_table", H, s.inserted).with("action", "inserted"),
            Sample::counter("flow_table", H, s.updated).with("action", "updated"),
            Sample::counter("flow_table", H, s.expired).with("action", "expired"),
            Sample::counter("flow_table", H, s.evicted_for_room).with("action", "evicted_for_room"),
            Sample::counter("flow_table", H, s.rejected_full).with("action", "rejected_full"),
            Sample::gauge(
                "flow_table_flows",
                "Flows in the table now (open, and finished within retention)",
                len as u64,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FlowOutcome, FlowState, flow::sample_flow};

    fn flow(sock: u64, port: u16, state: FlowState, end: Option<u64>) -> Flow {
        Flow {
            state,
            outcome: (state != FlowState::Established).then_some(FlowOutcome::Closed),
            end_unix_ns: end,
            ..sample_flow(sock, port)
        }
    }

    #[test]
    fn close_replaces_the_established_flow() {
        let mut t = FlowTable::new(10, 1_000);
        t.apply(
            FlowUpdateKind::Established,
            flow(1, 5000, FlowState::Established, None),
            0,
        );
        let mut closed = flow(1, 5000, FlowState::Closed, Some(10));
        closed.bytes_sent = 42;
        t.apply(FlowUpdateKind::Closed, closed, 10);
        assert_eq!(t.len(), 1);
        let f = t
            .find(
                "127.0.0.1:5000".parse().unwrap(),
                "127.0.0.1:80".parse().unwrap(),
            )
            .unwrap();
        assert_eq!((f.state, f.bytes_sent), (FlowState::Closed, 42));
        assert_eq!(t.stats().inserted, 1);
        assert_eq!(t.stats().updated, 1);
    }

    #[test]
    fn a_close_overwrites_a_flow_nobody_holds_and_leaves_a_held_one_as_it_was() {
        let mut t = FlowTable::new(10, 1_000);
        let established = |sock| flow(sock, 5000, FlowState::Established, None);
        let closed = |sock| flow(sock, 5000, FlowState::Closed, Some(10));

        // Nobody kept the update of flow 1: its close reuses the table's allocation.
        t.apply(FlowUpdateKind::Established, established(1), 0);
        let before: *const Flow = t.get(&established(1).id).unwrap();
        let update = t.apply(FlowUpdateKind::Closed, closed(1), 10);
        assert!(std::ptr::eq(before, Arc::as_ptr(&update.flow)));
        assert_eq!(update.flow.state, FlowState::Closed);

        // A subscriber still holds flow 2's update: it keeps seeing it established.
        let held = t.apply(FlowUpdateKind::Established, established(2), 0);
        let update = t.apply(FlowUpdateKind::Closed, closed(2), 10);
        assert_eq!(held.flow.state, FlowState::Established);
        assert!(!Arc::ptr_eq(&held.flow, &update.flow));
        assert_eq!(t.get(&closed(2).id).unwrap().state, FlowState::Closed);
    }

    #[test]
    fn a_table_without_endpoint_index_keeps_flows_but_finds_none_by_endpoints() {
        let mut t = FlowTable::new(10, 1_000).without_endpoint_index();
        let f = flow(1, 5000, FlowState::Established, None);
        let id = f.id;
        t.apply(FlowUpdateKind::Established, f, 0);
        t.apply(
            FlowUpdateKind::Closed,
            flow(1, 5000, FlowState::Closed, Some(10)),
            10,
        );
        assert_eq!(t.get(&id).map(|f| f.state), Some(FlowState::Closed));
        let local = "127.0.0.1:5000".parse().unwrap();
        assert!(t.find(local, "127.0.0.1:80".parse().unwrap()).is_none());
        t.evict_expired(1_010);
        assert!(t.is_empty(), "expiry works without the index");
    }

    #[test]
    fn finished_flows_expire_after_retention() {
        let mut t = FlowTable::new(10, 1_000);
        t.apply(
            FlowUpdateKind::Closed,
            flow(1, 5000, FlowState::Closed, Some(100)),
            100,
        );
        t.apply(
            FlowUpdateKind::Established,
            flow(2, 5001, FlowState::Established, None),
            100,
        );
        t.evict_expired(1_099);
        assert_eq!(t.len(), 2);
        t.evict_expired(1_100);
        assert_eq!(t.len(), 1, "only the open flow stays");
        assert_eq!(t.stats().expired, 1);
        assert!(
            t.find(
                "127.0.0.1:5000".parse().unwrap(),
                "127.0.0.1:80".parse().unwrap()
            )
            .is_none()
        );
    }

    #[test]
    fn full_table_evicts_finished_before_refusing() {
        let mut t = FlowTable::new(2, u64::MAX);
        t.apply(
            FlowUpdateKind::Closed,
            flow(1, 5000, FlowState::Closed, Some(1)),
            1,
        );
        t.apply(
            FlowUpdateKind::Established,
            flow(2, 5001, FlowState::Established, None),
            1,
        );
        t.apply(
            FlowUpdateKind::Established,
            flow(3, 5002, FlowState::Established, None),
            1,
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t.stats().evicted_for_room, 1);
        // Now both are open: a third open flow is refused, yet still returned for publishing.
        let update = t.apply(
            FlowUpdateKind::Established,
            flow(4, 5003, FlowState::Established, None),
            1,
        );
        assert_eq!(update.flow.id.sock_id, 4);
        assert_eq!(t.len(), 2);
        assert_eq!(t.stats().rejected_full, 1);
        assert!(t.get(&update.flow.id).is_none());
    }

    #[test]
    fn pages_of_flows_come_newest_first_and_the_cursor_resumes_without_gaps() {
        let t = Mutex::new(FlowTable::new(100, u64::MAX));
        for n in 0..25u64 {
            let mut f = flow(n, 5000 + n as u16, FlowState::Established, None);
            f.id.start_mono_ns = 1_000 + n;
            lock(&t).apply(FlowUpdateKind::Established, f, 1);
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = t.flows(&FlowFilter::default(), after, 10);
            assert_eq!(page.table_len, 25);
            seen.extend(page.flows.iter().map(|f| f.id.sock_id));
            match page.next {
                Some(c) => after = Some(c.parse().unwrap()),
                None => break,
            }
        }
        let expected: Vec<u64> = (0..25).rev().collect();
        assert_eq!(seen, expected);
        let only = FlowFilter {
            port: Some(80),
            pid: Some(2),
            ..Default::default()
        };
        assert!(
            t.flows(&only, None, 10).flows.is_empty(),
            "no flow has pid 2"
        );
    }

    #[test]
    fn a_flow_is_found_whether_the_client_saw_its_endpoints_as_ipv4_or_ipv4_mapped_ipv6() {
        let mut t = FlowTable::new(10, 5);
        t.apply(
            FlowUpdateKind::Established,
            flow(1, 5000, FlowState::Established, None),
            1,
        );
        let find = |local: &str, remote: &str| {
            t.find(local.parse().unwrap(), remote.parse().unwrap())
                .map(|f| f.id.sock_id)
        };
        assert_eq!(find("127.0.0.1:5000", "127.0.0.1:80"), Some(1));
        assert_eq!(
            find("[::ffff:127.0.0.1]:5000", "[::ffff:127.0.0.1]:80"),
            Some(1)
        );
        assert_eq!(find("127.0.0.1:5001", "127.0.0.1:80"), None);
        assert_eq!(find("127.0.0.1:5000", "127.0.0.1:81"), None);
        assert_eq!(find("127.0.0.2:5000", "127.0.0.1:80"), None);
    }

    #[test]
    fn a_reused_tuple_points_at_the_newest_flow() {
        let mut t = FlowTable::new(10, 5);
        t.apply(
            FlowUpdateKind::Closed,
            flow(1, 5000, FlowState::Closed, Some(1)),
            1,
        );
        t.apply(
            FlowUpdateKind::Established,
            flow(2, 5000, FlowState::Established, None),
            2,
        );
        t.evict_expired(100);
        let f = t
            .find(
                "127.0.0.1:5000".parse().unwrap(),
                "127.0.0.1:80".parse().unwrap(),
            )
            .unwrap();
        assert_eq!(
            f.id.sock_id, 2,
            "expiring the old flow must not unlink the new one"
        );
    }
}
