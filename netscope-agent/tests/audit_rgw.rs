//! The audit trail against a real Ceph RGW (scripts/ceph.sh start): the object store, the
//! spooling sink through outages, restarts and corruption, Object Lock, boot errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The RGW tests' serial lock is held for a whole test, across its awaits: every test drives a
// runtime of its own, so the lock only makes tests wait for each other, never a task for itself.

mod support;

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use aws_sdk_s3::{primitives::ByteStream, types::ObjectLockMode};
use base64::Engine as _;
use netscope_agent::{
    audit::{
        batch::{batch_key, decode_batch, encode_batch},
        rgw::{AuditSummary, RgwAudit, SpoolSettings},
        s3::{PutOutcome, S3Error, S3Settings, S3Store},
        verify::{Gap, verify},
    },
    domain::{OutcomeSink as _, audit::AuditEvent, outcome::OutboundResult},
};
use support::{
    ceph::{RgwOutage, ceph_outage_test, ceph_test, foreign_client},
    kafka::unique,
};

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
    let Some((_rgw, settings)) = ceph_test("s3-round-trip") else {
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
    let Some((_rgw, settings)) = ceph_test("s3-boot-errors") else {
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

// ---- The RGW audit sink: spool, shipper, outages, restarts, corruption, Object Lock. ----

fn spool(tag: &str, batch_events: u64) -> SpoolSettings {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "netscope_agent=info".into()))
        .try_init();
    let dir = std::env::temp_dir().join(unique(tag));
    SpoolSettings {
        dir: dir.join("node-a"),
        node: "node-a".into(),
        budget_bytes: 1 << 30,
        batch_events,
        batch_bytes: 64 << 20,
        batch_age: Duration::from_millis(200),
        queue: 1024,
    }
}

