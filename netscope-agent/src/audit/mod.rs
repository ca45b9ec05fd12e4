//! The audit trail of calls: `AuditEvent`s (v1, see `domain::audit`) in Ceph RGW — spooled
//! locally first ([`spool`]), shipped in write-once batches ([`rgw`], [`s3`]) and checked back
//! for completeness ([`verify`]). A local NDJSON file ([`ndjson`]) is the sink of runs without
//! Ceph.

pub mod ndjson;
pub mod rgw;
pub mod s3;
pub mod spool;
pub mod verify;
