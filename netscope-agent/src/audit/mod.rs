//! The audit trail of calls: `AuditEvent`s (v1, see `domain::audit`) in Ceph RGW — spooled
//! locally first ([`spool`]), shipped in write-once batches ([`rgw`], [`s3`]) and checked back
//! for completeness ([`verify`]). A local NDJSON file ([`ndjson`]) is the sink of runs without
//! Ceph.

mod backlog;
pub mod batch;
mod health;
pub mod ndjson;
pub mod rgw;
pub mod s3;
mod shipper;
pub mod spool;
pub mod stats;
pub mod verify;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::sync::{mpsc, oneshot};

use crate::domain::SinkError;

/// Why an audit writer could not make an event durable. Cloned to every event of a failed
/// group, hence the shared sources.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WriteError {
    #[error("audit {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    #[error("encoding the audit event: {0}")]
    Encode(Arc<serde_json::Error>),
    #[error("shutting down with the audit spool full: not spooled")]
    SpoolFullAtShutdown,
    #[error("the audit writer has stopped")]
    Stopped,
}

impl WriteError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn encode(source: serde_json::Error) -> Self {
        Self::Encode(Arc::new(source))
    }
}

/// How an audit writer acknowledges an event: `Ok` once it is durable.
pub(crate) type Ack = oneshot::Sender<Result<(), WriteError>>;

/// Hands `message` (carrying its [`Ack`]) to a writer and waits for the acknowledgement.
pub(crate) async fn hand_over<M>(
    tx: &mpsc::Sender<M>,
    sink: &'static str,
    message: impl FnOnce(Ack) -> M,
) -> Result<(), SinkError> {
    let err = |e: WriteError| SinkError::new(sink, e);
    let (ack, done) = oneshot::channel();
    tx.send(message(ack))
        .await
        .map_err(|_| err(WriteError::Stopped))?;
    done.await
        .map_err(|_| err(WriteError::Stopped))?
        .map_err(err)
}
