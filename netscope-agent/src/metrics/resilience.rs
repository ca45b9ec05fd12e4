//! The gateway's resilience state per target, read at scrape time from the
//! [`OutboundGateway`] snapshot: circuit state (one series per state), transitions, bulkhead,
//! queue, retry budget.

use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};
use strum::IntoEnumIterator as _;

use crate::domain::{OutboundGateway, outcome::CircuitState, outcome::ResilienceSnapshot};

pub struct ResilienceCollector(pub Arc<dyn OutboundGateway>);

impl fmt::Debug for ResilienceCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResilienceCollector")
    }
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    snaps: &[ResilienceSnapshot],
    value: impl Fn(&ResilienceSnapshot) -> i64,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for s in snaps {
        ConstGauge::new(value(s)).encode(m.encode_family(&[("target", s.target.0.as_str())])?)?;
    }
    Ok(())
}

/// The circuit's state (one series per state, 1 for the current one) and its transitions.
fn circuits(e: &mut DescriptorEncoder, snaps: &[ResilienceSnapshot]) -> fmt::Result {
    let mut m = e.encode_descriptor(
        "circuit_state",
        "1 for the state each target's circuit is in, 0 for the others",
        None,
        MetricType::Gauge,
    )?;
    for s in snaps {
        for state in CircuitState::iter() {
            let labels = [("target", s.target.0.as_str()), ("state", state.into())];
            ConstGauge::new(i64::from(s.circuit == state)).encode(m.encode_family(&labels)?)?;
        }
    }
    let mut m = e.encode_descriptor(
        "circuit_transitions",
        "Times each target's circuit moved to a state",
        None,
        MetricType::Counter,
    )?;
    for s in snaps {
        let t = s.transitions;
        for (to, n) in [
            ("open", t.opened),
            ("half_open", t.half_opened),
            ("closed", t.closed),
        ] {
            let labels = [("target", s.target.0.as_str()), ("to", to)];
            ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

impl Collector for ResilienceCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let snaps = self.0.snapshot();
        circuits(&mut e, &snaps)?;
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(
            &mut e,
            "bulkhead_in_flight",
            "Calls holding a bulkhead slot of the target",
            &snaps,
            |s| n(s.in_flight),
        )?;
        gauge(
            &mut e,
            "bulkhead_limit",
            "The target's bulkhead size",
            &snaps,
            |s| n(s.max_in_flight),
        )?;
        gauge(
            &mut e,
            "target_queue_depth",
            "Calls waiting for a bulkhead slot of the target",
            &snaps,
            |s| n(s.queue_depth),
        )?;
        gauge(
            &mut e,
            "retry_budget_left",
            "Retries the target's budget allows now",
            &snaps,
            |s| i64::from(s.retry_budget_left),
        )?;
        Ok(())
    }
}
