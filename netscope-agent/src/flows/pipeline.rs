//! From kernel events to flow updates: each decoded ring record becomes a [`Flow`], goes into
//! the [`FlowTable`] (expired flows evicted first), then onto the bus; whoever waits for a flow
//! (request correlation) is woken after every change.

use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicUsize, Ordering},
};

use netscope_common::{ConnEvent, EventKind};
use tokio::sync::{Notify, futures::Notified};

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
    updated: Arc<TableChanges>,
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
            updated: Arc::default(),
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

    /// Told of every change of the flow table.
    pub fn updated(&self) -> Arc<TableChanges> {
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
        self.updated.changed();
        if let Some(r) = &self.recorder {
            r.flow_updated(&update);
        }
        self.bus.publish(BusEvent::Flow(update));
    }
}

/// Wakes whoever waits for the flow table to change, and costs one atomic load when nobody
/// does (`Notify::notify_waiters` takes a lock every time: 12 % of the ring reader's samples
/// in a profile of `bench probe`, where nothing waits).
///
/// Protocol: a waiter holds a [`Waiting`] guard from before its first look at the table until
/// it stops waiting, and takes each [`Self::notified`] before looking. The reader changes the
/// table (under its lock), then reads the count. Either the reader saw the guard and wakes
/// the waiter, or the guard came later than that read — and so the waiter's look at the
/// table, which takes the table's lock after the guard, sees the change.
#[derive(Default)]
pub struct TableChanges {
    notify: Notify,
    waiting: AtomicUsize,
}

impl TableChanges {
    /// The table changed: wake every waiter, if any.
    pub fn changed(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Announces a waiter until the guard drops.
    pub fn waiting(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(self)
    }

    /// Completes at the next [`Self::changed`] after this call (while a [`Waiting`] guard is
    /// held), even before it is first polled.
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

/// A waiter announced to [`TableChanges`].
pub struct Waiting<'a>(&'a TableChanges);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::{future::Future, pin::pin};

    use super::*;

    /// Polls once, without a runtime.
    fn ready(f: impl Future) -> bool {
        let mut f = pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        f.as_mut().poll(&mut cx).is_ready()
    }

    #[test]
    fn a_waiter_is_woken_by_the_next_change() {
        let changes = TableChanges::default();
        let _waiting = changes.waiting();
        let changed = changes.notified();
        changes.changed();
        assert!(ready(changed));
    }

    #[test]
    fn a_change_while_nobody_waits_wakes_nobody_later() {
        let changes = TableChanges::default();
        changes.changed();
        let _waiting = changes.waiting();
        assert!(!ready(changes.notified()));
    }

    #[test]
    fn a_waiter_that_stopped_waiting_is_no_longer_counted() {
        let changes = TableChanges::default();
        drop(changes.waiting());
        let changed = changes.notified();
        changes.changed();
        assert!(
            !ready(changed),
            "changed() woke a Notified nobody announced"
        );
    }
}
