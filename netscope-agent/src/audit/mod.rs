//! The audit trail of calls: `AuditEvent`s (v1, see `domain::audit`) in Ceph RGW — spooled
//! locally first ([`spool`]), shipped in write-once batches ([`rgw`], [`s3`]) and checked back
//! for completeness ([`verify`]). A local NDJSON file ([`ndjson`]) is the sink of runs without
//! Ceph.

pub mod ndjson;
pub mod rgw;
pub mod s3;
pub mod spool;
pub mod verify;

use tokio::sync::{mpsc, oneshot};

use crate::domain::SinkError;

/// How an audit writer acknowledges an event: `Ok` once it is durable.
pub(crate) type Ack = oneshot::Sender<Result<(), String>>;

/// Hands `message` (carrying its [`Ack`]) to a writer and waits for the acknowledgement.
pub(crate) async fn hand_over<M>(
    tx: &mpsc::Sender<M>,
    sink: &'static str,
    message: impl FnOnce(Ack) -> M,
) -> Result<(), SinkError> {
    let err = |reason: String| SinkError { sink, reason };
    let gone = || err("the writer has stopped".to_owned());
    let (ack, done) = oneshot::channel();
    tx.send(message(ack)).await.map_err(|_| gone())?;
    done.await.map_err(|_| gone())?.map_err(err)
}
