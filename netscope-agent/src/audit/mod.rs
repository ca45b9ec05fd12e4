//! The audit trail of calls. Here: a local NDJSON file (the default for local runs); Ceph RGW
//! is the production sink (a later milestone), behind the same [`crate::domain::AuditSink`] port.

pub mod ndjson;
pub mod s3;
