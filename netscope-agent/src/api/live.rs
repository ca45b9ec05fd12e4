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

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use futures_util::SinkExt as _;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, strum::EnumString, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Kind {
    Call,
    Flow,
    Resilience,
    Stats,
}

/// One message, serialised once, with what filters look at.
#[derive(Debug)]
pub struct LiveMsg {
    kind: Kind,
    target: Option<String>,
    route: Option<String>,
    outcome: Option<&'static str>,
    text: Utf8Bytes,
}

/// What a client asked to see (all when empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LiveFilter {
    pub types: Vec<Kind>,
    pub target: Option<String>,
    pub route: Option<String>,
    pub outcome: Option<String>,
}

impl LiveFilter {
    fn wants(&self, m: &LiveMsg) -> bool {
        if !self.types.is_empty() && !self.types.contains(&m.kind) {
            return false;
        }
        // Field filters narrow calls and flows; resilience and stats always pass.
        if matches!(m.kind, Kind::Resilience | Kind::Stats) {
            return true;
        }
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        eq(&self.target, m.target.as_deref())
            && eq(&self.route, m.route.as_deref())
            && eq(&self.outcome, m.outcome)
    }
}

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

/// A message: its type, when the hub took the event off the bus (ms since the Unix epoch),
/// and the event.
#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: Kind,
    at_unix_ms: u64,
    #[serde(flatten)]
    body: &'a T,
}

fn json<T: Serialize>(kind: Kind, body: &T) -> Option<Utf8Bytes> {
    let at_unix_ms = crate::clock::now_unix_ms();
    serde_json::to_string(&Tagged {
        kind,
        at_unix_ms,
        body,
    })
    .ok()
    .map(Utf8Bytes::from)
}

#[derive(Serialize)]
struct FlowBody<'a> {
    event: FlowUpdateKind,
    #[serde(flatten)]
    flow: &'a crate::domain::Flow,
    duration_ns: Option<u64>,
}

#[derive(Serialize)]
struct ResilienceBody<'a> {
    targets: &'a [ResilienceSnapshot],
}

#[derive(Serialize, Default)]
struct StatsBody {
    calls_per_s: u64,
    flows_per_s: u64,
    call_ms_p50: Option<f64>,
    call_ms_p99: Option<f64>,
    connect_ms_p50: Option<f64>,
    connect_ms_p99: Option<f64>,
    clients: u64,
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(i).copied()
}

/// The current second's samples, for the `stats` message.
#[derive(Default)]
struct Window {
    calls: u64,
    flows: u64,
    call_ms: Vec<f64>,
    connect_ms: Vec<f64>,
}

impl Window {
    fn stats(&mut self, clients: u64) -> StatsBody {
        self.call_ms.sort_by(f64::total_cmp);
        self.connect_ms.sort_by(f64::total_cmp);
        let w = std::mem::take(self);
        StatsBody {
            calls_per_s: w.calls,
            flows_per_s: w.flows,
            call_ms_p50: quantile(&w.call_ms, 0.5),
            call_ms_p99: quantile(&w.call_ms, 0.99),
            connect_ms_p50: quantile(&w.connect_ms, 0.5),
            connect_ms_p99: quantile(&w.connect_ms, 0.99),
            clients,
        }
    }
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

