//! The agent's clocks: wall-clock time as Unix milliseconds or nanoseconds (what results, audit
//! events and deadlines carry), CLOCK_MONOTONIC (the kernel's `bpf_ktime_get_ns`), and the
//! conversion between the two — kernel timestamps are monotonic; people and logs want wall time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` in milliseconds since the Unix epoch (0 before it, saturated far after it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `t` in nanoseconds since the Unix epoch (0 before it, saturated far after it).
pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Converts CLOCK_MONOTONIC nanoseconds to Unix-epoch nanoseconds, with the offset between the
/// two clocks taken once (a later wall-clock step does not move past flows).
#[derive(Clone, Copy, Debug)]
pub struct MonoClock {
    offset_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// CLOCK_MONOTONIC now, in ns (the clock of `bpf_ktime_get_ns`).
pub fn monotonic_now_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
}

/// CLOCK_MONOTONIC_COARSE now, as time since boot: the last tick's time (a few ms old), read
/// without touching the TSC — for timestamps that only ever compare against minutes.
pub fn coarse_monotonic() -> Duration {
    let ns = clock_ns(libc::CLOCK_MONOTONIC_COARSE);
    Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}

impl MonoClock {
    pub fn new() -> Self {
        Self {
            offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        }
    }

    /// A clock with a fixed offset, for tests.
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn to_unix_ns(&self, mono_ns: u64) -> u64 {
        u64::try_from(i128::from(mono_ns) + self.offset_ns).unwrap_or(0)
    }
}

impl Default for MonoClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_count_from_the_epoch() {
        let t = UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!((unix_ms(t), unix_ns(t)), (1_500, 1_500_000_000));
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn maps_monotonic_to_wall_clock() {
        let clock = MonoClock::new();
        let wall = i128::from(unix_ns(SystemTime::now()));
        let mapped = i128::from(clock.to_unix_ns(monotonic_now_ns()));
        assert!((mapped - wall).abs() < 1_000_000_000, "{mapped} vs {wall}");
        assert_eq!(MonoClock::with_offset(10).to_unix_ns(5), 15);
    }

    #[test]
    fn the_coarse_clock_trails_the_precise_one_by_at_most_a_tick() {
        let coarse = coarse_monotonic();
        let precise = Duration::from_nanos(monotonic_now_ns());
        assert!(coarse <= precise, "{coarse:?} after {precise:?}");
        assert!(
            precise - coarse < Duration::from_millis(100),
            "{coarse:?} vs {precise:?}"
        );
    }
}
