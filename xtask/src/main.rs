//! `cargo xtask <task>`: NetScope's developer tasks. On a fresh machine use `./xtask.sh <task>`,
//! which runs `scripts/setup.sh` first (toolchains, bpf-linker, apt packages, mounts).

mod kernels;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  setup                 install toolchains, bpf-linker, apt packages; mount tracefs/bpffs
  build-ebpf [--out F]  build the kernel object (BTF included); copy it to F if given
  run [ARGS…]           start the local Kafka broker and Ceph (bluestore: keeps its data),
                        build (release) and run the pipeline `netscope-agent run
                        --demo-upstream --audit-sink rgw --audit-create-bucket ARGS…`
                        (root: with the probe)
  send [ARGS…]          send demo requests to the local pipeline (`netscope-agent send`)
  probe [ARGS…]         build (release) and run `netscope-agent probe ARGS…` (root)
  test                  fmt check, clippy -D warnings, cargo deny, start the local Kafka broker, Ceph
                        RGW and Prometheus, then every test, the short soak, then (root) test-kernels; the Kafka, RGW, Prometheus and
                        Chromium tests are required, and as root the kernel tests too
                        (NETSCOPE_REQUIRE_{KAFKA,CEPH,PROMETHEUS,BROWSER,KERNEL,CONTAINER}_TESTS=1)
  test-kernels [RELEASE…|host]  the kernel tests on real Debian kernels (5.10, 6.1, 6.12, 7.x;
                        fetched once) under qemu, and on this VM's kernel: a test × kernel matrix
  kafka start|stop|status  the local Kafka broker (scripts/kafka.sh)
  ceph start|stop|status|rgw-stop|rgw-start  the local Ceph RGW (scripts/ceph.sh)
  image                 build (release) the agent's container image with podman
                        (localhost/netscope-agent:VERSION; scripts/image.sh, no registry)
  soak [--messages N] [--minutes M]  two agents in one group under scheduled faults (upstream
                        5xx/resets/slow/refused, broker restart, RGW outage, SIGKILLs, a node
                        joining and leaving), then a reconciliation table and
                        target/soak/report.json; non-zero on any loss (default 100,000 messages,
                        ~12 min; `test` runs 5,000 in 3 min)
  bench probe [ARGS…]   the probe's CPU cost (churn, keep-alive; cgroup cpu.stat) and its
                        kernel ns vs empty programs and vs tcplife (root)
  bench pipeline [ARGS…]  pipeline throughput and latency vs a bare reqwest loop (starts Kafka)
  bench ring-instructions  the ring reader's per-event path under cachegrind (valgrind):
                        instructions per event for probe's table and run's (table + flow metrics),
                        unmoved by VM noise
  bench api [ARGS…]     the live view and /metrics under the pipeline's load: 50 WebSocket
                        clients (one never reading), scrape time at the label budget (starts Kafka)
  bench audit [ARGS…]   events/s into RGW, PUTs per 10,000 events, request-path latency with
                        RGW healthy vs stopped (starts Ceph)
  bench flows [ARGS…]   criterion micro-benchmarks: ring record → flow table (events/s per
                        core), per-call deltas of pooled connections; then, as root, the
                        agent's RSS idle and holding 10,000 live connections (ARGS go to
                        criterion; `bench memory [ARGS…]` runs the RSS part alone)";

