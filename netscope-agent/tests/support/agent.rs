//! The agent as the end-to-end tests run it: a `run` process on fresh topics, with a config
//! naming the test's upstream, and helpers to feed it and read what it produced.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use netscope_agent::audit::s3::S3Settings;
use rdkafka::Message as _;
use serde_json::{Value, json};

use super::kafka::{self, unique};

pub const BIN: &str = env!("CARGO_BIN_EXE_netscope-agent");

/// Retries, and a circuit that never opens (tests that count attempts).
pub const NO_CIRCUIT: &str = "max_attempts = 3\nmin_backoff_ms = 5\nmax_backoff_ms = 20\n\
                              circuit_window = 10000\ncircuit_min_calls = 10000\n";

#[derive(Clone)]
pub struct Setup {
    pub brokers: String,
    pub requests: String,
    pub results: String,
    pub dlq: String,
    pub group: String,
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl Setup {
    pub async fn new(tag: &str, brokers: String, upstream_port: u16) -> Self {
        Self::with_ports(tag, brokers, &[upstream_port]).await
    }

    pub async fn with_ports(tag: &str, brokers: String, ports: &[u16]) -> Self {
        Self::with_policy(tag, brokers, ports, NO_CIRCUIT).await
    }

    /// The upstream target `up` on `ports`, with these `[targets.policy]` lines.
    pub async fn with_policy(tag: &str, brokers: String, ports: &[u16], policy: &str) -> Self {
        let ports = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let (requests, results, dlq, group) =
            (unique("req"), unique("res"), unique("dlq"), unique("grp"));
        kafka::create_topics(&brokers, &[(&requests, 3), (&results, 1), (&dlq, 1)]).await;
        let dir = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("netscope.toml");
        std::fs::write(
            &config,
            format!(
                "[[targets]]\nname = \"up\"\nhosts = [\"127.0.0.1\"]\nports = [{ports}]\n\
                 [targets.policy]\n{policy}"
            ),
        )
        .unwrap();
        Self {
            brokers,
            requests,
            results,
            dlq,
            group,
            dir,
            config,
        }
    }

    /// Another node of the same consumer group, on the same topics and config, with a
    /// directory (log, audit file, spool) of its own.
    pub fn peer(&self, tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            dir,
            ..self.clone()
        }
    }

    pub fn start(&self, extra: &[&str]) -> Child {
        self.start_as(extra, None)
    }

    /// The agent with extra environment variables (e.g. `FAILPOINTS`).
    pub fn start_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Child {
        let mut cmd = self.command(extra);
        cmd.envs(env.iter().copied());
        cmd.spawn().unwrap()
    }

    /// Waits for the agent to end by itself; its exit status.
    pub fn wait_exit(&self, agent: &mut Child, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = agent.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent as root in group `gid` (so that nftables can single out its sockets by
    /// `meta skgid` while it keeps root's privileges for its probe).
    pub fn start_in_group(&self, extra: &[&str], gid: u32) -> Child {
        use std::os::unix::process::CommandExt as _;
        let mut cmd = self.command(extra);
        cmd.gid(gid);
        cmd.spawn().unwrap()
    }

    /// The agent as `uid` (its files in a directory that uid may write).
    pub fn start_as(&self, extra: &[&str], uid: Option<u32>) -> Child {
        let mut cmd = self.command(extra);
        if let Some(uid) = uid {
            use std::os::unix::{fs::PermissionsExt as _, process::CommandExt as _};
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o777)).unwrap();
            cmd.uid(uid).gid(uid);
        }
        cmd.spawn().unwrap()
    }

