//! What the API answers, as JSON. Domain types serialise as they are; these wrap them.

use std::{collections::BTreeMap, sync::Arc};

use serde::Serialize;

use crate::domain::{
    Check, Sample, kernel::CheckReport, outcome::OutboundResult, outcome::ResilienceSnapshot,
};

#[derive(Serialize)]
pub struct Health {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

#[derive(Serialize)]
pub struct Ready {
    pub ready: bool,
    pub checks: Vec<Check>,
}

#[derive(Serialize)]
pub struct Calls {
    pub count: usize,
    pub calls: Vec<Arc<OutboundResult>>,
}

#[derive(Serialize)]
pub struct Resilience {
    pub targets: Vec<ResilienceSnapshot>,
}

/// What runs here: version, mode, kernel, programs, and every component's counters.
#[derive(Serialize)]
pub struct Status<'a> {
    pub version: &'static str,
    pub mode: &'static str,
    pub kernel: &'a str,
    pub started_unix_ms: u64,
    pub programs: &'a [&'static str],
    pub kernel_support: Option<&'a CheckReport>,
    pub counters: BTreeMap<&'static str, Vec<Sample>>,
}
