//! Outbound: executes calls with reqwest under per-target resilience policies (see
//! [`gateway`] for the order of the layers).

pub mod budget;
mod call;
pub mod circuit;
pub mod client;
pub mod gateway;
pub mod policy;
pub mod retry;
mod target;

pub use gateway::HttpGateway;
pub use policy::{RetryConfig, TargetPolicy};
