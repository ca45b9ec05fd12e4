//! Checks, before touching the kernel, that this process may load and attach the probe, so
//! that a missing capability is one clear line rather than an EPERM from deep inside aya.

use std::fs;

/// Capabilities the probe needs (or CAP_SYS_ADMIN, which covers them all).
const NEEDED: [(u32, &str); 3] = [(39, "CAP_BPF"), (38, "CAP_PERFMON"), (12, "CAP_NET_ADMIN")];
const CAP_SYS_ADMIN: u32 = 21;

/// Above 2 — Debian's and Ubuntu's kernels ship 3 and 4, a distribution patch — only
/// CAP_SYS_ADMIN may open a perf event, which attaching a tracepoint does; CAP_PERFMON is not
/// enough (`cargo xtask test-kernels` shows it on every Debian kernel).
const PARANOID_SYS_ADMIN: &str = "CAP_SYS_ADMIN (kernel.perf_event_paranoid is above 2 here, so only it may attach tracepoints; `sysctl -w kernel.perf_event_paranoid=2` on the node lifts that)";

/// Names of the missing capabilities; empty when the probe may load.
pub fn missing_capabilities() -> Vec<&'static str> {
    let effective = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .unwrap_or(0);
    let paranoid = fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        // Unreadable: the kernel's own default, which CAP_PERFMON satisfies.
        .unwrap_or(2);
    missing_from(effective, paranoid)
}

/// The system calls the probe needs that a seccomp filter on this process denies — asked only
/// when a filter is installed (`Seccomp: 2`) and the capabilities are held, by calling each
/// with arguments the kernel itself rejects (EINVAL/EFAULT) without doing anything: an EPERM or
/// ENOSYS then comes from the filter. A container runtime's default profile (podman's, CRI-O's)
/// allows `bpf` and `perf_event_open` only with CAP_SYS_ADMIN.
pub fn denied_by_seccomp() -> Vec<&'static str> {
    let filtered = fs::read_to_string("/proc/self/status")
        .ok()
        .is_some_and(|s| seccomp_mode(&s) == Some(2));
    if !filtered {
        return Vec::new();
    }
    let denied = |rc: libc::c_long| {
        let errno = std::io::Error::last_os_error().raw_os_error();
        rc < 0 && matches!(errno, Some(libc::EPERM | libc::ENOSYS))
    };
    let mut out = Vec::new();
    // SAFETY: BPF_MAP_CREATE (0) with a null attribute of size 0: the kernel reads nothing
    // and rejects the empty map (EINVAL); no memory of ours is touched.
    if denied(unsafe { libc::syscall(libc::SYS_bpf, 0, std::ptr::null::<u8>(), 0) }) {
        out.push("bpf");
    }
    // SAFETY: a null perf_event_attr: the kernel fails to copy it (EFAULT) before opening
    // anything.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            std::ptr::null::<u8>(),
            -1,
            0,
            -1,
            0,
        )
    };
    if denied(rc) {
        out.push("perf_event_open");
    }
    out
}

/// The value of one `Key:` line of `/proc/self/status`, trimmed.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

fn seccomp_mode(status: &str) -> Option<u32> {
    status_field(status, "Seccomp").and_then(|v| v.parse().ok())
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    status_field(status, "CapEff").and_then(|hex| u64::from_str_radix(hex, 16).ok())
}

fn missing_from(effective: u64, perf_event_paranoid: i32) -> Vec<&'static str> {
    if effective & (1 << CAP_SYS_ADMIN) != 0 {
        return Vec::new();
    }
    let mut missing: Vec<&'static str> = NEEDED
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if perf_event_paranoid > 2 {
        missing.push(PARANOID_SYS_ADMIN);
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_seccomp_mode() {
        assert_eq!(
            seccomp_mode("Name:\tx\nSeccomp:\t2\nSeccomp_filters:\t1\n"),
            Some(2)
        );
        assert_eq!(seccomp_mode("Name:\tx\n"), None);
    }

    #[test]
    fn without_a_filter_nothing_is_denied() {
        // The test process runs without a seccomp filter (cargo test, the CI's root shell);
        // under a filter this asks the kernel, which tests/container.rs covers.
        let status = fs::read_to_string("/proc/self/status").unwrap();
        if seccomp_mode(&status) == Some(0) {
            assert!(denied_by_seccomp().is_empty());
        }
    }

    #[test]
    fn reads_capeff() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn names_what_is_missing() {
        assert!(missing_from(u64::MAX, 2).is_empty());
        assert!(missing_from(1 << CAP_SYS_ADMIN, 2).is_empty());
        assert_eq!(
            missing_from(0, 2),
            vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        );
        assert_eq!(
            missing_from((1 << 39) | (1 << 38), 2),
            vec!["CAP_NET_ADMIN"]
        );
    }

    #[test]
    fn a_distribution_paranoid_level_asks_for_cap_sys_admin_by_name() {
        let three = (1 << 39) | (1 << 38) | (1 << 12);
        assert!(missing_from(three, 2).is_empty());
        let missing = missing_from(three, 3);
        assert_eq!(missing.len(), 1);
        assert!(missing[0].starts_with("CAP_SYS_ADMIN (kernel.perf_event_paranoid"));
        assert!(missing_from(three | (1 << CAP_SYS_ADMIN), 4).is_empty());
    }
}
