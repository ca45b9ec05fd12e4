//! The local Prometheus (`scripts/prometheus.sh`): tests register their agent as a scrape
//! target (a file in its discovery directory, removed on drop) and ask its HTTP API.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde_json::Value;

pub fn endpoint() -> String {
    std::env::var("NETSCOPE_PROMETHEUS").unwrap_or_else(|_| "http://127.0.0.1:9090".to_owned())
}

fn targets_dir() -> PathBuf {
    let out = std::process::Command::new("bash")
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/prometheus.sh"),
            "targets",
        ])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

pub struct Prometheus {
    http: reqwest::Client,
    base: String,
}

/// Prometheus when it answers; otherwise explains the skip, or fails when
/// `NETSCOPE_REQUIRE_PROMETHEUS_TESTS=1` (set by `xtask test`, which starts it).
pub async fn prometheus_test(name: &str) -> Option<Prometheus> {
    let http = netscope_agent::outbound::client::build(Duration::from_secs(5)).unwrap();
    let base = endpoint();
    let ready = http
        .get(format!("{base}/-/ready"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    if ready {
        return Some(Prometheus { http, base });
    }
    let required = std::env::var("NETSCOPE_REQUIRE_PROMETHEUS_TESTS").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{name}: Prometheus is required but {base} does not answer"
    );
    eprintln!("{name}: skipped, no Prometheus at {base} (scripts/prometheus.sh start)");
    None
}

/// A scrape target, listed while it lives.
pub struct Target(PathBuf);

impl Drop for Target {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Prometheus {
    /// Has Prometheus scrape `addr` with the label `test="<test>"`.
    pub fn scrape(&self, test: &str, addr: SocketAddr) -> Target {
        let path = targets_dir().join(format!("{test}.json"));
        let body =
            serde_json::json!([{ "targets": [addr.to_string()], "labels": { "test": test } }]);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, body.to_string()).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        Target(path)
    }

    /// An instant query's single value (`None` when the result is empty).
    pub async fn value(&self, expr: &str) -> Option<f64> {
        let mut url = url::Url::parse(&format!("{}/api/v1/query", self.base)).ok()?;
        url.query_pairs_mut().append_pair("query", expr);
        let text = self.http.get(url).send().await.ok()?.text().await.ok()?;
        let r: Value = serde_json::from_str(&text).ok()?;
        let v = r["data"]["result"].get(0)?["value"][1].as_str()?;
        v.parse().ok()
    }

    /// Waits until `expr` equals `want` (60 s at most); returns what it last saw.
    pub async fn until(&self, expr: &str, want: f64) -> Option<f64> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.value(expr).await;
            if v == Some(want) || std::time::Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
