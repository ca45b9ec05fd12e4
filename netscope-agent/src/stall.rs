//! Liveness: is the pipeline wedged? It is when records are pending and none has finished for
//! `--stall-secs` — unless a readiness check already names an outage that explains the wait (a
//! broker down, the spool's disk full or failing): then a restart would not help, and a fleet
//! of agents restarting in step through a Kafka outage would only add load. A permanent error
//! that readiness does not see (say, the dead-letter topic refusing every write) is a stall.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::domain::{Check, HealthCheck};

/// What the watch reads of the pipeline at each check.
pub struct Progress {
    /// Records handed out and not finished.
    pub pending: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Records finished so far (a result delivered, or dead-lettered).
    pub done: Box<dyn Fn() -> u64 + Send + Sync>,
}

/// The last progress seen, and since when nothing moved.
#[derive(Clone, Copy, Debug)]
struct Seen {
    done: u64,
    since: Instant,
}

/// For how long work has been pending without progress, given a new reading (pure: the rule).
fn stalled_for(seen: &mut Seen, now: Instant, pending: u64, done: u64) -> Duration {
    if pending == 0 || done != seen.done {
        *seen = Seen { done, since: now };
    }
    now.saturating_duration_since(seen.since)
}

pub struct StallWatch {
    stall: Duration,
    progress: Progress,
    /// The readiness checks whose failure explains a wait (this watch is not among them).
    explained_by: Vec<Arc<dyn HealthCheck>>,
    seen: Mutex<Seen>,
}

impl StallWatch {
    pub fn new(
        stall: Duration,
        progress: Progress,
        explained_by: Vec<Arc<dyn HealthCheck>>,
    ) -> Self {
        let done = (progress.done)();
        Self {
            stall,
            progress,
            explained_by,
            seen: Mutex::new(Seen {
                done,
                since: Instant::now(),
            }),
        }
    }
}

impl HealthCheck for StallWatch {
    fn checks(&self) -> Vec<Check> {
        let (pending, done) = ((self.progress.pending)(), (self.progress.done)());
        let idle = {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            stalled_for(&mut seen, Instant::now(), pending, done)
        };
        let outage: Vec<&'static str> = self
            .explained_by
            .iter()
            .flat_map(|h| h.checks())
            .filter(|c| c.required && !c.ok)
            .map(|c| c.name)
            .collect();
        let stalled = idle >= self.stall;
        let detail = match (stalled, outage.is_empty()) {
            (false, _) => format!("{pending} records pending, {done} finished"),
            (true, true) => format!(
                "wedged: {pending} records pending and none finished for {} s (--stall-secs {})",
                idle.as_secs(),
                self.stall.as_secs()
            ),
            (true, false) => format!(
                "{pending} records pending, none finished for {} s: waiting out {} (not ready)",
                idle.as_secs(),
                outage.join(", ")
            ),
        };
        vec![Check {
            name: "pipeline_progress",
            ok: !stalled || !outage.is_empty(),
            required: true,
            detail,
        }]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use super::*;

    #[test]
    fn pending_work_without_progress_stalls_and_any_progress_or_idleness_resets_the_clock() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut seen = Seen { done: 0, since: t0 };
        assert_eq!(stalled_for(&mut seen, s(10), 5, 0), Duration::from_secs(10));
        assert_eq!(
            stalled_for(&mut seen, s(20), 5, 1),
            Duration::ZERO,
            "one finished"
        );
        assert_eq!(stalled_for(&mut seen, s(50), 5, 1), Duration::from_secs(30));
        assert_eq!(
            stalled_for(&mut seen, s(60), 0, 1),
            Duration::ZERO,
            "nothing pending"
        );
        assert_eq!(stalled_for(&mut seen, s(65), 3, 1), Duration::from_secs(5));
    }

    struct Outage(AtomicBool);

    impl HealthCheck for Outage {
        fn checks(&self) -> Vec<Check> {
            vec![Check {
                name: "kafka",
                ok: !self.0.load(Ordering::Relaxed),
                required: true,
                detail: String::new(),
            }]
        }
    }

    #[test]
    fn a_stall_is_a_failure_unless_an_outage_readiness_reports_explains_it() {
        let done = Arc::new(AtomicU64::new(0));
        let d = Arc::clone(&done);
        let outage = Arc::new(Outage(AtomicBool::new(false)));
        let watch = StallWatch::new(
            Duration::ZERO,
            Progress {
                pending: Box::new(|| 2),
                done: Box::new(move || d.load(Ordering::Relaxed)),
            },
            vec![Arc::clone(&outage) as Arc<dyn HealthCheck>],
        );
        let check = &watch.checks()[0];
        assert!(!check.ok && check.detail.starts_with("wedged"), "{check:?}");
        outage.0.store(true, Ordering::Relaxed);
        let check = &watch.checks()[0];
        assert!(
            check.ok && check.detail.contains("waiting out kafka"),
            "{check:?}"
        );
    }
}
