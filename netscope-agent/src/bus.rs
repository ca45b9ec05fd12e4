//! The in-process [`EventBus`] of flow updates and call results: a bounded tokio broadcast
//! channel. Publishing never waits; a subscriber that falls more than `capacity` events behind
//! loses the oldest ones, and the loss is counted.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};

use crate::domain::{BusEvent, CounterSource, EventBus, Sample};

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    lagged: AtomicU64,
}

#[derive(Clone)]
pub struct BroadcastBus {
    tx: broadcast::Sender<BusEvent>,
    counters: Arc<Counters>,
}

impl BroadcastBus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            tx,
            counters: Arc::default(),
        }
    }

    pub fn subscribe(&self) -> BusSubscriber {
        BusSubscriber {
            rx: self.tx.subscribe(),
            counters: Arc::clone(&self.counters),
        }
    }

    /// The bus's counters for metrics (it does not keep the bus open).
    pub fn counter_source(&self) -> Arc<dyn CounterSource> {
        Arc::clone(&self.counters) as Arc<dyn CounterSource>
    }

    pub fn published(&self) -> u64 {
        self.counters.published.load(Ordering::Relaxed)
    }

    /// Updates that some subscriber missed because it fell behind.
    pub fn lagged(&self) -> u64 {
        self.counters.lagged.load(Ordering::Relaxed)
    }
}

/// The bus's counters, without keeping the bus open (holding a sender would).
impl CounterSource for Counters {
    fn component(&self) -> &'static str {
        "bus"
    }

    fn samples(&self) -> Vec<Sample> {
        vec![
            Sample::counter(
                "bus_published",
                "Flow updates and call results published in process",
                self.published.load(Ordering::Relaxed),
            ),
            Sample::counter(
                "bus_lagged",
                "Events a bus subscriber (printer, live view, call log) missed by falling behind",
                self.lagged.load(Ordering::Relaxed),
            ),
        ]
    }
}

impl EventBus for BroadcastBus {
    fn publish(&self, event: BusEvent) {
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        // No subscriber is not an error: nobody is listening right now.
        let _ = self.tx.send(event);
    }
}

pub struct BusSubscriber {
    rx: broadcast::Receiver<BusEvent>,
    counters: Arc<Counters>,
}

impl BusSubscriber {
    /// Updates that some subscriber of this bus missed so far.
    pub fn lagged(&self) -> u64 {
        self.counters.lagged.load(Ordering::Relaxed)
    }

    /// The next update; `None` once every publisher is gone. Lag is counted and skipped.
    pub async fn recv(&mut self) -> Option<BusEvent> {
        loop {
            match self.rx.recv().await {
                Ok(update) => return Some(update),
                Err(RecvError::Lagged(n)) => {
                    self.counters.lagged.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(missed = n, "bus subscriber fell behind");
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// The next update if one is already waiting; `None` when none is (or every publisher is
    /// gone: the next [`Self::recv`] says which). Lag is counted and skipped, as by `recv`.
    pub fn try_recv(&mut self) -> Option<BusEvent> {
        loop {
            match self.rx.try_recv() {
                Ok(update) => return Some(update),
                Err(TryRecvError::Lagged(n)) => {
                    self.counters.lagged.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(missed = n, "bus subscriber fell behind");
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FlowUpdate, FlowUpdateKind, flow::sample_flow};

    fn update(n: u64) -> BusEvent {
        BusEvent::Flow(FlowUpdate {
            kind: FlowUpdateKind::Closed,
            flow: Arc::new(sample_flow(n, 1)),
        })
    }

    fn sock(e: Option<BusEvent>) -> u64 {
        match e {
            Some(BusEvent::Flow(u)) => u.flow.id.sock_id,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_slow_subscriber_loses_the_oldest_and_it_is_counted() {
        let bus = BroadcastBus::new(2);
        let mut sub = bus.subscribe();
        for n in 0..5 {
            bus.publish(update(n));
        }
        assert_eq!(sock(sub.recv().await), 3);
        assert_eq!(bus.lagged(), 3);
        assert_eq!(bus.published(), 5);
        drop(bus);
        assert_eq!(sock(sub.recv().await), 4);
        assert!(sub.recv().await.is_none());
    }

    #[tokio::test]
    async fn try_recv_takes_what_is_waiting_counts_lag_and_never_waits() {
        let bus = BroadcastBus::new(2);
        let mut sub = bus.subscribe();
        assert!(sub.try_recv().is_none());
        for n in 0..4 {
            bus.publish(update(n));
        }
        assert_eq!(sock(sub.try_recv()), 2);
        assert_eq!(sock(sub.try_recv()), 3);
        assert!(sub.try_recv().is_none());
        assert_eq!(bus.lagged(), 2);
        drop(bus);
        assert!(sub.try_recv().is_none());
        assert!(sub.recv().await.is_none());
    }
}
