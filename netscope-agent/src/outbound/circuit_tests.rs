use super::*;

fn breaker() -> CircuitBreaker {
    CircuitBreaker::new(CircuitConfig {
        window: 10,
        min_calls: 4,
        failure_rate: 0.5,
        slow_call: Duration::from_millis(100),
        slow_call_rate: 0.75,
        open_wait: Duration::from_secs(5),
        half_open_probes: 2,
    })
}

fn call(b: &CircuitBreaker, now: Instant, failed: bool, ms: u64) -> bool {
    match b.try_acquire(now) {
        Some(a) => {
            b.record(a, failed, Duration::from_millis(ms), now);
            true
        }
        None => false,
    }
}

#[test]
fn opens_on_failure_rate_half_opens_after_the_wait_and_closes_on_success() {
    let b = breaker();
    let t0 = Instant::now();
    assert!(call(&b, t0, false, 1));
    assert!(call(&b, t0, true, 1));
    assert!(call(&b, t0, true, 1));
    assert_eq!(
        b.state(t0),
        CircuitState::Closed,
        "3 calls: below min_calls"
    );
    assert!(call(&b, t0, false, 1));
    assert_eq!(b.state(t0), CircuitState::Open, "2 of 4 failed: 50 %");
    assert!(matches!(
        b.trip_reason(),
        Some(TripReason::FailureRate { window: 4, .. })
    ));
    assert!(
        !call(&b, t0 + Duration::from_secs(4), false, 1),
        "still open"
    );
    let t1 = t0 + Duration::from_secs(5);
    assert_eq!(b.state(t1), CircuitState::HalfOpen);
    // Two probes at most while half-open.
    let p1 = b.try_acquire(t1).unwrap();
    let p2 = b.try_acquire(t1).unwrap();
    assert_eq!(p1.0, CircuitState::HalfOpen);
    assert!(b.try_acquire(t1).is_none(), "no third probe");
    b.record(p1, false, Duration::from_millis(1), t1);
    assert_eq!(b.state(t1), CircuitState::HalfOpen);
    b.record(p2, false, Duration::from_millis(1), t1);
    assert_eq!(b.state(t1), CircuitState::Closed);
    assert_eq!(
        b.transitions(),
        CircuitTransitions {
            opened: 1,
            half_opened: 1,
            closed: 1
        }
    );
}

#[test]
fn a_failed_probe_opens_again() {
    let b = breaker();
    let t0 = Instant::now();
    for _ in 0..4 {
        call(&b, t0, true, 1);
    }
    let t1 = t0 + Duration::from_secs(5);
    assert!(call(&b, t1, true, 1));
    assert_eq!(b.state(t1), CircuitState::Open);
    assert_eq!(b.trip_reason(), Some(TripReason::HalfOpenProbeFailed));
    assert_eq!(b.state(t1 + Duration::from_secs(5)), CircuitState::HalfOpen);
}

#[test]
fn opens_on_slow_calls_and_the_window_slides() {
    let b = breaker();
    let t0 = Instant::now();
    for _ in 0..3 {
        call(&b, t0, false, 500);
    }
    call(&b, t0, false, 1);
    assert_eq!(b.state(t0), CircuitState::Open, "3 of 4 slow: 75 %");
    assert!(matches!(
        b.trip_reason(),
        Some(TripReason::SlowCallRate { .. })
    ));

    let b = breaker();
    for _ in 0..10 {
        call(&b, t0, false, 1);
    }
    for _ in 0..4 {
        call(&b, t0, true, 1);
    }
    assert_eq!(
        b.state(t0),
        CircuitState::Closed,
        "4 of the last 10 failed: 40 %"
    );
    call(&b, t0, true, 1);
    assert_eq!(b.state(t0), CircuitState::Open, "5 of the last 10");
}

#[test]
fn invalid_configs_are_reported_all_at_once() {
    let p = CircuitConfig {
        window: 0,
        min_calls: 5,
        failure_rate: 1.5,
        slow_call: Duration::ZERO,
        slow_call_rate: 0.0,
        open_wait: Duration::ZERO,
        half_open_probes: 0,
    }
    .problems();
    assert_eq!(p.len(), 7, "{p:#?}");
    assert!(CircuitConfig::default().problems().is_empty());
}
