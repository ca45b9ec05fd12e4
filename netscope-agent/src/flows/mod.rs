//! Flows: what the kernel saw of each connection, kept and served without knowing how it was
//! seen (no aya here — `probe` is the adapter that reads the kernel). Ring records are converted
//! ([`convert`]), kept in the bounded [`FlowTable`], published by the [`FlowPipeline`], and
//! turned into per-call facts by [`CallDeltas`].

pub mod convert;
pub mod deltas;
pub mod pipeline;
pub mod table;

pub use self::{
    deltas::{AttemptSpan, CallDeltas, ConnectionView, Counters},
    pipeline::{FlowPipeline, TableChanges},
    table::{FlowTable, FlowTableStats},
};
