//! `run`'s targets file (TOML; see `config/netscope.example.toml`): the targets with their
//! hosts, ports and routes, each one's policy over the defaults, and the message limits — or,
//! without a file, the local demo upstream as the only target. Every problem is listed.

use std::{collections::HashSet, path::Path, time::Duration};

use serde::Deserialize;

use crate::{
    domain::{
        Cidr, RouteName, TargetName,
        targets::{HostMatch, RouteRule, Target},
    },
    ingest::schema::Limits,
    outbound::TargetPolicy,
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    pub(super) targets: Vec<TargetFile>,
    #[serde(default)]
    pub(super) defaults: PolicyFile,
    #[serde(default)]
    pub(super) limits: LimitsFile,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TargetFile {
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
pub(super) struct RouteFile {
    name: String,
    path_prefix: String,
}

/// Every field optional: it overrides the defaults (which `[defaults]` overrides first).
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyFile {
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
    /// Run a call again after the agent died while it was executing, even when it is not
    /// idempotent (default false: such a call is dead-lettered as `maybe_executed`).
    replay_unsafe: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsFile {
    max_message_bytes: Option<usize>,
    max_body_bytes: Option<usize>,
    default_timeout_ms: Option<u64>,
    max_timeout_ms: Option<u64>,
}

impl PolicyFile {
    pub(super) fn apply(&self, base: &TargetPolicy) -> TargetPolicy {
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
            replay_unsafe => p.replay_unsafe, |v| v;
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

/// The file's targets and each one's policy (over the defaults), every problem listed.
pub(super) fn targets(
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
        let replay_unsafe = policy.replay_unsafe;
        policies.push((TargetName(t.name.clone()), policy));
        targets.push(Target {
            name: TargetName(t.name.clone()),
            hosts: hosts(&ctx, &t.hosts, errors),
            ports: t.ports.clone(),
            routes: routes(&ctx, &t.routes, errors),
            replay_unsafe,
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
    pub(super) fn validate(&self, errors: &mut Vec<String>) -> Limits {
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

/// The TOML file, or the demo upstream as the only target when there is none.
pub(super) fn read(path: Option<&Path>, errors: &mut Vec<String>) -> FileConfig {
    let Some(path) = path else {
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
