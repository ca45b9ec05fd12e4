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

fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
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
