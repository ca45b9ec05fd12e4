//! Prometheus metrics: one `prometheus-client` registry, served by `/metrics` as OpenMetrics
//! text.
//!
//! Each component owns its numbers. Counters a component already keeps for its summary are
//! read at scrape time through the [`CounterSource`] port (the same atomics the run and probe
//! summaries print), so `/metrics`, `/api/v1/status` and the summaries cannot disagree. What
//! only metrics need — per-target histograms and families — is recorded on the path through
//! the [`MetricsRecorder`](crate::domain::MetricsRecorder) port ([`calls::CallMetrics`],
//! [`flows::FlowMetrics`]), never from the lossy bus.
//!
//! **Label budget** (ARCHITECTURE.md): a label value comes only from a closed enum or from
//! configuration (target, route, destination group), or from a budgeted set with overflow
//! (`comm`, at most `comm_budget` values, then `~other`; idle series removed after a TTL).
//! Never an IP, port, URL, path, id or Kafka key.

pub mod calls;
pub mod flows;
pub mod resilience;

use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, MetricEncoder},
    metrics::{
        MetricType,
        counter::ConstCounter,
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};

use crate::domain::{
    CounterSource, FlowUpdate, MetricsRecorder, SampleKind, outcome::OutboundResult,
};

/// The OpenMetrics text content type `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format (0.0.4), for clients that ask for it and not for OpenMetrics
/// (older tools such as `promtool check metrics`).
pub const CONTENT_TYPE_PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The sum of the samples of metric `name` (its full name, e.g. `…_total`) whose labels include
/// every `labels` pair, in an exposition text (OpenMetrics or Prometheus): what a reader of
/// `/metrics` — the tests, the soak — asks of it.
pub fn sample_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            let wanted = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// OpenMetrics text → Prometheus text 0.0.4: a counter's HELP and TYPE name its `_total`
/// samples, and `# UNIT` and `# EOF` go (the only differences in what this registry writes).
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let suffix = if kind == "counter" { "_total" } else { "" };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name}{suffix} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The registry while components register into it (at boot, in the composition root).
pub struct MetricsBuilder {
    registry: Registry,
    sources: Vec<Arc<dyn CounterSource>>,
}

impl Default for MetricsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsBuilder {
    /// A registry with the `netscope_` prefix and `netscope_build_info`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("netscope");
        // A gauge of 1 rather than an OpenMetrics `info`, which Prometheus' text parser
        // (promtool) does not know.
        let build = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        build
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("build_info", "NetScope agent build", build);
        Self {
            registry,
            sources: Vec::new(),
        }
    }

    /// Where components register their own metric families.
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// A component's counters, read at every scrape.
    pub fn source(&mut self, source: Arc<dyn CounterSource>) {
        self.registry
            .register_collector(Box::new(SourceCollector(Arc::clone(&source))));
        self.sources.push(source);
    }

    pub fn finish(self) -> Arc<Metrics> {
        Arc::new(Metrics {
            registry: self.registry,
            sources: self.sources,
        })
    }
}

/// The finished registry: what `/metrics` encodes and `/api/v1/status` reads.
pub struct Metrics {
    registry: Registry,
    sources: Vec<Arc<dyn CounterSource>>,
}

impl Metrics {
    /// The whole registry as OpenMetrics text.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(16 << 10);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The components' counters (for `/api/v1/status`).
    pub fn sources(&self) -> &[Arc<dyn CounterSource>] {
        &self.sources
    }
}

/// Encodes a [`CounterSource`]'s samples; samples of one metric must be adjacent.
struct SourceCollector(Arc<dyn CounterSource>);

impl fmt::Debug for SourceCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SourceCollector")
            .field(&self.0.component())
            .finish()
    }
}