fn workspace() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or(manifest.clone(), Path::to_path_buf)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a command in the workspace, echoing it; Err carries a one-line reason.
fn run(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
    eprintln!("xtask: $ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(workspace())
        .status()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{program} {}` failed ({status})", args.join(" ")))
    }
}

fn build_ebpf(args: &[String]) -> Result<(), String> {
    let object = xtask::build_ebpf(&workspace())
        .map_err(|e| e.to_string())?
        .netscope;
    match args {
        [] => println!("{}", object.display()),
        [flag, out] if flag == "--out" => {
            std::fs::copy(&object, out).map_err(|e| format!("copy to {out}: {e}"))?;
            println!("{out}");
        }
        _ => {
            return Err(format!(
                "build-ebpf: unexpected arguments {args:?}\n{USAGE}"
            ));
        }
    }
    Ok(())
}

fn test() -> Result<(), String> {
    run("cargo", &["fmt", "--all", "--check"], &[])?;
    // With the agent's fault points compiled in, as the tests build it (the code behind them
    // is linted too; without the feature they are nothing).
    run(
        "cargo",
        &[
            "clippy",
            "--all-targets",
            "--features",
            FAILPOINTS,
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    // Licences, duplicate versions (warned), sources; see deny.toml for why not advisories.
    run(
        "cargo",
        &[
            "deny",
            "check",
            "--hide-inclusion-graph",
            "licenses",
            "bans",
            "sources",
        ],
        &[],
    )?;
    let require = if is_root() {
        "1"
    } else {
        eprintln!("xtask: not root: the kernel tests will be SKIPPED (each says why)");
        "0"
    };
    run("bash", &["scripts/kafka.sh", "start"], &[])?;
    run("bash", &["scripts/ceph.sh", "start"], &[])?;
    run("bash", &["scripts/prometheus.sh", "start"], &[])?;
    run_tests(require)?;
    run(
        "cargo",
        &["build", "-p", "netscope-bench", "--features", FAILPOINTS],
        &[],
    )?;
    // The short soak: faults piled up on two agents, then the reconciliation (it stops and
    // starts the broker and RGW, so it runs after the tests that use them). Debug builds (the
    // tests' agent, the bench built just above) are enough at its rate.
    let started = std::time::Instant::now();
    let soaked = run(
        "target/debug/netscope-bench",
        &[
            "soak",
            "--messages",
            "5000",
            "--minutes",
            "3",
            "--report",
            "target/soak/ci-report.json",
        ],
        &[],
    );
    eprintln!(
        "xtask: short soak took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    soaked?;
    if is_root() {
        // The same kernel tests on Linux 5.10, 6.1, 6.12 and 7.x under qemu, and here.
        let started = std::time::Instant::now();
        let matrix = kernels::test_kernels(&[]);
        eprintln!(
            "xtask: kernel matrix took {:.0} s",
            started.elapsed().as_secs_f64()
        );
        matrix?;
    }
    Ok(())
}

/// The agent's fault points (`netscope-agent/src/faults.rs`): the test suite is built with them,
/// a release build never.
const FAILPOINTS: &str = "netscope-agent/failpoints";

/// Totals of libtest's `test result:` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds one `test result: ok. 3 passed; 0 failed; 1 ignored; …` line (others are ignored).
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result:") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Test binaries that assert host-wide kernel counters (every connect on the host, e.g.
/// `connects_filtered`): they run alone, before the lanes, as nothing else may connect meanwhile.
const ALONE: [&str; 1] = ["kernel"];

/// Test binaries that attach kernel probes: one lane runs them one after the other, so that no
/// other probe-heavy test doubles their per-event cost meanwhile.
const PROBE_LANE: [&str; 6] = [
    "cli",
    "pipeline",
    "prometheus",
    "page",
    "container",
    "start_order",
];

/// One test binary as `cargo test --no-run` names it.
struct TestBinary {
    /// e.g. `tests/kernel.rs` or `unittests src/lib.rs`.
    source: String,
    path: PathBuf,
}

impl TestBinary {
    /// `Executable tests/kernel.rs (target/debug/deps/kernel-0123abcd)` → the binary.
    fn parse(line: &str) -> Option<Self> {
        let rest = line.trim_start().strip_prefix("Executable ")?;
        let (source, path) = rest.strip_suffix(')')?.rsplit_once(" (")?;
        Some(Self {
            source: source.to_owned(),
            path: workspace().join(path),
        })
    }

    /// The integration test's name (`kernel` for `tests/kernel.rs`), if it is one.
    fn integration_test(&self) -> Option<&str> {
        self.source.strip_prefix("tests/")?.strip_suffix(".rs")
    }

    fn in_probe_lane(&self) -> bool {
        self.integration_test()
            .is_some_and(|name| PROBE_LANE.contains(&name))
    }

    fn alone(&self) -> bool {
        self.integration_test()
            .is_some_and(|name| ALONE.contains(&name))
    }
}

/// What one binary printed and counted.
struct BinaryRun {
    name: String,
    output: String,
    totals: Totals,
    took: std::time::Duration,
    ok: bool,
}

fn run_binary(binary: &TestBinary, envs: &[(&str, &str)]) -> BinaryRun {
    let started = std::time::Instant::now();
    let output = Command::new(&binary.path)
        .envs(envs.iter().copied())
        .current_dir(workspace())
        .output();
    let (text, ok) = match output {
        Ok(o) => (
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            o.status.success(),
        ),
        Err(e) => (
            format!("cannot run {}: {e}\n", binary.path.display()),
            false,
        ),
    };
    let mut totals = Totals::default();
    text.lines().for_each(|l| totals.add_line(l));
    BinaryRun {
        name: binary.source.clone(),
        output: text,
        totals,
        took: started.elapsed(),
        ok,
    }
}

/// Runs `binaries` one after the other, printing each one's output whole as it ends.
fn lane(binaries: &[TestBinary], envs: &[(&str, &str)], runs: &std::sync::Mutex<Vec<BinaryRun>>) {
    for binary in binaries {
        let run = run_binary(binary, envs);
        println!(
            "xtask: ---- {} ({:.1} s) ----\n{}",
            run.name,
            run.took.as_secs_f64(),
            run.output
        );
        runs.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(run);
    }
}

/// Builds every test binary once, runs [`ALONE`] first on its own, then the rest in two lanes
/// at once — the probe lane ([`PROBE_LANE`], one after the other) and everything else (one
/// after the other; RGW tests order themselves with a shared lock) — printing each binary's
/// output whole as it ends, then one closing line over every test binary.
fn run_tests(require_kernel: &str) -> Result<(), String> {
    use std::io::{BufRead as _, BufReader};
    let started = std::time::Instant::now();
    let args = ["test", "--workspace", "--no-run", "--features", FAILPOINTS];
    eprintln!("xtask: $ cargo {}", args.join(" "));
    let mut build = Command::new("cargo")
        .args(args)
        .current_dir(workspace())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let mut binaries = Vec::new();
    if let Some(stderr) = build.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            binaries.extend(TestBinary::parse(&line));
        }
    }
    let status = build.wait().map_err(|e| format!("cargo test: {e}"))?;
    if !status.success() {
        return Err(format!("building the tests failed ({status})"));
    }
    let envs = [
        ("NETSCOPE_REQUIRE_KERNEL_TESTS", require_kernel),
        ("NETSCOPE_REQUIRE_KAFKA_TESTS", "1"),
        ("NETSCOPE_REQUIRE_CEPH_TESTS", "1"),
        ("NETSCOPE_REQUIRE_PROMETHEUS_TESTS", "1"),
        ("NETSCOPE_REQUIRE_BROWSER_TESTS", "1"),
        ("NETSCOPE_REQUIRE_SCHEMA_TESTS", "1"),
        ("NETSCOPE_REQUIRE_CONTAINER_TESTS", require_kernel),
        ("RUST_BACKTRACE", "1"),
    ];
    let (alone, rest): (Vec<_>, Vec<_>) = binaries.into_iter().partition(TestBinary::alone);
    let (probe_lane, other_lane): (Vec<_>, Vec<_>) =
        rest.into_iter().partition(TestBinary::in_probe_lane);
    let runs = std::sync::Mutex::new(Vec::new());
    lane(&alone, &envs, &runs);
    std::thread::scope(|scope| {
        for lane_binaries in [&probe_lane, &other_lane] {
            let (runs, envs) = (&runs, &envs);
            scope.spawn(move || lane(lane_binaries, envs, runs));
        }
    });
    let runs = runs
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut totals = Totals::default();
    for run in &runs {
        totals.passed += run.totals.passed;
        totals.failed += run.totals.failed;
        totals.ignored += run.totals.ignored;
        eprintln!(
            "xtask: {:<40} {:>6.1} s  {}",
            run.name,
            run.took.as_secs_f64(),
            if run.ok { "ok" } else { "FAILED" }
        );
    }
    eprintln!(
        "xtask: tests took {:.1} s (build included)",
        started.elapsed().as_secs_f64()
    );
    println!(
        "summary: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    let failed: Vec<&str> = runs
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.name.as_str())
        .collect();
    if !failed.is_empty() {
        return Err(format!("tests failed in {}", failed.join(", ")));
    }
    if totals.passed == 0 {
        return Err("no test ran".to_owned());
    }
    Ok(())
}

/// Builds the agent (release) and runs one of its commands.
fn agent(command: &[&str], args: &[String]) -> Result<(), String> {
    run(
        "cargo",
        &["build", "--release", "-p", "netscope-agent"],
        &[],
    )?;
    let binary = workspace().join("target/release/netscope-agent");
    let mut full: Vec<String> = command.iter().map(|s| (*s).to_owned()).collect();
    full.extend_from_slice(args);
    let status = Command::new(&binary)
        .args(&full)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("netscope-agent {} exited with {status}", command.join(" ")))
}

/// `cargo build --release` of the agent binary (what the benches, the soak and the image run).
fn build_release_agent() -> Result<(), String> {
    build_release_agent_target("--bin", "netscope-agent")
}

/// `cargo build --release -p netscope-agent <kind> <name>` (`--bin`, `--example`).
fn build_release_agent_target(kind: &str, name: &str) -> Result<(), String> {
    run(
        "cargo",
        &["build", "--release", "-p", "netscope-agent", kind, name],
        &[],
    )
}

/// `netscope-bench flows`: the real agent's RSS, so `netscope-agent` is built first.
fn memory(rest: &[String]) -> Result<(), String> {
    build_release_agent()?;
    bench_bin("flows", rest)
}

/// The agent's container image (scripts/image.sh) around the release build.
fn image() -> Result<(), String> {
    build_release_agent()?;
    run(
        "bash",
        &["scripts/image.sh", "build", "target/release/netscope-agent"],
        &[],
    )
}

/// The default soak (100,000 messages, ~12 min; `--messages`/`--minutes` shrink it) on release
/// builds, against the local broker and RGW, which it starts.
fn soak(rest: &[String]) -> Result<(), String> {
    run("bash", &["scripts/kafka.sh", "start"], &[])?;
    run("bash", &["scripts/ceph.sh", "start"], &[])?;
    build_release_agent()?;
    bench_bin("soak", rest)
}

/// The ring reader's per-event path (`netscope-agent/examples/ring_path.rs`) under cachegrind,
/// for `probe`'s table and `run`'s: instructions per event, a count this VM's noise does not
/// move (a change to that path is compared by this, its time by `bench flows`/`bench probe`).
fn ring_instructions() -> Result<(), String> {
    build_release_agent_target("--example", "ring_path")?;
    let out_dir = workspace().join("target/cachegrind");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let mut figures = Vec::new();
    for (name, args) in [("probe", &[][..]), ("run", &["--endpoint-index"][..])] {
        let out_file = out_dir.join(format!("ring_path-{name}.out"));
        let output = Command::new("valgrind")
            .args(["--tool=cachegrind", "--cache-sim=yes"])
            .arg(format!("--cachegrind-out-file={}", out_file.display()))
            .arg("target/release/examples/ring_path")
            .args(args)
            .current_dir(workspace())
            .output()
            .map_err(|e| format!("cannot run valgrind (Debian package `valgrind`): {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(format!("ring_path under cachegrind failed: {stderr}"));
        }
        let events: f64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("events="))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("ring_path printed no event count: {stdout}"))?;
        // "==PID== I   refs:      79,926,519" and "==PID== D1  misses:  383,154  (…)".
        let count = |label: &str| {
            stderr
                .lines()
                .find_map(|l| l.split_once(label).map(|(_, rest)| rest))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.replace(',', "").parse::<f64>().ok())
                .ok_or_else(|| format!("no `{label}` in cachegrind's summary: {stderr}"))
        };
        let instructions = count("I   refs:")?;
        let d1_misses = count("D1  misses:")?;
        eprintln!(
            "{name}: {instructions} instructions, {d1_misses} D1 misses (simulated) for {events} events; {}",
            out_file.display()
        );
        figures.push(format!(
            "{name}_instructions_per_event={:.0} {name}_d1_misses_per_event={:.2}",
            instructions / events,
            d1_misses / events
        ));
    }
    println!("bench ring: {}", figures.join(" "));
    Ok(())
}

/// `netscope-bench <which> <rest…>`, built in release.
fn bench_bin(which: &str, rest: &[String]) -> Result<(), String> {
    let mut full = vec!["run", "--release", "-p", "netscope-bench", "--", which];
    full.extend(rest.iter().map(String::as_str));
    run("cargo", &full, &[])
}

fn bench(args: &[String]) -> Result<(), String> {
    let Some((which, rest)) = args.split_first() else {
        return Err(format!("bench: which one?\n{USAGE}"));
    };
    match which.as_str() {
        // `probe`'s configuration is measured as the real agent process, beside the bench.
        "probe" => build_release_agent().and_then(|()| bench_bin("probe", rest)),
        "pipeline" => {
            run("bash", &["scripts/kafka.sh", "start"], &[])?;
            bench_bin("pipeline", rest)
        }
        "api" => {
            run("bash", &["scripts/kafka.sh", "start"], &[])?;
            bench_bin("api", rest)
        }
        "audit" => {
            run("bash", &["scripts/ceph.sh", "start"], &[])?;
            bench_bin("audit", rest)
        }
        "flows" => {
            let mut args = vec!["bench", "-p", "netscope-agent", "--bench", "flows", "--"];
            args.extend(rest.iter().map(String::as_str));
            run("cargo", &args, &[])?;
            // This process's owner is its effective uid.
            let root = std::fs::metadata("/proc/self")
                .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
            if !root {
                eprintln!("bench flows: the agent's RSS needs root (the probe): skipped");
                return Ok(());
            }
            memory(&[])
        }
        "memory" => memory(rest),
        "ring-instructions" => ring_instructions(),
        other => Err(format!("bench: unknown benchmark `{other}`\n{USAGE}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match task.as_str() {
        "setup" => run("bash", &["scripts/setup.sh"], &[]),
        "build-ebpf" => build_ebpf(rest),
        "test-kernels" => kernels::test_kernels(rest),
        "probe" => agent(&["probe"], rest),
        "run" => run("bash", &["scripts/kafka.sh", "start"], &[])
            .and_then(|()| {
                run(
                    "bash",
                    &["scripts/ceph.sh", "start"],
                    &[("NETSCOPE_CEPH_STORE", "bluestore")],
                )
            })
            .and_then(|()| {
                agent(
                    &[
                        "run",
                        "--demo-upstream",
                        "--audit-sink",
                        "rgw",
                        "--audit-create-bucket",
                    ],
                    rest,
                )
            }),
        "send" => agent(&["send"], rest),
        "test" => test(),
        "bench" => bench(rest),
        "soak" => soak(rest),
        "image" => image(),
        "kafka" | "ceph" => {
            let script = format!("scripts/{task}.sh");
            let mut args = vec![script.as_str()];
            args.extend(rest.iter().map(String::as_str));
            run("bash", &args, &[])
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown task `{other}`\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{TestBinary, Totals};

    #[test]
    fn test_binaries_are_read_from_cargos_executable_lines() {
        let b =
            TestBinary::parse("  Executable tests/kernel.rs (target/debug/deps/kernel-0123abcd)")
                .unwrap();
        assert_eq!(b.integration_test(), Some("kernel"));
        assert!(b.alone() && !b.in_probe_lane());
        assert!(b.path.ends_with("target/debug/deps/kernel-0123abcd"));
        let unit = TestBinary::parse(
            "  Executable unittests src/lib.rs (target/debug/deps/netscope_agent-0d0b)",
        )
        .unwrap();
        assert_eq!(unit.integration_test(), None);
        assert!(!unit.in_probe_lane());
        assert!(TestBinary::parse("   Compiling xtask v0.1.0").is_none());
    }

    #[test]
    fn sums_libtest_result_lines() {
        let mut t = Totals::default();
        t.add_line("test result: ok. 24 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.73s");
        t.add_line(
            "test result: FAILED. 5 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 3 tests");
        t.add_line("test foo ... ok");
        assert_eq!(
            t,
            Totals {
                passed: 29,
                failed: 1,
                ignored: 2
            }
        );
    }
}
