//! The execution stage: jobs from the bounded ingest queue → the outbound gateway → every
//! outcome sink (durably) → the bus → the record marked finished, so that its offset may be
//! committed. At most `workers` calls run at once; the queue in front of them is what ingest
//! pauses on when it is full. A worker is free again as soon as its call is over and its result
//! has a place in the delivery stage: delivering to the sinks (concurrently) is a stage of its
//! own, bounded to `4 × workers` results, which makes the workers wait when it is full (a
//! stalled sink thus pauses consumption instead of piling results up in memory).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
};
use tracing::{Instrument as _, info, info_span, warn};

use crate::{
    backoff::Backoff,
    domain::{
        BusEvent, CounterSource, EventBus, Job, MetricsRecorder, OutboundGateway, OutcomeSink,
        Sample, SourceLog, outcome::OutboundResult,
    },
};

#[derive(Debug, Default)]
pub struct PipelineCounters {
    pub executed: AtomicU64,
    pub sink_retries: AtomicU64,
    pub finished: AtomicU64,
    /// The job queue, to read its depth (weak: it does not keep the queue open).
    pub queue: std::sync::OnceLock<mpsc::WeakSender<Job>>,
}

impl PipelineCounters {
    /// Jobs waiting in the queue now.
    pub fn queue_depth(&self) -> usize {
        self.queue
            .get()
            .and_then(mpsc::WeakSender::upgrade)
            .map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }
}

impl CounterSource for PipelineCounters {
    fn component(&self) -> &'static str {
        "pipeline"
    }

    fn samples(&self) -> Vec<Sample> {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            Sample::counter(
                "calls_executed",
                "Calls the gateway executed",
                load(&self.executed),
            ),
            Sample::counter(
                "calls_finished",
                "Calls whose outcome is durable in every sink (their record may be committed)",
                load(&self.finished),
            ),
            Sample::counter(
                "sink_retries",
                "Deliveries to a sink that failed and were retried",
                load(&self.sink_retries),
            ),
            Sample::gauge(
                "queue_depth",
                "Jobs waiting in the bounded queue between ingest and the workers",
                self.queue_depth() as u64,
            ),
        ]
    }
}

pub struct Executor {
    pub gateway: Arc<dyn OutboundGateway>,
    pub sinks: Vec<Arc<dyn OutcomeSink>>,
    pub bus: Arc<dyn EventBus>,
    /// Where finished records are acknowledged.
    pub source: Arc<dyn SourceLog>,
    /// Every finished call is recorded here (metrics), before its delivery.
    pub recorder: Arc<dyn MetricsRecorder>,
    pub workers: usize,
    /// How long in-flight calls may take to finish after shutdown is asked for.
    pub grace: Duration,
    pub counters: Arc<PipelineCounters>,
}

impl Executor {
    /// Runs jobs until the queue closes or `shutdown` turns true; then waits up to `grace` for
    /// calls in flight. A call cut short is not finished: its record is consumed again later.
    pub async fn run(
        self: Arc<Self>,
        mut jobs: mpsc::Receiver<Job>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let slots = Arc::new(Semaphore::new(self.workers.max(1)));
        // Records the agent died with run one at a time (see `ingest::inflight`).
        let suspects = Arc::new(tokio::sync::Mutex::new(()));
        let deliveries = Arc::new(Semaphore::new(4 * self.workers.max(1)));
        let mut running = JoinSet::new();
        loop {
            let permit = tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                p = Arc::clone(&slots).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let job = tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                j = jobs.recv() => match j {
                    Some(j) => j,
                    None => break,
                },
            };
            let me = Arc::clone(&self);
            let stop = shutdown.clone();
            let deliveries = Arc::clone(&deliveries);
            let suspects = Arc::clone(&suspects);
            // One span per call, from execution to delivery: every log line of the call
            // carries its trace and request ids.
            let ctx = &job.call.ctx;
            let span = info_span!("call", trace_id = %ctx.trace_id, request_id = %ctx.request_id,
                target = %ctx.target, route = %ctx.route);
            running.spawn(
                async move {
                    let alone = if job.suspect {
                        Some(suspects.lock().await)
                    } else {
                        None
                    };
                    let result = me.execute(&job).await;
                    // The worker slot is given back only once the result has a place in the
                    // delivery stage: when sinks stall, workers stop taking jobs, the queue
                    // fills and ingest pauses, instead of results piling up in memory.
                    let Ok(_delivery) = deliveries.acquire_owned().await else {
                        return;
                    };
                    drop(permit);
                    me.deliver(job, result, stop).await;
                    // A suspect runs alone through its delivery too: a death there may be its.
                    drop(alone);
                }
                .instrument(span),
            );
            while running.try_join_next().is_some() {}
        }
        let waited = tokio::time::timeout(self.grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if waited.is_err() {
            warn!(
                cut = running.len(),
                "calls still running after the grace period: they will be replayed"
            );
            running.abort_all();
        }
    }

    /// Runs the call.
    async fn execute(&self, job: &Job) -> Arc<OutboundResult> {
        self.source.executing(&job.record);
        crate::faults::abort_if("abort-executing", &job.call.ctx.request_id);
        let result = Arc::new(self.gateway.execute(job.call.clone()).await);
        self.counters.executed.fetch_add(1, Ordering::Relaxed);
        self.recorder.call_finished(&result);
        info!(
            outcome = ?result.outcome,
            status = result.status, attempts = result.attempts.len(), duration_ms = result.duration_ms,
            connection_matched = result.network.matched, "call finished"
        );
        result
    }

    /// Delivers to every sink at once (in this task: no spawn per sink), each retried until
    /// durable; then publishes and marks the record finished.
    async fn deliver(
        &self,
        job: Job,
        result: Arc<OutboundResult>,
        shutdown: watch::Receiver<bool>,
    ) {
        let deliveries = self
            .sinks
            .iter()
            .map(|sink| self.deliver_to(sink.as_ref(), &result, &shutdown));
        let durable = futures_util::future::join_all(deliveries)
            .await
            .into_iter()
            .all(|durable| durable);
        if durable {
            self.bus.publish(BusEvent::Call(Arc::clone(&result)));
            self.source.finished(&job.record);
            self.counters.finished.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One sink, retried with backoff until it says the result is durable; `false` when
    /// shutdown comes first (not durable: the record is consumed again later).
    async fn deliver_to(
        &self,
        sink: &dyn OutcomeSink,
        result: &Arc<OutboundResult>,
        shutdown: &watch::Receiver<bool>,
    ) -> bool {
        let mut backoff = Backoff::redelivery();
        loop {
            match sink.deliver(Arc::clone(result)).await {
                Ok(()) => return true,
                Err(e) => {
                    self.counters.sink_retries.fetch_add(1, Ordering::Relaxed);
                    warn!(sink = sink.name(), error = %e, "outcome not delivered; retrying");
                    if *shutdown.borrow() {
                        return false;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}
