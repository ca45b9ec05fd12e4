//! The domain: types, invariants and ports. No I/O, no aya, no tokio: every other module
//! depends on this one, never the reverse.

pub mod audit;
pub mod call;
pub mod flow;
pub mod job;
pub mod kernel;
pub mod net;
pub mod outcome;
pub mod ports;
pub mod query;
pub mod targets;
pub mod trace;

pub use call::{
    CallRequest, HttpMethod, OutboundRequest, RequestContext, RouteName, SpanId, TargetName,
    TraceId,
};
pub use flow::{
    Comm, Flow, FlowId, FlowOutcome, FlowState, FlowUpdate, FlowUpdateKind, Turn, WireStats,
};
pub use job::{Job, RecordRef};
pub use net::{Cidr, DestGroups};
pub use ports::{
    AuditSink, BusEvent, CallQuery, ConnectionObserver, CounterSource, EventBus, FlowQuery,
    HealthCheck, MetricsRecorder, OutboundGateway, OutcomeSink, SinkError, SourceLog,
};
pub use query::{
    CallFilter, Check, FlowCursor, FlowFilter, FlowOutcomeFilter, FlowPage, Sample, SampleKind,
};
