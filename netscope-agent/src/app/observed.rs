//! What `run` shows of itself while it is wired: each component's metrics, the health checks,
//! the recorder the executor and probe feed, and at the end the server's view.

use std::sync::Arc;

use tokio::sync::watch;

use super::{
    run::{Attached, ProbeTask},
    serve,
};
use crate::{
    bus::BroadcastBus,
    config::RunSettings,
    domain::{CounterSource, HealthCheck, MetricsRecorder, OutboundGateway},
    metrics::{MetricsBuilder, Recorder, resilience::ResilienceCollector},
    recent::RecentCalls,
};

/// What the server will show of the pipeline, gathered while it is wired: the metrics each
/// component registers, the health checks, and the recorder the executor and probe feed.
pub(super) struct Observed {
    metrics: MetricsBuilder,
    recorder: Arc<Recorder>,
    pub(super) health: Vec<Arc<dyn HealthCheck>>,
    /// What `/healthz` checks besides the process answering.
    pub(super) liveness: Vec<Arc<dyn HealthCheck>>,
}

impl Observed {
    pub(super) fn new(s: &RunSettings) -> Self {
        let mut metrics = MetricsBuilder::new();
        let flows = s.probe.as_ref().map(|_| s.api.flow_labels());
        let recorder = Recorder::register(&mut metrics, flows);
        Self {
            metrics,
            recorder,
            health: Vec::new(),
            liveness: Vec::new(),
        }
    }

    pub(super) fn recorder(&self) -> Arc<dyn MetricsRecorder> {
        Arc::clone(&self.recorder) as Arc<dyn MetricsRecorder>
    }

    pub(super) fn source(&mut self, source: Arc<dyn CounterSource>) {
        self.metrics.source(source);
    }

    /// The server's view: the call log and the live hub fed from the bus, the gateway's state,
    /// the probe's table and health; also hands back the probe's reader task.
    pub(super) fn view(
        mut self,
        s: &RunSettings,
        bus: &BroadcastBus,
        gateway: Arc<dyn OutboundGateway>,
        probe: Option<Attached>,
        stop: watch::Receiver<bool>,
    ) -> (Option<ProbeTask>, serve::View) {
        let live = serve::live_hub(&s.api, "run", stop);
        let calls = Arc::new(RecentCalls::new(s.api.recent_calls));
        tokio::spawn(Arc::clone(&calls).feed(bus.subscribe()));
        tokio::spawn(Arc::clone(&live).feed(bus.subscribe(), Some(Arc::clone(&gateway))));
        self.source(bus.counter_source());
        self.source(Arc::clone(&live) as Arc<dyn CounterSource>);
        self.metrics
            .registry()
            .register_collector(Box::new(ResilienceCollector(Arc::clone(&gateway))));
        let (task, flows, programs, kernel_support) = match probe {
            Some(p) => {
                for source in p.sources {
                    self.metrics.source(source);
                }
                self.health.push(p.health);
                (Some(p.task), Some(p.table), p.programs, Some(p.support))
            }
            None => (None, None, Vec::new(), None),
        };
        let view = serve::View {
            metrics: self.metrics.finish(),
            flows,
            calls: Some(calls),
            gateway: Some(gateway),
            health: self.health,
            liveness: self.liveness,
            live,
            programs,
            kernel_support,
        };
        (task, view)
    }
}
