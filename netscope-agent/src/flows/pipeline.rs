//! From kernel events to flow updates: each decoded ring record becomes a [`Flow`], goes into
//! the [`FlowTable`] (expired flows evicted first), then onto the bus; whoever waits for a flow
//! (request correlation) is woken after every change.

use std::sync::{Arc, Mutex, PoisonError};

use netscope_common::{ConnEvent, EventKind};
use tokio::sync::Notify;

use super::{
    FlowTable,
    convert::{self, CountedCalls},
};
use crate::{
    clock::MonoClock,
    domain::{BusEvent, EventBus, MetricsRecorder},
};

/// Turns kernel events into flow updates: flow table first, then the bus; wakes whoever
/// waits for a flow (request correlation).
pub struct FlowPipeline {
    clock: MonoClock,
    table: Arc<Mutex<FlowTable>>,
    bus: Arc<dyn EventBus>,
    updated: Arc<Notify>,
    recorder: Option<Arc<dyn MetricsRecorder>>,
    /// Which call counts the kernel keeps (see [`Self::counting_calls`]).
    counted: CountedCalls,
}

impl FlowPipeline {
    pub fn new(table: Arc<Mutex<FlowTable>>, bus: Arc<dyn EventBus>) -> Self {
        Self {
            clock: MonoClock::new(),
            table,
            bus,
            updated: Arc::new(Notify::new()),
            recorder: None,
            counted: CountedCalls::BOTH,
        }
    }

    /// Which calls the kernel counts (the probe's per-message hooks); flows carry no count
    /// rather than a zero for the others.
    pub fn counting_calls(mut self, counted: CountedCalls) -> Self {
        self.counted = counted;
        self
    }

    /// Every flow update is also recorded here (metrics), losslessly.
    pub fn with_recorder(mut self, recorder: Arc<dyn MetricsRecorder>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Notified after every change of the flow table.
    pub fn updated(&self) -> Arc<Notify> {
        Arc::clone(&self.updated)
    }

    pub fn on_event(&self, kind: EventKind, event: ConnEvent) {
        let flow = convert::flow_from_event(kind, &event, &self.clock, self.counted);
        let now = self.clock.to_unix_ns(event.header.ts_ns);
        let update = {
            let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            table.evict_expired(now);
            table.apply(convert::update_kind(kind), flow, now)
        };
        self.updated.notify_waiters();
        if let Some(r) = &self.recorder {
            r.flow_updated(&update);
        }
        self.bus.publish(BusEvent::Flow(Arc::new(update)));
    }
}
