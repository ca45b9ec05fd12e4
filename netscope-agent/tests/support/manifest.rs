//! deploy/daemonset.yaml as the Kubernetes API types (k8s-openapi), read strictly: a field the
//! types do not know (a typo, a misplaced key) fails the load instead of being ignored, as the
//! API server's strict field validation would. And the `podman run` flags the DaemonSet's pod
//! asks for, derived from the manifest itself (podman 4.3's `kube play` rejects a DaemonSet and
//! ignores hostPID and seccompProfile).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount, Volume, VolumeMount},
};
use serde::{Deserialize as _, de::DeserializeOwned};

pub const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/daemonset.yaml");
/// Where the manifest's Localhost seccomp profiles are (the kubelet's seccomp root on a node).
pub const SECCOMP_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/seccomp");

pub struct Manifest {
    pub namespace: Namespace,
    pub service_account: ServiceAccount,
    pub config: ConfigMap,
    pub daemonset: DaemonSet,
}

/// `doc` as `T`, refusing anything `T` would drop: the typed value, written back, must be the
/// document itself.
fn strict<T: DeserializeOwned + serde::Serialize>(doc: &serde_yaml::Value, kind: &str) -> T {
    let typed: T =
        serde_yaml::from_value(doc.clone()).unwrap_or_else(|e| panic!("{kind} in {PATH}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    let original = serde_json::to_value(doc).unwrap();
    if let Some(path) = first_difference(&original, &back, String::new()) {
        panic!("{kind} in {PATH}: the Kubernetes API types do not know `{path}`");
    }
    typed
}

/// The first path at which `written` and `read` differ (`written`'s spelling).
fn first_difference(
    written: &serde_json::Value,
    read: &serde_json::Value,
    at: String,
) -> Option<String> {
    use serde_json::Value;
    match (written, read) {
        (Value::Object(w), Value::Object(r)) => w.iter().find_map(|(k, v)| match r.get(k) {
            Some(rv) => first_difference(v, rv, format!("{at}.{k}")),
            None => Some(format!("{at}.{k}")),
        }),
        (Value::Array(w), Value::Array(r)) if w.len() == r.len() => w
            .iter()
            .zip(r)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(a, b, format!("{at}[{i}]"))),
        _ => (written != read).then_some(at),
    }
}

impl Manifest {
    pub fn load() -> Self {
        let text = std::fs::read_to_string(PATH).unwrap();
        let (mut namespace, mut service_account, mut config, mut daemonset) =
            (None, None, None, None);
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = serde_yaml::Value::deserialize(doc).unwrap();
            match doc["kind"].as_str() {
                Some("Namespace") => namespace = Some(strict(&doc, "Namespace")),
                Some("ServiceAccount") => service_account = Some(strict(&doc, "ServiceAccount")),
                Some("ConfigMap") => config = Some(strict(&doc, "ConfigMap")),
                Some("DaemonSet") => daemonset = Some(strict(&doc, "DaemonSet")),
                other => panic!("{PATH}: unexpected document kind {other:?}"),
            }
        }
        Self {
            namespace: namespace.expect("a Namespace"),
            service_account: service_account.expect("a ServiceAccount"),
            config: config.expect("a ConfigMap"),
            daemonset: daemonset.expect("a DaemonSet"),
        }
    }

    pub fn pod(&self) -> &PodSpec {
        self.daemonset
            .spec
            .template
            .spec
            .as_ref()
            .expect("a pod spec")
    }

    /// The agent's container (the pod's only one).
    pub fn agent(&self) -> &Container {
        let containers = &self.pod().containers;
        assert_eq!(containers.len(), 1, "one container");
        &containers[0]
    }

    /// The value of env variable `name` when it is a literal.
    pub fn env_value(&self, name: &str) -> Option<&str> {
        self.agent()
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)?
            .value
            .as_deref()
    }

    /// The port `NETSCOPE_LISTEN` sets.
    pub fn listen_port(&self) -> i32 {
        let listen = self.env_value("NETSCOPE_LISTEN").expect("NETSCOPE_LISTEN");
        listen.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// The agent's volume mount whose directory holds `path`, and its volume.
    pub fn volume_holding(&self, path: &str) -> (&VolumeMount, &Volume) {
        let mount = self
            .agent()
            .volume_mounts
            .iter()
            .flatten()
            .find(|v| Path::new(path).starts_with(&v.mount_path))
            .unwrap_or_else(|| panic!("no volume holds {path}"));
        let volume = self
            .pod()
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("volume {} is mounted but not declared", mount.name));
        (mount, volume)
    }

    /// The capabilities the agent's container adds, as the manifest spells them.
    pub fn added_capabilities(&self) -> Vec<String> {
        self.agent()
            .security_context
            .as_ref()
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.add.clone())
            .unwrap_or_default()
    }

    /// The value of the agent's `flag` in the container's args.
    pub fn arg(&self, flag: &str) -> Option<&str> {
        let args = self.agent().args.as_deref().unwrap_or_default();
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    }
}

