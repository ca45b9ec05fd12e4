//! The audit spool on a real small filesystem that fills up in the middle of a run (root: the
//! test mounts a tmpfs of its own): nothing is acknowledged that is not durable, `/readyz` and
//! `/metrics` say the spool is failing, and the agent recovers by itself once the disk has room.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use netscope_agent::demo::upstream::Upstream;
use serde_json::json;
use support::{
    agent::{Setup, audit_verify, request, request_id, rgw_node_args},
    ceph::{ceph_test, stored_events},
    kafka::{self, kafka_test},
    run,
};

/// A tmpfs of `size` mounted on `dir`, unmounted (lazily) on drop.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                dir.to_str().unwrap(),
            ],
        );
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// Writes a file until the disk refuses more (ENOSPC).
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 4096];
        loop {
            match f.write_all(&chunk).and_then(|()| f.sync_data()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return path,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l", self.dir.to_str().unwrap()])
            .status();
    }
}

fn root(name: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var("NETSCOPE_REQUIRE_KERNEL_TESTS").as_deref() != Ok("1"),
            "{name}: root is required (NETSCOPE_REQUIRE_KERNEL_TESTS=1) but this is not root"
        );
        eprintln!("{name}: SKIPPED: mounting a small filesystem needs root");
    }
    root
}

fn committed_total(s: &Setup) -> i64 {
    kafka::committed(&s.brokers, &s.group, &s.requests, 3)
        .into_iter()
        .map(|o| o.unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_disk_that_fills_mid_run_acknowledges_nothing_undurable_and_recovers_by_itself() {
    let Some(brokers) = kafka_test("spool-disk-full") else {
        return;
    };
    let Some((_rgw, s3)) = ceph_test("spool-disk-full") else {
        return;
    };
    if !root("spool-disk-full") {
        return;
    }
    let up = Upstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", up.addr);
    let s = Setup::new("diskfull", brokers, up.addr.port()).await;
    let spool = s.dir.join("spool");
    let disk = SmallDisk::mount(&spool, "4m");
    let from = netscope_agent::clock::now_unix_ms() - 60_000;
    let mut args = rgw_node_args("diskfull", &s3.bucket, spool.to_str().unwrap());
    args.extend(["--audit-batch-events", "20"]);
    let batch = |range: std::ops::Range<usize>| -> Vec<(String, Vec<u8>)> {
        range
            .map(|i| {
                (
                    format!("d{i}"),
                    request(&base, "GET", &format!("/orders/{i}"), None, None),
                )
            })
            .collect()
    };
    let agent = s.start(&args);
    let http = netscope_agent::outbound::client::build(Duration::from_secs(2)).unwrap();
    s.wait_ready(&http, 200, "ready with room on the disk", |_| true)
        .await;
    s.send(&batch(0..100)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed_total(&s) < 100 {
        assert!(
            Instant::now() < deadline,
            "first 100 never committed: {}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The disk fills up: the next calls run, but none may be acknowledged.
    let filler = disk.fill();
    s.send(&batch(100..200)).await;
    let body = s
        .wait_ready(&http, 503, "not ready while spool writes fail", |b| {
            b.to_string().contains("writes fail")
        })
        .await;
    assert!(body.to_string().contains("audit_spool"), "{body}");
    let (_, metrics) = s.get(&http, "/metrics").await;
    assert_eq!(
        netscope_agent::metrics::sample_sum(&metrics, "netscope_audit_spool_failing", &[]),
        1.0,
        "{metrics}"
    );
    assert!(
        netscope_agent::metrics::sample_sum(
            &metrics,
            "netscope_audit_spool_write_errors_total",
            &[]
        ) >= 1.0
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        committed_total(&s),
        100,
        "no offset is committed past an event that is not durable"
    );

    // Room again: the agent goes on by itself.
    std::fs::remove_file(filler).unwrap();
    s.wait_ready(&http, 200, "ready again once the disk has room", |_| true)
        .await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while committed_total(&s) < 200 {
        assert!(Instant::now() < deadline, "never caught up: {}", s.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.stop(agent);

    let report = audit_verify(&s3, "diskfull", from);
    let node = &report["nodes"]["diskfull"];
    assert_eq!(node["gaps"], json!([]), "{report}");
    assert_eq!(node["duplicates"], json!([]), "{report}");
    let audited: BTreeSet<String> = stored_events(&s3)
        .await
        .into_iter()
        .map(|e| e.context.request_id)
        .collect();
    let results: BTreeSet<String> = s
        .results_within(300, Duration::from_secs(5))
        .iter()
        .map(request_id)
        .collect();
    assert_eq!(results.len(), 200, "{}", s.log());
    assert_eq!(audited, results, "every call has its audit event");
    drop(disk);
}
