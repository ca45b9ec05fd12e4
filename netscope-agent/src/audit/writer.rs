//! The spool writer: one thread that numbers audit events gap-free, appends them to the open
//! segment in groups — one `fdatasync` per group, before any of its events is acknowledged —
//! seals segments by size, count or age, hands sealed ones to the shipper, and holds events
//! back while the spool is over its disk budget.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use super::{
    Ack, WriteError,
    backlog::Backlog,
    spool::{Frame, OpenSegment, SpoolSettings},
    stats::AuditStats,
};
use crate::{
    clock::now_unix_ms,
    domain::{audit::AuditEvent, outcome::OutboundResult},
};

/// Events appended per group commit (one `fdatasync`) at most.
const MAX_GROUP: usize = 1024;

/// What the writer is asked.
pub(super) enum SpoolRequest {
    /// Spool this event; acknowledge once it is durable.
    Event(Arc<OutboundResult>, Ack),
    /// Seal the open segment and stop.
    Close(oneshot::Sender<()>),
}

pub(super) struct Writer {
    pub(super) rt: tokio::runtime::Handle,
    pub(super) settings: SpoolSettings,
    pub(super) next: u64,
    pub(super) stats: Arc<AuditStats>,
    pub(super) backlog: Arc<Backlog>,
    pub(super) closing: Arc<AtomicBool>,
}

impl Writer {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<SpoolRequest>) {
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
                Ok(Some(SpoolRequest::Close(done))) => {
                    close = Some(done);
                    break;
                }
                Ok(Some(SpoolRequest::Event(r, ack))) => (r, ack),
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(SpoolRequest::Event(r, ack)) => group.push((r, ack)),
                    Ok(SpoolRequest::Close(done)) => {
                        close = Some(done);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if !self.wait_for_budget() {
                for (_, ack) in group {
                    let _ = ack.send(Err(WriteError::SpoolFullAtShutdown));
                }
                continue;
            }
            self.spool_group(&mut open, &mut frames, group);
        }
        self.seal(open.take());
        self.backlog.writer_done.store(true, Ordering::Relaxed);
        self.backlog.added.notify_one();
        if let Some(done) = close {
            let _ = done.send(());
        }
    }

    /// Appends a group durably and acknowledges each of its events; a segment never holds more
    /// than `batch_events`, so the group is split at a segment's end, and a full segment is
    /// sealed.
    fn spool_group(
        &mut self,
        open: &mut Option<(OpenSegment, Instant)>,
        frames: &mut Vec<u8>,
        group: Vec<(Arc<OutboundResult>, Ack)>,
    ) {
        let mut rest = group;
        while !rest.is_empty() {
            let room = open
                .as_ref()
                .map_or(self.settings.batch_events, |(seg, _)| {
                    self.settings.batch_events.saturating_sub(seg.events).max(1)
                });
            let tail = rest.split_off(rest.len().min(usize::try_from(room).unwrap_or(usize::MAX)));
            let result = self.append(open, frames, &rest);
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
    ) -> Result<(), WriteError> {
        let s = &self.settings;
        let stats = &self.stats;
        let fail = |e: std::io::Error| {
            stats.spool_write_failed(&e);
            WriteError::io(&s.dir, e)
        };
        if open.is_none() {
            let seg = OpenSegment::create(&s.dir, self.next).map_err(fail)?;
            self.stats
                .spool_bytes
                .fetch_add(seg.bytes, Ordering::Relaxed);
            *open = Some((seg, Instant::now()));
        }
        let Some((seg, _)) = open.as_mut() else {
            return Err(fail(std::io::Error::other("no open segment")));
        };
        frames.clear();
        let now = now_unix_ms();
        for (i, (r, _)) in group.iter().enumerate() {
            let sequence = self.next + i as u64;
            let event = AuditEvent::of(r, &s.node, sequence, now);
            let payload = serde_json::to_vec(&event).map_err(WriteError::encode)?;
            Frame {
                sequence,
                unix_ms: now,
                payload,
            }
            .encode_into(frames);
        }
        let n = group.len() as u64;
        seg.append(frames, n).map_err(fail)?;
        self.stats.spool_write_succeeded();
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
            self.stats.release(seg.bytes);
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
