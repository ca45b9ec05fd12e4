//! Checks, before touching the kernel, that this process may load and attach the probe, so
//! that a missing capability is one clear line rather than an EPERM from deep inside aya.

use std::fs;

/// Capabilities the probe needs (or CAP_SYS_ADMIN, which covers them all).
const NEEDED: [(u32, &str); 3] = [(39, "CAP_BPF"), (38, "CAP_PERFMON"), (12, "CAP_NET_ADMIN")];
const CAP_SYS_ADMIN: u32 = 21;

/// Names of the missing capabilities; empty when the probe may load.
pub fn missing_capabilities() -> Vec<&'static str> {
    let effective = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .unwrap_or(0);
    missing_from(effective)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

fn missing_from(effective: u64) -> Vec<&'static str> {
    if effective & (1 << CAP_SYS_ADMIN) != 0 {
        return Vec::new();
    }
    NEEDED
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
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
        assert!(missing_from(u64::MAX).is_empty());
        assert!(missing_from(1 << CAP_SYS_ADMIN).is_empty());
        assert_eq!(
            missing_from(0),
            vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        );
        assert_eq!(missing_from((1 << 39) | (1 << 38)), vec!["CAP_NET_ADMIN"]);
    }
}
