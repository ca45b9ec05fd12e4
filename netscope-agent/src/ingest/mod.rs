//! Ingest: outbound-call requests from Kafka. Messages are validated and normalised
//! ([`schema`]), with their trace identity from Kafka headers ([`trace_context`]); invalid ones
//! go to the dead-letter topic with their reason.

pub mod counters;
mod dead_letter;
pub mod inflight;
pub mod kafka;
pub mod offsets;
pub mod record;
pub mod results;
pub mod samples;
pub mod schema;
pub mod topics;
pub mod trace_context;
