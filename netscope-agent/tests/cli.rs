//! `netscope-agent` as a user runs it: a real process, real signals, real output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;
use support::{NetNs, kernel_test};

const BIN: &str = env!("CARGO_BIN_EXE_netscope-agent");

/// Waits for the child to exit, killing it after `limit`.
fn wait_bounded(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("netscope-agent did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn one_line_error(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "a panic is not an error message:\n{stderr}"
    );
    assert!(
        !stderr.contains("backtrace"),
        "no backtrace expected:\n{stderr}"
    );
    let errors: Vec<_> = stderr.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(
        errors.len(),
        1,
        "exactly one error line expected:\n{stderr}"
    );
    errors[0].to_owned()
}

#[test]
fn bad_configuration_lists_every_problem_and_exits_2() {
    let output = Command::new(BIN)
        .args([
            "probe",
            "--ring-bytes",
            "5000",
            "--dst",
            "10.0.0.0/99",
            "--tc-iface",
            "nope0",
            "--listen",
            "0.0.0.0:9464",
            "--dest-group",
            "db=10.1.0.0/64",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "ring-bytes 5000",
        "10.0.0.0/99",
        "tc-iface `nope0`",
        "listen 0.0.0.0:9464 is not loopback: give --api-token-file",
        "dest-group db",
    ] {
        assert!(
            stderr.contains(needle),
            "`{needle}` missing from:\n{stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn settings_come_from_a_dotenv_file_and_the_environment_wins_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("agent.env");
    std::fs::write(
        &env,
        "NETSCOPE_LISTEN=not-an-address\nNETSCOPE_API_RATE=0\n",
    )
    .unwrap();
    let run = |extra: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--no-probe"])
            .env("NETSCOPE_ENV_FILE", &env)
            .env_remove("NETSCOPE_LISTEN")
            .env_remove("NETSCOPE_API_RATE");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("listen `not-an-address`"), "{stderr}");
    assert!(stderr.contains("api-rate must be at least 1"), "{stderr}");
    let (code, stderr) = run(&[("NETSCOPE_API_RATE", "5")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        !stderr.contains("api-rate"),
        "the environment wins: {stderr}"
    );

    std::fs::write(&env, "this is not a dotenv line\n").unwrap();
    let (code, stderr) = run(&[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("env file"), "{stderr}");
    let missing = dir.path().join("missing.env");
    let out = Command::new(BIN)
        .args(["run", "--no-probe"])
        .env("NETSCOPE_ENV_FILE", &missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a named env file must exist");
}

#[test]
fn bad_audit_settings_are_all_listed_at_boot_and_exit_2() {
    let output = Command::new(BIN)
        .args(["run", "--no-probe", "--audit-sink", "rgw"])
        .args(["--audit-s3-endpoint", "ftp://rgw"])
        .args(["--audit-s3-bucket", "Not_A_Bucket"])
        .args(["--audit-batch-events", "0"])
        .args(["--audit-s3-access-key", "someone"])
        .env_remove("NETSCOPE_AUDIT_S3_SECRET_KEY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "audit-s3-endpoint `ftp://rgw`",
        "audit-s3-bucket `Not_A_Bucket`",
        "audit-batch-events 0",
        "NETSCOPE_AUDIT_S3_SECRET_KEY is not set",
    ] {
        assert!(
            stderr.contains(needle),
            "`{needle}` missing from:\n{stderr}"
        );
    }

    let output = Command::new(BIN)
        .args(["audit", "verify", "--from", "yesterday"])
        .args(["--to", "2026-11-26T10:00Z"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--from `yesterday`"), "{stderr}");
    let output = Command::new(BIN)
        .args(["audit", "verify", "--from", "2026-11-26T11:00Z"])
        .args(["--to", "2026-11-26T10:00Z"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not before --to"));
}

#[test]
fn probe_check_says_which_hook_serves_each_fact_here() {
    let output = Command::new(BIN)
        .args(["probe", "--check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    for fact in [
        "connect latency",
        "bytes per connection",
        "bytes per call",
        "retransmits",
    ] {
        assert!(text.contains(fact), "`{fact}` missing:\n{text}");
    }
    // This VM has the length tracepoints and BTF: every required fact is served.
    assert_eq!(output.status.code(), Some(0), "{text}");
    let json = Command::new(BIN)
        .args(["probe", "--check", "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["facts"][0]["fact"], "connect latency");
    assert!(report["facts"][0]["hook"].is_string(), "{report}");
}

#[test]
fn without_privileges_it_names_the_missing_capabilities() {
    let mut cmd = Command::new(BIN);
    cmd.arg("probe");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(65_534).gid(65_534); // nobody
    }
    let output = cmd.output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let line = one_line_error(&output);
    assert!(line.contains("missing privileges: CAP_BPF"), "{line}");
    assert!(line.contains("run as root"), "{line}");
}

#[test]
fn without_tracefs_it_says_how_to_mount_it() {
    let Some(_serial) = kernel_test("no-tracefs") else {
        return;
    };
    // A private mount namespace in which neither tracefs location is mounted.
    let script = format!(
        "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; exec {BIN} probe"
    );
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let line = one_line_error(&output);
    assert!(line.contains("tracefs is not mounted"), "{line}");
    assert!(
        line.contains("mount -t tracefs tracefs /sys/kernel/tracing"),
        "{line}"
    );
}

#[test]
fn probe_prints_each_finished_connection_then_reconciled_counters_on_sigterm() {
    let Some(_serial) = kernel_test("cli-probe") else {
        return;
    };
    const PORT: u16 = 7201;
    const REFUSED: u16 = 7202;
    let mut child = Command::new(BIN)
        .args([
            "probe",
            "--dport",
            &format!("{PORT},{REFUSED}"),
            "--poll-ms",
            "10",
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the attach log line before making traffic.
    let stderr = child.stderr.take().unwrap();
    let (attached_tx, attached) = mpsc::channel();
    let stderr_lines = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.contains("probe attached") {
                let _ = attached_tx.send(());
            }
            all.push(line);
        }
        all
    });
    if attached.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        panic!("probe never attached: {:?}", stderr_lines.join().unwrap());
    }

    let ns = NetNs::new("cli");
    let _in = ns.enter();
    let listener = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
    let mut expected = Vec::new();
    for size in [10usize, 1_000, 100_000] {
        let mut client = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(&vec![1u8; size]).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut sink = Vec::new();
        server.read_to_end(&mut sink).unwrap();
        server.write_all(b"ok").unwrap();
        drop(server);
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).unwrap();
        expected.push((
            client.local_addr().unwrap().port(),
            size as u64,
            reply.len() as u64,
        ));
    }
    assert!(TcpStream::connect(("127.0.0.1", REFUSED)).is_err());
    std::thread::sleep(Duration::from_millis(300));

    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_bounded(&mut child, Duration::from_secs(20));
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let logs = stderr_lines.join().unwrap();
    assert!(
        status.success(),
        "exit {status:?}\nstdout:\n{stdout}\nstderr:\n{logs:#?}"
    );

    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (port, sent, received) in &expected {
        let line = lines
            .iter()
            .find(|l| {
                l["event"] == "closed"
                    && l["local"].as_str().unwrap().ends_with(&format!(":{port}"))
            })
            .unwrap_or_else(|| panic!("no closed line for port {port}:\n{stdout}"));
        assert_eq!(line["bytes_sent"], *sent, "{line}");
        assert_eq!(line["bytes_received"], *received, "{line}");
        assert_eq!(line["outcome"], "closed", "{line}");
        assert!(line["connect_latency_ns"].as_u64().unwrap() > 0, "{line}");
        assert_eq!(line["pid"], std::process::id(), "{line}");
    }
    let failed: Vec<_> = lines.iter().filter(|l| l["event"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{stdout}");
    assert_eq!(failed[0]["outcome"], "refused");
    assert_eq!(failed[0]["errno"], libc::ECONNREFUSED);

    let summary = lines.last().unwrap();
    assert_eq!(summary["event"], "summary", "{stdout}");
    assert_eq!(summary["reconciled"], true, "{summary}");
    assert_eq!(
        summary["kernel"]["events_emitted"], summary["user"]["delivered"],
        "{summary}"
    );
    assert_eq!(
        summary["kernel"]["events_emitted"], 7,
        "3 × (established + closed) + 1 failed"
    );
    assert_eq!(summary["kernel"]["events_dropped"], 0);
    assert_eq!(
        summary["user"]["printed"], 4,
        "closed and failed lines only"
    );
}
