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

/// Found in the container image (no ca-certificates): the S3 client panicked at its
/// construction, even for an http:// endpoint.
#[test]
fn an_empty_trust_store_is_a_configuration_error_at_boot_not_a_panic() {
    for command in [
        &["run", "--no-probe", "--audit-sink", "rgw"][..],
        &["audit", "verify", "--node", "n", "--from", "0", "--to", "1"],
    ] {
        let output = Command::new(BIN)
            .args(command)
            .env("SSL_CERT_FILE", "/dev/null")
            .env("SSL_CERT_DIR", "/nonexistent")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{command:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            stderr.contains("no CA certificate in the system trust store"),
            "{command:?}: {stderr}"
        );
    }
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
    // With BTF giving the socket fields, connections are followed by a BTF tracepoint.
    assert_eq!(
        report["facts"][0]["hook"], "BTF tracepoint inet_sock_set_state (tp_btf)",
        "{report}"
    );
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
    probe_reports_connections(&[], 7201, 7202, "cli");
}

/// The capabilities the DaemonSet adds (deploy/daemonset.yaml) that this kernel needs, as
/// `setpriv` names them: SYS_RESOURCE only matters before Linux 5.11 (the guests of
/// `cargo xtask test-kernels` show it on 5.10), and this VM's bounding set lacks it.
const DAEMONSET_CAPS: [&str; 3] = ["bpf", "perfmon", "net_admin"];

#[test]
fn the_daemonset_drops_everything_and_adds_exactly_the_tested_capabilities() {
    let m = support::manifest::Manifest::load();
    let added: Vec<String> = m
        .added_capabilities()
        .iter()
        .map(|c| c.to_lowercase())
        .collect();
    let mut tested: Vec<String> = DAEMONSET_CAPS.map(str::to_owned).to_vec();
    tested.push("sys_resource".into());
    assert_eq!(added, tested);
    let sc = m.agent().security_context.clone().unwrap();
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_user, Some(0));
}

/// `setpriv` limiting the bounding set (hence, for uid 0, every capability) to `caps`.
fn bounded_to(caps: &[&str]) -> Vec<String> {
    let keep: String = caps.iter().map(|c| format!(",+{c}")).collect();
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all{keep}"),
        "--".into(),
    ]
}

