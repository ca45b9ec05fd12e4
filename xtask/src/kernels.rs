//! `cargo xtask test-kernels`: the kernel tests (`tests/kernel.rs`) on real Debian kernels under
//! qemu (TCG: this VM's /dev/kvm hangs stock kernels), and on this VM's own kernel.
//!
//! For each kernel `scripts/kernels.sh fetch` unpacked (cached), an initramfs is built from
//! busybox-static, the test binary and the tools the tests run (`ip`, `nft`, `bash`) with the
//! shared libraries `ldd` lists, and the kernel's own modules for nftables, TC and veth. Its
//! `/init` mounts what a node has (proc, sys, devtmpfs, tracefs, bpffs, cgroup2), loads the
//! modules, runs the tests one at a time and powers off; the serial console carries libtest's lines back. Under emulation the
//! 20,000-connection burst runs scaled to 2,000 connections (`NETSCOPE_BURST_CONNECTIONS`), and
//! connect latency must agree with the application's within max(2 %, 2 ms) instead of
//! max(2 %, 200 µs) (`NETSCOPE_LATENCY_FLOOR_US`): an emulated system call takes hundreds of µs.
//! Each guest also runs `netscope-agent probe --check` (which hook serves each fact there).
//! Prints a matrix: test × kernel → ok / FAILED.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::{TestBinary, workspace};

/// A kernel to boot: its release and unpacked directory (`vmlinuz`, `*.ko`).
struct Kernel {
    release: String,
    dir: PathBuf,
}

/// Connections of the burst test inside a guest (20,000 on the host).
const GUEST_BURST: &str = "2000";
/// The connect-latency test's floor inside a guest (200 µs on the host): under TCG a system
/// call alone takes hundreds of µs, so µs-precise agreement is not meaningful there.
const GUEST_LATENCY_FLOOR_US: &str = "2000";
/// A guest that has not powered off by then is killed and its run counted as failed.
const GUEST_LIMIT: Duration = Duration::from_secs(900);

fn fetch() -> Result<Vec<Kernel>, String> {
    let out = Command::new("bash")
        .args(["scripts/kernels.sh", "fetch"])
        .current_dir(workspace())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("scripts/kernels.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!("scripts/kernels.sh fetch failed ({})", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(release, dir)| Kernel {
            release: release.to_owned(),
            dir: PathBuf::from(dir),
        })
        .collect())
}

/// Builds `tests/kernel.rs` and returns its executable.
fn build_test_binary() -> Result<PathBuf, String> {
    let out = Command::new("cargo")
        .args([
            "test",
            "-p",
            "netscope-agent",
            "--test",
            "kernel",
            "--no-run",
        ])
        .current_dir(workspace())
        .output()
        .map_err(|e| format!("cargo test --no-run: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("building the kernel tests failed:\n{stderr}"));
    }
    stderr
        .lines()
        .find_map(TestBinary::parse)
        .map(|b| b.path)
        .ok_or_else(|| format!("no test executable in:\n{stderr}"))
}

/// Which program on this machine provides `name` (`/usr/sbin/nft`, …).
fn which(name: &str) -> Result<PathBuf, String> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{name} is not installed (scripts/setup.sh installs it)"))
}

/// The shared libraries `ldd` lists for `binary` (the dynamic loader included).
fn libraries(binary: &Path) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim().split(' ').next()?,
                None => l.trim().split(' ').next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Copies `from` to the same absolute path under `root` (following symlinks).
fn install(root: &Path, from: &Path, to: Option<&str>) -> Result<(), String> {
    let rel = to.map_or_else(
        || from.strip_prefix("/").unwrap_or(from).to_path_buf(),
        PathBuf::from,
    );
    let dest = root.join(rel);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::copy(from, &dest)
        .map_err(|e| format!("{} → {}: {e}", from.display(), dest.display()))?;
    Ok(())
}

