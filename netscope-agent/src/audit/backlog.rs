//! The queue of sealed segments between the spool writer and the shipper.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::Notify;

use super::{spool::Sealed, stats::AuditStats};

/// Sealed segments, from the writer to the shipper.
#[derive(Default)]
pub(super) struct Backlog {
    queue: Mutex<VecDeque<Sealed>>,
    pub(super) added: Notify,
    pub(super) writer_done: AtomicBool,
}

impl Backlog {
    pub(super) fn push(&self, s: Sealed, stats: &AuditStats) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(s);
        stats.backlog_segments.fetch_add(1, Ordering::Relaxed);
        self.added.notify_one();
    }

    pub(super) fn front(&self) -> Option<Sealed> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .front()
            .cloned()
    }

    pub(super) fn pop(&self, stats: &AuditStats) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        stats.backlog_segments.fetch_sub(1, Ordering::Relaxed);
    }
}
