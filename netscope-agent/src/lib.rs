//! NetScope's agent. See ARCHITECTURE.md for the map; module boundaries follow the design:
//! `domain` at the centre, everything else depending inward on it, and `app` as the one
//! composition root.

pub mod api;
pub mod app;
pub mod audit;
pub mod backoff;
pub mod bus;
pub mod clock;
pub mod config;
pub mod demo;
pub mod domain;
pub mod faults;
pub mod flows;
pub mod ingest;
pub mod metrics;
pub mod observability;
pub mod outbound;
pub mod pipeline;
pub mod probe;
pub mod recent;
pub mod stall;
