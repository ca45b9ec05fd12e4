//! The production audit sink: every event is spooled locally (durably, see [`super::spool`])
//! and acknowledged; a shipper task uploads sealed segments to Ceph RGW in sequence order, one
//! write-once object per segment, and deletes each segment once RGW holds it.
//!
//! The request path never waits for RGW: `deliver` waits only for the local group commit. When
//! RGW is down or slow, segments pile up in the spool; when the spool's disk budget is used up,
//! the writer stops taking events, `deliver` waits, and the pipeline's bounded stages pause
//! Kafka consumption — audit events are never dropped.
//!
//! Batching: a segment is sealed (and becomes one object) when it holds `batch_events` events
//! or `batch_bytes` bytes, or `batch_age` after its first event. Its key is derived from its
//! content only (node, sequence range, first event's hour), so a retried upload — also after a
//! crash between the upload and the segment's deletion — finds the object already there.

use std::{
    io,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::{
    backlog::Backlog,
    hand_over,
    s3::{S3Error, S3Settings, S3Store},
    shipper::Shipper,
    spool,
    writer::{SpoolRequest, Writer},
};
pub use super::{
    spool::SpoolSettings,
    stats::{AuditStats, AuditSummary},
};
use crate::domain::{
    AuditSink, OutcomeSink, SinkError,
    outcome::{BoxFuture, OutboundResult},
};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("audit spool {}: {source}", dir.display())]
    Spool { dir: PathBuf, source: io::Error },
}

pub struct RgwAudit {
    tx: mpsc::Sender<SpoolRequest>,
    stats: Arc<AuditStats>,
    closing: Arc<AtomicBool>,
    /// When the shipper must give up draining (set by `close`).
    drain_until: watch::Sender<Option<Instant>>,
    shipper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl RgwAudit {
    /// At boot: checks the bucket and credentials (creating the bucket first when asked) — a
    /// missing bucket or refused credentials is a clear error; an RGW that does not answer is
    /// an outage, not a configuration error: events are spooled until it is back. Then
    /// [`Self::start`]s. `lock_days`: retention when the bucket's Object Lock has no default.
    pub async fn connect(
        s3: S3Settings,
        spool: SpoolSettings,
        lock_days: u32,
        create_bucket: bool,
    ) -> Result<Self, AuditError> {
        let store = S3Store::new(s3);
        let mut checked = store.check().await;
        if create_bucket && matches!(checked, Err(S3Error::NoSuchBucket { .. })) {
            store.create_bucket().await?;
            checked = store.check().await;
        }
        match checked {
            Ok(()) => {}
            Err(S3Error::Unreachable { endpoint, detail }) => warn!(%endpoint, %detail,
                "RGW does not answer at boot: audit events are spooled locally until it does"),
            Err(e) => return Err(e.into()),
        }
        Self::start(store, spool, lock_days)
    }

    /// Recovers the spool (a crash's open segment is sealed, its torn tail quarantined), then
    /// starts the writer thread and the shipper task. `store` was checked at boot.
    pub fn start(
        store: S3Store,
        settings: SpoolSettings,
        lock_days: u32,
    ) -> Result<Self, AuditError> {
        let spool_err = |source| AuditError::Spool {
            dir: settings.dir.clone(),
            source,
        };
        let recovered = spool::recover(&settings.dir).map_err(spool_err)?;
        let stats = Arc::new(AuditStats::default());
        stats
            .budget_bytes
            .store(settings.budget_bytes, Ordering::Relaxed);
        stats
            .quarantined
            .fetch_add(recovered.quarantined.len() as u64, Ordering::Relaxed);
        let backlog = Arc::new(Backlog::default());
        let mut bytes = 0;
        for s in recovered.sealed {
            bytes += s.bytes;
            backlog.push(s, &stats);
        }
        stats.spool_bytes.store(bytes, Ordering::Relaxed);
        if bytes > 0 {
            info!(
                segments = stats.backlog_segments.load(Ordering::Relaxed),
                bytes, "audit spool: resuming the upload of events spooled before the restart"
            );
        }

        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let closing = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            rt: tokio::runtime::Handle::current(),
            settings: settings.clone(),
            next: recovered.next,
            stats: Arc::clone(&stats),
            backlog: Arc::clone(&backlog),
            closing: Arc::clone(&closing),
        };
        std::thread::Builder::new()
            .name("audit-spool".into())
            .spawn(move || writer.run(rx))
            .map_err(spool_err)?;
        let (drain_until, drain_rx) = watch::channel(None);
        let shipper = Shipper {
            store,
            lock_days,
            retention_known: false,
            dir: settings.dir,
            node: settings.node,
            stats: Arc::clone(&stats),
            backlog,
        };
        let shipper = tokio::spawn(shipper.run(drain_rx));
        Ok(Self {
            tx,
            stats,
            closing,
            drain_until,
            shipper: Mutex::new(Some(shipper)),
        })
    }

    pub fn stats(&self) -> Arc<AuditStats> {
        Arc::clone(&self.stats)
    }

    /// Seals the open segment and lets the shipper drain the spool for up to `grace`; what is
    /// left stays spooled for the next start.
    pub async fn close(&self, grace: Duration) -> AuditSummary {
        self.closing.store(true, Ordering::Relaxed);
        let (done, sealed) = oneshot::channel();
        if self.tx.send(SpoolRequest::Close(done)).await.is_ok() {
            let _ = sealed.await;
        }
        let _ = self.drain_until.send(Some(Instant::now() + grace));
        let shipper = self
            .shipper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut task) = shipper {
            // An upload in flight at the deadline is cut: its segment stays spooled and the
            // write-once upload is redone after the next start.
            if tokio::time::timeout(grace + Duration::from_secs(1), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        let summary = self.stats.summary();
        if summary.backlog_segments > 0 {
            warn!(
                segments = summary.backlog_segments,
                bytes = summary.spool_bytes,
                "audit spool not empty at shutdown: it is shipped after the next start"
            );
        }
        summary
    }
}

impl OutcomeSink for RgwAudit {
    fn name(&self) -> &'static str {
        "audit-rgw"
    }

    fn deliver(&self, result: Arc<OutboundResult>) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(hand_over(&self.tx, "audit-rgw", |ack| {
            SpoolRequest::Event(result, ack)
        }))
    }
}

impl AuditSink for RgwAudit {}