    /// `netscope-agent run` on this setup's topics and config, with `extra` arguments.
    fn command(&self, extra: &[&str]) -> Command {
        let mut args = vec![
            "run",
            "--brokers",
            &self.brokers,
            "--group",
            &self.group,
            "--requests-topic",
            &self.requests,
            "--results-topic",
            &self.results,
            "--dlq-topic",
            &self.dlq,
        ];
        if !extra.contains(&"--create-topics") {
            args.extend(["--create-topics", "false"]);
        }
        if !extra.contains(&"--listen") {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        args.extend_from_slice(extra);
        let audit = self.dir.join("audit.ndjson");
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .arg("--config")
            .arg(&self.config)
            .arg("--audit-file")
            .arg(&audit)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("agent.log")).unwrap());
        cmd
    }

    pub fn stop(&self, mut agent: Child) {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = agent.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "agent exited with {status}: {}",
                    self.log()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not stop: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The HTTP address of the agent started last (60 s at most).
    pub fn api_addr(&self) -> std::net::SocketAddr {
        super::wait_api_addr(&self.dir.join("agent.log"), Duration::from_secs(60), || {
            true
        })
    }

    /// `/readyz` of the agent started last, as (status, body); (0, error) while it does not
    /// answer yet.
    pub async fn readyz(&self, http: &reqwest::Client) -> (u16, Value) {
        let log = std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
        let Some(api) = super::api_addr_in_log(&log) else {
            return (0, json!({ "error": "no HTTP server yet" }));
        };
        match http.get(format!("http://{api}/readyz")).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Err(e) => (0, json!({ "error": e.to_string() })),
        }
    }

    /// GET `path` on the agent's server: status and body text.
    pub async fn get(&self, http: &reqwest::Client, path: &str) -> (u16, String) {
        let r = http
            .get(format!("http://{}{path}", self.api_addr()))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Waits (60 s at most) until `/readyz` answers `want` and `accept` takes its body.
    pub async fn wait_ready(
        &self,
        http: &reqwest::Client,
        want: u16,
        what: &str,
        accept: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.readyz(http).await;
            if status == want && accept(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: still {status} {body}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    }

    /// Results read back from the results topic until `n` arrived (or 60 s).
    pub fn results(&self, n: usize) -> Vec<Value> {
        self.results_within(n, Duration::from_secs(60))
    }

    pub fn results_within(&self, n: usize, limit: Duration) -> Vec<Value> {
        kafka::read_all(&self.brokers, &self.results, 1, n, limit)
            .iter()
            .map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap())
            .collect()
    }

    /// Runs the agent on the `n` messages sent, SIGKILLs it once some results are out (the
    /// rest in flight or queued; `at_kill` looks at what it left), restarts it and stops it
    /// once every message has a result. Returns every result, duplicates included.
    pub fn killed_midway(&self, n: usize, args: &[&str], at_kill: impl FnOnce()) -> Vec<Value> {
        let mut agent = self.start(args);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.results(20).len() < 20 {
            assert!(Instant::now() < deadline, "no progress: {}", self.log());
        }
        agent.kill().unwrap(); // SIGKILL
        agent.wait().unwrap();
        let before = self.results_within(n, Duration::from_secs(3)).len();
        assert!(
            before < n,
            "the kill came too late to test anything ({before} results)"
        );
        at_kill();

        let agent = self.start(args);
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut results;
        loop {
            results = self.results_within(n + 300, Duration::from_secs(3));
            let distinct: BTreeSet<String> = results.iter().map(request_id).collect();
            if distinct.len() == n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} after restart: {}",
                distinct.len(),
                self.log()
            );
        }
        self.stop(agent);
        results
    }

    /// Sends the messages; returns where each landed: request id → (partition, offset).
    pub async fn send(&self, messages: &[(String, Vec<u8>)]) -> BTreeMap<String, (i32, i64)> {
        let producer = kafka::producer(&self.brokers);
        let mut placed = BTreeMap::new();
        for (id, payload) in messages {
            let at = kafka::produce(
                &producer,
                &self.requests,
                id,
                Some(payload),
                &[("x-request-id", id.as_bytes())],
            )
            .await;
            placed.insert(id.clone(), at);
        }
        placed
    }
}

/// The arguments of a node whose audit trail goes to `bucket` in RGW through its spool under
/// `spool` (no probe).
pub fn rgw_node_args<'a>(node: &'a str, bucket: &'a str, spool: &'a str) -> Vec<&'a str> {
    vec![
        "--no-probe",
        "--node",
        node,
        "--audit-sink",
        "rgw",
        "--audit-s3-bucket",
        bucket,
        "--audit-create-bucket",
        "--audit-spool-dir",
        spool,
    ]
}

/// A request message; its deadline is a minute from the record's timestamp (time spent in
/// Kafka counts: a test that kills and restarts the agent must leave room for that).
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Vec<u8> {
    let mut m = json!({"schema_version": 1, "method": method, "url": format!("{base}{path}"), "timeout_ms": 60000});
    if let Some(k) = key {
        m["idempotency_key"] = json!(k);
    }
    if let Some(b) = body {
        m["body"] = json!(b);
    }
    m.to_string().into_bytes()
}

/// The Kafka partitions a ready agent holds, from its `/readyz` body.
pub fn partitions_assigned(readyz: &Value) -> Option<usize> {
    readyz["checks"].as_array()?.iter().find_map(|c| {
        let (before, _) = c["detail"].as_str()?.split_once(" partitions assigned")?;
        before.rsplit(' ').next()?.parse().ok()
    })
}

/// `netscope-agent audit verify` of `node` in `s3`, from `from_unix_ms` to a minute from now:
/// its JSON report, once it exits 0.
pub fn audit_verify(s3: &S3Settings, node: &str, from_unix_ms: u64) -> Value {
    let to = netscope_agent::clock::now_unix_ms() + 60_000;
    let out = Command::new(BIN)
        .args(["audit", "verify", "--node", node])
        .args(["--from", &from_unix_ms.to_string(), "--to", &to.to_string()])
        .args(["--audit-s3-endpoint", &s3.endpoint])
        .args(["--audit-s3-bucket", &s3.bucket])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "audit verify: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn request_id(r: &Value) -> String {
    r["ctx"]["request_id"].as_str().unwrap().to_owned()
}
