//! What the audit trail did and what state it is in: counters for the run summary, `/metrics`
//! and `/api/v1/status`, and the states `/readyz` reads (see `health.rs`). A leaf: the writer,
//! the shipper and the sink all update it, and it knows none of them.

use std::{
    io,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use serde::Serialize;
use tracing::{error, info};

/// What the audit trail did, for the run summary, tests and the benchmark.
#[derive(Debug, Default)]
pub struct AuditStats {
    pub spooled: AtomicU64,
    pub shipped: AtomicU64,
    pub puts: AtomicU64,
    /// Uploads that found their object already there (a retry after a lost answer or a crash).
    pub already_there: AtomicU64,
    pub put_failures: AtomicU64,
    pub quarantined: AtomicU64,
    /// Times the writer waited for the spool's disk budget.
    pub budget_waits: AtomicU64,
    /// Bytes in the spool now (sealed and open segments).
    pub spool_bytes: AtomicU64,
    /// Sealed segments waiting for upload now.
    pub backlog_segments: AtomicU64,
    pub rgw_down: AtomicBool,
    /// The last write to the spool failed (a full or failing disk); cleared by the next that
    /// succeeds. Events wait meanwhile: none is acknowledged before it is durable.
    pub spool_failing: AtomicBool,
    /// Spool writes (segment creations and group appends) that failed.
    pub spool_write_errors: AtomicU64,
    /// The spool's disk budget (set at start).
    pub budget_bytes: AtomicU64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct AuditSummary {
    pub spooled: u64,
    pub shipped: u64,
    pub puts: u64,
    pub already_there: u64,
    pub put_failures: u64,
    pub quarantined: u64,
    pub budget_waits: u64,
    pub spool_bytes: u64,
    pub backlog_segments: u64,
}

impl AuditStats {
    pub fn summary(&self) -> AuditSummary {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AuditSummary {
            spooled: load(&self.spooled),
            shipped: load(&self.shipped),
            puts: load(&self.puts),
            already_there: load(&self.already_there),
            put_failures: load(&self.put_failures),
            quarantined: load(&self.quarantined),
            budget_waits: load(&self.budget_waits),
            spool_bytes: load(&self.spool_bytes),
            backlog_segments: load(&self.backlog_segments),
        }
    }
}

impl AuditStats {
    /// The spool no longer holds `bytes` (shipped, quarantined or discarded).
    pub(super) fn release(&self, bytes: u64) {
        let _ = self
            .spool_bytes
            .try_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(bytes))
            });
    }

    /// A write to the spool failed: counted, and said once per run of failures.
    pub(super) fn spool_write_failed(&self, e: &io::Error) {
        self.spool_write_errors.fetch_add(1, Ordering::Relaxed);
        if !self.spool_failing.swap(true, Ordering::Relaxed) {
            error!(error = %e, "audit spool: a write failed; events wait (none is acknowledged before it is durable) and the write is retried");
        }
    }

    /// A write to the spool succeeded: a run of failures, if any, is over.
    pub(super) fn spool_write_succeeded(&self) {
        if self.spool_failing.swap(false, Ordering::Relaxed) {
            info!("audit spool: writes succeed again");
        }
    }
}
