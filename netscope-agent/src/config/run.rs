//! Settings of `netscope-agent run`: endpoints and sizes from the command line / environment,
//! targets and their policies from an optional TOML file (see `config/netscope.example.toml`).
//! Without a file, the only target is the local demo upstream (127.0.0.1:18080).

use std::{collections::HashSet, path::PathBuf, time::Duration};

use clap::Args;
use serde::Deserialize;

use super::{
    ConfigError, DEFAULT_BROKERS, DEFAULT_REQUESTS_TOPIC, ProbeArgs, ProbeSettings,
    audit::{AuditArgs, AuditSettings},
};
use crate::{
    domain::{
        Cidr, RouteName, TargetName,
        targets::{HostMatch, RouteRule, Target, Targets},
    },
    ingest::schema::Limits,
    outbound::TargetPolicy,
};

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// TOML file with targets, policies and limits.
    #[arg(long, env = "NETSCOPE_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "NETSCOPE_KAFKA_BROKERS", default_value = DEFAULT_BROKERS)]
    pub brokers: String,
    #[arg(long, env = "NETSCOPE_GROUP", default_value = "netscope-agent")]
    pub group: String,
    #[arg(
        long,
        env = "NETSCOPE_REQUESTS_TOPIC",
        default_value = DEFAULT_REQUESTS_TOPIC
    )]
    pub requests_topic: String,
    #[arg(
        long,
        env = "NETSCOPE_RESULTS_TOPIC",
        default_value = "netscope.results"
    )]
    pub results_topic: String,
    #[arg(
        long,
        env = "NETSCOPE_DLQ_TOPIC",
        default_value = "netscope.requests.dlq"
    )]
    pub dlq_topic: String,
    /// Create the three topics if they do not exist.
    #[arg(long, env = "NETSCOPE_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub create_topics: bool,
    /// This agent's name in audit events (default: the host name).
    #[arg(long, env = "NETSCOPE_NODE")]
    pub node: Option<String>,
    #[command(flatten)]
    pub audit: AuditArgs,
    /// Jobs waiting between ingest and execution; when full, consumption pauses.
    #[arg(long, env = "NETSCOPE_QUEUE", default_value_t = 1024)]
    pub queue: usize,
    /// Calls executed at once.
    #[arg(long, env = "NETSCOPE_WORKERS", default_value_t = 64)]
    pub workers: usize,
    /// Calls in flight across all targets at most (global bulkhead).
    #[arg(long, env = "NETSCOPE_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,
    /// Also serve the programmable demo upstream on 127.0.0.1:18080.
    #[arg(long)]
    pub demo_upstream: bool,
    /// Run without the kernel probe (results then carry no network facts).
    #[arg(long)]
    pub no_probe: bool,
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub api: super::ApiArgs,
}

/// Validated settings of `run`.
#[derive(Clone, Debug)]
pub struct RunSettings {
    pub brokers: String,
    pub group: String,
    pub requests_topic: String,
    pub results_topic: String,
    pub dlq_topic: String,
    pub create_topics: bool,
    pub audit: AuditSettings,
    pub node: String,
    pub queue: usize,
    pub workers: usize,
    pub max_in_flight: usize,
    pub demo_upstream: bool,
    pub probe: Option<ProbeSettings>,
    pub api: super::ApiSettings,
    pub targets: Targets,
    pub policies: Vec<(TargetName, TargetPolicy)>,
    pub default_policy: TargetPolicy,
    pub limits: Limits,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    targets: Vec<TargetFile>,
    #[serde(default)]
    defaults: PolicyFile,
    #[serde(default)]
    limits: LimitsFile,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFile {
    name: String,
    hosts: Vec<String>,
    ports: Vec<u16>,
    #[serde(default)]
    routes: Vec<RouteFile>,
    #[serde(default)]
    policy: PolicyFile,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    name: String,
    path_prefix: String,
}

/// Every field optional: it overrides the defaults (which `[defaults]` overrides first).
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    attempt_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    min_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    budget_ttl_s: Option<u64>,
    budget_min_per_sec: Option<u32>,
    budget_ratio: Option<f32>,
    circuit_window: Option<u32>,
    circuit_min_calls: Option<u32>,
    failure_rate: Option<f64>,
    slow_call_ms: Option<u64>,
    slow_call_rate: Option<f64>,
    open_wait_ms: Option<u64>,
    half_open_probes: Option<u32>,
    max_in_flight: Option<usize>,
    rate_per_sec: Option<u32>,
    burst: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_message_bytes: Option<usize>,
    max_body_bytes: Option<usize>,
    default_timeout_ms: Option<u64>,
    max_timeout_ms: Option<u64>,
}

