//! Per-call metrics, recorded once per finished call (from the executor, not the bus). Labels:
//! the configured target and route, the method, and closed enums.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

use super::status_class;
use crate::domain::outcome::{CallOutcome, OutboundResult};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    target: String,
    route: String,
    method: &'static str,
    outcome: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    target: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

/// A target and one closed-set value (`reason`, `policy`, `direction`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetKind {
    target: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Correlation {
    result: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Call durations: 1 ms to ~33 s.
fn call_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 16,
    ))
}

/// TCP connect durations: 50 µs to 10 s.
pub(super) fn connect_buckets() -> Histogram {
    Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets_range(50e-6, 10.0, 18),
    )
}

#[derive(Clone)]
pub struct CallMetrics {
    calls: Family<CallLabels, Counter>,
    duration: Histograms<RouteLabels>,
    attempts: Family<TargetKind, Counter>,
    retries: Family<TargetKind, Counter>,
    retry_stops: Family<TargetKind, Counter>,
    rejections: Family<TargetKind, Counter>,
    connect: Histograms<TargetLabels>,
    connections: Family<TargetKind, Counter>,
    bytes: Family<TargetKind, Counter>,
    retransmits: Family<TargetLabels, Counter>,
    correlation: Family<Correlation, Counter>,
}

impl CallMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            calls: Family::default(),
            duration: Family::new_with_constructor(call_buckets),
            attempts: Family::default(),
            retries: Family::default(),
            retry_stops: Family::default(),
            rejections: Family::default(),
            connect: Family::new_with_constructor(connect_buckets),
            connections: Family::default(),
            bytes: Family::default(),
            retransmits: Family::default(),
            correlation: Family::default(),
        };
        m.register_calls(registry);
        m.register_network(registry);
        m
    }

    /// The calls themselves and the resilience decisions they met.
    fn register_calls(&self, r: &mut Registry) {
        let m = self;
        r.register(
            "calls",
            "Outbound calls finished, by target, route, method, outcome and status class",
            m.calls.clone(),
        );
        r.register_with_unit(
            "call_duration",
            "Outbound call duration, all attempts and backoff included",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register(
            "call_attempts",
            "Attempts made, by target and result (status class or transport error; kind)",
            m.attempts.clone(),
        );
        r.register(
            "call_retries",
            "Retries, by target and the failure that caused them (kind)",
            m.retries.clone(),
        );
        r.register(
            "call_retry_stops",
            "Why calls stopped retrying, by target (kind: budget_exhausted, max_attempts, …)",
            m.retry_stops.clone(),
        );
        r.register(
            "resilience_rejections",
            "Calls not attempted, by target and policy (kind: circuit_open, bulkhead_full, rate_limited)",
            m.rejections.clone(),
        );
    }

    /// What the kernel saw of the calls' connections.
    fn register_network(&self, r: &mut Registry) {
        let m = self;
        r.register_with_unit(
            "tcp_connect_duration",
            "SYN_SENT → ESTABLISHED of the connections calls opened, as the kernel saw it",
            Unit::Seconds,
            m.connect.clone(),
        );
        r.register(
            "call_connections",
            "Connections calls used, by target (kind: new or reused)",
            m.connections.clone(),
        );
        r.register_with_unit(
            "call_tcp",
            "TCP payload bytes of calls as the kernel counted them, by target (kind: sent or received)",
            Unit::Bytes,
            m.bytes.clone(),
        );
        r.register(
            "call_retransmits",
            "TCP retransmits during calls, by target",
            m.retransmits.clone(),
        );
        r.register(
            "correlation",
            "Calls matched (or not) with the kernel's view of their connection",
            m.correlation.clone(),
        );
    }

    pub fn record(&self, r: &OutboundResult) {
        let target = &r.ctx.target.0;
        let tk = |kind: &'static str| TargetKind {
            target: target.clone(),
            kind,
        };
        self.calls
            .get_or_create(&CallLabels {
                target: target.clone(),
                route: r.ctx.route.0.clone(),
                method: r.method,
                outcome: r.outcome.into(),
                status_class: status_class(r.status),
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels {
                target: target.clone(),
                route: r.ctx.route.0.clone(),
            })
            .observe(r.duration_ms / 1000.0);
        for (i, a) in r.attempts.iter().enumerate() {
            let result = match a.error {
                Some(e) => e.into(),
                None => status_class(a.status),
            };
            self.attempts.get_or_create(&tk(result)).inc();
            if i + 1 < r.attempts.len() {
                self.retries.get_or_create(&tk(result)).inc();
            }
        }
        self.retry_stops
            .get_or_create(&tk(r.retry_stop.into()))
            .inc();
        if matches!(
            r.outcome,
            CallOutcome::CircuitOpen | CallOutcome::BulkheadFull | CallOutcome::RateLimited
        ) {
            self.rejections.get_or_create(&tk(r.outcome.into())).inc();
        }
        self.network(r, &tk);
    }

    /// What the kernel saw of the call's connection.
    fn network(&self, r: &OutboundResult, tk: &dyn Fn(&'static str) -> TargetKind) {
        let n = &r.network;
        if r.attempts.is_empty() {
            return; // not attempted: no connection to correlate
        }
        let matched = if n.matched { "matched" } else { "unmatched" };
        self.correlation
            .get_or_create(&Correlation { result: matched })
            .inc();
        if !n.matched {
            return;
        }
        let target = TargetLabels {
            target: r.ctx.target.0.clone(),
        };
        if let Some(new) = n.new_connection {
            let kind = if new { "new" } else { "reused" };
            self.connections.get_or_create(&tk(kind)).inc();
        }
        if n.new_connection == Some(true)
            && let Some(ns) = n.connect_latency_ns
        {
            self.connect.get_or_create(&target).observe(ns as f64 / 1e9);
        }
        if let Some(b) = n.bytes_sent {
            self.bytes.get_or_create(&tk("sent")).inc_by(b);
        }
        if let Some(b) = n.bytes_received {
            self.bytes.get_or_create(&tk("received")).inc_by(b);
        }
        if let Some(rt) = n.retransmits {
            self.retransmits
                .get_or_create(&target)
                .inc_by(u64::from(rt));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::outcome::{Attempt, AttemptError, NetworkFacts, RetryStop},
        metrics::MetricsBuilder,
    };

    #[test]
    fn a_retried_call_counts_its_attempts_retries_and_kernel_facts() {
        let mut b = MetricsBuilder::new();
        let m = CallMetrics::register(b.registry());
        let mut r = OutboundResult::example("r-1");
        r.attempts = vec![
            Attempt {
                number: 1,
                status: None,
                error: Some(AttemptError::ConnectionReset),
                duration_ms: 1.0,
                backoff_ms: 0.0,
            },
            Attempt {
                number: 2,
                status: Some(200),
                error: None,
                duration_ms: 1.0,
                backoff_ms: 5.0,
            },
        ];
        r.retry_stop = RetryStop::Succeeded;
        r.network = NetworkFacts {
            matched: true,
            new_connection: Some(true),
            connect_latency_ns: Some(120_000),
            bytes_sent: Some(100),
            bytes_received: Some(300),
            retransmits: Some(1),
            ..NetworkFacts::default()
        };
        m.record(&r);
        let text = b.finish().encode().unwrap();
        let target = r.ctx.target.0.as_str();
        for line in [
            format!(
                "netscope_calls_total{{target=\"{target}\",route=\"orders\",method=\"GET\",outcome=\"response\",status_class=\"2xx\"}} 1"
            ),
            format!(
                "netscope_call_attempts_total{{target=\"{target}\",kind=\"connection_reset\"}} 1"
            ),
            format!("netscope_call_attempts_total{{target=\"{target}\",kind=\"2xx\"}} 1"),
            format!(
                "netscope_call_retries_total{{target=\"{target}\",kind=\"connection_reset\"}} 1"
            ),
            format!("netscope_call_tcp_bytes_total{{target=\"{target}\",kind=\"received\"}} 300"),
            format!("netscope_tcp_connect_duration_seconds_count{{target=\"{target}\"}} 1"),
            "netscope_correlation_total{result=\"matched\"} 1".to_owned(),
        ] {
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
    }
}
