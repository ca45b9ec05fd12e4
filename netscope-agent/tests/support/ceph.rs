//! The local Ceph RGW for tests (scripts/ceph.sh; `xtask test` starts it).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{net::TcpStream, process::Command, time::Duration};

use netscope_agent::{
    audit::{
        batch::decode_batch,
        s3::{S3Settings, S3Store},
    },
    domain::audit::AuditEvent,
};

use super::{TestLock, kafka::unique};

pub fn endpoint() -> String {
    std::env::var("NETSCOPE_RGW_ENDPOINT").unwrap_or_else(|_| "127.0.0.1:7480".into())
}

/// The local RGW's settings, with a bucket name of the test's own (not created), when RGW
/// answers; otherwise explains the skip, or fails when `NETSCOPE_REQUIRE_CEPH_TESTS=1`. RGW
/// stays up while the lock is held: tests that only use it run in parallel.
pub fn ceph_test(name: &str) -> Option<(TestLock, S3Settings)> {
    ceph_test_with(name, TestLock::shared("rgw"))
}

/// Like [`ceph_test`], for a test that stops RGW (an outage the others would see): it runs
/// alone among the RGW tests of every test process.
pub fn ceph_outage_test(name: &str) -> Option<(TestLock, S3Settings)> {
    ceph_test_with(name, TestLock::exclusive("rgw"))
}

fn ceph_test_with(name: &str, guard: TestLock) -> Option<(TestLock, S3Settings)> {
    let endpoint = endpoint();
    let up = endpoint
        .parse()
        .ok()
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok());
    let required = std::env::var("NETSCOPE_REQUIRE_CEPH_TESTS").is_ok_and(|v| v == "1");
    if !up {
        assert!(
            !required,
            "{name}: Ceph RGW is required but {endpoint} does not answer"
        );
        eprintln!("{name}: SKIPPED: no RGW at {endpoint} (scripts/ceph.sh start)");
        return None;
    }
    Some((
        guard,
        S3Settings {
            endpoint: format!("http://{endpoint}"),
            bucket: unique("audit").replace('_', "-"),
            access_key: "netscope-local".into(),
            secret_key: "netscope-local-secret".into(),
            region: "default".into(),
        },
    ))
}

fn script(what: &str) {
    let status = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/ceph.sh"))
        .arg(what)
        .status()
        .unwrap();
    assert!(status.success(), "scripts/ceph.sh {what}: {status}");
}

/// An RGW outage: radosgw is stopped (mon and OSD keep the data) until this is dropped —
/// also when the test fails.
pub struct RgwOutage;

impl RgwOutage {
    pub fn begin() -> Self {
        script("rgw-stop");
        Self
    }

    pub fn end(self) {}
}

impl Drop for RgwOutage {
    fn drop(&mut self) {
        script("rgw-start");
    }
}

/// A plain S3 client on the test's RGW, acting as *someone else* (another tenant, an
/// operator, an attacker): NetScope's own store keeps its SDK client to itself.
pub fn foreign_client(settings: &S3Settings) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&settings.endpoint)
        .region(Region::new(settings.region.clone()))
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            &settings.access_key,
            &settings.secret_key,
            None,
            None,
            "someone-else",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Every audit event stored in the bucket, batch by batch, as NetScope's own reader decodes it.
pub async fn stored_events(settings: &S3Settings) -> Vec<AuditEvent> {
    let store = S3Store::new(settings.clone());
    let mut events = Vec::new();
    for key in store.list("v1/").await.unwrap() {
        events.extend(decode_batch(&key, &store.get(&key).await.unwrap()).unwrap());
    }
    events
}