/// What a node would provide that the test provides instead.
pub struct Node<'a> {
    pub name: &'a str,
    /// The ConfigMap's values, where the test's differ (its broker, RGW, bucket, targets).
    pub config: BTreeMap<&'a str, String>,
    /// Secret name → key → value.
    pub secrets: BTreeMap<(&'a str, &'a str), String>,
    /// hostPath volumes outside /sys live under this directory (the node's disk).
    pub root: PathBuf,
}

impl Node<'_> {
    fn config_value(&self, m: &Manifest, key: &str) -> String {
        self.config.get(key).cloned().unwrap_or_else(|| {
            m.config
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .unwrap_or_else(|| panic!("ConfigMap key {key}"))
                .clone()
        })
    }

    fn host_path(&self, path: &str) -> PathBuf {
        if path.starts_with("/sys/") {
            PathBuf::from(path)
        } else {
            self.root.join(path.trim_start_matches('/'))
        }
    }
}

fn write(path: &Path, contents: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

/// `podman run` options for the DaemonSet's pod on `node`: namespaces, user, capabilities,
/// read-only root, no-new-privileges, seccomp profile, volumes and env, as the manifest says.
pub fn podman_run_options(m: &Manifest, node: &Node<'_>) -> Vec<String> {
    let pod = m.pod();
    let agent = m.agent();
    let mut out = Vec::new();
    if pod.host_pid == Some(true) {
        out.push("--pid=host".to_owned());
    }
    if pod.host_network == Some(true) {
        out.push("--network=host".to_owned());
    }
    let sc = agent.security_context.as_ref().expect("a securityContext");
    if let Some(uid) = sc.run_as_user {
        out.push(format!("--user={uid}"));
    }
    if sc.privileged == Some(true) {
        out.push("--privileged".to_owned());
    }
    if sc.allow_privilege_escalation == Some(false) {
        out.push("--security-opt=no-new-privileges".to_owned());
    }
    if sc.read_only_root_filesystem == Some(true) {
        out.extend([
            "--read-only".to_owned(),
            "--read-only-tmpfs=false".to_owned(),
        ]);
    }
    if let Some(caps) = &sc.capabilities {
        for c in caps.drop.iter().flatten() {
            out.push(format!("--cap-drop={c}"));
        }
        for c in caps.add.iter().flatten() {
            out.push(format!("--cap-add={c}"));
        }
    }
    match sc.seccomp_profile.as_ref().map(|p| (p.type_.as_str(), p)) {
        Some(("Localhost", p)) => {
            let file = Path::new(SECCOMP_ROOT).join(p.localhost_profile.as_deref().unwrap());
            assert!(
                file.exists(),
                "the seccomp profile {} is missing",
                file.display()
            );
            out.push(format!("--security-opt=seccomp={}", file.display()));
        }
        Some(("Unconfined", _)) => out.push("--security-opt=seccomp=unconfined".to_owned()),
        _ => {} // RuntimeDefault: the runtime's own
    }

    let volumes: BTreeMap<&str, _> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.as_str(), v))
        .collect();
    let files = node.root.join("pod-volumes");
    for mount in agent.volume_mounts.iter().flatten() {
        let volume = volumes
            .get(mount.name.as_str())
            .unwrap_or_else(|| panic!("volume {} is mounted but not declared", mount.name));
        let source = if let Some(host) = &volume.host_path {
            let path = node.host_path(&host.path);
            if host.type_.as_deref() == Some("DirectoryOrCreate") {
                std::fs::create_dir_all(&path).unwrap();
            }
            path
        } else if let Some(cm) = &volume.config_map {
            let dir = files.join(&volume.name);
            for item in cm.items.iter().flatten() {
                write(&dir.join(&item.path), &node.config_value(m, &item.key));
            }
            dir
        } else if let Some(secret) = &volume.secret {
            let dir = files.join(&volume.name);
            let name = secret.secret_name.as_deref().unwrap();
            for item in secret.items.iter().flatten() {
                let value = node
                    .secrets
                    .get(&(name, item.key.as_str()))
                    .unwrap_or_else(|| panic!("secret {name}/{}", item.key));
                write(&dir.join(&item.path), value);
            }
            dir
        } else {
            panic!("volume {}: a kind this test does not map", volume.name);
        };
        let ro = if mount.read_only == Some(true) {
            ":ro"
        } else {
            ""
        };
        out.push(format!(
            "--volume={}:{}{ro}",
            source.display(),
            mount.mount_path
        ));
    }

    for e in agent.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    assert_eq!(f.field_path, "spec.nodeName", "{}", e.name);
                    node.name.to_owned()
                } else if let Some(c) = &from.config_map_key_ref {
                    node.config_value(m, &c.key)
                } else if let Some(s) = &from.secret_key_ref {
                    node.secrets
                        .get(&(s.name.as_str(), s.key.as_str()))
                        .unwrap_or_else(|| panic!("secret {}/{}", s.name, s.key))
                        .clone()
                } else {
                    panic!("env {}: a source this test does not map", e.name)
                }
            }
            (None, None) => String::new(),
        };
        out.push(format!("--env={}={value}", e.name));
    }
    out
}
