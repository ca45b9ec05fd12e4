//! `netscope-bench soak` (`cargo xtask soak`): the pipeline under a long run in which faults pile
//! up. Two real agents (`netscope-agent run`, with the probe as root) in one consumer group
//! against the local broker and RGW; a paced mix of good and malformed messages over three
//! targets of a programmable upstream; on a printed schedule, 5xx bursts, resets, slow
//! responses, refused connections, a broker restart, an RGW outage, two SIGKILLs and a node
//! joining then leaving. Each agent's RSS and CPU are sampled every second, the group's
//! committed offsets too. At the end everything is reconciled ([`reconcile`]) into a table and a
//! JSON report; the exit status is non-zero on any failed check.

mod agents;
mod kafka;
mod plan;
mod reconcile;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use netscope_agent::{
    audit::{
        batch::decode_batch,
        s3::{S3Settings, S3Store},
    },
    clock::now_unix_ms,
    demo::upstream::Upstream,
    domain::audit::AuditEvent,
    ingest::{samples, topics},
};

use agents::Agent;
use plan::{ATTEMPT_TIMEOUT_MS, Action, NODE_1, Step, TARGETS};
use reconcile::{AgentRecord, Budget, Event, Evidence, Progress};

pub struct SoakBench {
    pub messages: usize,
    pub minutes: f64,
    pub brokers: String,
    /// RGW's S3 endpoint (`http://host:port`).
    pub rgw: String,
    pub report: Option<PathBuf>,
    pub workers: usize,
    /// Connections held open through the middle of the run (root only).
    pub live_flows: usize,
}

/// The circuit's open state lasts this long before a probe call (`open_wait_ms`).
const OPEN_WAIT_MS: u64 = 2_000;
const BUDGET: Budget = Budget {
    ttl_s: 10.0,
    min_per_sec: 5.0,
    ratio: 0.2,
};

