//! `netscope-agent run`: the pipeline. Kafka requests → normalisation (DLQ for the invalid) →
//! bounded queue → outbound gateway under resilience policies → correlation with the kernel's
//! flows → results topic, audit file, bus → offsets committed. Each call's result is printed
//! as a JSON line on stdout.

use std::{
    io::Write as _,
    sync::{Arc, PoisonError, atomic::Ordering},
    time::Duration,
};

use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};
use tracing::info;

use super::{AppError, observed::Observed, serve, shutdown_signal};
use crate::{
    audit::{
        ndjson::NdjsonAudit,
        rgw::{AuditSummary, RgwAudit},
    },
    bus::BroadcastBus,
    config::{AuditSettings, ProbeSettings, RunSettings},
    demo::upstream::Upstream,
    domain::{
        BusEvent, ConnectionObserver, CounterSource, FlowQuery, HealthCheck, Job, MetricsRecorder,
        OutboundGateway, OutcomeSink, kernel::CheckReport,
    },
    flows::FlowPipeline,
    ingest::{
        inflight::InFlightJournal,
        kafka::{KafkaIngest, KafkaSettings},
        results::KafkaResults,
        schema::Normalizer,
        topics,
    },
    outbound::HttpGateway,
    pipeline::{Executor, PipelineCounters},
    probe::{Probe, ProbeHealth, ProbeOptions, correlate::Correlator, ring},
    stall::{Progress, StallWatch},
};

/// The demo upstream's address (the only target of the local default).
pub const DEMO_UPSTREAM: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 18080);

#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub event: &'static str,
    pub consumed: u64,
    pub accepted: u64,
    pub dead_lettered: u64,
    pub executed: u64,
    pub finished: u64,
    /// Times the job queue was full and ingest waited (prefetched records kept).
    pub backpressure_waits: u64,
    /// Times it stayed full past a second and the partitions were paused.
    pub backpressure_pauses: u64,
    pub sink_retries: u64,
    /// The RGW audit trail's spool and uploads (`--audit-sink rgw`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditSummary>,
}

/// The assembled pipeline, ready to run. `netscope-agent run` and the pipeline benchmark
/// both build it this way.
pub struct Pipeline {
    ingest: KafkaIngest,
    /// The topics to create before consuming (`--create-topics`), with their partitions.
    topics: Option<[(String, i32); 3]>,
    replicas: i32,
    brokers: String,
    executor: Arc<Executor>,
    bus: BroadcastBus,
    probe_task: Option<ProbeTask>,
    counters: Arc<PipelineCounters>,
    rgw_audit: Option<Arc<RgwAudit>>,
    jobs: (mpsc::Sender<Job>, mpsc::Receiver<Job>),
    view: Option<serve::View>,
    _upstream: Option<Upstream>,
}

impl Pipeline {
    /// Connects everything; `stop` also stops the probe's reader.
    pub async fn build(s: &RunSettings, stop: watch::Receiver<bool>) -> Result<Self, AppError> {
        let upstream = demo_upstream(s).await?;
        // The audit trail first: a bad bucket or key fails the boot before anything is consumed.
        let (audit, rgw_audit) = audit_sink(s).await?;
        let bus = BroadcastBus::new(65_536);
        let mut seen = Observed::new(s);
        let probe = match &s.probe {
            Some(ps) => Some(attach_probe(ps, &bus, seen.recorder(), stop.clone())?),
            None => None,
        };
        let gateway: Arc<dyn OutboundGateway> = Arc::new(HttpGateway::new(
            s.policies.clone(),
            s.default_policy.clone(),
            s.max_in_flight,
            probe.as_ref().map(|p| Arc::clone(&p.observer)),
        )?);
        let results: Arc<dyn OutcomeSink> =
            Arc::new(KafkaResults::new(&s.brokers, &s.results_topic)?);
        let ingest = connect_ingest(s)?;
        let counters = Arc::new(PipelineCounters::default());
        let jobs = mpsc::channel(s.queue);
        let _ = counters.queue.set(jobs.0.downgrade());
        let executor = Arc::new(Executor {
            gateway: Arc::clone(&gateway),
            sinks: vec![results, audit],
            bus: Arc::new(bus.clone()),
            source: ingest.source_log(),
            recorder: seen.recorder(),
            workers: s.workers,
            grace: Duration::from_secs(10),
            counters: Arc::clone(&counters),
        });
        seen.source(ingest.counters());
        seen.source(Arc::clone(&counters) as Arc<dyn CounterSource>);
        seen.health.push(ingest.health());
        if let Some(rgw) = &rgw_audit {
            seen.source(rgw.stats());
            seen.health.push(rgw.stats());
        }
        let stall = Arc::new(stall_watch(s, &ingest, &counters, seen.health.clone()));
        seen.health.push(Arc::clone(&stall) as Arc<dyn HealthCheck>);
        seen.liveness.push(stall);
        let (probe_task, view) = seen.view(s, &bus, gateway, probe, stop);
        Ok(Self {
            ingest,
            topics: s.create_topics.then(|| {
                [
                    (s.requests_topic.clone(), 3),
                    (s.results_topic.clone(), 3),
                    (s.dlq_topic.clone(), 1),
                ]
            }),
            replicas: s.topic_replication_factor,
            brokers: s.brokers.clone(),
            executor,
            bus,
            probe_task,
            counters,
            rgw_audit,
            jobs,
            view: Some(view),
            _upstream: upstream,
        })
    }