    fn on_event(&self, event: &BusEvent, window: &mut Window) {
        match event {
            BusEvent::Call(r) => {
                window.calls += 1;
                window.call_ms.push(r.duration_ms);
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

    /// Serves one client until it leaves, lags too often, stops answering, or the agent stops.
    pub async fn serve(
        self: Arc<Self>,
        mut socket: WebSocket,
        filter: LiveFilter,
        _slot: OwnedSemaphorePermit,
    ) {
        self.counters.clients.fetch_add(1, Ordering::Relaxed);
        let reason = self.session(&mut socket, &filter).await;
        self.counters.clients.fetch_sub(1, Ordering::Relaxed);
        if let Some((code, why)) = reason {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(why),
            };
            let _ =
                tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
        }
    }

    /// The session loop; returns the close frame to send, if any.
    async fn session(
        &self,
        socket: &mut WebSocket,
        filter: &LiveFilter,
    ) -> Option<(u16, &'static str)> {
        let mut rx = self.tx.subscribe();
        let mut stop = self.stop.clone();
        #[derive(Serialize)]
        struct Hello<'a> {
            version: &'static str,
            mode: &'static str,
            filters: &'a LiveFilter,
        }
        let hello = Hello {
            version: env!("CARGO_PKG_VERSION"),
            mode: self.mode,
            filters: filter,
        };
        let hello =
            serde_json::to_string(&serde_json::json!({"type": "hello", "hello": hello})).ok()?;
        self.send(socket, Message::Text(hello.into())).await.ok()?;
        let wants_resilience = filter.types.is_empty() || filter.types.contains(&Kind::Resilience);
        let last = self
            .last_resilience
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if wants_resilience && let Some(r) = last {
            self.send(socket, Message::Text(r)).await.ok()?;
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut last_heard = Instant::now();
        let mut lags_in_a_row = 0u32;
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Ok(m) => {
                        let sent = match self.send_batch(socket, &mut rx, filter, m).await {
                            Ok(None) => {
                                lags_in_a_row = 0;
                                Ok(())
                            }
                            Ok(Some(skipped)) => {
                                lags_in_a_row += 1;
                                self.lagged(socket, skipped, lags_in_a_row).await
                            }
                            Err(why) => Err(why),
                        };
                        if let Err(why) = sent {
                            self.counters.dropped_slow.fetch_add(1, Ordering::Relaxed);
                            return Some((close_code::POLICY, why));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        lags_in_a_row += 1;
                        if let Err(why) = self.lagged(socket, skipped, lags_in_a_row).await {
                            self.counters.dropped_slow.fetch_add(1, Ordering::Relaxed);
                            return Some((close_code::POLICY, why));
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return Some((close_code::AWAY, "agent stopping")),
                },
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => last_heard = Instant::now(),
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > 2 * PING_EVERY {
                        return Some((close_code::POLICY, "no answer to pings"));
                    }
                    if self.send(socket, Message::Ping(Default::default())).await.is_err() {
                        return None;
                    }
                }
                _ = stop.changed() => return Some((close_code::AWAY, "agent stopping")),
            }
        }
    }

    /// Sends `first` and what arrives within [`LINGER`] after it (up to [`BATCH`] messages)
    /// with one flush: one wake-up and one write for many frames when the agent is busy, at
    /// the cost of at most [`LINGER`] of latency. Returns how many messages the client skipped,
    /// when it turned out to lag meanwhile.
    async fn send_batch(
        &self,
        socket: &mut WebSocket,
        rx: &mut broadcast::Receiver<Arc<LiveMsg>>,
        filter: &LiveFilter,
        first: Arc<LiveMsg>,
    ) -> Result<Option<u64>, &'static str> {
        let linger_until = tokio::time::Instant::now() + LINGER;
        let mut next = Some(first);
        let mut queued = 0u64;
        let mut skipped = None;
        let mut lingered = false;
        let batch = async {
            while let Some(m) = next.take() {
                if filter.wants(&m) {
                    socket.feed(Message::Text(m.text.clone())).await?;
                    queued += 1;
                }
                if queued >= BATCH {
                    break;
                }
                let mut more = rx.try_recv();
                if matches!(more, Err(broadcast::error::TryRecvError::Empty)) && !lingered {
                    // Sleep rather than wait on the ring: a wake-up per batch, not per message.
                    tokio::time::sleep_until(linger_until).await;
                    lingered = true;
                    more = rx.try_recv();
                }
                let more = match more {
                    Err(broadcast::error::TryRecvError::Empty) => {
                        Err(broadcast::error::RecvError::Closed)
                    }
                    Ok(m) => Ok(m),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Err(broadcast::error::RecvError::Lagged(n))
                    }
                    Err(broadcast::error::TryRecvError::Closed) => {
                        Err(broadcast::error::RecvError::Closed)
                    }
                };
                match more {
                    Ok(m) => next = Some(m),
                    Err(broadcast::error::RecvError::Lagged(n)) => skipped = Some(n),
                    // Linger over, or closing (the next `recv` says so).
                    Err(broadcast::error::RecvError::Closed) => {}
                }
            }
            socket.flush().await
        };
        match tokio::time::timeout(SEND_TIMEOUT, batch).await {
            Ok(Ok(())) => {
                self.counters.sent.fetch_add(queued, Ordering::Relaxed);
                Ok(skipped)
            }
            _ => Err("too slow: messages were not taken in time"),
        }
    }

    /// Tells the client it skipped `skipped` messages; `Err` when it lags too often.
    async fn lagged(
        &self,
        socket: &mut WebSocket,
        skipped: u64,
        in_a_row: u32,
    ) -> Result<(), &'static str> {
        self.counters.lagged.fetch_add(skipped, Ordering::Relaxed);
        if in_a_row >= MAX_LAGS {
            return Err("too slow: lagged repeatedly");
        }
        let notice = format!("{{\"type\":\"lagged\",\"skipped\":{skipped}}}");
        self.send(socket, Message::Text(notice.into()))
            .await
            .map_err(|()| "too slow")
    }

    async fn send(&self, socket: &mut WebSocket, m: Message) -> Result<(), ()> {
        match tokio::time::timeout(SEND_TIMEOUT, socket.send(m)).await {
            Ok(Ok(())) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: Kind, target: &str, outcome: &'static str) -> LiveMsg {
        LiveMsg {
            kind,
            target: Some(target.into()),
            route: Some("r".into()),
            outcome: Some(outcome),
            text: Utf8Bytes::from_static("{}"),
        }
    }

    #[test]
    fn filters_narrow_calls_and_flows_but_never_hide_stats() {
        let f = LiveFilter {
            types: vec![Kind::Call, Kind::Stats],
            target: Some("a".into()),
            ..Default::default()
        };
        assert!(f.wants(&msg(Kind::Call, "a", "response")));
        assert!(!f.wants(&msg(Kind::Call, "b", "response")));
        assert!(!f.wants(&msg(Kind::Flow, "a", "closed")));
        assert!(f.wants(&msg(Kind::Stats, "zzz", "x")));
        assert!(LiveFilter::default().wants(&msg(Kind::Flow, "x", "refused")));
    }

    #[test]
    fn stats_take_quantiles_of_the_second_and_reset() {
        let mut w = Window {
            calls: 100,
            call_ms: (1..=100).map(f64::from).collect(),
            ..Window::default()
        };
        let s = w.stats(2);
        assert_eq!(s.calls_per_s, 100);
        assert_eq!(s.call_ms_p50, Some(51.0));
        assert_eq!(s.call_ms_p99, Some(99.0));
        assert_eq!(w.stats(0).calls_per_s, 0, "reset after each second");
    }
}
