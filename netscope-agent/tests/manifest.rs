//! deploy/daemonset.yaml, parsed strictly into the Kubernetes API types, holds to what the
//! agent and its tests know: the capabilities tested, probes and scrape on the listen port,
//! the spool volume where the spool is, env variables the agent reads, secrets only in Secrets,
//! and a targets file the agent accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use clap::Parser;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netscope_agent::{config::run::RunArgs, domain::targets::Host};
use support::{agent::BIN, manifest::Manifest};

#[test]
fn the_manifest_parses_strictly_into_the_kubernetes_api_types() {
    let m = Manifest::load();
    assert_eq!(m.daemonset.metadata.name.as_deref(), Some("netscope-agent"));
    assert_eq!(m.config.metadata.name.as_deref(), Some("netscope"));
    assert_eq!(
        m.config.metadata.namespace, m.daemonset.metadata.namespace,
        "one namespace"
    );
}

#[test]
fn the_probes_and_the_scrape_point_at_the_health_routes_on_the_listen_port() {
    let m = Manifest::load();
    let port = m.listen_port();
    let agent = m.agent();
    for (which, probe, path) in [
        ("liveness", &agent.liveness_probe, "/healthz"),
        ("readiness", &agent.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("a {which} httpGet probe"));
        assert_eq!(get.path.as_deref(), Some(path), "{which}");
        assert_eq!(get.port, IntOrString::Int(port), "{which}");
    }
    let ports: Vec<i32> = agent
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, vec![port]);
    let annotations = m
        .daemonset
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|md| md.annotations.clone())
        .unwrap_or_default();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

#[test]
fn the_spool_volume_is_the_spool_directory_on_the_nodes_disk() {
    let m = Manifest::load();
    let spool = m.arg("--audit-spool-dir").expect("--audit-spool-dir");
    let (mount, volume) = m.volume_holding(spool);
    assert_eq!(
        mount.mount_path, spool,
        "the spool directory is the volume itself"
    );
    let host = volume
        .host_path
        .as_ref()
        .expect("a hostPath: it outlives the pod");
    assert_eq!(host.type_.as_deref(), Some("DirectoryOrCreate"));
    assert_ne!(mount.read_only, Some(true));
}

#[test]
fn every_env_variable_is_one_the_agent_reads() {
    let help = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let mut known: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|s| s.split(['=', ']']).next())
        .map(str::to_owned)
        .collect();
    assert!(known.contains("NETSCOPE_KAFKA_BROKERS"), "{known:?}");
    // Read from the environment only, not by an argument: the log filter (by the subscriber)
    // and the S3 secret key (never on a command line).
    known.insert("NETSCOPE_LOG".into());
    known.insert(netscope_agent::config::audit::SECRET_ENV.into());
    let m = Manifest::load();
    for e in m.agent().env.iter().flatten() {
        assert!(
            known.contains(&e.name),
            "{} is not read by the agent",
            e.name
        );
    }
}

#[test]
fn secrets_come_only_from_secrets_never_from_the_config_map() {
    let m = Manifest::load();
    let secret_like = |s: &str| {
        let s = s.to_ascii_lowercase();
        ["secret", "password", "token", "access-key", "access_key"]
            .iter()
            .any(|w| s.contains(w))
    };
    for (key, value) in m.config.data.iter().flatten() {
        assert!(!secret_like(key), "ConfigMap key {key}");
        assert!(!secret_like(value), "ConfigMap value of {key}");
    }
    for e in m.agent().env.iter().flatten() {
        // A token *file* is a path; the token is in the Secret mounted there.
        if secret_like(&e.name) && !e.name.ends_with("_FILE") {
            let from = e.value_from.as_ref();
            assert!(
                from.is_some_and(|f| f.secret_key_ref.is_some()),
                "{} must come from a Secret",
                e.name
            );
        }
    }
    let token_file = m.env_value("NETSCOPE_API_TOKEN_FILE").unwrap();
    let (_, volume) = m.volume_holding(token_file);
    assert!(volume.secret.is_some(), "the token comes from a Secret");
}

/// `run`'s arguments, as the agent parses them.
#[derive(Parser)]
struct Run {
    #[command(flatten)]
    run: RunArgs,
}

