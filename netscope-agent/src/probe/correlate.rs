//! Request ↔ connection correlation: the kernel's facts for the connection a call used.
//!
//! The call's 4-tuple (from the HTTP client) finds the flow; if the kernel's `Established`
//! event is not drained yet, the ring reader is poked and the table watched, for a bounded
//! time. Bytes and retransmits come from the socket's live kernel counters and turns (this
//! module reads them from the BPF map; a closed flow carries its own); [`CallDeltas`] picks the
//! attempt's turn. When no flow matches, the facts say so and carry nothing else.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use netscope_common::SockState;
use tokio::sync::Notify;

use crate::{
    clock::{monotonic_now_ns, unix_ns},
    domain::{
        ConnectionObserver, Flow, FlowState,
        outcome::{BoxFuture, NetworkFacts},
    },
    flows::{
        AttemptSpan, CallDeltas, ConnectionView, Counters, FlowTable, TableChanges, convert::turn,
    },
};

pub struct Correlator {
    table: Arc<Mutex<FlowTable>>,
    socks: Mutex<BpfHashMap<MapData, u64, SockState>>,
    /// Told whenever the flow table changes.
    updated: Arc<TableChanges>,
    /// Pokes the ring reader to drain now.
    kick: Arc<Notify>,
    deltas: Mutex<CallDeltas>,
    wait: Duration,
}

impl Correlator {
    pub fn new(
        table: Arc<Mutex<FlowTable>>,
        socks: BpfHashMap<MapData, u64, SockState>,
        updated: Arc<TableChanges>,
        kick: Arc<Notify>,
        wait: Duration,
    ) -> Self {
        Self {
            table,
            socks: Mutex::new(socks),
            updated,
            kick,
            deltas: Mutex::new(CallDeltas::default()),
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

    /// The connection now: live from the kernel while it is open, final once closed.
    fn view(&self, flow: &Flow) -> ConnectionView {
        if flow.state == FlowState::Established {
            let socks = self.socks.lock().unwrap_or_else(PoisonError::into_inner);
            if let Ok(s) = socks.get(&flow.id.sock_id, 0)
                && s.start_ns == flow.id.start_mono_ns
            {
                return ConnectionView {
                    now: Counters {
                        sent: s.bytes_sent,
                        received: s.bytes_received,
                        retransmits: s.retransmits,
                    },
                    turns: [turn(&s.turn), turn(&s.prev_turn)],
                };
            }
        }
        ConnectionView::of(flow)
    }

    fn compute(&self, flow: &Flow, span: AttemptSpan) -> NetworkFacts {
        let view = self.view(flow);
        self.deltas
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .facts(flow, &view, span)
    }
}

impl Correlator {
    /// Waits (bounded) until `find` sees something, poking the ring reader meanwhile.
    async fn wait_for<T>(&self, find: impl Fn(&Self) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + self.wait;
        let _waiting = self.updated.waiting();
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
        attempt_started_mono_ns: u64,
    ) -> BoxFuture<'_, NetworkFacts> {
        // Now, before any wait: the attempt's response has just been read.
        let span = AttemptSpan {
            started_mono_ns: attempt_started_mono_ns,
            ended_mono_ns: monotonic_now_ns(),
        };
        Box::pin(async move {
            match self.wait_for(|me| me.find(local, remote)).await {
                Some(flow) => self.compute(&flow, span),
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
