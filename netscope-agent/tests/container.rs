//! The agent's image, built with podman and run the way deploy/daemonset.yaml runs it — every
//! `podman run` option derived from the manifest (namespaces, uid, capabilities, read-only
//! root, seccomp profile, volumes, env): the probe reports a connection made on the host with
//! its exact bytes; `run` turns one message from the host's Kafka into one result and one audit
//! event in the host's RGW, its probes and scrape answering where the manifest points; and under
//! the runtime's default seccomp profile the agent says in one line what denies it. Root, with
//! podman (`./xtask.sh setup` installs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Output},
    sync::OnceLock,
    time::{Duration, Instant},
};

use netscope_agent::demo::upstream::Upstream;
use serde_json::Value;
use support::{
    TestLock,
    agent::{BIN, Setup, request},
    ceph::{ceph_test, stored_events},
    kafka::{kafka_test, unique},
    manifest::{Manifest, Node, podman_run_options},
};

const IMAGE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/image.sh");
const TOKEN: &str = "container-test-token";

/// The kernel lock when this machine can run the image (root, podman); otherwise the skip is
/// explained, or a failure when `NETSCOPE_REQUIRE_CONTAINER_TESTS=1` (CI) says it must run.
fn container_test(name: &str) -> Option<TestLock> {
    let required = std::env::var("NETSCOPE_REQUIRE_CONTAINER_TESTS").is_ok_and(|v| v == "1");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let podman = Command::new("podman").arg("--version").output().is_ok();
    if !root || !podman {
        let why = if root {
            "podman is not installed"
        } else {
            "not root"
        };
        assert!(!required, "{name}: container tests are required but {why}");
        eprintln!("{name}: SKIPPED: {why} (./xtask.sh setup, as root)");
        return None;
    }
    // The agent in the container attaches the probe: one kernel test at a time.
    Some(TestLock::exclusive("kernel"))
}

fn podman(args: &[&str]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(IMAGE_SCRIPT).arg("podman").args(args);
    cmd
}

/// The image around the agent these tests were built with, built once per test process.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        support::run("bash", &[IMAGE_SCRIPT, "build", BIN])
            .trim()
            .to_owned()
    })
}

