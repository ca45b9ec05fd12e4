//! The audit trail's object store against a real Ceph RGW (scripts/ceph.sh start).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{net::TcpStream, time::Duration};

use netscope_agent::{
    audit::s3::{PutOutcome, S3Error, S3Settings, S3Store, batch_key, decode_batch, encode_batch},
    domain::audit::AuditEvent,
};
use support::kafka::unique;

/// The local RGW's settings when it answers; otherwise explains the skip, or fails when
/// `NETSCOPE_REQUIRE_CEPH_TESTS=1` (set by `xtask test`, which starts Ceph).
fn ceph_test(name: &str) -> Option<S3Settings> {
    let endpoint =
        std::env::var("NETSCOPE_RGW_ENDPOINT").unwrap_or_else(|_| "127.0.0.1:7480".into());
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
    Some(S3Settings {
        endpoint: format!("http://{endpoint}"),
        bucket: unique("audit").replace('_', "-"),
        access_key: "netscope-local".into(),
        secret_key: "netscope-local-secret".into(),
        region: "default".into(),
    })
}

fn events(n: u64) -> Vec<AuditEvent> {
    let sample = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../samples/audit/v1/full.json"
    ))
    .unwrap();
    let base: AuditEvent = serde_json::from_slice(&sample).unwrap();
    (1..=n)
        .map(|seq| AuditEvent {
            sequence: seq,
            event_id: format!("node-a-{seq}"),
            ..base.clone()
        })
        .collect()
}

#[tokio::test]
async fn a_batch_round_trips_and_a_retried_upload_changes_nothing() {
    let Some(settings) = ceph_test("s3-round-trip") else {
        return;
    };
    let store = S3Store::new(settings);
    store.create_bucket().await.unwrap();
    store.check().await.unwrap();

    let batch = events(3);
    let key = batch_key("node-a", 1, 3, batch[0].timestamp_unix_ms);
    assert_eq!(
        store.put_once(&key, encode_batch(&batch)).await.unwrap(),
        PutOutcome::Written
    );
    // The retry of an upload whose answer was lost: same key, nothing overwritten.
    let other = encode_batch(&events(1));
    assert_eq!(
        store.put_once(&key, other).await.unwrap(),
        PutOutcome::AlreadyThere
    );
    let back = decode_batch(&key, &store.get(&key).await.unwrap()).unwrap();
    assert_eq!(back, batch);
    assert_eq!(store.list("v1/").await.unwrap(), vec![key]);
}

#[tokio::test]
async fn a_missing_bucket_or_wrong_credentials_is_a_clear_error_at_boot() {
    let Some(settings) = ceph_test("s3-boot-errors") else {
        return;
    };
    let missing = S3Store::new(settings.clone());
    let err = missing.check().await.unwrap_err();
    assert!(matches!(err, S3Error::NoSuchBucket { .. }), "{err}");
    assert!(err.to_string().contains(&settings.bucket), "{err}");

    let good = S3Store::new(settings.clone());
    good.create_bucket().await.unwrap();
    let wrong = S3Store::new(S3Settings {
        secret_key: "not-the-secret".into(),
        ..settings.clone()
    });
    let err = wrong.check().await.unwrap_err();
    assert!(matches!(err, S3Error::Credentials { .. }), "{err}");
    assert!(err.to_string().contains("netscope-local"), "{err}");

    let unreachable = S3Store::new(S3Settings {
        endpoint: "http://127.0.0.1:1".into(),
        ..settings
    });
    let err = unreachable.check().await.unwrap_err();
    assert!(matches!(err, S3Error::Unreachable { .. }), "{err}");
}