    /// What the HTTP server shows (taken once, by the command that serves it).
    pub fn take_view(&mut self) -> Option<serve::View> {
        self.view.take()
    }

    /// Flow updates and call results, as they happen.
    pub fn bus(&self) -> &BroadcastBus {
        &self.bus
    }

    pub fn counters(&self) -> Arc<PipelineCounters> {
        Arc::clone(&self.counters)
    }

    /// Runs until `stop` turns true: sets up the topics (retried until the broker answers),
    /// then consumes; at the end stops consuming, lets calls in flight finish, commits.
    pub async fn run(self, stop: watch::Receiver<bool>) -> Result<RunSummary, AppError> {
        if let Some(topics) = &self.topics {
            let topics: Vec<(&str, i32)> = topics.iter().map(|(t, p)| (t.as_str(), *p)).collect();
            let health = self.ingest.health();
            // A clone: a stop seen while waiting must still stop ingest below.
            topics::ensure_with_retry(
                &self.brokers,
                &topics,
                self.replicas,
                &health,
                &mut stop.clone(),
            )
            .await;
        }
        let (jobs_tx, jobs_rx) = self.jobs;
        let execution = tokio::spawn(Arc::clone(&self.executor).run(jobs_rx, stop.clone()));
        self.ingest.run(jobs_tx, stop).await?;
        let _ = execution.await;
        self.ingest.commit_now();
        self.ingest.stopped_cleanly();
        // Every committed record's event is spooled; ship what RGW takes in the grace time.
        let audit = match &self.rgw_audit {
            Some(rgw) => Some(rgw.close(Duration::from_secs(10)).await),
            None => None,
        };
        if let Some(task) = self.probe_task
            && let Ok(Err(e)) = task.await
        {
            tracing::warn!(error = %e, "probe reader stopped with an error");
        }
        let ic = self.ingest.counters();
        let c = &self.counters;
        Ok(RunSummary {
            event: "summary",
            consumed: ic.consumed.load(Ordering::Relaxed),
            accepted: ic.accepted.load(Ordering::Relaxed),
            dead_lettered: ic.dead_lettered.load(Ordering::Relaxed),
            executed: c.executed.load(Ordering::Relaxed),
            finished: c.finished.load(Ordering::Relaxed),
            backpressure_waits: ic.backpressure_waits.load(Ordering::Relaxed),
            backpressure_pauses: ic.backpressure_pauses.load(Ordering::Relaxed),
            sink_retries: c.sink_retries.load(Ordering::Relaxed),
            audit,
        })
    }
}

/// Liveness: records pending (handed out by ingest, not finished) against records finished
/// (results delivered and dead letters), excused by what readiness reports.
fn stall_watch(
    s: &RunSettings,
    ingest: &KafkaIngest,
    counters: &Arc<PipelineCounters>,
    readiness: Vec<Arc<dyn HealthCheck>>,
) -> StallWatch {
    let tracker = ingest.tracker();
    let (finished, dead) = (Arc::clone(counters), ingest.counters());
    let progress = Progress {
        pending: Box::new(move || {
            let t = tracker.lock().unwrap_or_else(PoisonError::into_inner);
            t.in_flight() as u64
        }),
        done: Box::new(move || {
            finished.finished.load(Ordering::Relaxed) + dead.dead_lettered.load(Ordering::Relaxed)
        }),
    };
    StallWatch::new(s.stall, progress, readiness)
}

/// The consumer (joining the group) and the dead-letter producer, with the in-flight journal on
/// the spool's disk.
fn connect_ingest(s: &RunSettings) -> Result<KafkaIngest, AppError> {
    let path = s.audit.state_dir().join(format!("{}.inflight", s.node));
    let journal = InFlightJournal::open(&path).map_err(|source| AppError::Io {
        what: format!("in-flight journal {}", path.display()),
        source,
    })?;
    Ok(KafkaIngest::connect(
        KafkaSettings {
            brokers: s.brokers.clone(),
            group_id: s.group.clone(),
            topics: vec![s.requests_topic.clone()],
            dlq_topic: s.dlq_topic.clone(),
        },
        Normalizer::new(s.targets.clone(), s.limits.clone()),
        Arc::new(journal),
    )?)
}

