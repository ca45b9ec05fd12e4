//! A local, append-only NDJSON audit file. Writes are group-committed: one writer thread appends
//! every result waiting, `fsync`s once, then acknowledges them all — so `deliver` returning `Ok`
//! means the line is on disk, at one `fsync` per batch rather than per call.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::sync::{mpsc, oneshot};

use crate::domain::{
    AuditSink, OutcomeSink, SinkError,
    outcome::{BoxFuture, OutboundResult},
};

type Ack = oneshot::Sender<Result<(), String>>;

/// Results waiting for the writer at most (the channel is bounded: callers wait when it is full).
const QUEUE: usize = 4096;
/// Lines written per `fsync` at most.
const BATCH: usize = 512;

pub struct NdjsonAudit {
    path: PathBuf,
    tx: mpsc::Sender<(Arc<OutboundResult>, Ack)>,
}

impl NdjsonAudit {
    /// Opens (creating if needed) the file for appending and starts the writer thread.
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let shown = path.to_path_buf();
        std::thread::Builder::new()
            .name("audit-ndjson".into())
            .spawn(move || writer(file, rx, &shown))?;
        Ok(Self {
            path: path.to_path_buf(),
            tx,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn writer(file: File, mut rx: mpsc::Receiver<(Arc<OutboundResult>, Ack)>, path: &Path) {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let mut result = Ok(());
        for (r, _) in &batch {
            if let Err(e) = serde_json::to_writer(&mut out, r.as_ref())
                .map_err(io::Error::from)
                .and_then(|()| out.write_all(b"\n"))
            {
                result = Err(e);
                break;
            }
        }
        let result = result
            .and_then(|()| out.flush())
            .and_then(|()| out.get_ref().sync_data())
            .map_err(|e| format!("{}: {e}", path.display()));
        for (_, ack) in batch {
            let _ = ack.send(result.clone());
        }
    }
}

impl OutcomeSink for NdjsonAudit {
    fn name(&self) -> &'static str {
        "audit-ndjson"
    }

    fn deliver(&self, result: Arc<OutboundResult>) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let err = |reason: String| SinkError {
                sink: "audit-ndjson",
                reason,
            };
            let (ack, done) = oneshot::channel();
            self.tx
                .send((result, ack))
                .await
                .map_err(|_| err("the writer thread is gone".to_owned()))?;
            done.await
                .map_err(|_| err("the writer thread is gone".to_owned()))?
                .map_err(err)
        })
    }
}

impl AuditSink for NdjsonAudit {}
