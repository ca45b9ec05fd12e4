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
    collections::VecDeque,
    io,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tracing::{error, info, warn};

use super::{
    Ack, hand_over,
    s3::{PutOutcome, S3Error, S3Settings, S3Store, batch_key, encode_lines},
    spool::{self, Frame, OpenSegment, Sealed},
};
use crate::{
    backoff::Backoff,
    clock::now_unix_ms,
    domain::{
        AuditSink, OutcomeSink, SinkError,
        audit::AuditEvent,
        outcome::{BoxFuture, OutboundResult},
    },
};

/// Events appended per group commit (one `fdatasync`) at most.
const GROUP: usize = 1024;

#[derive(Clone, Debug)]
pub struct SpoolSettings {
    /// The node's spool directory.
    pub dir: PathBuf,
    pub node: String,
    /// Disk the spool may use; beyond it, `deliver` waits (backpressure).
    pub budget_bytes: u64,
    pub batch_events: u64,
    pub batch_bytes: u64,
    pub batch_age: Duration,
    /// Events waiting for the writer at most.
    pub queue: usize,
}

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
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AuditSummary {
            spooled: l(&self.spooled),
            shipped: l(&self.shipped),
            puts: l(&self.puts),
            already_there: l(&self.already_there),
            put_failures: l(&self.put_failures),
            quarantined: l(&self.quarantined),
            budget_waits: l(&self.budget_waits),
            spool_bytes: l(&self.spool_bytes),
            backlog_segments: l(&self.backlog_segments),
        }
    }
}

enum Msg {
    Event(Arc<OutboundResult>, Ack),
    /// Seal the open segment and stop.
    Close(oneshot::Sender<()>),
}

/// Sealed segments, from the writer to the shipper.
#[derive(Default)]
struct Backlog {
    queue: Mutex<VecDeque<Sealed>>,
    added: Notify,
    writer_done: AtomicBool,
}

impl Backlog {
    fn push(&self, s: Sealed, stats: &AuditStats) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(s);
        stats.backlog_segments.fetch_add(1, Ordering::Relaxed);
        self.added.notify_one();
    }

    fn front(&self) -> Option<Sealed> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .front()
            .cloned()
    }

    fn pop(&self, stats: &AuditStats) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        stats.backlog_segments.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("audit spool {}: {source}", dir.display())]
    Spool { dir: PathBuf, source: io::Error },
}