#[test]
fn the_config_maps_targets_file_is_one_the_agent_accepts() {
    let m = Manifest::load();
    let targets = &m.config.data.as_ref().unwrap()["targets.toml"];
    let dir = std::env::temp_dir().join(support::kafka::unique("manifest"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("targets.toml");
    std::fs::write(&file, targets).unwrap();
    let config_path = m.env_value("NETSCOPE_CONFIG").unwrap();
    assert!(config_path.ends_with("/targets.toml"), "{config_path}");
    let args =
        Run::try_parse_from(["run", "--no-probe", "--config", file.to_str().unwrap()]).unwrap();
    let settings = args.run.validate().unwrap_or_else(|e| panic!("{e}"));
    let target = settings
        .targets
        .resolve(&Host::Name("payments.internal.example"), 443)
        .expect("the example target allows its host and port");
    assert_eq!(target.name.to_string(), "payments");
}

#[test]
fn with_the_nodes_network_names_still_resolve_through_the_clusters_dns() {
    let m = Manifest::load();
    let pod = m.pod();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.dns_policy.as_deref(),
        Some("ClusterFirstWithHostNet"),
        "hostNetwork with the default dnsPolicy resolves as the node does: no *.svc names"
    );
}

#[test]
fn the_image_is_the_agents_version_pulled_only_when_missing() {
    let m = Manifest::load();
    let agent = m.agent();
    let image = agent.image.as_deref().unwrap();
    let (_, tag) = image.rsplit_once(':').expect("a tag");
    assert_eq!(
        tag,
        env!("CARGO_PKG_VERSION"),
        "{image}: the agent's version"
    );
    assert_eq!(agent.image_pull_policy.as_deref(), Some("IfNotPresent"));
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/image.sh"))
            .unwrap();
    assert!(
        script.contains("IMAGE=\"localhost/netscope-agent:${VERSION}\""),
        "cargo xtask image tags what the manifest runs"
    );
    assert!(image.starts_with("localhost/netscope-agent:"), "{image}");
}

#[test]
fn the_agent_has_a_namespace_and_an_identity_of_its_own_and_no_api_token() {
    let m = Manifest::load();
    let ns = m.daemonset.metadata.namespace.as_deref();
    assert_eq!(m.namespace.metadata.name.as_deref(), ns);
    assert_eq!(m.service_account.metadata.namespace.as_deref(), ns);
    assert_eq!(
        m.service_account.automount_service_account_token,
        Some(false)
    );
    let pod = m.pod();
    assert_eq!(
        pod.service_account_name.as_deref(),
        m.service_account.metadata.name.as_deref()
    );
    assert_eq!(pod.automount_service_account_token, Some(false));
}

#[test]
fn the_rgw_keys_are_files_of_a_mounted_secret_not_variables() {
    let m = Manifest::load();
    for e in m.agent().env.iter().flatten() {
        assert!(
            e.value_from
                .as_ref()
                .is_none_or(|f| f.secret_key_ref.is_none()),
            "{}: a Secret as a variable",
            e.name
        );
    }
    for var in [
        "NETSCOPE_AUDIT_S3_ACCESS_KEY_FILE",
        "NETSCOPE_AUDIT_S3_SECRET_KEY_FILE",
    ] {
        let path = m.env_value(var).unwrap_or_else(|| panic!("{var}"));
        let (mount, volume) = m.volume_holding(path);
        let secret = volume.secret.as_ref().expect("a Secret volume");
        assert_eq!(secret.secret_name.as_deref(), Some("netscope-rgw"));
        assert_eq!(mount.read_only, Some(true));
        let file = path
            .strip_prefix(&format!("{}/", mount.mount_path))
            .unwrap();
        assert!(
            secret.items.iter().flatten().any(|i| i.path == file),
            "{var}: {file} is one of the Secret's items"
        );
    }
}

#[test]
fn the_pod_is_node_critical_and_rolls_out_one_node_at_a_time_after_a_startup_probe() {
    let m = Manifest::load();
    assert_eq!(
        m.pod().priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let strategy = m
        .daemonset
        .spec
        .update_strategy
        .as_ref()
        .expect("an updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().unwrap();
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    let startup = m.agent().startup_probe.as_ref().expect("a startupProbe");
    let get = startup.http_get.as_ref().unwrap();
    assert_eq!(get.path.as_deref(), Some("/healthz"));
    let budget = startup.period_seconds.unwrap_or(10) * startup.failure_threshold.unwrap_or(3);
    assert!(
        budget >= 120,
        "room to start with a broker down: {budget} s"
    );
}

#[test]
fn agents_in_the_cluster_do_not_create_topics() {
    let m = Manifest::load();
    assert_eq!(
        m.arg("--create-topics"),
        Some("false"),
        "topics are the cluster operator's: partitions and replicas are theirs to set"
    );
}

/// `kubernetes-validate` (PyPI, the Kubernetes OpenAPI schemas bundled: offline), installed by
/// scripts/setup.sh; skipped by name when missing, unless `NETSCOPE_REQUIRE_SCHEMA_TESTS=1`.
fn kubernetes_validate() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let tool = home.join(".cache/netscope/kube-validate/bin/kubernetes-validate");
    if tool.exists() {
        return Some(tool);
    }
    assert!(
        std::env::var("NETSCOPE_REQUIRE_SCHEMA_TESTS").as_deref() != Ok("1"),
        "{} is required but missing (scripts/setup.sh installs it)",
        tool.display()
    );
    eprintln!(
        "manifest-schema: SKIPPED: {} is missing (scripts/setup.sh)",
        tool.display()
    );
    None
}

#[test]
fn the_manifest_validates_strictly_against_the_kubernetes_openapi_schemas() {
    let Some(tool) = kubernetes_validate() else {
        return;
    };
    let validate = |path: &std::path::Path| {
        Command::new(&tool)
            .args(["--strict", "--kubernetes-version", "1.33"])
            .arg(path)
            .output()
            .unwrap()
    };
    let out = validate(std::path::Path::new(support::manifest::PATH));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for kind in ["namespace", "serviceaccount", "configmap", "daemonset"] {
        assert!(
            text.contains(&format!("passed for resource {kind}/")),
            "{text}"
        );
    }
    // The validator refuses what the API server would: a misspelt field fails it.
    let typo = std::fs::read_to_string(support::manifest::PATH)
        .unwrap()
        .replace("dnsPolicy:", "dnsPolicyy:");
    let bad = std::env::temp_dir().join(support::kafka::unique("manifest-typo"));
    std::fs::write(&bad, typo).unwrap();
    let out = validate(&bad);
    assert!(
        !out.status.success(),
        "a misspelt field must fail validation"
    );
    let _ = std::fs::remove_file(bad);
}
