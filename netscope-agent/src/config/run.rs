//! Settings of `netscope-agent run`: endpoints and sizes from the command line / environment,
//! targets and their policies from an optional TOML file (see `config/netscope.example.toml`).
//! Without a file, the only target is the local demo upstream (127.0.0.1:18080).

use std::path::PathBuf;

use clap::Args;

use super::{
    ConfigError, DEFAULT_BROKERS, DEFAULT_REQUESTS_TOPIC, ProbeArgs, ProbeSettings,
    audit::{AuditArgs, AuditSettings},
};
use crate::{
    domain::{TargetName, targets::Targets},
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
    /// Replicas of each topic the agent creates (`--create-topics`): a production cluster
    /// wants 3; the local broker has one.
    #[arg(long, env = "NETSCOPE_TOPIC_REPLICATION_FACTOR", default_value_t = 1)]
    pub topic_replication_factor: i32,
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
    /// A record older than this (by its Kafka timestamp) is dead-lettered as `expired`
    /// instead of run; 0: no limit.
    #[arg(long, env = "NETSCOPE_MAX_RECORD_AGE_SECS", default_value_t = 900)]
    pub max_record_age_secs: u64,
    /// Liveness (`/healthz`) fails when records are pending and none has finished for this
    /// long, unless `/readyz` names an outage that explains it.
    #[arg(long, env = "NETSCOPE_STALL_SECS", default_value_t = 300)]
    pub stall_secs: u64,
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
    pub topic_replication_factor: i32,
    pub audit: AuditSettings,
    pub node: String,
    pub queue: usize,
    pub workers: usize,
    pub max_in_flight: usize,
    /// No progress with work pending for this long is a wedged pipeline (`/healthz`).
    pub stall: std::time::Duration,
    pub demo_upstream: bool,
    pub probe: Option<ProbeSettings>,
    pub api: super::ApiSettings,
    pub targets: Targets,
    pub policies: Vec<(TargetName, TargetPolicy)>,
    pub default_policy: TargetPolicy,
    pub limits: Limits,
}

impl RunArgs {
    /// Validates everything, reporting every problem at once.
    pub fn validate(&self) -> Result<RunSettings, ConfigError> {
        let mut errors = Vec::new();
        let file = super::targets_file::read(self.config.as_deref(), &mut errors);
        let default_policy = file.defaults.apply(&TargetPolicy::default());
        errors.extend(default_policy.problems("defaults"));
        let (targets, policies) =
            super::targets_file::targets(&file.targets, &default_policy, &mut errors);
        let mut limits = file.limits.validate(&mut errors);
        limits.max_record_age_ms =
            (self.max_record_age_secs > 0).then(|| self.max_record_age_secs.saturating_mul(1000));
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
            topic_replication_factor: self.topic_replication_factor,
            audit,
            node,
            queue: self.queue,
            workers: self.workers,
            max_in_flight: self.max_in_flight,
            stall: std::time::Duration::from_secs(self.stall_secs),
            demo_upstream: self.demo_upstream,
            probe,
            api,
            targets: Targets(targets),
            policies,
            default_policy,
            limits,
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
        if !(1..=16).contains(&self.topic_replication_factor) {
            errors.push(format!(
                "topic-replication-factor {} must be 1..=16",
                self.topic_replication_factor
            ));
        }
        if self.max_record_age_secs > 7 * 86_400 {
            errors.push(format!(
                "max-record-age-secs {} must be 0 (no limit) ..= 604800",
                self.max_record_age_secs
            ));
        }
        if !(10..=86_400).contains(&self.stall_secs) {
            errors.push(format!("stall-secs {} must be 10..=86400", self.stall_secs));
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use std::time::Duration;

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