pub struct RgwAudit {
    tx: mpsc::Sender<Msg>,
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
        if self.tx.send(Msg::Close(done)).await.is_ok() {
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

struct Writer {
    rt: tokio::runtime::Handle,
    settings: SpoolSettings,
    next: u64,
    stats: Arc<AuditStats>,
    backlog: Arc<Backlog>,
    closing: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut open: Option<(OpenSegment, Instant)> = None;
        let mut frames = Vec::with_capacity(1 << 20);
        let mut close = None;
        while close.is_none() {
            let wait = open.as_ref().map_or(Duration::from_secs(3600), |(_, at)| {
                self.settings.batch_age.saturating_sub(at.elapsed())
            });
            // The timer is made inside the runtime's context (this thread is not one of its own).
            let next = self
                .rt
                .block_on(async { tokio::time::timeout(wait, rx.recv()).await });
            let first = match next {
                Err(_) => {
                    self.seal(open.take());
                    continue;
                }
                Ok(None) => break,
                Ok(Some(Msg::Close(done))) => {
                    close = Some(done);
                    break;
                }
                Ok(Some(Msg::Event(r, ack))) => (r, ack),
            };
            let mut group = vec![first];
            while group.len() < GROUP {
                match rx.try_recv() {
                    Ok(Msg::Event(r, ack)) => group.push((r, ack)),
                    Ok(Msg::Close(done)) => {
                        close = Some(done);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if !self.wait_for_budget() {
                for (_, ack) in group {
                    let _ = ack.send(Err(
                        "shutting down with the audit spool full: not spooled".into()
                    ));
                }
                continue;
            }
            // A segment never holds more than `batch_events`: the group is split at its end.
            let mut rest = group;
            while !rest.is_empty() {
                let room = open
                    .as_ref()
                    .map_or(self.settings.batch_events, |(seg, _)| {
                        self.settings.batch_events.saturating_sub(seg.events).max(1)
                    });
                let tail =
                    rest.split_off(rest.len().min(usize::try_from(room).unwrap_or(usize::MAX)));
                let result = self.append(&mut open, &mut frames, &rest);
                for (_, ack) in rest {
                    let _ = ack.send(result.clone());
                }
                rest = tail;
                let full = open.as_ref().is_some_and(|(seg, at)| {
                    seg.events >= self.settings.batch_events
                        || seg.bytes >= self.settings.batch_bytes
                        || at.elapsed() >= self.settings.batch_age
                });
                if full {
                    self.seal(open.take());
                }
            }
        }
        self.seal(open.take());
        self.backlog.writer_done.store(true, Ordering::Relaxed);
        self.backlog.added.notify_one();
        if let Some(done) = close {
            let _ = done.send(());
        }
    }

    /// Waits while the spool is over its budget; `false` when shutting down instead.
    fn wait_for_budget(&self) -> bool {
        let mut waited = false;
        while self.stats.spool_bytes.load(Ordering::Relaxed) >= self.settings.budget_bytes {
            if self.closing.load(Ordering::Relaxed) {
                return false;
            }
            if !waited {
                waited = true;
                self.stats.budget_waits.fetch_add(1, Ordering::Relaxed);
                warn!(
                    budget_bytes = self.settings.budget_bytes,
                    "audit spool full: holding events back (Kafka consumption pauses) until RGW takes some"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Numbers, encodes and durably appends a group of events; on failure nothing of it counts
    /// and its numbers are used again.
    fn append(
        &mut self,
        open: &mut Option<(OpenSegment, Instant)>,
        frames: &mut Vec<u8>,
        group: &[(Arc<OutboundResult>, Ack)],
    ) -> Result<(), String> {
        let s = &self.settings;
        let fail = |e: &dyn std::fmt::Display| format!("audit spool {}: {e}", s.dir.display());
        if open.is_none() {
            let seg = OpenSegment::create(&s.dir, self.next).map_err(|e| fail(&e))?;
            self.stats
                .spool_bytes
                .fetch_add(seg.bytes, Ordering::Relaxed);
            *open = Some((seg, Instant::now()));
        }
        let Some((seg, _)) = open.as_mut() else {
            return Err(fail(&"no open segment"));
        };
        frames.clear();
        let now = now_unix_ms();
        for (i, (r, _)) in group.iter().enumerate() {
            let sequence = self.next + i as u64;
            let event = AuditEvent::of(r, &s.node, sequence, now);
            let payload = serde_json::to_vec(&event).map_err(|e| fail(&e))?;
            Frame {
                sequence,
                unix_ms: now,
                payload,
            }
            .encode_into(frames);
        }
        let n = group.len() as u64;
        seg.append(frames, n).map_err(|e| fail(&e))?;
        self.next += n;
        self.stats.spooled.fetch_add(n, Ordering::Relaxed);
        self.stats
            .spool_bytes
            .fetch_add(frames.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn seal(&self, open: Option<(OpenSegment, Instant)>) {
        let Some((seg, _)) = open else { return };
        let path = seg.path.clone();
        let sealed = if seg.events == 0 {
            release(&self.stats, seg.bytes);
            seg.discard().map(|()| None)
        } else {
            seg.seal(&self.settings.dir).map(Some)
        };
        match sealed {
            Ok(Some(s)) => self.backlog.push(s, &self.stats),
            Ok(None) => {}
            Err(e) => error!(segment = %path.display(), error = %e,
                "audit spool: cannot seal the segment; it is recovered and shipped at the next start"),
        }
    }
}

struct Shipper {
    store: S3Store,
    lock_days: u32,
    /// The bucket's Object Lock was read (once RGW answered).
    retention_known: bool,
    dir: PathBuf,
    node: String,
    stats: Arc<AuditStats>,
    backlog: Arc<Backlog>,
}

/// A sealed segment read back and checked, ready to upload.
struct Batch {
    key: String,
    body: Vec<u8>,
    events: u64,
}

/// Reads a sealed segment; `Err` names what is wrong with it (it is then quarantined).
fn load(node: &str, seg: &Sealed) -> io::Result<Result<Batch, String>> {
    let bytes = std::fs::read(&seg.path)?;
    let parsed = spool::parse(&bytes, seg.first);
    if let Some(why) = parsed.error {
        return Ok(Err(why.to_string()));
    }
    let (count, expected) = (parsed.frames.len() as u64, seg.last - seg.first + 1);
    let Some(first) = parsed.frames.first().filter(|_| count == expected) else {
        return Ok(Err(format!(
            "holds {count} events, its name says {expected}"
        )));
    };
    Ok(Ok(Batch {
        key: batch_key(node, seg.first, seg.last, first.unix_ms),
        body: encode_lines(parsed.frames.iter().map(|f| f.payload.as_slice())),
        events: count,
    }))
}

impl Shipper {
    async fn run(mut self, mut drain_until: watch::Receiver<Option<Instant>>) {
        let mut backoff = Backoff::redelivery();
        loop {
            let Some(seg) = self.backlog.front() else {
                if self.backlog.writer_done.load(Ordering::Relaxed) {
                    return;
                }
                tokio::select! {
                    () = self.backlog.added.notified() => {}
                    () = changed(&mut drain_until) => {}
                }
                continue;
            };
            let deadline = *drain_until.borrow();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            let (node, loaded) = (self.node.clone(), seg.clone());
            let loaded = tokio::task::spawn_blocking(move || load(&node, &loaded))
                .await
                .map_err(|e| e.to_string())
                .and_then(|read| read.map_err(|e| e.to_string()));
            let batch = match loaded {
                Ok(Ok(batch)) => batch,
                Ok(Err(why)) => {
                    self.quarantine(&seg, &why);
                    continue;
                }
                Err(e) => {
                    error!(segment = %seg.path.display(), error = %e, "audit spool: cannot read a segment; retrying");
                    self.sleep(&mut backoff, &mut drain_until).await;
                    continue;
                }
            };
            match self.upload(&batch.key, batch.body).await {
                Ok(outcome) => {
                    self.stats.puts.fetch_add(1, Ordering::Relaxed);
                    if outcome == PutOutcome::AlreadyThere {
                        self.stats.already_there.fetch_add(1, Ordering::Relaxed);
                        info!(key = %batch.key, "audit batch was already in RGW (a retried upload)");
                    }
                    if self.stats.rgw_down.swap(false, Ordering::Relaxed) {
                        info!(
                            backlog = self.stats.backlog_segments.load(Ordering::Relaxed),
                            "RGW answers again: draining the audit spool"
                        );
                    }
                    backoff = Backoff::redelivery();
                    if let Err(e) = self.forget(&seg) {
                        error!(segment = %seg.path.display(), error = %e,
                            "audit spool: shipped, but cannot delete the segment; it is uploaded again (found already there) after a restart");
                    }
                    self.backlog.pop(&self.stats);
                    self.stats
                        .shipped
                        .fetch_add(batch.events, Ordering::Relaxed);
                }
                Err(e) => {
                    self.stats.put_failures.fetch_add(1, Ordering::Relaxed);
                    if !self.stats.rgw_down.swap(true, Ordering::Relaxed) {
                        warn!(error = %e, "audit upload failed: events stay spooled and are retried with backoff");
                    }
                    self.sleep(&mut backoff, &mut drain_until).await;
                }
            }
        }
    }

    /// Writes a batch once, with the bucket's Object Lock retention (read before the first).
    async fn upload(&mut self, key: &str, body: Vec<u8>) -> Result<PutOutcome, S3Error> {
        if !self.retention_known {
            let retention = self.store.object_lock(self.lock_days).await?;
            match &retention {
                Some(r) => info!(mode = ?r.mode, days = r.days,
                    "audit bucket has Object Lock: every batch gets this retention"),
                None => {
                    info!("audit bucket has no Object Lock: batches are write-once by key only")
                }
            }
            self.store.set_retention(retention);
            self.retention_known = true;
        }
        self.store.put_once(key, body).await
    }

    /// RGW holds the segment's events: record that, then delete the segment.
    fn forget(&self, seg: &Sealed) -> io::Result<()> {
        spool::write_shipped(&self.dir, seg.last)?;
        std::fs::remove_file(&seg.path)?;
        spool::sync_dir(&self.dir)?;
        release(&self.stats, seg.bytes);
        Ok(())
    }

    fn quarantine(&self, seg: &Sealed, why: &str) {
        let why = format!("events {}..={}: {why}", seg.first, seg.last);
        if let Err(e) = spool::quarantine(&self.dir, &seg.path, &why) {
            error!(segment = %seg.path.display(), error = %e, "audit spool: cannot quarantine a corrupt segment; it is skipped in this run");
        }
        self.stats.quarantined.fetch_add(1, Ordering::Relaxed);
        release(&self.stats, seg.bytes);
        self.backlog.pop(&self.stats);
    }

    /// Sleeps the backoff's next delay, or until the drain deadline passes.
    async fn sleep(
        &self,
        backoff: &mut Backoff,
        drain_until: &mut watch::Receiver<Option<Instant>>,
    ) {
        let nap = backoff.next_delay();
        let deadline = *drain_until.borrow();
        let nap = deadline.map_or(nap, |d| {
            nap.min(d.saturating_duration_since(Instant::now()))
        });
        tokio::select! {
            () = tokio::time::sleep(nap) => {}
            () = changed(drain_until) => {}
        }
    }
}

/// The spool no longer holds `bytes` (shipped, quarantined or discarded).
fn release(stats: &AuditStats, bytes: u64) {
    let _ = stats
        .spool_bytes
        .try_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            Some(b.saturating_sub(bytes))
        });
}

/// Resolves when the drain deadline is set; never once nobody can set it any more.
async fn changed(rx: &mut watch::Receiver<Option<Instant>>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl OutcomeSink for RgwAudit {
    fn name(&self) -> &'static str {
        "audit-rgw"
    }

    fn deliver(&self, result: Arc<OutboundResult>) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(hand_over(&self.tx, "audit-rgw", |ack| {
            Msg::Event(result, ack)
        }))
    }
}

impl AuditSink for RgwAudit {}