impl PolicyFile {
    fn apply(&self, base: &TargetPolicy) -> TargetPolicy {
        let ms = Duration::from_millis;
        let mut p = base.clone();
        let r = &mut p.retry;
        let c = &mut p.circuit;
        macro_rules! set {
            ($($src:ident => $dst:expr, $conv:expr);* $(;)?) => {$(
                if let Some(v) = self.$src { $dst = $conv(v); }
            )*};
        }
        set! {
            attempt_timeout_ms => p.attempt_timeout, ms;
            connect_timeout_ms => p.connect_timeout, ms;
            max_attempts => r.max_attempts, |v| v;
            min_backoff_ms => r.min_backoff, ms;
            max_backoff_ms => r.max_backoff, ms;
            budget_ttl_s => r.budget_ttl, Duration::from_secs;
            budget_min_per_sec => r.budget_min_per_sec, |v| v;
            budget_ratio => r.budget_ratio, |v| v;
            circuit_window => c.window, |v| v;
            circuit_min_calls => c.min_calls, |v| v;
            failure_rate => c.failure_rate, |v| v;
            slow_call_ms => c.slow_call, ms;
            slow_call_rate => c.slow_call_rate, |v| v;
            open_wait_ms => c.open_wait, ms;
            half_open_probes => c.half_open_probes, |v| v;
            max_in_flight => p.max_in_flight, |v| v;
            burst => p.burst, |v| v;
        }
        if self.rate_per_sec.is_some() {
            p.rate_per_sec = self.rate_per_sec;
        }
        p
    }
}

/// Target and route names become metric labels: short, lower-case, no surprises.
fn valid_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn valid_hostname(s: &str) -> bool {
    (1..=253).contains(&s.len())
        && s.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn demo_targets() -> FileConfig {
    FileConfig {
        targets: vec![TargetFile {
            name: "demo".into(),
            hosts: vec!["127.0.0.1".into()],
            ports: vec![18080],
            routes: vec![
                RouteFile {
                    name: "orders".into(),
                    path_prefix: "/orders".into(),
                },
                RouteFile {
                    name: "payments".into(),
                    path_prefix: "/payments".into(),
                },
            ],
            policy: PolicyFile::default(),
        }],
        ..FileConfig::default()
    }
}

impl RunArgs {
    /// Validates everything, reporting every problem at once.
    pub fn validate(&self) -> Result<RunSettings, ConfigError> {
        let mut errors = Vec::new();
        let file = self.file(&mut errors);
        let default_policy = file.defaults.apply(&TargetPolicy::default());
        errors.extend(default_policy.problems("defaults"));
        let (targets, policies) = targets(&file.targets, &default_policy, &mut errors);
        let limits = file.limits.validate(&mut errors);
        self.check_topics(&mut errors);
        self.check_sizes(&mut errors);
        let node = self.node(&mut errors);
        let audit = self.audit.validate_into(&node, &mut errors);
        let probe = if self.no_probe {
            None
        } else {
            match self.probe.validate() {
                // Each call's bytes on a pooled connection are counted per message.
                Ok(p) => Some(ProbeSettings {
                    per_message_hooks: true,
                    ..p
                }),
                Err(ConfigError::Invalid(e)) => {
                    errors.extend(e);
                    None
                }
            }
        };
        let api = self.api.validate_into(&mut errors);
        let (true, Some(audit), Some(api)) = (errors.is_empty(), audit, api) else {
            return Err(ConfigError::Invalid(errors));
        };
        Ok(RunSettings {
            brokers: self.brokers.clone(),
            group: self.group.clone(),
            requests_topic: self.requests_topic.clone(),
            results_topic: self.results_topic.clone(),
            dlq_topic: self.dlq_topic.clone(),
            create_topics: self.create_topics,
            audit,
            node,
            queue: self.queue,
            workers: self.workers,
            max_in_flight: self.max_in_flight,
            demo_upstream: self.demo_upstream,
            probe,
            api,
            targets: Targets(targets),
            policies,
            default_policy,
            limits,
        })
    }

    /// The TOML file, or the demo upstream as the only target when there is none.
    fn file(&self, errors: &mut Vec<String>) -> FileConfig {
        let Some(path) = &self.config else {
            return demo_targets();
        };
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| toml::from_str(&text).map_err(|e| e.to_string()));
        parsed.unwrap_or_else(|e| {
            errors.push(format!("config {}: {e}", path.display()));
            FileConfig::default()
        })
    }

    /// Kafka names: legal topic names, requests apart from results and dead letters.
    fn check_topics(&self, errors: &mut Vec<String>) {
        for (name, topic) in [
            ("requests-topic", &self.requests_topic),
            ("results-topic", &self.results_topic),
            ("dlq-topic", &self.dlq_topic),
        ] {
            let ok = (1..=249).contains(&topic.len())
                && topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                errors.push(format!("{name} `{topic}`: 1–249 of a-z A-Z 0-9 . _ -"));
            }
        }
        if self.requests_topic == self.dlq_topic || self.requests_topic == self.results_topic {
            errors.push(
                "the requests topic must differ from the results and dead-letter topics".to_owned(),
            );
        }
        if self.brokers.trim().is_empty() {
            errors.push("brokers: empty".to_owned());
        }
    }

    /// Queue, workers and the global bulkhead within sane bounds.
    fn check_sizes(&self, errors: &mut Vec<String>) {
        for (name, v, max) in [
            ("queue", self.queue, 1_000_000),
            ("workers", self.workers, 10_000),
            ("max-in-flight", self.max_in_flight, 100_000),
        ] {
            if !(1..=max).contains(&v) {
                errors.push(format!("{name} {v} must be 1..={max}"));
            }
        }
    }

    /// This agent's name in audit events: `--node`, else the host name.
    fn node(&self, errors: &mut Vec<String>) -> String {
        let node = self.node.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".to_owned())
        });
        if node.is_empty()
            || node.len() > 64
            || !node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            errors.push(format!("node `{node}`: 1–64 of a-z A-Z 0-9 - _ ."));
        }
        node
    }
}