impl Collector for SourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let samples = self.0.samples();
        let mut rest = samples.as_slice();
        while let Some(first) = rest.first() {
            let same = rest.iter().take_while(|s| s.name == first.name).count();
            let (family, tail) = rest.split_at(same);
            rest = tail;
            let mut metric =
                encoder.encode_descriptor(first.name, first.help, None, metric_type(first.kind))?;
            for s in family {
                let Some(label) = s.label else {
                    // An unlabelled metric has one sample.
                    encode_value(s.kind, s.value, metric)?;
                    break;
                };
                let labels = [label];
                encode_value(s.kind, s.value, metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn metric_type(kind: SampleKind) -> MetricType {
    match kind {
        SampleKind::Counter => MetricType::Counter,
        SampleKind::Gauge => MetricType::Gauge,
    }
}

/// A value as the counter or the gauge (saturating at `i64::MAX`) `kind` says.
fn encode_value(kind: SampleKind, value: u64, metric: MetricEncoder) -> fmt::Result {
    match kind {
        SampleKind::Counter => ConstCounter::new(value).encode(metric),
        SampleKind::Gauge => {
            ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(metric)
        }
    }
}

/// The [`MetricsRecorder`] of the agent: calls always, flows when flow metrics are on.
pub struct Recorder {
    pub calls: calls::CallMetrics,
    pub flows: Option<Arc<flows::FlowMetrics>>,
}

impl Recorder {
    /// Registers the call metrics, and the flow metrics labelled as `flows` says (when there
    /// is a probe to feed them).
    pub fn register(builder: &mut MetricsBuilder, flows: Option<flows::FlowLabels>) -> Arc<Self> {
        let registry = builder.registry();
        Arc::new(Self {
            calls: calls::CallMetrics::register(registry),
            flows: flows.map(|labels| flows::FlowMetrics::register(registry, labels)),
        })
    }
}

impl MetricsRecorder for Recorder {
    fn call_finished(&self, result: &OutboundResult) {
        self.calls.record(result);
    }

    fn flow_updated(&self, update: &FlowUpdate) {
        if let Some(f) = &self.flows {
            f.record(update);
        }
    }
}

/// `2xx`…`5xx`, or `none` when no response came: the only form a status takes in a label.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_sum_adds_the_series_whose_labels_match() {
        let text = "# TYPE x counter\nx_total{a=\"1\",b=\"2\"} 3\nx_total{a=\"1\",b=\"3\"} 4\n\
                    x_total{a=\"2\"} 100\nx_total_other 7\n";
        assert_eq!(sample_sum(text, "x_total", &[("a", "1")]), 7.0);
        assert_eq!(sample_sum(text, "x_total", &[]), 107.0);
        assert_eq!(sample_sum(text, "x_total_other", &[]), 7.0);
        assert_eq!(sample_sum(text, "missing", &[]), 0.0);
    }
    use crate::domain::Sample;

    struct Fixed;

    impl CounterSource for Fixed {
        fn component(&self) -> &'static str {
            "fixed"
        }
        fn samples(&self) -> Vec<Sample> {
            vec![
                Sample::counter("kafka_records", "Records by result", 7).with("result", "ok"),
                Sample::counter("kafka_records", "Records by result", 2).with("result", "dlq"),
                Sample::gauge("queue_depth", "Jobs waiting", 3),
            ]
        }
    }

    #[test]
    fn a_counter_source_is_encoded_as_families_with_the_prefix() {
        let mut b = MetricsBuilder::new();
        b.source(Arc::new(Fixed));
        let text = b.finish().encode().unwrap();
        assert!(
            text.contains("# TYPE netscope_kafka_records counter"),
            "{text}"
        );
        assert!(
            text.contains("netscope_kafka_records_total{result=\"ok\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("netscope_kafka_records_total{result=\"dlq\"} 2"),
            "{text}"
        );
        assert!(text.contains("netscope_queue_depth 3\n"), "{text}");
        assert!(text.contains("netscope_build_info{version="), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_prometheus_text_names_counters_by_their_samples() {
        let om = "# HELP netscope_calls Calls.\n# TYPE netscope_calls counter\n\
                  netscope_calls_total{a=\"b\"} 3\n# HELP netscope_d Dur.\n# TYPE netscope_d_seconds histogram\n\
                  # UNIT netscope_d_seconds seconds\nnetscope_d_seconds_count 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP netscope_calls_total Calls.\n# TYPE netscope_calls_total counter\n\
             netscope_calls_total{a=\"b\"} 3\n# HELP netscope_d_seconds Dur.\n\
             # TYPE netscope_d_seconds histogram\nnetscope_d_seconds_count 1\n"
        );
    }

    #[test]
    fn status_classes_are_a_closed_set() {
        assert_eq!(status_class(Some(204)), "2xx");
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(Some(999)), "other");
        assert_eq!(status_class(None), "none");
    }
}
