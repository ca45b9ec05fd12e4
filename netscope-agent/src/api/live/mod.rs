//! `/ws/live`: the live view. One feeder task turns bus events into JSON messages tagged by
//! `type` — `call`, `flow` (closed or failed), `resilience` (on change), `stats` (every
//! second) — serialised once for every client, into a bounded broadcast ring.
//!
//! Protocol and invariants:
//! - A client first gets `hello` (version, mode, its filters), then the last `resilience`.
//! - Every message carries `at_unix_ms`: when the hub took its event off the bus.
//! - Each client reads the ring at its own pace; the ring is its bounded queue. A client that
//!   falls more than the ring behind gets `lagged{skipped}` and resumes at the oldest message
//!   kept; one that lags [`MAX_LAGS`] times in a row, or whose socket does not take a message
//!   within [`SEND_TIMEOUT`], is closed (1008). The pipeline never waits for a client.
//! - Messages are sent in batches, one flush each: what arrives within [`LINGER`] of the first.
//! - The server pings every [`PING_EVERY`]; a client silent for two pings is closed.
//! - At most `max_clients` at once: one more is refused with 503 before the upgrade.
//! - At shutdown every client gets a close frame (1001) and the feeder stops.

mod message;
mod session;

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};

use self::message::{FlowBody, ResilienceBody, Window, json};
pub use self::message::{Kind, LiveFilter, LiveMsg};
use crate::{
    bus::BusSubscriber,
    domain::{
        BusEvent, CounterSource, FlowUpdateKind, OutboundGateway, Sample,
        outcome::ResilienceSnapshot,
    },
};

pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);
pub const PING_EVERY: Duration = Duration::from_secs(10);
/// Lag notices in a row before a client is dropped.
pub const MAX_LAGS: u32 = 3;
/// Messages sent with one flush at most.
pub const BATCH: u64 = 256;
/// How long a client's batch waits for more messages before it is flushed.
pub const LINGER: Duration = Duration::from_millis(10);
/// Largest message a client may send (it has nothing to say but pongs and close).
pub const MAX_CLIENT_MESSAGE: usize = 4 << 10;

#[derive(Debug, Default)]
struct LiveCounters {
    clients: AtomicU64,
    sent: AtomicU64,
    lagged: AtomicU64,
    dropped_slow: AtomicU64,
    refused: AtomicU64,
}

pub struct LiveHub {
    tx: broadcast::Sender<Arc<LiveMsg>>,
    slots: Arc<Semaphore>,
    max_clients: usize,
    counters: LiveCounters,
    last_resilience: Mutex<Option<Utf8Bytes>>,
    stop: watch::Receiver<bool>,
    mode: &'static str,
}

impl LiveHub {
    /// `queue`: messages a client may fall behind before it is lagged.
    pub fn new(
        max_clients: usize,
        queue: usize,
        mode: &'static str,
        stop: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let (tx, _) = broadcast::channel(queue.max(16));
        Arc::new(Self {
            tx,
            slots: Arc::new(Semaphore::new(max_clients)),
            max_clients,
            counters: LiveCounters::default(),
            last_resilience: Mutex::new(None),
            stop,
            mode,
        })
    }

    fn publish(&self, msg: LiveMsg) {
        // Nobody listening is fine.
        let _ = self.tx.send(Arc::new(msg));
    }

    /// A client slot, or `None` when all are taken.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = Arc::clone(&self.slots).try_acquire_owned().ok();
        if permit.is_none() {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
        }
        permit
    }

    pub fn max_clients(&self) -> usize {
        self.max_clients
    }

    /// Feeds the ring from the bus until it closes or the agent stops.
    pub async fn feed(
        self: Arc<Self>,
        mut bus: BusSubscriber,
        gateway: Option<Arc<dyn OutboundGateway>>,
    ) {
        let mut stop = self.stop.clone();
        let mut second = tokio::time::interval(Duration::from_secs(1));
        let mut poll = tokio::time::interval(Duration::from_millis(500));
        let mut window = Window::default();
        loop {
            tokio::select! {
                event = bus.recv() => match event {
                    Some(e) => self.on_event(&e, &mut window),
                    None => break,
                },
                _ = second.tick() => {
                    let clients = self.counters.clients.load(Ordering::Relaxed);
                    if let Some(text) = json(Kind::Stats, &window.stats(clients)) {
                        self.publish(LiveMsg { kind: Kind::Stats, target: None, route: None, outcome: None, text });
                    }
                }
                _ = poll.tick(), if gateway.is_some() => {
                    if let Some(g) = &gateway {
                        self.on_resilience(&g.snapshot());
                    }
                }
                _ = stop.changed() => break,
            }
        }
    }

    /// Whether any client reads the ring now: with none, events are counted into the window
    /// but not serialised (the pipeline's capacity should not pay for an empty page).
    fn listened(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    fn on_event(&self, event: &BusEvent, window: &mut Window) {
        match event {
            BusEvent::Call(r) => {
                window.calls += 1;
                window.call_ms.push(r.duration_ms);
                if !self.listened() {
                    return;
                }
                if let Some(text) = json(Kind::Call, r.as_ref()) {
                    self.publish(LiveMsg {
                        kind: Kind::Call,
                        target: Some(r.ctx.target.0.clone()),
                        route: Some(r.ctx.route.0.clone()),
                        outcome: Some(r.outcome.into()),
                        text,
                    });
                }
            }
            BusEvent::Flow(u) => {
                if u.kind == FlowUpdateKind::Established {
                    if let Some(ns) = u.flow.connect_latency_ns {
                        window.connect_ms.push(ns as f64 / 1e6);
                    }
                    return;
                }
                window.flows += 1;
                if !self.listened() {
                    return;
                }
                let body = FlowBody {
                    event: u.kind,
                    flow: &u.flow,
                    duration_ns: u.flow.duration_ns(),
                };
                if let Some(text) = json(Kind::Flow, &body) {
                    self.publish(LiveMsg {
                        kind: Kind::Flow,
                        target: None,
                        route: None,
                        outcome: u.flow.outcome.map(Into::into),
                        text,
                    });
                }
            }
        }
    }

    /// Publishes the targets' state when it changed since the last poll.
    fn on_resilience(&self, snaps: &[ResilienceSnapshot]) {
        let Some(text) = json(Kind::Resilience, &ResilienceBody { targets: snaps }) else {
            return;
        };
        let mut last = self
            .last_resilience
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.as_ref() == Some(&text) {
            return;
        }
        *last = Some(text.clone());
        drop(last);
        self.publish(LiveMsg {
            kind: Kind::Resilience,
            target: None,
            route: None,
            outcome: None,
            text,
        });
    }
}

impl CounterSource for LiveHub {
    fn component(&self) -> &'static str {
        "live"
    }

    fn samples(&self) -> Vec<Sample> {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            Sample::gauge(
                "ws_clients",
                "WebSocket clients of /ws/live now",
                load(&c.clients),
            ),
            Sample::counter(
                "ws_messages_sent",
                "Messages sent to WebSocket clients",
                load(&c.sent),
            ),
            Sample::counter(
                "ws_messages_lagged",
                "Messages WebSocket clients skipped by falling behind",
                load(&c.lagged),
            ),
            Sample::counter(
                "ws_clients_dropped",
                "WebSocket clients closed for being too slow",
                load(&c.dropped_slow),
            ),
            Sample::counter(
                "ws_clients_refused",
                "WebSocket clients refused at the cap",
                load(&c.refused),
            ),
        ]
    }
}
