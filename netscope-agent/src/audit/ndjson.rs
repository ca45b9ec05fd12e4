//! A local, append-only NDJSON audit file of [`AuditEvent`]s (v1). Writes are group-committed:
//! one writer thread appends every result waiting, `fsync`s once, then acknowledges them all —
//! so `deliver` returning `Ok` means the line is on disk, at one `fsync` per batch.
//!
//! The writer numbers events per node, gap-free: after a restart it continues from the file's
//! last event (a torn last line, from a crash mid-write, is cut off first); a batch that fails
//! to reach the disk is cut off too and its numbers are reused.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Read as _, Seek as _, SeekFrom, Write as _},
    path::Path,
    sync::Arc,
};

use tokio::sync::mpsc;

use super::{Ack, WriteError, hand_over};

use crate::{
    clock::now_unix_ms,
    domain::{
        AuditSink, OutcomeSink, SinkError,
        audit::AuditEvent,
        outcome::{BoxFuture, OutboundResult},
    },
};

/// Results waiting for the writer at most (the channel is bounded: callers wait when it is full).
const QUEUE: usize = 4096;
/// Lines written per `fsync` at most.
const BATCH: usize = 512;

pub struct NdjsonAudit {
    tx: mpsc::Sender<(Arc<OutboundResult>, Ack)>,
}

impl NdjsonAudit {
    /// Opens (creating if needed) the file, repairs a torn last line, finds where `node`'s
    /// numbering stopped, and starts the writer thread.
    pub fn open(path: &Path, node: &str) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let next = resume(&mut file, node)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (shown, node) = (path.to_path_buf(), node.to_owned());
        std::thread::Builder::new()
            .name("audit-ndjson".into())
            .spawn(move || writer(file, rx, &shown, &node, next))?;
        Ok(Self { tx })
    }
}

/// Cuts a torn last line off and returns the sequence to continue `node`'s numbering with.
fn resume(file: &mut File, node: &str) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let tail_len = len.min(1 << 20);
    file.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = Vec::with_capacity(tail_len as usize);
    file.read_to_end(&mut tail)?;
    let complete = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < tail.len() {
        let keep = len - tail_len + complete as u64;
        tracing::warn!(
            bytes = len - keep,
            "audit file ended with a torn line: cut off"
        );
        file.set_len(keep)?;
        file.sync_data()?;
    }
    let last = tail[..complete]
        .split(|&b| b == b'\n')
        .rev()
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .find(|v| v["node"] == node)
        .and_then(|v| v["sequence"].as_u64());
    Ok(last.map_or(1, |s| s + 1))
}

fn writer(
    file: File,
    mut rx: mpsc::Receiver<(Arc<OutboundResult>, Ack)>,
    path: &Path,
    node: &str,
    mut next: u64,
) {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let (start_len, start_seq) = (out.get_ref().metadata().map(|m| m.len()), next);
        let now = now_unix_ms();
        let mut result = Ok(());
        for (r, _) in &batch {
            let event = AuditEvent::of(r, node, next, now);
            next += 1;
            if let Err(e) = serde_json::to_writer(&mut out, &event)
                .map_err(io::Error::from)
                .and_then(|()| out.write_all(b"\n"))
            {
                result = Err(e);
                break;
            }
        }
        let result = result.and_then(|()| durable(&mut out));
        if result.is_err() {
            // Nothing of this batch counts: cut it off and reuse its numbers. What the buffer
            // still holds of it is dropped, not written: flushed later, it would put the
            // batch's old numbers in front of the next batch.
            next = start_seq;
            let (file, _unwritten) = out.into_parts();
            if let Ok(len) = start_len {
                let _ = file.set_len(len);
            }
            out = BufWriter::with_capacity(1 << 20, file);
        }
        let result = result.map_err(|e| WriteError::io(path, e));
        for (_, ack) in batch {
            let _ = ack.send(result.clone());
        }
    }
}

/// Writes out what the buffer holds and makes it durable.
fn durable(out: &mut BufWriter<File>) -> io::Result<()> {
    crate::fault_point!("audit-ndjson-flush", |_| Err(io::Error::from_raw_os_error(
        libc::ENOSPC
    )));
    out.flush()?;
    out.get_ref().sync_data()
}

impl OutcomeSink for NdjsonAudit {
    fn name(&self) -> &'static str {
        "audit-ndjson"
    }

    fn deliver(&self, result: Arc<OutboundResult>) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(hand_over(&self.tx, "audit-ndjson", |ack| (result, ack)))
    }
}

impl AuditSink for NdjsonAudit {}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str) -> Arc<OutboundResult> {
        Arc::new(OutboundResult::example(id))
    }

    fn events(path: &Path) -> Vec<AuditEvent> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn numbering_is_gap_free_across_restarts_and_torn_lines_are_cut() {
        let _faults = crate::faults::serial();
        let dir = std::env::temp_dir().join(format!("ns-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("audit.ndjson");
        {
            let audit = NdjsonAudit::open(&path, "node-a").unwrap();
            for i in 0..3 {
                audit.deliver(result(&format!("r{i}"))).await.unwrap();
            }
        }
        // A crash mid-write leaves half a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"event_version":1,"event_id":"node-a-4","no"#)
            .unwrap();
        drop(f);
        {
            let audit = NdjsonAudit::open(&path, "node-a").unwrap();
            audit.deliver(result("r3")).await.unwrap();
        }
        let seqs: Vec<u64> = events(&path).iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        let last = events(&path).pop().unwrap();
        assert_eq!(
            (last.event_id.as_str(), last.context.request_id.as_str()),
            ("node-a-4", "r3")
        );
        // Another node's numbering is its own.
        let other = NdjsonAudit::open(&path, "node-b").unwrap();
        other.deliver(result("b0")).await.unwrap();
        assert_eq!(events(&path).pop().unwrap().event_id, "node-b-1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(feature = "failpoints")]
    #[tokio::test]
    async fn a_failed_batch_leaves_nothing_behind_for_the_next_one() {
        let scenario = crate::faults::serial();
        let dir = std::env::temp_dir().join(format!("ns-audit-fail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("audit.ndjson");
        let audit = NdjsonAudit::open(&path, "node-a").unwrap();
        audit.deliver(result("r0")).await.unwrap();
        // Two flushes fail (a disk still full): r1's batch and r2's.
        fail::cfg("audit-ndjson-flush", "2*return").unwrap();
        assert!(audit.deliver(result("r1")).await.is_err());
        assert!(audit.deliver(result("r2")).await.is_err());
        audit.deliver(result("r3")).await.unwrap();
        let seen: Vec<(u64, String)> = events(&path)
            .into_iter()
            .map(|e| (e.sequence, e.context.request_id))
            .collect();
        assert_eq!(seen, vec![(1, "r0".to_owned()), (2, "r3".to_owned())]);
        drop(scenario);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