/// A node of the test's own: the directory standing for its disk, the secrets the operator
/// would have created, and the ConfigMap values pointing at this host's services.
fn node(tag: &str, config: BTreeMap<&'static str, String>) -> Node<'static> {
    let root = std::env::temp_dir().join(unique(tag));
    std::fs::create_dir_all(&root).unwrap();
    Node {
        name: "container-node",
        config,
        secrets: BTreeMap::from([
            (("netscope-api", "token"), TOKEN.to_owned()),
            (("netscope-rgw", "access-key"), "netscope-local".to_owned()),
            (
                ("netscope-rgw", "secret-key"),
                "netscope-local-secret".to_owned(),
            ),
        ]),
        root,
    }
}

/// A container of the image, named, with the manifest's options (less those `drop` rejects)
/// and `command` as its arguments; stdout and stderr go to files in the node's directory.
struct Container {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Container {
    fn start(node: &Node<'_>, options: &[String], command: &[String]) -> Self {
        let name = unique("netscope-ctr");
        let (stdout, stderr) = (node.root.join("stdout"), node.root.join("stderr"));
        let mut args: Vec<String> = vec!["run".into(), "--rm".into(), format!("--name={name}")];
        args.extend_from_slice(options);
        args.push(image().to_owned());
        args.extend_from_slice(command);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = podman(&argv)
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Self {
            name,
            child,
            stdout,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the agent logs that its HTTP server listens (60 s at most).
    fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.stderr().contains("HTTP server listening") {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the container exited ({status}): {}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "no HTTP server: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `podman stop` (SIGTERM, the agent's clean stop); its exit status.
    fn stop(mut self) -> (std::process::ExitStatus, String, String) {
        let out = podman(&["stop", "--time=30", &self.name]).output().unwrap();
        assert!(
            out.status.success(),
            "podman stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = self.child.wait().unwrap();
        let stdout = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        (status, stdout, self.stderr())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = podman(&["kill", &self.name]).output();
            let _ = self.child.wait();
        }
    }
}

/// GET `path` on the host's loopback at `port` (the container shares the node's network).
fn get(port: i32, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port as u16)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn in_the_daemonsets_container_the_probe_reports_a_host_connection_with_exact_bytes() {
    let Some(_kernel) = container_test("container-probe") else {
        return;
    };
    let m = Manifest::load();
    let node = node("ctr-probe", BTreeMap::new());
    let options = podman_run_options(&m, &node);
    let mut ctr = Container::start(&node, &options, &["probe".to_owned()]);
    ctr.wait_serving();

    // A connection made on the host, outside the container: 3,000 bytes out, 7,000 back.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let serve = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut got = vec![0u8; 3_000];
        s.read_exact(&mut got).unwrap();
        s.write_all(&[b'y'; 7_000]).unwrap();
    });
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(&[b'x'; 3_000]).unwrap();
    let mut back = vec![0u8; 7_000];
    client.read_exact(&mut back).unwrap();
    drop(client);
    serve.join().unwrap();

    let remote = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&ctr.stdout)
        .unwrap_or_default()
        .contains(&remote)
    {
        assert!(Instant::now() < deadline, "not reported: {}", ctr.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, stdout, stderr) = ctr.stop();
    assert!(status.success(), "the agent's stop: {status}: {stderr}");
    let flow: Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|f| f["remote"] == remote.as_str())
        .unwrap_or_else(|| panic!("no flow to {remote} in {stdout}"));
    assert_eq!(flow["bytes_sent"], 3_000, "{flow}");
    assert_eq!(flow["bytes_received"], 7_000, "{flow}");
    assert_eq!(flow["outcome"], "closed", "{flow}");
}

#[test]
fn in_the_daemonsets_container_run_turns_one_message_into_one_result_and_one_audit_event() {
    let Some(brokers) = kafka_test("container-run") else {
        return;
    };
    let Some((_rgw, s3)) = ceph_test("container-run") else {
        return;
    };
    let Some(_kernel) = container_test("container-run") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt
        .block_on(Upstream::start("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let setup = rt.block_on(Setup::new("ctr-run", brokers.clone(), up.addr.port()));
    let m = Manifest::load();
    let node = node(
        "ctr-run",
        BTreeMap::from([
            ("kafka-brokers", brokers),
            ("rgw-endpoint", s3.endpoint.clone()),
            ("audit-bucket", s3.bucket.clone()),
            (
                "targets.toml",
                std::fs::read_to_string(&setup.config).unwrap(),
            ),
        ]),
    );
    let options = podman_run_options(&m, &node);
    // The manifest's command, on this test's own topics and group.
    let mut command: Vec<String> = m.agent().args.clone().unwrap();
    for (flag, value) in [
        ("--group", &setup.group),
        ("--requests-topic", &setup.requests),
        ("--results-topic", &setup.results),
        ("--dlq-topic", &setup.dlq),
    ] {
        command.extend([flag.to_owned(), value.clone()]);
    }
    // The manifest's own `--create-topics false` stands: the test created the topics.
    assert_eq!(m.arg("--create-topics"), Some("false"));
    command.push("--audit-create-bucket".to_owned());
    let mut ctr = Container::start(&node, &options, &command);
    ctr.wait_serving();

    // The probes and the scrape answer where the manifest points them.
    let port = m.listen_port();
    let agent = m.agent();
    let live = agent
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    let ready = agent
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(get(port, live.path.as_deref().unwrap()).0, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(port, ready.path.as_deref().unwrap());
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never ready: {body}\n{}",
            ctr.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (status, metrics) = get(port, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("netscope_kernel_ring_events"),
        "the probe's metrics"
    );

    let base = format!("http://{}", up.addr);
    rt.block_on(setup.send(&[(
        "in-a-container".to_owned(),
        request(&base, "GET", "/orders/7", None, None),
    )]));
    let results = setup.results(1);
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["ctx"]["request_id"], "in-a-container");
    assert!(
        results[0]["network"]["matched"].as_bool().unwrap_or(false),
        "the call carries the kernel's view of its connection: {}",
        results[0]
    );
    let (status, _, stderr) = ctr.stop();
    assert!(status.success(), "the agent's stop: {status}: {stderr}");
    // The clean stop shipped the spool (a hostPath on the node's disk) to RGW.
    let events = rt.block_on(stored_events(&s3));
    assert_eq!(events.len(), 1, "one audit event");
    assert_eq!(events[0].context.request_id, "in-a-container");
    assert_eq!(
        events[0].node, "container-node",
        "NETSCOPE_NODE from spec.nodeName"
    );
}

#[test]
fn under_the_runtimes_default_seccomp_profile_the_agent_names_what_denies_it() {
    let Some(_kernel) = container_test("container-seccomp") else {
        return;
    };
    let m = Manifest::load();
    let node = node("ctr-seccomp", BTreeMap::new());
    let options: Vec<String> = podman_run_options(&m, &node)
        .into_iter()
        .filter(|o| !o.starts_with("--security-opt=seccomp="))
        .collect();
    let mut args = vec!["run".to_owned(), "--rm".to_owned()];
    args.extend(options);
    args.extend([image().to_owned(), "probe".to_owned()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let Output { status, stderr, .. } = podman(&argv).output().unwrap();
    let stderr = String::from_utf8_lossy(&stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("error"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        line.contains("the seccomp profile denies bpf() and perf_event_open()"),
        "{line}"
    );
    assert!(
        line.contains("deploy/seccomp/netscope-agent.json"),
        "{line}"
    );
}

#[test]
fn the_shipped_seccomp_profile_is_the_runtime_default_plus_bpf_and_perf_event_open_only() {
    const DEFAULT: &str = "/usr/share/containers/seccomp.json";
    let required = std::env::var("NETSCOPE_REQUIRE_CONTAINER_TESTS").is_ok_and(|v| v == "1");
    if !std::path::Path::new(DEFAULT).exists() {
        assert!(
            !required,
            "{DEFAULT} is missing (podman's containers-common)"
        );
        eprintln!("container-seccomp-profile: SKIPPED: no {DEFAULT} (./xtask.sh setup)");
        return;
    }
    let dir = std::env::temp_dir().join(unique("seccomp"));
    std::fs::create_dir_all(&dir).unwrap();
    let regenerated = dir.join("profile.json");
    support::run(
        "bash",
        &[IMAGE_SCRIPT, "seccomp", regenerated.to_str().unwrap()],
    );
    let read = |p: &std::path::Path| -> Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let shipped =
        read(&std::path::Path::new(support::manifest::SECCOMP_ROOT).join("netscope-agent.json"));
    assert_eq!(
        shipped,
        read(&regenerated),
        "deploy/seccomp/netscope-agent.json is not this runtime's default plus NetScope's two \
         rules: regenerate it with scripts/image.sh seccomp"
    );
    // And what the two rules are.
    let rules = shipped["syscalls"].as_array().unwrap();
    let allowed_under = |name: &str| -> Vec<String> {
        rules
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW")
            .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
            .flat_map(|r| {
                r["includes"]["caps"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|c| c.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(allowed_under("bpf"), ["CAP_SYS_ADMIN", "CAP_BPF"]);
    assert_eq!(
        allowed_under("perf_event_open"),
        ["CAP_SYS_ADMIN", "CAP_PERFMON"]
    );
}