/// The file's targets and each one's policy (over the defaults), every problem listed.
fn targets(
    files: &[TargetFile],
    default_policy: &TargetPolicy,
    errors: &mut Vec<String>,
) -> (Vec<Target>, Vec<(TargetName, TargetPolicy)>) {
    let mut targets = Vec::new();
    let mut policies = Vec::new();
    let mut names = HashSet::new();
    for t in files {
        let ctx = format!("target `{}`", t.name);
        if !valid_name(&t.name) {
            errors.push(format!("{ctx}: names are 1–32 of a-z 0-9 - _"));
        }
        if !names.insert(t.name.clone()) {
            errors.push(format!("{ctx}: defined twice"));
        }
        if t.ports.is_empty() || t.ports.contains(&0) {
            errors.push(format!("{ctx}: ports must be a non-empty list of 1–65535"));
        }
        let policy = t.policy.apply(default_policy);
        errors.extend(policy.problems(&ctx));
        policies.push((TargetName(t.name.clone()), policy));
        targets.push(Target {
            name: TargetName(t.name.clone()),
            hosts: hosts(&ctx, &t.hosts, errors),
            ports: t.ports.clone(),
            routes: routes(&ctx, &t.routes, errors),
        });
    }
    if targets.is_empty() {
        errors.push("no targets: nothing may be called".to_owned());
    }
    (targets, policies)
}

/// Each host an IP, a CIDR or a host name.
fn hosts(ctx: &str, hosts: &[String], errors: &mut Vec<String>) -> Vec<HostMatch> {
    if hosts.is_empty() {
        errors.push(format!("{ctx}: no hosts"));
    }
    let mut out = Vec::new();
    for h in hosts {
        if let Ok(c) = h.parse::<Cidr>() {
            out.push(HostMatch::Net(c));
        } else if valid_hostname(h) {
            out.push(HostMatch::Name(h.to_ascii_lowercase()));
        } else {
            errors.push(format!(
                "{ctx}: host `{h}` is neither an IP/CIDR nor a host name"
            ));
        }
    }
    out
}