/// Copies a binary without its debug info (a debug build is hundreds of MB; the guest has 1 GiB).
fn stripped(from: &Path, to: &Path) -> Result<(), String> {
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(to)
        .arg(from)
        .status()
        .map_err(|e| format!("strip (binutils): {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("strip {} failed", from.display()))
    }
}

const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /run/netns
depmod
# crc32c first: libcrc32c (nf_tables needs it) asks the crypto API for it at load time.
for m in crc32c_generic veth sch_ingress cls_bpf nf_tables nft_counter nft_objref nft_reject_inet; do
  modprobe "$m" || echo "NETSCOPE-GUEST: module $m not loaded (built in, or missing)"
done
ip link set lo up
echo "NETSCOPE-GUEST: kernel $(uname -r)"
cd /netscope
./netscope-agent probe --check | while IFS= read -r line; do echo "NETSCOPE-CHECK: $line"; done
# Least privilege: uid 0 with only the DaemonSet's capabilities. Debian ships
# kernel.perf_event_paranoid=3, above which only CAP_SYS_ADMIN may attach a tracepoint: the
# agent must name it; at 2 the DaemonSet's set must do. Then without CAP_SYS_RESOURCE (before
# 5.11 BPF maps are charged to RLIMIT_MEMLOCK, which aya raises: that needs it).
try_attach() {
  # util-linux's setpriv (busybox's, which the shell prefers, has no --bounding-set). The log
  # is emptied here, before the agent starts, and appended to: the loop below must never see
  # the previous attempt's lines.
  : > /tmp/caps.log
  /usr/sbin/setpriv --bounding-set=-all,$1 -- ./netscope-agent probe --listen 127.0.0.1:0 \
    --dport 9 >/dev/null 2>>/tmp/caps.log &
  pid=$!
  i=0
  while [ $i -lt 180 ] && ! grep -q "probe attached" /tmp/caps.log && kill -0 $pid 2>/dev/null; do
    sleep 1; i=$((i + 1))
  done
  if grep -q "probe attached" /tmp/caps.log; then
    result="attached (${i} s)"
  else
    result=$(grep -o 'error: .*' /tmp/caps.log | head -n 1)
    [ -n "$result" ] || result="no verdict after ${i} s: $(tail -n 2 /tmp/caps.log)"
  fi
  echo "NETSCOPE-GUEST: $1: $result"
  # SIGTERM must end it promptly (a DaemonSet pod's termination); a hang is shown, then killed.
  kill $pid 2>/dev/null
  i=0
  while [ $i -lt 30 ] && kill -0 $pid 2>/dev/null; do
    sleep 1; i=$((i + 1))
  done
  if kill -0 $pid 2>/dev/null; then
    exited=FAILED
    echo "NETSCOPE-GUEST: $1: still running 30 s after SIGTERM; its threads (name state wchan):"
    for t in /proc/$pid/task/*; do
      echo "NETSCOPE-GUEST:   $(cat $t/comm) $(cut -d' ' -f3 $t/stat) $(cat $t/wchan 2>/dev/null)"
    done
    tail -n 5 /tmp/caps.log | sed 's/^/NETSCOPE-GUEST:   log: /'
    kill -9 $pid 2>/dev/null
  fi
  wait $pid 2>/dev/null
}
exited=ok
daemonset="+bpf,+perfmon,+net_admin,+sys_resource"
paranoid=$(cat /proc/sys/kernel/perf_event_paranoid)
echo "NETSCOPE-GUEST: kernel.perf_event_paranoid is $paranoid"
if [ "$paranoid" -gt 2 ]; then
  try_attach "$daemonset"
  case "$result" in
    *"missing privileges: CAP_SYS_ADMIN (kernel.perf_event_paranoid"*) v=ok ;;
    *) v=FAILED ;;
  esac
  echo "test capabilities: above perf_event_paranoid 2 the missing CAP_SYS_ADMIN is named ... $v"
  echo 2 > /proc/sys/kernel/perf_event_paranoid
fi
try_attach "$daemonset"
case "$result" in attached*) v=ok ;; *) v=FAILED ;; esac
echo "test capabilities: the DaemonSet's set attaches the probe at perf_event_paranoid 2 ... $v"
try_attach "+bpf,+perfmon,+net_admin"
case "$result" in
  attached*) v="no (info)" ;;
  error:*) v="yes (info)" ;;
  *) v="unknown (info)" ;;
esac
echo "test capabilities: CAP_SYS_RESOURCE is needed ... $v"
echo "test capabilities: the agent exits on SIGTERM ... $exited"
echo "$paranoid" > /proc/sys/kernel/perf_event_paranoid
NETSCOPE_REQUIRE_KERNEL_TESTS=1 NETSCOPE_BURST_CONNECTIONS=@BURST@ \
  NETSCOPE_LATENCY_FLOOR_US=@FLOOR@ RUST_BACKTRACE=1 \
  ./kernel --test-threads=1 2>&1
echo "NETSCOPE-GUEST: exit $?"
poweroff -f
"#;

/// The initramfs for one kernel, as a gzipped newc cpio.
fn initramfs(kernel: &Kernel, test_binary: &Path, out: &Path) -> Result<PathBuf, String> {
    let root = out.join(format!("root-{}", kernel.release));
    let _ = std::fs::remove_dir_all(&root);
    for d in [
        "bin",
        "sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "var",
        "etc",
        "lib/netscope",
        "netscope",
    ] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
    }
    std::os::unix::fs::symlink("/run", root.join("var/run")).map_err(|e| e.to_string())?;
    install(&root, Path::new("/bin/busybox"), Some("bin/busybox"))?;
    // The kernel runs /sbin/modprobe for modules it requests itself.
    std::os::unix::fs::symlink("/bin/busybox", root.join("sbin/modprobe"))
        .map_err(|e| e.to_string())?;
    for applet in [
        "sh", "mount", "mkdir", "insmod", "modprobe", "depmod", "poweroff", "uname", "cat", "echo",
        "sleep", "ls", "grep", "head", "tail", "kill",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .map_err(|e| e.to_string())?;
    }
    let tools = [
        which("ip")?,
        which("nft")?,
        which("bash")?,
        which("setpriv")?,
    ];
    let agent = workspace().join("target/debug/netscope-agent");
    stripped(test_binary, &root.join("netscope/kernel"))?;
    stripped(&agent, &root.join("netscope/netscope-agent"))?;
    for binary in tools
        .iter()
        .map(PathBuf::as_path)
        .chain([test_binary, agent.as_path()])
    {
        for lib in libraries(binary)? {
            install(&root, &lib, None)?;
        }
    }
    for tool in &tools {
        let name = tool
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        install(&root, tool, Some(&format!("usr/sbin/{name}")))?;
    }
    // The modules the tests need (nftables, TC, veth), for depmod and modprobe in the guest.
    let modules = root.join("lib/modules").join(&kernel.release);
    std::fs::create_dir_all(&modules).map_err(|e| e.to_string())?;
    let status = Command::new("cp")
        .arg("-r")
        .arg(kernel.dir.join("modules/kernel"))
        .arg(&modules)
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("copying {}'s modules failed", kernel.release));
    }
    let init = root.join("init");
    let script = INIT
        .replace("@BURST@", GUEST_BURST)
        .replace("@FLOOR@", GUEST_LATENCY_FLOOR_US);
    std::fs::write(&init, script).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let image = out.join(format!("initramfs-{}.cpio.gz", kernel.release));
    let script = format!(
        "cd '{}' && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
        root.display(),
        image.display()
    );
    let status = Command::new("sh")
        .args(["-c", &script])
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("building {} failed", image.display()));
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(image)
}

/// Boots `kernel` with `image`; returns the serial console's output.
fn boot(kernel: &Kernel, image: &Path, log: &Path) -> Result<String, String> {
    let log_file = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "1G",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
        ])
        .args(["-nic", "none", "-kernel"])
        .arg(kernel.dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(image)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=3"])
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("qemu-system-x86_64 (apt package qemu-system-x86): {e}"))?;
    let started = Instant::now();
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            break;
        }
        if started.elapsed() > GUEST_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("xtask: {}: killed after {GUEST_LIMIT:?}", kernel.release);
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "xtask: {}: guest ran {:.0} s",
        kernel.release,
        started.elapsed().as_secs_f64()
    );
    std::fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|e| e.to_string())
}

/// libtest's `test NAME ... ok|FAILED|ignored` lines.
fn results(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("test ")?;
            let (name, verdict) = rest.rsplit_once(" ... ")?;
            Some((name.to_owned(), verdict.trim().to_owned()))
        })
        .collect()
}

/// This VM's own kernel, as it runs today: the same binary, run here.
fn host(test_binary: &Path) -> Result<(String, String), String> {
    let out = Command::new(test_binary)
        .arg("--test-threads=1")
        .env("NETSCOPE_REQUIRE_KERNEL_TESTS", "1")
        .current_dir(workspace().join("netscope-agent"))
        .output()
        .map_err(|e| e.to_string())?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok((
        format!("{release} (this VM)"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

pub fn test_kernels(args: &[String]) -> Result<(), String> {
    let only: Vec<&str> = args.iter().map(String::as_str).collect();
    let kernels: Vec<Kernel> = fetch()?
        .into_iter()
        .filter(|k| only.is_empty() || only.iter().any(|o| k.release.starts_with(o)))
        .collect();
    let test_binary = build_test_binary()?;
    let out = workspace().join("target/kernels");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let mut columns: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for k in &kernels {
        let image = initramfs(k, &test_binary, &out)?;
        let log = out.join(format!("{}.log", k.release));
        let output = boot(k, &image, &log)?;
        eprintln!("xtask: {}: serial log in {}", k.release, log.display());
        for line in output
            .lines()
            .filter_map(|l| l.strip_prefix("NETSCOPE-CHECK: "))
        {
            eprintln!("xtask: {}: probe --check: {line}", k.release);
        }
        columns.push((k.release.clone(), results(&output)));
    }
    if only.is_empty() || only.contains(&"host") {
        let (name, output) = host(&test_binary)?;
        columns.push((name, results(&output)));
    }
    let table = matrix(&columns);
    print!("{table}");
    if failed(&columns) {
        Err("some kernel tests failed (matrix above; serial logs in target/kernels/)".into())
    } else {
        Ok(())
    }
}

/// A column failed when a test in it did not pass, when it ran nothing, or when it lacks a
/// kernel test another column ran (a guest killed at its time limit, or a test binary that
/// stopped early). The host runs no `capabilities:` lines.
fn failed(columns: &[(String, BTreeMap<String, String>)]) -> bool {
    let kernel_tests: std::collections::BTreeSet<&String> = columns
        .iter()
        .flat_map(|(_, r)| r.keys())
        .filter(|t| !t.starts_with("capabilities:"))
        .collect();
    columns.iter().any(|(_, r)| {
        r.is_empty()
            || r.values().any(|v| v != "ok" && !v.ends_with("(info)"))
            || kernel_tests.iter().any(|t| !r.contains_key(*t))
    })
}

/// test × kernel → verdict.
fn matrix(columns: &[(String, BTreeMap<String, String>)]) -> String {
    let mut tests: Vec<&String> = columns.iter().flat_map(|(_, r)| r.keys()).collect();
    tests.sort();
    tests.dedup();
    let width = tests.iter().map(|t| t.len()).max().unwrap_or(4).max(4);
    let mut s = format!("{:<width$}", "test");
    for (k, _) in columns {
        let _ = write!(s, "  {k:>22}");
    }
    s.push('\n');
    for t in tests {
        let _ = write!(s, "{t:<width$}");
        for (_, r) in columns {
            let v = r.get(t).map_or("—", String::as_str);
            let _ = write!(s, "  {v:>22}");
        }
        s.push('\n');
    }
    for (k, r) in columns {
        if r.is_empty() {
            let _ = writeln!(
                s,
                "{k}: no test ran (boot or start-up failed: see its serial log)"
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, results: &[(&str, &str)]) -> (String, BTreeMap<String, String>) {
        let r = results
            .iter()
            .map(|(t, v)| ((*t).to_owned(), (*v).to_owned()))
            .collect();
        (name.to_owned(), r)
    }

    #[test]
    fn a_kernel_that_misses_a_test_another_ran_fails_the_matrix() {
        let full = column("6.1", &[("bytes", "ok"), ("capabilities: x", "ok")]);
        let host = column("host", &[("bytes", "ok")]);
        assert!(
            !failed(&[full.clone(), host.clone()]),
            "the host runs no capabilities lines"
        );
        let killed = column("6.12", &[("capabilities: x", "ok")]);
        assert!(failed(&[full.clone(), killed, host.clone()]));
        let info = column(
            "5.10",
            &[("bytes", "ok"), ("capabilities: x", "yes (info)")],
        );
        assert!(!failed(&[full.clone(), info, host.clone()]));
        let bad = column("7.3", &[("bytes", "FAILED"), ("capabilities: x", "ok")]);
        assert!(failed(&[full, bad, host]));
    }
}
