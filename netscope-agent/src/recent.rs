//! The last calls' results, in a bounded in-memory log (for `/api/v1/calls`), fed from the bus.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
};

use crate::{
    bus::BusSubscriber,
    domain::{BusEvent, CallFilter, CallQuery, outcome::OutboundResult},
};

pub struct RecentCalls {
    capacity: usize,
    log: Mutex<VecDeque<Arc<OutboundResult>>>,
}

impl RecentCalls {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            log: Mutex::new(VecDeque::with_capacity(capacity.clamp(1, 4096))),
        }
    }

    pub fn push(&self, result: Arc<OutboundResult>) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if log.len() == self.capacity {
            log.pop_front();
        }
        log.push_back(result);
    }

    /// Keeps every call result the bus carries until it closes.
    pub async fn feed(self: Arc<Self>, mut bus: BusSubscriber) {
        while let Some(event) = bus.recv().await {
            if let BusEvent::Call(r) = event {
                self.push(r);
            }
        }
    }
}

impl CallQuery for RecentCalls {
    fn calls(&self, filter: &CallFilter, limit: usize) -> Vec<Arc<OutboundResult>> {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.iter()
            .rev()
            .filter(|r| filter.matches(r))
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::outcome::CallOutcome;

    #[test]
    fn the_log_keeps_the_newest_and_filters_them_newest_first() {
        let log = RecentCalls::new(3);
        for n in 0..5 {
            let mut r = OutboundResult::example(&format!("r-{n}"));
            if n == 3 {
                r.outcome = CallOutcome::TransportError;
            }
            log.push(Arc::new(r));
        }
        let ids = |v: Vec<Arc<OutboundResult>>| -> Vec<String> {
            v.iter().map(|r| r.ctx.request_id.clone()).collect()
        };
        assert_eq!(
            ids(log.calls(&CallFilter::default(), 10)),
            ["r-4", "r-3", "r-2"]
        );
        assert_eq!(ids(log.calls(&CallFilter::default(), 1)), ["r-4"]);
        let failed = CallFilter {
            outcome: Some(CallOutcome::TransportError),
            ..Default::default()
        };
        assert_eq!(ids(log.calls(&failed, 10)), ["r-3"]);
        let by_id = CallFilter {
            request_id: Some("r-2".into()),
            ..Default::default()
        };
        assert_eq!(ids(log.calls(&by_id, 10)), ["r-2"]);
    }
}