/// Named routes with a path prefix each; `default` is reserved for the rest.
fn routes(ctx: &str, routes: &[RouteFile], errors: &mut Vec<String>) -> Vec<RouteRule> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for r in routes {
        if !valid_name(&r.name) || r.name == "default" {
            errors.push(format!(
                "{ctx}: route `{}`: 1–32 of a-z 0-9 - _, not `default`",
                r.name
            ));
        }
        if !names.insert(&r.name) {
            errors.push(format!("{ctx}: route `{}` defined twice", r.name));
        }
        if !r.path_prefix.starts_with('/') {
            errors.push(format!(
                "{ctx}: route `{}`: path_prefix must start with /",
                r.name
            ));
        }
        out.push(RouteRule {
            name: RouteName(r.name.clone()),
            path_prefix: r.path_prefix.clone(),
        });
    }
    out
}

impl LimitsFile {
    /// The message limits, the file's values over the defaults.
    fn validate(&self, errors: &mut Vec<String>) -> Limits {
        let mut limits = Limits::default();
        limits.max_message_bytes = self.max_message_bytes.unwrap_or(limits.max_message_bytes);
        limits.max_body_bytes = self.max_body_bytes.unwrap_or(limits.max_body_bytes);
        limits.default_timeout_ms = self.default_timeout_ms.unwrap_or(limits.default_timeout_ms);
        limits.max_timeout_ms = self.max_timeout_ms.unwrap_or(limits.max_timeout_ms);
        if limits.default_timeout_ms == 0 || limits.default_timeout_ms > limits.max_timeout_ms {
            errors.push("limits: default_timeout_ms must be 1..=max_timeout_ms".to_owned());
        }
        if limits.max_body_bytes > limits.max_message_bytes {
            errors.push("limits: max_body_bytes must not exceed max_message_bytes".to_owned());
        }
        limits
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RunArgs,
    }

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["run", "--no-probe"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    fn with_file(text: &str) -> Result<RunSettings, ConfigError> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        args(&["--config", file.path().to_str().unwrap()]).validate()
    }

    #[test]
    fn the_local_default_allows_only_the_demo_upstream() {
        let s = args(&[]).validate().unwrap();
        assert_eq!(s.targets.0.len(), 1);
        assert_eq!(s.targets.0[0].ports, vec![18080]);
        assert_eq!(s.requests_topic, "netscope.requests");
        assert!(s.probe.is_none());
    }

    #[test]
    fn a_file_sets_targets_and_overlays_policies() {
        let s = with_file(
            r#"
            [defaults]
            max_attempts = 4
            [[targets]]
            name = "payments"
            hosts = ["pay.example.com", "10.1.0.0/16"]
            ports = [443]
            routes = [{ name = "charge", path_prefix = "/v1/charges" }]
            [targets.policy]
            attempt_timeout_ms = 1500
            connect_timeout_ms = 500
            rate_per_sec = 50
            burst = 10
            "#,
        )
        .unwrap();
        let (name, p) = &s.policies[0];
        assert_eq!(name.0, "payments");
        assert_eq!(p.retry.max_attempts, 4, "from [defaults]");
        assert_eq!(p.attempt_timeout, Duration::from_millis(1500));
        assert_eq!((p.rate_per_sec, p.burst), (Some(50), 10));
        assert_eq!(s.targets.0[0].hosts.len(), 2);
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/netscope.example.toml"
        );
        let s = args(&["--config", path]).validate().unwrap();
        assert_eq!(s.targets.0.len(), 2);
        assert_eq!(s.policies[1].1.rate_per_sec, Some(200));
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let err = with_file(
            r#"
            [[targets]]
            name = "Bad Name"
            hosts = ["not a host!"]
            ports = [0]
            routes = [{ name = "default", path_prefix = "x" }]
            [targets.policy]
            max_attempts = 0
            failure_rate = 2.0
            [[targets]]
            name = "ok"
            hosts = ["127.0.0.1"]
            ports = [1]
            [[targets]]
            name = "ok"
            hosts = []
            ports = [2]
            "#,
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "target `Bad Name`: names",
            "host `not a host!`",
            "ports must be",
            "route `default`",
            "path_prefix",
            "max_attempts",
            "failure_rate",
            "target `ok`: defined twice",
            "target `ok`: no hosts",
        ] {
            assert!(text.contains(needle), "`{needle}` missing:\n{text}");
        }
        let err = with_file("[[targets]]\nname = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("config"), "{err}");
        let err = with_file("[surprise]\n").unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
    }
}