/// Above 2 (Debian's and Ubuntu's kernels ship 3 and 4), only CAP_SYS_ADMIN may attach a
/// tracepoint: the DaemonSet's set is then refused, by name (`cargo xtask test-kernels` runs
/// both cases in its Debian guests).
fn perf_event_paranoid() -> i32 {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn as_uid_0_with_only_the_daemonsets_capabilities_the_probe_attaches_and_reports() {
    let Some(_serial) = kernel_test("cli-least-privilege") else {
        return;
    };
    let prefix = bounded_to(&DAEMONSET_CAPS);
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    if perf_event_paranoid() > 2 {
        let output = Command::new(prefix[0])
            .args(&prefix[1..])
            .args([BIN, "probe"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let line = one_line_error(&output);
        assert!(
            line.contains("CAP_SYS_ADMIN (kernel.perf_event_paranoid"),
            "{line}"
        );
        return;
    }
    probe_reports_connections(&prefix, 7203, 7204, "clicaps");
}

#[test]
fn each_capability_taken_away_is_named_in_one_line_and_exit_code_1() {
    let Some(_serial) = kernel_test("cli-missing-capability") else {
        return;
    };
    for missing in DAEMONSET_CAPS {
        let kept: Vec<&str> = DAEMONSET_CAPS
            .into_iter()
            .filter(|c| *c != missing)
            .collect();
        let argv = bounded_to(&kept);
        let output = Command::new(&argv[0])
            .args(&argv[1..])
            .args([BIN, "probe"])
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(1),
            "without {missing}: {output:?}"
        );
        let line = one_line_error(&output);
        // What is named as missing, before the advice.
        let named = line
            .split_once("missing privileges: ")
            .and_then(|(_, rest)| rest.split_once(" (run as root"))
            .map(|(named, _)| named)
            .unwrap_or_else(|| panic!("without {missing}: {line}"));
        let name = format!("CAP_{}", missing.to_uppercase());
        assert!(named.starts_with(&name), "without {missing}: {line}");
        for other in DAEMONSET_CAPS.iter().filter(|c| **c != missing) {
            let other = format!("CAP_{}", other.to_uppercase());
            assert!(!named.contains(&other), "{other} is named: {line}");
        }
    }
}

#[test]
fn a_uid_other_than_0_is_told_tracefs_is_roots_alone_not_that_it_is_missing() {
    let Some(_serial) = kernel_test("cli-non-root") else {
        return;
    };
    // uid nobody, but holding the three capabilities: what stops it is tracefs's mode.
    let caps = "+bpf,+perfmon,+net_admin";
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &format!("--inh-caps={caps}"),
            &format!("--ambient-caps={caps}"),
            "--",
            BIN,
            "probe",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let line = one_line_error(&output);
    assert!(line.contains("permission denied"), "{line}");
    assert!(line.contains("uid 65534"), "{line}");
    assert!(!line.contains("not mounted"), "{line}");
}

/// Runs `probe` (behind `prefix`, e.g. `setpriv …`), makes three connections to `port` and a
/// refused one to `refused` from a netns of its own, stops it with SIGTERM, and checks its
/// lines and reconciled summary.
/// aya-log end to end: a kernel program's rare error path (here the socket table full at 4
/// entries, with 32 connections open at once) reaches the agent's JSON log — said once on
/// each CPU where it happened, the rest only counted.
#[test]
fn a_full_socket_table_is_said_by_the_kernel_program_in_the_agents_log() {
    let Some(_lock) = kernel_test("cli-kernel-log") else {
        return;
    };
    const PORT: u16 = 7211;
    let mut child = Command::new(BIN)
        .args([
            "probe",
            "--max-connections",
            "4",
            "--dport",
            &PORT.to_string(),
        ])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (line_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let wait_for = |needle: &str| -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(30)) {
            let found = line.contains(needle);
            seen.push(line);
            if found {
                return seen;
            }
        }
        panic!("no `{needle}` in the agent's log: {seen:?}");
    };
    wait_for("probe attached");

    let ns = NetNs::new("cli-klog");
    let _in = ns.enter();
    let listener = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
    let held: Vec<(TcpStream, TcpStream)> = (0..32)
        .map(|_| {
            let client = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
            (client, listener.accept().unwrap().0)
        })
        .collect();
    let logged = wait_for("the socket table is full");
    drop(held);
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(wait_bounded(&mut child, Duration::from_secs(20)).success());

    let line: Value = serde_json::from_str(logged.last().unwrap()).unwrap();
    assert_eq!(line["level"], "WARN", "{line}");
    let message = line["fields"]["message"].as_str().unwrap();
    // The BTF tracepoint's program on this kernel (ns_set_state where the classic one runs).
    assert!(
        message.starts_with("ns_set_state_btf: the socket table is full"),
        "{message}"
    );
    assert!(message.contains("--max-connections"), "{message}");
}

fn probe_reports_connections(prefix: &[&str], port: u16, refused: u16, netns: &str) {
    let (program, leading) = match prefix.split_first() {
        Some((p, rest)) => (*p, [rest, &[BIN]].concat()),
        None => (BIN, Vec::new()),
    };
    let mut child = Command::new(program)
        .args(leading)
        .args([
            "probe",
            "--dport",
            &format!("{port},{refused}"),
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

    let ns = NetNs::new(netns);
    let _in = ns.enter();
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut expected = Vec::new();
    for size in [10usize, 1_000, 100_000] {
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
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
    assert!(TcpStream::connect(("127.0.0.1", refused)).is_err());
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
    for (sport, sent, received) in &expected {
        let line = lines
            .iter()
            .find(|l| {
                l["event"] == "closed"
                    && l["local"].as_str().unwrap().ends_with(&format!(":{sport}"))
            })
            .unwrap_or_else(|| panic!("no closed line for port {sport}:\n{stdout}"));
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
