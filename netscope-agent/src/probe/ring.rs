//! Reading the ring buffer: a synchronous `drain` (used by tests and at shutdown) and an async
//! `pump` that drains on wake-ups and on a timer (the kernel wakes us only past a fill threshold).

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use netscope_common::{ConnEvent, DecodeError, EventKind};

use super::health::ReaderCounters;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{Notify, watch},
};

/// Counts of what the reader took out of the ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Records read and decoded.
    pub delivered: u64,
    /// Records read that did not decode (counted, then skipped).
    pub malformed: u64,
}

pub struct EventReader {
    ring: RingBuf<MapData>,
    counters: Arc<ReaderCounters>,
}

impl EventReader {
    pub(super) fn new(ring: RingBuf<MapData>) -> Self {
        Self {
            ring,
            counters: Arc::default(),
        }
    }

    pub fn stats(&self) -> ReaderStats {
        ReaderStats {
            delivered: self.counters.delivered.load(Ordering::Relaxed),
            malformed: self.counters.malformed.load(Ordering::Relaxed),
        }
    }

    /// The reader's counts and heartbeat, shared (metrics, readiness).
    pub fn counters(&self) -> Arc<ReaderCounters> {
        Arc::clone(&self.counters)
    }

    /// Hands every record now in the ring to `on_event`; returns how many were read.
    pub fn drain(&mut self, mut on_event: impl FnMut(EventKind, ConnEvent)) -> usize {
        let mut read = 0;
        while let Some(item) = self.ring.next() {
            read += 1;
            match ConnEvent::from_bytes(&item) {
                Ok((kind, event)) => {
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    on_event(kind, event);
                }
                Err(e) => {
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    log_malformed(&e);
                }
            }
        }
        read
    }
}

fn log_malformed(e: &DecodeError) {
    tracing::warn!(error = %e, "malformed ring-buffer record skipped");
}

/// Drains the ring whenever the kernel wakes us, whenever `kick` is notified (someone waits for
/// a flow), and at least every `poll`, until `shutdown` turns true; then returns the reader
/// (the caller drains once more after detaching).
pub async fn pump(
    reader: EventReader,
    poll: Duration,
    kick: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
    mut on_event: impl FnMut(EventKind, ConnEvent),
) -> std::io::Result<EventReader> {
    // SAFETY: the ring's map fd is owned by the reader and stays open, unchanged, for as long
    // as the AsyncFd holds the reader.
    let mut fd = unsafe { AsyncFd::register_with_interest(reader, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        fd.get_ref().counters.beat();
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().drain(&mut on_event);
                guard.clear_ready();
            }
            _ = tick.tick() => {
                fd.get_mut().drain(&mut on_event);
            }
            _ = kick.notified() => {
                fd.get_mut().drain(&mut on_event);
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    Ok(fd.into_inner())
}

impl std::os::fd::AsRawFd for EventReader {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}
