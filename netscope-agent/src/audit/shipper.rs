//! The shipper: uploads sealed spool segments to RGW in sequence order, one write-once object
//! per segment (keys and body: [`super::batch`]), with the bucket's Object Lock retention; has
//! the spool delete a segment once RGW holds it; quarantines a corrupt one; retries with
//! backoff while RGW is down, and drains for a bounded time at shutdown.

use std::{
    io,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use tokio::sync::watch;
use tracing::{error, info, warn};

use super::{
    backlog::Backlog,
    batch::{batch_key, encode_lines},
    s3::{PutOutcome, S3Error, S3Store},
    spool::{self, Corruption, Sealed},
    stats::AuditStats,
};
use crate::backoff::Backoff;

pub(super) struct Shipper {
    pub(super) store: S3Store,
    pub(super) lock_days: u32,
    /// The bucket's Object Lock was read (once RGW answered).
    pub(super) retention_known: bool,
    pub(super) dir: PathBuf,
    pub(super) node: String,
    pub(super) stats: Arc<AuditStats>,
    pub(super) backlog: Arc<Backlog>,
}

/// A sealed segment read back and checked, ready to upload.
struct Upload {
    key: String,
    body: Vec<u8>,
    events: u64,
}

/// Why a sealed segment cannot be uploaded.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    /// Reading failed: retried.
    #[error("cannot read it: {0}")]
    Read(#[from] io::Error),
    /// Its bytes are wrong: it is quarantined.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
}

/// Reads a sealed segment back and checks it against its name.
fn load(node: &str, seg: &Sealed) -> Result<Upload, LoadError> {
    let bytes = std::fs::read(&seg.path)?;
    let parsed = spool::parse(&bytes, seg.first);
    if let Some(why) = parsed.error {
        return Err(why.into());
    }
    let (holds, named) = (parsed.frames.len() as u64, seg.last - seg.first + 1);
    let Some(first) = parsed.frames.first().filter(|_| holds == named) else {
        return Err(Corruption::Count { holds, named }.into());
    };
    Ok(Upload {
        key: batch_key(node, seg.first, seg.last, first.unix_ms),
        body: encode_lines(parsed.frames.iter().map(|f| f.payload.as_slice())),
        events: holds,
    })
}

impl Shipper {
    pub(super) async fn run(mut self, mut drain_until: watch::Receiver<Option<Instant>>) {
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
                .unwrap_or_else(|e| Err(LoadError::Read(io::Error::other(e))));
            let batch = match loaded {
                Ok(batch) => batch,
                Err(LoadError::Corrupt(why)) => {
                    self.quarantine(&seg, &why.to_string());
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
                    if let Err(e) = self.delete_shipped(&seg) {
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

    /// RGW holds the segment's events: the spool records that and deletes the segment.
    fn delete_shipped(&self, seg: &Sealed) -> io::Result<()> {
        spool::delete_shipped(&self.dir, seg)?;
        self.stats.release(seg.bytes);
        Ok(())
    }

    fn quarantine(&self, seg: &Sealed, why: &str) {
        let why = format!("events {}..={}: {why}", seg.first, seg.last);
        if let Err(e) = spool::quarantine(&self.dir, &seg.path, &why) {
            error!(segment = %seg.path.display(), error = %e, "audit spool: cannot quarantine a corrupt segment; it is skipped in this run");
        }
        self.stats.quarantined.fetch_add(1, Ordering::Relaxed);
        self.stats.release(seg.bytes);
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

/// Resolves when the drain deadline is set; never once nobody can set it any more.
async fn changed(rx: &mut watch::Receiver<Option<Instant>>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}