/// Malformed messages above this are left out of the mix: the broker's default record limit
/// (1 MiB) refuses them before NetScope could (the broker tests cover those).
const MAX_CORPUS_BYTES: usize = 512 << 10;

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn script(name: &str, what: &str) -> Result<(), String> {
    let path = repo().join("scripts").join(name);
    let out = Command::new("bash")
        .arg(&path)
        .arg(what)
        .output()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    out.status.success().then_some(()).ok_or_else(|| {
        format!(
            "scripts/{name} {what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

fn targets_toml(ports: &[u16]) -> String {
    let mut toml = String::new();
    for (name, port) in TARGETS.iter().zip(ports) {
        toml.push_str(&format!(
            "[[targets]]\nname = \"{name}\"\nhosts = [\"127.0.0.1\"]\nports = [{port}]\n\
             [targets.policy]\nattempt_timeout_ms = {ATTEMPT_TIMEOUT_MS}\nconnect_timeout_ms = 200\nmax_attempts = 3\n\
             min_backoff_ms = 10\nmax_backoff_ms = 200\nbudget_ttl_s = {}\n\
             budget_min_per_sec = {}\nbudget_ratio = {}\ncircuit_window = 40\n\
             circuit_min_calls = 20\nfailure_rate = 0.5\nopen_wait_ms = {OPEN_WAIT_MS}\n\n",
            BUDGET.ttl_s, BUDGET.min_per_sec, BUDGET.ratio
        ));
    }
    toml
}

/// What the soak runs on: its topics, group, bucket and files.
struct Names {
    requests: String,
    results: String,
    dlq: String,
    group: String,
    bucket: String,
    dir: PathBuf,
}

impl Names {
    fn new() -> Result<Self, String> {
        let tag = format!("soak-{}", now_unix_ms());
        let dir = std::env::temp_dir().join(format!("netscope-{tag}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Self {
            requests: format!("{tag}-req"),
            results: format!("{tag}-res"),
            dlq: format!("{tag}-dlq"),
            group: format!("{tag}-group"),
            bucket: tag,
            dir,
        })
    }

    fn agent_args(&self, b: &SoakBench, node: &str, config: &Path, probe: bool) -> Vec<String> {
        let spool = self.dir.join(format!("spool-{node}"));
        let mut args: Vec<String> = [
            "--brokers",
            &b.brokers,
            "--group",
            &self.group,
            "--requests-topic",
            &self.requests,
            "--results-topic",
            &self.results,
            "--dlq-topic",
            &self.dlq,
            "--create-topics",
            "false",
            "--config",
            &config.display().to_string(),
            "--node",
            node,
            "--workers",
            &b.workers.to_string(),
            "--audit-sink",
            "rgw",
            "--audit-s3-endpoint",
            &b.rgw,
            "--audit-s3-bucket",
            &self.bucket,
            "--audit-create-bucket",
            "--audit-spool-dir",
            &spool.display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        if !probe {
            args.push("--no-probe".into());
        }
        args
    }
}

/// The upstream targets, each on its own port, which a refusal closes and an accept reopens.
struct Targets {
    addrs: Vec<SocketAddr>,
    live: Vec<Option<Upstream>>,
}

impl Targets {
    async fn start() -> Result<Self, String> {
        let mut live = Vec::new();
        for _ in TARGETS {
            live.push(Some(
                Upstream::start("127.0.0.1:0".parse().map_err(|e| format!("{e}"))?)
                    .await
                    .map_err(|e| format!("upstream: {e}"))?,
            ));
        }
        let addrs = live.iter().flatten().map(|u| u.addr).collect();
        Ok(Self { addrs, live })
    }
}

/// Runs the scripts that stop and start the broker and RGW one after the other, off the
/// soak's clock; each outcome comes back as an event.
fn script_runner(done: mpsc::Sender<(Action, Result<Duration, String>)>) -> mpsc::Sender<Action> {
    let (tx, rx) = mpsc::channel::<Action>();
    std::thread::spawn(move || {
        for action in rx {
            let started = Instant::now();
            let result = match action {
                Action::BrokerStop => script("kafka.sh", "stop"),
                Action::BrokerStart => script("kafka.sh", "start"),
                Action::RgwStop => script("ceph.sh", "rgw-stop"),
                Action::RgwStart => script("ceph.sh", "rgw-start"),
                _ => Ok(()),
            };
            let _ = done.send((action, result.map(|()| started.elapsed())));
        }
    });
    tx
}

pub fn bench(b: &SoakBench) -> Result<(), String> {
    let mut ground = Ground::prepare(b)?;
    let production = Duration::from_secs_f64(b.minutes * 60.0 * 0.8);
    let rate = b.messages as f64 / production.as_secs_f64();
    let live_flows = if ground.probe { b.live_flows } else { 0 };
    let steps = plan::schedule(production, live_flows);
    ground.announce(b, &steps, rate, production);

    let mut agents: Vec<Agent> = ["node-1", "node-2"]
        .iter()
        .map(|node| {
            let args = ground
                .names
                .agent_args(b, node, &ground.config, ground.probe);
            Agent::new(node, &ground.exe, args, &ground.names.dir)
        })
        .collect();
    agents[NODE_1].start()?;
    let outputs = Outputs::follow(b, &ground.names)?;
    let acked = Arc::new(AtomicUsize::new(0));
    let producer = ground.rt.spawn(kafka::produce(
        b.brokers.clone(),
        ground.names.requests.clone(),
        b.messages,
        rate,
        ground.ports.clone(),
        std::mem::take(&mut ground.corpus),
        Arc::clone(&acked),
    ));

    let started_unix_ms = now_unix_ms();
    let mut run = Run::new(Instant::now(), b.messages);
    run.drive(
        &steps,
        b.minutes,
        &mut Live {
            agents: &mut agents,
            ground: &mut ground,
            outputs: &outputs,
            acked: &acked,
            producer: &producer,
        },
    );
    let ended_unix_ms = now_unix_ms();
    for a in &mut agents {
        if a.running()
            && let Err(e) = a.stop()
        {
            run.failures.push(e);
        }
    }
    let placed = ground
        .rt
        .block_on(producer)
        .map_err(|e| format!("producer: {e}"))??;
    let collected = outputs.finish(b, &ground.names)?;
    let (audit, verify) = ground.audit(b, &agents, (started_unix_ms, ended_unix_ms))?;
    let evidence = run.evidence(placed, collected, audit, verify, &agents, ended_unix_ms);
    let report = reconcile::reconcile(&evidence);
    print_report(&report, &run.failures);
    let ok = report.ok() && run.failures.is_empty();
    write_report(b, &report, &run, &steps, &agents, live_flows, ground.probe)?;
    if ok {
        let _ = std::fs::remove_dir_all(&ground.names.dir);
        Ok(())
    } else {
        Err(format!(
            "the soak failed (logs and spools kept in {})",
            ground.names.dir.display()
        ))
    }
}

/// What the soak stands on before it starts: the agent binary, its topics and targets, the
/// malformed corpus, and a runtime for the async parts.
struct Ground {
    exe: PathBuf,
    /// Root: the agents run with the probe.
    probe: bool,
    names: Names,
    rt: tokio::runtime::Runtime,
    targets: Targets,
    ports: Vec<u16>,
    /// The targets file the agents share.
    config: PathBuf,
    corpus: Vec<samples::Malformed>,
}

impl Ground {
    fn prepare(b: &SoakBench) -> Result<Self, String> {
        let exe = crate::memory::agent_binary()?;
        // SAFETY: geteuid has no preconditions.
        let probe = unsafe { libc::geteuid() } == 0;
        let names = Names::new()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        rt.block_on(topics::ensure(
            &b.brokers,
            &[
                (&names.requests, kafka::REQUEST_PARTITIONS),
                (&names.results, kafka::RESULT_PARTITIONS),
                (&names.dlq, 1),
            ],
            1,
        ))
        .map_err(|e| e.to_string())?;
        let targets = rt.block_on(Targets::start())?;
        let ports: Vec<u16> = targets.addrs.iter().map(SocketAddr::port).collect();
        let config = names.dir.join("targets.toml");
        std::fs::write(&config, targets_toml(&ports)).map_err(|e| e.to_string())?;
        Ok(Self {
            exe,
            probe,
            names,
            rt,
            targets,
            ports,
            config,
            corpus: malformed_corpus()?,
        })
    }

    fn announce(&self, b: &SoakBench, steps: &[Step], rate: f64, production: Duration) {
        println!(
            "soak: {} messages at {rate:.0}/s over {:.0} s, 2 agents ({}), work in {}",
            b.messages,
            production.as_secs_f64(),
            if self.probe {
                "with the probe"
            } else {
                "no probe: not root"
            },
            self.names.dir.display()
        );
        for s in steps {
            println!(
                "soak: plan {:>7.1} s  {}",
                s.at.as_secs_f64(),
                s.action.describe()
            );
        }
    }

    /// Every audit event stored in RGW, and `audit verify`'s report for each node over the
    /// run (`window`: its start and end, Unix ms; an hour each side).
    fn audit(
        &self,
        b: &SoakBench,
        agents: &[Agent],
        window: (u64, u64),
    ) -> Result<(Vec<AuditEvent>, BTreeMap<String, serde_json::Value>), String> {
        let s3 = S3Settings {
            endpoint: b.rgw.clone(),
            bucket: self.names.bucket.clone(),
            access_key: "netscope-local".into(),
            secret_key: "netscope-local-secret".into(),
            region: "default".into(),
        };
        let audit = self.rt.block_on(stored_events(&s3))?;
        let (from, to) = (window.0 - 3_600_000, window.1 + 3_600_000);
        let mut verify = BTreeMap::new();
        for a in agents {
            let report = audit_verify(&self.exe, &s3, &a.node, from, to)?;
            verify.insert(a.node.clone(), report);
        }
        Ok((audit, verify))
    }
}

/// The malformed messages of `samples/requests` that the broker accepts and that are wrong in
/// their payload (the producer sends its own headers; `tests/hostile_records.rs` sends the
/// cases that are wrong in their record headers).
fn malformed_corpus() -> Result<Vec<samples::Malformed>, String> {
    let corpus: Vec<_> = samples::malformed(&repo().join("samples/requests"))
        .map_err(|e| format!("the malformed corpus: {e}"))?
        .into_iter()
        .filter(|m| {
            m.headers.is_empty()
                && m.payload
                    .as_ref()
                    .is_none_or(|p| p.len() <= MAX_CORPUS_BYTES)
        })
        .collect();
    if corpus.is_empty() {
        return Err("the malformed corpus is empty".into());
    }
    Ok(corpus)
}

/// The output topics as they fill (results, dead letters) and the group's committed offsets.
struct Outputs {
    collected: Arc<Mutex<kafka::Collected>>,
    stop_reader: Arc<AtomicBool>,
    reader: std::thread::JoinHandle<()>,
    commits: kafka::Commits,
}

impl Outputs {
    fn follow(b: &SoakBench, names: &Names) -> Result<Self, String> {
        let collected = Arc::new(Mutex::new(kafka::Collected::default()));
        let stop_reader = Arc::new(AtomicBool::new(false));
        let reader = kafka::follow(
            &b.brokers,
            &names.results,
            &names.dlq,
            Arc::clone(&collected),
            Arc::clone(&stop_reader),
        )?;
        let commits = kafka::Commits::new(&b.brokers, &names.group, &names.requests)?;
        Ok(Self {
            collected,
            stop_reader,
            reader,
            commits,
        })
    }

    /// Distinct request ids answered or dead-lettered so far, and dead letters.
    fn accounted(&self) -> (usize, usize) {
        let c = self
            .collected
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ids: std::collections::BTreeSet<&str> = c
            .results
            .iter()
            .chain(&c.dlq)
            .map(|s| s.request_id.as_str())
            .collect();
        (ids.len(), c.dlq.len())
    }

    /// Reads what is left on the output topics (the stopped agents flushed theirs; a minute at
    /// most), then stops following.
    fn finish(self, b: &SoakBench, names: &Names) -> Result<kafka::Collected, String> {
        let ends = kafka::ends(&b.brokers, &names.results, &names.dlq)?;
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            let caught_up = {
                let c = self
                    .collected
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                ends.iter()
                    .all(|(k, high)| c.next.get(k).copied().unwrap_or(0) >= *high)
            };
            if caught_up {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.stop_reader.store(true, Ordering::Relaxed);
        let _ = self.reader.join();
        let mut c = self
            .collected
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(std::mem::take(&mut *c))
    }
}

/// What the run loop acts on and watches.
struct Live<'a> {
    agents: &'a mut [Agent],
    ground: &'a mut Ground,
    outputs: &'a Outputs,
    acked: &'a AtomicUsize,
    producer: &'a tokio::task::JoinHandle<Result<Vec<kafka::Placed>, String>>,
}

fn write_report(
    b: &SoakBench,
    report: &reconcile::Report,
    run: &Run,
    steps: &[Step],
    agents: &[Agent],
    live_flows: usize,
    probe: bool,
) -> Result<(), String> {
    let path = b
        .report
        .clone()
        .unwrap_or_else(|| repo().join("target/soak/report.json"));
    let json = serde_json::json!({
        "ok": report.ok() && run.failures.is_empty(),
        "messages": b.messages,
        "live_flows": live_flows,
        "minutes": b.minutes,
        "probe": probe,
        "checks": report.checks,
        "figures": report.figures,
        "failures": run.failures,
        "plan": steps,
        "events": run.events,
        "samples": agents.iter().map(|a| (a.node.clone(), a.samples.clone())).collect::<BTreeMap<_, _>>(),
    });
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap_or_default())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    println!("soak: report written to {}", path.display());
    Ok(())
}

/// What happened while the soak ran.
struct Run {
    /// The connections held open (`Action::HoldFlows`), and when.
    live: Option<crate::memory::LiveConnections>,
    live_window: Option<(u64, Option<u64>)>,
    started: Instant,
    progress: Vec<Progress>,
    events: Vec<Event>,
    commit_samples: Vec<(u64, Vec<Option<i64>>)>,
    failures: Vec<String>,
    /// svc-a's 5xx burst: (began, ended) in Unix ms.
    burst: Option<(u64, Option<u64>)>,
    /// How many messages the run is done at.
    messages: usize,
}

impl Run {
    fn new(started: Instant, messages: usize) -> Self {
        Self {
            live: None,
            live_window: None,
            started,
            progress: Vec::new(),
            events: Vec::new(),
            commit_samples: Vec::new(),
            failures: Vec::new(),
            burst: None,
            messages,
        }
    }

    /// Everything the reconciliation holds against each other.
    fn evidence(
        &mut self,
        placed: Vec<kafka::Placed>,
        collected: kafka::Collected,
        audit: Vec<AuditEvent>,
        verify: BTreeMap<String, serde_json::Value>,
        agents: &[Agent],
        ended_unix_ms: u64,
    ) -> Evidence {
        Evidence {
            progress: self.progress.clone(),
            placed,
            results: collected.results,
            dlq: collected.dlq,
            unreadable: collected.unreadable,
            audit,
            verify,
            commits: std::mem::take(&mut self.commit_samples),
            events: self.events.clone(),
            burst: self
                .burst
                .map(|(on, off)| (on, off.unwrap_or(ended_unix_ms))),
            open_wait_ms: OPEN_WAIT_MS,
            live_window: self
                .live_window
                .map(|(from, to)| (from, to.unwrap_or(ended_unix_ms))),
            budget: BUDGET,
            agents: agents
                .iter()
                .map(|a| AgentRecord {
                    node: a.node.clone(),
                    incarnations: a.incarnations.clone(),
                    samples: a.samples.clone(),
                })
                .collect(),
        }
    }

    /// Once a second until every message is accounted for (or five minutes past the plan):
    /// the steps that are due, the scripts' outcomes, the agents' and the group's samples,
    /// progress.
    fn drive(&mut self, steps: &[Step], minutes: f64, live: &mut Live<'_>) {
        let (done_tx, done_rx) = mpsc::channel();
        let scripts = script_runner(done_tx);
        let mut pending = steps;
        let deadline =
            self.started + Duration::from_secs_f64(minutes * 60.0) + Duration::from_secs(300);
        let mut last_print = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(1000));
            while let Some((step, rest)) = pending.split_first() {
                if step.at > self.started.elapsed() {
                    break;
                }
                pending = rest;
                self.apply(step.action, live, &scripts);
            }
            while let Ok((action, result)) = done_rx.try_recv() {
                match result {
                    Ok(took) => println!(
                        "soak: {:>7.1} s  done in {:.1} s: {}",
                        self.started.elapsed().as_secs_f64(),
                        took.as_secs_f64(),
                        action.describe()
                    ),
                    Err(e) => self.failures.push(format!("{}: {e}", action.describe())),
                }
            }
            let (accounted, dead) = self.sample(live);
            if last_print.elapsed() >= Duration::from_secs(10) {
                last_print = Instant::now();
                self.print_progress(live, (accounted, dead));
            }
            if pending.is_empty() && live.producer.is_finished() && accounted >= self.messages {
                break;
            }
            if Instant::now() > deadline {
                self.failures.push(format!(
                    "not done {:.0} s after the planned end: {accounted} of {} accounted for",
                    deadline.duration_since(self.started).as_secs_f64(),
                    self.messages
                ));
                break;
            }
        }
    }

    /// The agents' samples (and any that exited on its own), the committed offsets, and the
    /// progress; returns how many messages are accounted for (answered or dead-lettered), and
    /// how many of them are dead letters.
    fn sample(&mut self, live: &mut Live<'_>) -> (usize, usize) {
        for a in live.agents.iter_mut() {
            if let Some(status) = a.exited() {
                self.failures.push(format!(
                    "{} exited on its own ({status}): {}",
                    a.node,
                    a.tail()
                ));
            }
            a.sample();
        }
        if let Some(c) = live.outputs.commits.now() {
            self.commit_samples.push((now_unix_ms(), c));
        }
        let (accounted, dead) = live.outputs.accounted();
        self.progress.push(Progress {
            at_unix_ms: now_unix_ms(),
            produced: live.acked.load(Ordering::Relaxed),
            answered: accounted,
        });
        (accounted, dead)
    }

    fn print_progress(&self, live: &Live<'_>, (accounted, dead): (usize, usize)) {
        let rss: Vec<String> = live
            .agents
            .iter()
            .filter(|a| a.running())
            .filter_map(|a| {
                a.samples
                    .last()
                    .map(|s| format!("{} {:.1} MiB", a.node, s.rss_kib as f64 / 1024.0))
            })
            .collect();
        println!(
            "soak: {:>7.1} s  produced {} · answered or dead-lettered {accounted} ({dead} dead) · {}",
            self.started.elapsed().as_secs_f64(),
            live.acked.load(Ordering::Relaxed),
            rss.join(", ")
        );
    }

    fn apply(&mut self, action: Action, live: &mut Live<'_>, scripts: &mpsc::Sender<Action>) {
        // Taken before the change: what a repeat caused by it may not be below.
        let committed = action
            .disrupts_group()
            .then(|| live.outputs.commits.now())
            .flatten();
        let (agents, targets, rt) = (&mut *live.agents, &mut live.ground.targets, &live.ground.rt);
        let at_unix_ms = now_unix_ms();
        println!(
            "soak: {:>7.1} s  {}",
            self.started.elapsed().as_secs_f64(),
            action.describe()
        );
        let result = match action {
            Action::Start(i) => agents[i].start(),
            Action::Leave(i) => agents[i].stop(),
            Action::Kill(i) => {
                agents[i].kill();
                Ok(())
            }
            Action::Upstream(t, fault) => {
                if let Some(up) = &targets.live[t] {
                    up.set_fault(fault.map(Into::into));
                }
                if t == plan::SVC_A {
                    match fault {
                        Some(_) => self.burst = Some((at_unix_ms, None)),
                        None => {
                            if let Some((_, end)) = &mut self.burst {
                                *end = Some(at_unix_ms);
                            }
                        }
                    }
                }
                Ok(())
            }
            Action::Refuse(t) => {
                targets.live[t] = None;
                Ok(())
            }
            Action::Accept(t) => rt
                .block_on(Upstream::start(targets.addrs[t]))
                .map(|u| targets.live[t] = Some(u))
                .map_err(|e| format!("upstream {}: {e}", TARGETS[t])),
            Action::HoldFlows(n) => crate::memory::LiveConnections::open(n).map(|live| {
                self.live = Some(live);
                self.live_window = Some((now_unix_ms(), None));
            }),
            Action::ReleaseFlows => {
                if let Some((_, end)) = &mut self.live_window {
                    *end = Some(now_unix_ms());
                }
                self.live.take().map_or(Ok(()), |l| l.close())
            }
            Action::BrokerStop | Action::BrokerStart | Action::RgwStop | Action::RgwStart => {
                scripts.send(action).map_err(|e| e.to_string())
            }
        };
        if let Err(e) = result {
            self.failures.push(format!("{}: {e}", action.describe()));
        }
        self.events.push(Event {
            at_unix_ms,
            action,
            what: action.describe(),
            committed,
        });
    }
}

async fn stored_events(s3: &S3Settings) -> Result<Vec<AuditEvent>, String> {
    let store = S3Store::new(s3.clone());
    let mut events = Vec::new();
    for key in store.list("v1/").await.map_err(|e| e.to_string())? {
        let bytes = store.get(&key).await.map_err(|e| e.to_string())?;
        events.extend(decode_batch(&key, &bytes).map_err(|e| e.to_string())?);
    }
    Ok(events)
}

fn audit_verify(
    exe: &Path,
    s3: &S3Settings,
    node: &str,
    from: u64,
    to: u64,
) -> Result<serde_json::Value, String> {
    let out = Command::new(exe)
        .args(["audit", "verify", "--node", node])
        .args(["--from", &from.to_string(), "--to", &to.to_string()])
        .args(["--audit-s3-endpoint", &s3.endpoint])
        .args(["--audit-s3-bucket", &s3.bucket])
        .output()
        .map_err(|e| format!("audit verify: {e}"))?;
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "audit verify {node} ({}): {e}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

fn print_report(report: &reconcile::Report, failures: &[String]) {
    println!("\nsoak: reconciliation");
    for c in &report.checks {
        println!(
            "  {:<4} {:<70} {}",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    for f in failures {
        println!("  FAIL {f}");
    }
    let f = &report.figures;
    println!("\nsoak: figures");
    for key in [
        "messages_produced",
        "distinct_results",
        "results",
        "dead_letters",
        "audit_events",
        "messages_per_s",
        "cpu_ms_per_1000_calls",
        "longest_pause",
    ] {
        println!("  {key:<24} {}", f[key]);
    }
    if let Some(agents) = f["agents"].as_array() {
        for a in agents {
            println!("  {a}");
        }
    }
}
