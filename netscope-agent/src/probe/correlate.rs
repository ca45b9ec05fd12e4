//! Request ↔ connection correlation: the kernel's facts for the connection a call used.
//!
//! The call's 4-tuple (from the HTTP client) finds the flow; if the kernel's `Established`
//! event is not drained yet, the ring reader is poked and the table watched, for a bounded
//! time. Bytes and retransmits are deltas of the socket's live kernel counters: HTTP/1.1 runs one
//! request at a time on a connection, so the counters at the end of the previous call on it are
//! this call's baseline; a connection no earlier call used was opened for this one and starts
//! from zero. When no flow matches, the facts say so and carry nothing else.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use netscope_common::SockState;
use tokio::sync::Notify;

use super::FlowTable;
use crate::{
    clock::unix_ns,
    domain::{
        ConnectionObserver, Flow, FlowState,
        outcome::{BoxFuture, NetworkFacts},
    },
};

/// Counters of a connection at some moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    sent: u64,
    received: u64,
    retransmits: u32,
}

/// How far a flow's start (kernel monotonic → wall time) may lie before the call's start and
/// still be a connection opened for that call.
const CLOCK_SLACK_NS: u64 = 50_000_000;

/// Baselines kept at most (connections idle in pools); the oldest go first.
const MAX_BASELINES: usize = 65_536;

pub struct Correlator {
    table: Arc<Mutex<FlowTable>>,
    socks: Mutex<BpfHashMap<MapData, u64, SockState>>,
    /// Notified whenever the flow table changes.
    updated: Arc<Notify>,
    /// Pokes the ring reader to drain now.
    kick: Arc<Notify>,
    baselines: Mutex<HashMap<(u64, u64), Counters>>,
    wait: Duration,
}

impl Correlator {
    pub fn new(
        table: Arc<Mutex<FlowTable>>,
        socks: BpfHashMap<MapData, u64, SockState>,
        updated: Arc<Notify>,
        kick: Arc<Notify>,
        wait: Duration,
    ) -> Self {
        Self {
            table,
            socks: Mutex::new(socks),
            updated,
            kick,
            baselines: Mutex::new(HashMap::new()),
            wait,
        }
    }

    fn find(&self, local: SocketAddr, remote: SocketAddr) -> Option<Flow> {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .find(local, remote)
            .cloned()
    }

    /// The connection's counters now: live from the kernel while it is open, final once closed.
    fn counters(&self, flow: &Flow) -> Counters {
        if flow.state == FlowState::Established {
            let socks = self.socks.lock().unwrap_or_else(PoisonError::into_inner);
            if let Ok(s) = socks.get(&flow.id.sock_id, 0)
                && s.start_ns == flow.id.start_mono_ns
            {
                return Counters {
                    sent: s.bytes_sent,
                    received: s.bytes_received,
                    retransmits: s.retransmits,
                };
            }
        }
        Counters {
            sent: flow.bytes_sent,
            received: flow.bytes_received,
            retransmits: flow.retransmits,
        }
    }

    fn compute(&self, flow: &Flow, call_started: SystemTime) -> NetworkFacts {
        let key = (flow.id.sock_id, flow.id.start_mono_ns);
        let now = self.counters(flow);
        let mut baselines = self
            .baselines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A connection an earlier call used has its baseline here. One without was opened for
        // this call — the client opens connections only for calls — when it started around the
        // call's start: the flow's start is a kernel monotonic time converted to wall time,
        // so it is compared with a slack rather than exactly (compared exactly, a connection
        // opened at once could look older than the call, and its bytes were lost).
        let (new_connection, base) = match baselines.get(&key) {
            Some(b) => (false, Some(*b)),
            None if flow.start_unix_ns + CLOCK_SLACK_NS >= unix_ns(call_started) => {
                (true, Some(Counters::default()))
            }
            // Older than the call and never seen (its baseline was evicted): unknown.
            None => (false, None),
        };
        if flow.state == FlowState::Established {
            if baselines.len() >= MAX_BASELINES {
                baselines.clear();
            }
            baselines.insert(key, now);
        } else {
            baselines.remove(&key);
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
}

impl Correlator {
    /// Waits (bounded) until `find` sees something, poking the ring reader meanwhile.
    async fn wait_for<T>(&self, find: impl Fn(&Self) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + self.wait;
        loop {
            let changed = self.updated.notified();
            if let Some(found) = find(self) {
                return Some(found);
            }
            self.kick.notify_one();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, changed).await.is_err() {
                return None;
            }
        }
    }
}

impl ConnectionObserver for Correlator {
    fn failed_connect(
        &self,
        remote: SocketAddr,
        call_started: SystemTime,
    ) -> BoxFuture<'_, NetworkFacts> {
        Box::pin(async move {
            let since = unix_ns(call_started);
            let flow = self
                .wait_for(|me| {
                    me.table
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .failed_to(remote, since)
                        .cloned()
                })
                .await;
            match flow {
                Some(f) => NetworkFacts {
                    matched: true,
                    local: Some(f.local),
                    remote: Some(f.remote),
                    new_connection: Some(true),
                    connect_errno: f.errno,
                    bytes_sent: Some(f.bytes_sent),
                    bytes_received: Some(f.bytes_received),
                    retransmits: Some(f.retransmits),
                    ..NetworkFacts::default()
                },
                None => NetworkFacts {
                    remote: Some(remote),
                    ..NetworkFacts::default()
                },
            }
        })
    }

    fn facts(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
        call_started: SystemTime,
    ) -> BoxFuture<'_, NetworkFacts> {
        Box::pin(async move {
            match self.wait_for(|me| me.find(local, remote)).await {
                Some(flow) => self.compute(&flow, call_started),
                None => NetworkFacts {
                    matched: false,
                    local: Some(local),
                    remote: Some(remote),
                    ..NetworkFacts::default()
                },
            }
        })
    }
}