/// Delivers results `ids` from 4 concurrent tasks; every delivery must succeed.
async fn deliver(audit: &Arc<RgwAudit>, ids: std::ops::Range<u64>) {
    let mut tasks = tokio::task::JoinSet::new();
    let ids: Vec<u64> = ids.collect();
    for part in ids.chunks(ids.len().div_ceil(4).max(1)) {
        let (audit, part) = (Arc::clone(audit), part.to_vec());
        tasks.spawn(async move {
            for i in part {
                audit
                    .deliver(Arc::new(OutboundResult::example(&format!("r{i}"))))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// Every event in the bucket, in key order.
async fn stored(store: &S3Store) -> Vec<AuditEvent> {
    let mut all = Vec::new();
    for key in store.list("v1/").await.unwrap() {
        all.extend(decode_batch(&key, &store.get(&key).await.unwrap()).unwrap());
    }
    all
}

/// The bucket holds events 1..=n of node-a exactly once, for requests r0..r{n-1} exactly once.
async fn assert_exactly_once(store: &S3Store, n: u64) {
    let events = stored(store).await;
    let seqs: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "sequences in key order");
    let ids: BTreeSet<&str> = events
        .iter()
        .map(|e| e.context.request_id.as_str())
        .collect();
    assert_eq!(ids.len() as u64, n, "each request once");
    assert!(ids.contains("r0") && ids.contains(format!("r{}", n - 1).as_str()));
    let report = verify(
        store,
        netscope_agent::clock::now_unix_ms() - 3_600_000,
        netscope_agent::clock::now_unix_ms() + 60_000,
        None,
    )
    .await
    .unwrap();
    assert!(report.complete(), "{report:?}");
    assert_eq!(report.nodes["node-a"].events, n);
}

async fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_rgw_in_batches_and_verify_finds_them_complete() {
    let Some((_rgw, settings)) = ceph_test("rgw-round-trip") else {
        return;
    };
    let sp = spool("rgw-rt", 100);
    let audit = Arc::new(
        RgwAudit::connect(settings.clone(), sp.clone(), 1, true)
            .await
            .unwrap(),
    );
    deliver(&audit, 0..1000).await;
    let summary = audit.close(Duration::from_secs(30)).await;
    assert_eq!((summary.spooled, summary.shipped), (1000, 1000));
    assert_eq!((summary.spool_bytes, summary.backlog_segments), (0, 0));
    let store = S3Store::new(settings);
    let keys = store.list("v1/").await.unwrap();
    assert_eq!(keys.len() as u64, summary.puts, "one object per batch");
    assert!(keys.len() >= 10, "batches of at most 100 events: {keys:?}");
    assert!(keys.iter().all(|k| k.contains("/node-a/")));
    assert_exactly_once(&store, 1000).await;
    // Nothing is left in the spool but the record of what was shipped.
    let left: Vec<_> = std::fs::read_dir(&sp.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, vec!["shipped".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rgw_outage_under_load_is_spooled_then_shipped_exactly_once() {
    let Some((_rgw, settings)) = ceph_outage_test("rgw-outage") else {
        return;
    };
    let audit = Arc::new(
        RgwAudit::connect(settings.clone(), spool("rgw-outage", 100), 1, true)
            .await
            .unwrap(),
    );
    let stats = audit.stats();
    // Load throughout — one event every 2 ms from the request side — until the test has seen
    // the whole outage: a fixed count could run out before a slow first upload let it begin.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (audit, stop) = (Arc::clone(&audit), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                audit
                    .deliver(Arc::new(OutboundResult::example(&format!("r{n}"))))
                    .await
                    .unwrap();
                n += 1;
                if n.is_multiple_of(10) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            n
        })
    };
    wait_for("some events shipped", Duration::from_secs(30), || {
        stats.shipped.load(Ordering::Relaxed) >= 200
    })
    .await;
    let outage = RgwOutage::begin();
    wait_for(
        "the shipper to see the outage",
        Duration::from_secs(30),
        || stats.rgw_down.load(Ordering::Relaxed),
    )
    .await;
    let shipped_in_outage = stats.shipped.load(Ordering::Relaxed);
    let spool_then = stats.spool_bytes.load(Ordering::Relaxed);
    wait_for("the spool to grow", Duration::from_secs(30), || {
        stats.backlog_segments.load(Ordering::Relaxed) >= 3
            && stats.spool_bytes.load(Ordering::Relaxed) > spool_then
    })
    .await;
    assert_eq!(
        stats.shipped.load(Ordering::Relaxed),
        shipped_in_outage,
        "nothing reaches a stopped RGW"
    );
    outage.end();
    wait_for("RGW to take events again", Duration::from_secs(60), || {
        stats.shipped.load(Ordering::Relaxed) > shipped_in_outage
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let n = load.await.unwrap();
    let summary = audit.close(Duration::from_secs(60)).await;
    assert!(summary.put_failures > 0);
    assert_eq!((summary.shipped, summary.backlog_segments), (n, 0));
    assert_exactly_once(&S3Store::new(settings), n).await;
}

/// A run with RGW stopped throughout, boot included: events r0..r{n-1} stay in the spool.
async fn spool_during_outage(settings: &S3Settings, sp: &SpoolSettings, n: u64) -> AuditSummary {
    S3Store::new(settings.clone())
        .create_bucket()
        .await
        .unwrap();
    let _outage = RgwOutage::begin();
    let audit = Arc::new(
        RgwAudit::connect(settings.clone(), sp.clone(), 1, false)
            .await
            .unwrap(),
    );
    deliver(&audit, 0..n).await;
    audit.close(Duration::from_millis(200)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_spool_kept_is_shipped_after_a_restart_and_numbering_continues() {
    let Some((_rgw, settings)) = ceph_outage_test("rgw-restart") else {
        return;
    };
    let sp = spool("rgw-restart", 100);
    let summary = spool_during_outage(&settings, &sp, 450).await;
    assert_eq!((summary.spooled, summary.shipped), (450, 0));
    assert_eq!(
        summary.backlog_segments, 5,
        "4 full batches and the sealed rest"
    );
    let audit = Arc::new(
        RgwAudit::connect(settings.clone(), sp, 1, false)
            .await
            .unwrap(),
    );
    deliver(&audit, 450..500).await;
    let summary = audit.close(Duration::from_secs(30)).await;
    assert_eq!((summary.spooled, summary.shipped), (50, 500));
    assert_exactly_once(&S3Store::new(settings), 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_spool_segment_is_quarantined_and_reported_as_a_gap() {
    let Some((_rgw, settings)) = ceph_outage_test("rgw-corrupt") else {
        return;
    };
    let sp = spool("rgw-corrupt", 100);
    spool_during_outage(&settings, &sp, 300).await;
    // Flip one byte in the middle of the second segment (events 101..=200).
    let second = sp.dir.join(format!("{:020}-{:020}.seg", 101, 200));
    let mut bytes = std::fs::read(&second).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&second, &bytes).unwrap();

    let audit = Arc::new(
        RgwAudit::connect(settings.clone(), sp.clone(), 1, false)
            .await
            .unwrap(),
    );
    let summary = audit.close(Duration::from_secs(30)).await;
    assert_eq!(summary.quarantined, 1);
    assert_eq!((summary.shipped, summary.backlog_segments), (200, 0));
    assert_eq!(
        std::fs::read(sp.dir.join("quarantine").join(second.file_name().unwrap())).unwrap(),
        bytes,
        "the corrupt segment is kept as it was"
    );
    let report = verify(
        &S3Store::new(settings),
        netscope_agent::clock::now_unix_ms() - 3_600_000,
        netscope_agent::clock::now_unix_ms() + 60_000,
        None,
    )
    .await
    .unwrap();
    assert!(!report.complete());
    assert_eq!(
        report.nodes["node-a"].gaps,
        vec![Gap {
            first: 101,
            last: 200
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_holds_deliveries_back_until_rgw_takes_events() {
    let Some((_rgw, settings)) = ceph_outage_test("rgw-budget") else {
        return;
    };
    let mut sp = spool("rgw-budget", 20);
    sp.budget_bytes = 32 << 10;
    let audit = Arc::new(
        RgwAudit::connect(settings.clone(), sp, 1, true)
            .await
            .unwrap(),
    );
    let stats = audit.stats();
    let outage = RgwOutage::begin();
    // One delivery after the other, far more than the budget holds while RGW is down.
    const N: u64 = 500;
    let delivered = Arc::new(AtomicU64::new(0));
    let load = {
        let (audit, delivered) = (Arc::clone(&audit), Arc::clone(&delivered));
        tokio::spawn(async move {
            for i in 0..N {
                audit
                    .deliver(Arc::new(OutboundResult::example(&format!("r{i}"))))
                    .await
                    .unwrap();
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    wait_for(
        "the spool's budget to be used up",
        Duration::from_secs(30),
        || stats.budget_waits.load(Ordering::Relaxed) >= 1,
    )
    .await;
    // Held back, neither dropped nor failed: no delivery completes until RGW takes events.
    let held = delivered.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(delivered.load(Ordering::Relaxed), held);
    assert!(held < N && stats.spool_bytes.load(Ordering::Relaxed) >= 32 << 10);
    assert!(!load.is_finished());
    outage.end();
    load.await.unwrap();
    let summary = audit.close(Duration::from_secs(30)).await;
    assert_eq!(summary.shipped, N);
    assert_exactly_once(&S3Store::new(settings), N).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_object_lock_bucket_batches_can_be_neither_overwritten_nor_deleted() {
    let Some((_rgw, settings)) = ceph_test("rgw-lock") else {
        return;
    };
    let client = foreign_client(&settings);
    client
        .create_bucket()
        .bucket(&settings.bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    let audit = Arc::new(
        RgwAudit::connect(settings.clone(), spool("rgw-lock", 100), 1, false)
            .await
            .unwrap(),
    );
    deliver(&audit, 0..10).await;
    assert_eq!(audit.close(Duration::from_secs(30)).await.shipped, 10);

    let store = S3Store::new(settings.clone());
    let keys = store.list("v1/").await.unwrap();
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    let original = store.get(key).await.unwrap();
    let head = client
        .head_object()
        .bucket(&settings.bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Compliance));
    let until = head.object_lock_retain_until_date().unwrap().secs();
    let now = (netscope_agent::clock::now_unix_ms() / 1000) as i64;
    assert!(
        (now + 86_400 - 600..=now + 86_400 + 600).contains(&until),
        "retained for the configured day"
    );
    let version = head.version_id().unwrap().to_owned();

    // NetScope itself never writes a key twice.
    assert_eq!(
        store.put_once(key, b"forged".to_vec()).await.unwrap(),
        PutOutcome::AlreadyThere
    );
    // Someone else's PUT on the key adds a version; the locked original stays as it was.
    client
        .put_object()
        .bucket(&settings.bucket)
        .key(key)
        .checksum_crc32(
            base64::engine::general_purpose::STANDARD
                .encode(crc32fast::hash(b"forged").to_be_bytes()),
        )
        .body(ByteStream::from_static(b"forged"))
        .send()
        .await
        .unwrap();
    // Deleting the locked version is refused; a plain delete only adds a marker.
    let denied = client
        .delete_object()
        .bucket(&settings.bucket)
        .key(key)
        .version_id(&version)
        .send()
        .await;
    assert!(denied.is_err(), "a locked version was deleted");
    client
        .delete_object()
        .bucket(&settings.bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let kept = client
        .get_object()
        .bucket(&settings.bucket)
        .key(key)
        .version_id(&version)
        .send()
        .await
        .unwrap();
    assert_eq!(
        kept.body.collect().await.unwrap().into_bytes().to_vec(),
        original
    );
}

#[test]
fn the_agent_refuses_to_boot_on_a_missing_bucket_or_wrong_credentials() {
    let Some((_rgw, settings)) = ceph_test("rgw-boot") else {
        return;
    };
    let run = |bucket: &str, secret: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_netscope-agent"))
            .args(["run", "--no-probe", "--audit-sink", "rgw"])
            .args(["--audit-s3-endpoint", &settings.endpoint])
            .args(["--audit-s3-bucket", bucket])
            .env("NETSCOPE_AUDIT_S3_SECRET_KEY", secret)
            .env("NETSCOPE_KAFKA_BROKERS", "127.0.0.1:1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let error: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("netscope-agent: error:"))
            .collect();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(error.len(), 1, "one clear line: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        error[0].to_owned()
    };
    let missing = run(&settings.bucket, "netscope-local-secret");
    assert!(
        missing.contains(&format!(
            "audit bucket `{}` does not exist",
            settings.bucket
        )),
        "{missing}"
    );
    let wrong = run("netscope-audit", "not-the-secret");
    assert!(
        wrong.contains("refused access key `netscope-local`"),
        "{wrong}"
    );
}