/// The demo upstream on 127.0.0.1:18080, when asked for.
async fn demo_upstream(s: &RunSettings) -> Result<Option<Upstream>, AppError> {
    if !s.demo_upstream {
        return Ok(None);
    }
    let u = Upstream::start(DEMO_UPSTREAM)
        .await
        .map_err(|source| AppError::Io {
            what: format!("demo upstream on {DEMO_UPSTREAM}"),
            source,
        })?;
    info!(addr = %u.addr, "demo upstream listening");
    Ok(Some(u))
}

/// The audit trail: the local file, or the spooling RGW sink (also returned as itself, to be
/// closed — drained — at shutdown).
async fn audit_sink(
    s: &RunSettings,
) -> Result<(Arc<dyn OutcomeSink>, Option<Arc<RgwAudit>>), AppError> {
    match &s.audit {
        AuditSettings::File(path) => {
            let file = NdjsonAudit::open(path, &s.node).map_err(|source| AppError::Io {
                what: format!("audit file {}", path.display()),
                source,
            })?;
            Ok((Arc::new(file), None))
        }
        AuditSettings::Rgw(r) => {
            let rgw = Arc::new(
                RgwAudit::connect(r.s3.clone(), r.spool.clone(), r.lock_days, r.create_bucket)
                    .await?,
            );
            info!(endpoint = %r.s3.endpoint, bucket = %r.s3.bucket, spool = %r.spool.dir.display(), "audit trail: Ceph RGW");
            Ok((Arc::clone(&rgw) as Arc<dyn OutcomeSink>, Some(rgw)))
        }
    }
}

/// The kernel's side, attached: the correlator's observer, the reader task, and what the
/// server reads of it.
pub(super) struct Attached {
    pub(super) observer: Arc<dyn ConnectionObserver>,
    pub(super) task: ProbeTask,
    pub(super) table: Arc<dyn FlowQuery>,
    pub(super) sources: Vec<Arc<dyn CounterSource>>,
    pub(super) health: Arc<dyn HealthCheck>,
    pub(super) programs: Vec<&'static str>,
    pub(super) support: CheckReport,
}

/// The kernel's side: programs attached, their flows into the table (and onto the bus, and
/// into the flow metrics), the correlator reading it. The reader task runs until `stop`, then
/// detaches the programs.
fn attach_probe(
    ps: &ProbeSettings,
    bus: &BroadcastBus,
    recorder: Arc<dyn MetricsRecorder>,
    stop: watch::Receiver<bool>,
) -> Result<Attached, AppError> {
    let mut probe = Probe::load(&ProbeOptions::from_settings(ps))?;
    let table = super::flow_table(ps, true);
    let flows = Arc::new(
        FlowPipeline::new(Arc::clone(&table), Arc::new(bus.clone()))
            .with_recorder(recorder)
            .counting_calls(probe.live_bytes().counted_calls()),
    );
    let reader = probe.take_events()?;
    let socks = probe.take_socks()?;
    let kick = Arc::new(Notify::new());
    let observer = Arc::new(Correlator::new(
        Arc::clone(&table),
        socks,
        flows.updated(),
        Arc::clone(&kick),
        Duration::from_millis(500),
    ));
    let programs = probe.attached();
    let support = probe.report();
    let health = Arc::new(ProbeHealth::new(&probe, &reader, ps.poll));
    let sources: Vec<Arc<dyn CounterSource>> = vec![
        probe.counter_reader(),
        reader.counters(),
        Arc::clone(&table) as Arc<dyn CounterSource>,
    ];
    let poll = ps.poll;
    let task = tokio::spawn(async move {
        let reader = ring::pump(reader, poll, kick, stop, |k, e| flows.on_event(k, e)).await;
        drop(probe); // detaches
        reader.map(|_| ())
    });
    info!("probe attached: results carry the kernel's network facts");
    Ok(Attached {
        observer,
        task,
        table,
        sources,
        health,
        programs,
        support,
    })
}

/// The ring reader's task.
pub(super) type ProbeTask = tokio::task::JoinHandle<std::io::Result<()>>;

pub async fn run_pipeline(s: RunSettings) -> Result<RunSummary, AppError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    shutdown_signal(stop_tx)?;
    let mut pipeline = Pipeline::build(&s, stop_rx.clone()).await?;
    let server = match pipeline.take_view() {
        Some(view) => Some(serve::start(&s.api, "run", view, stop_rx.clone()).await?.1),
        None => None,
    };

    // Every result as a JSON line on stdout.
    let mut subscriber = pipeline.bus().subscribe();
    let printer = tokio::spawn(async move {
        while let Some(event) = subscriber.recv().await {
            if let BusEvent::Call(result) = event {
                let mut out = std::io::stdout().lock();
                if serde_json::to_writer(&mut out, result.as_ref()).is_ok() {
                    let _ = writeln!(out);
                }
            }
        }
    });
    info!(topic = %s.requests_topic, group = %s.group, brokers = %s.brokers, "consuming");
    let summary = pipeline.run(stop_rx).await;
    if let Some(server) = server {
        serve::stop(server).await;
    }
    printer.abort();
    summary
}
