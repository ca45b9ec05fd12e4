//! The domain: types, invariants and ports. No I/O, no aya, no tokio: every other module
//! depends on this one, never the reverse.

pub mod audit;
pub mod call;
pub mod flow;
pub mod job;
pub mod net;
pub mod outcome;
pub mod ports;
pub mod targets;

pub use call::{
    CallRequest, HttpMethod, OutboundRequest, RequestContext, RouteName, SpanId, TargetName,
    TraceId,
};
pub use flow::{Flow, FlowId, FlowOutcome, FlowState, FlowUpdate, FlowUpdateKind, WireStats};
pub use job::{Job, RecordRef};
pub use net::Cidr;
pub use ports::{
    AuditSink, BusEvent, ConnectionObserver, EventBus, OutboundGateway, OutcomeSink, SinkError,
    SourceLog,
};
