//! The outbound gateway against a real local upstream with programmable faults.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use netscope_agent::{
    demo::upstream::Upstream,
    domain::{
        CallRequest, HttpMethod, OutboundGateway, OutboundRequest, RequestContext, TargetName,
        outcome::{AttemptError, CallOutcome, CircuitState, RetryStop, TripReason},
    },
    outbound::{HttpGateway, RetryConfig, TargetPolicy, circuit::CircuitConfig},
};

fn call(
    base: &str,
    method: HttpMethod,
    path: &str,
    key: Option<&str>,
    timeout_ms: u64,
) -> CallRequest {
    CallRequest {
        ctx: RequestContext {
            idempotency_key: key.map(str::to_owned),
            ..RequestContext::example(&format!("req-{path}"))
        },
        request: OutboundRequest {
            method,
            url: format!("{base}{path}").parse().unwrap(),
            headers: vec![("accept".into(), "text/plain".into())],
            body: if method == HttpMethod::Post {
                b"{}".to_vec()
            } else {
                Vec::new()
            },
            deadline_unix_ms: netscope_agent::clock::now_unix_ms() + timeout_ms,
        },
    }
}

fn policy() -> TargetPolicy {
    TargetPolicy {
        attempt_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        retry: RetryConfig {
            max_attempts: 3,
            min_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            budget_ttl: Duration::from_secs(10),
            budget_min_per_sec: 100,
            budget_ratio: 1.0,
        },
        circuit: CircuitConfig {
            window: 100,
            min_calls: 100,
            ..CircuitConfig::default()
        },
        ..TargetPolicy::default()
    }
}

fn gateway(p: TargetPolicy) -> HttpGateway {
    assert!(p.problems("test").is_empty(), "{:?}", p.problems("test"));
    HttpGateway::new(
        vec![(TargetName("demo".into()), p)],
        TargetPolicy::default(),
        1000,
        None,
    )
    .unwrap()
}

async fn upstream() -> (Upstream, String) {
    let u = Upstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", u.addr);
    (u, base)
}

#[tokio::test]
async fn retries_only_idempotent_or_keyed_calls_and_send_the_context_headers() {
    let (up, base) = upstream().await;
    let gw = gateway(policy());

    let r = gw
        .execute(call(&base, HttpMethod::Get, "/status/503", None, 5000))
        .await;
    assert_eq!(
        (r.status, r.attempts.len(), r.retry_stop),
        (Some(503), 3, RetryStop::MaxAttempts)
    );
    assert_eq!(up.count("/status/503"), 3);

    let r = gw
        .execute(call(&base, HttpMethod::Post, "/status/502", None, 5000))
        .await;
    assert_eq!(
        (r.attempts.len(), r.retry_stop),
        (1, RetryStop::NotIdempotent)
    );
    assert_eq!(
        up.count("/status/502"),
        1,
        "a POST without a key is never retried"
    );

    let r = gw
        .execute(call(
            &base,
            HttpMethod::Post,
            "/flaky/2/503",
            Some("key-1"),
            5000,
        ))
        .await;
    assert_eq!(
        (r.status, r.attempts.len(), r.retry_stop),
        (Some(200), 3, RetryStop::Succeeded)
    );
    let served: Vec<_> = up
        .served()
        .into_iter()
        .filter(|s| s.path == "/flaky/2/503")
        .collect();
    assert_eq!(served.len(), 3);
    for s in &served {
        assert_eq!(s.header("idempotency-key"), Some("key-1"));
        assert_eq!(s.header("x-request-id"), Some("req-/flaky/2/503"));
        let tp = s.header("traceparent").unwrap();
        assert_eq!(tp, format!("00-{}-{}-01", "4b".repeat(16), "11".repeat(8)));
        assert_eq!(s.header("accept"), Some("text/plain"));
    }
    assert!(r.attempts[1].backoff_ms <= 20.0 && r.attempts[2].backoff_ms <= 20.0);

    let r = gw
        .execute(call(&base, HttpMethod::Get, "/status/404", None, 5000))
        .await;
    assert_eq!(
        (r.attempts.len(), r.retry_stop),
        (1, RetryStop::NotRetryable)
    );
}

#[tokio::test]
async fn retries_never_exceed_the_budget() {
    let (up, base) = upstream().await;
    let mut p = policy();
    p.retry.max_attempts = 10;
    p.retry.budget_min_per_sec = 1; // a reserve of 10 retries over the 10 s window…
    p.retry.budget_ratio = 0.0; // …and nothing earned from calls
    let gw = gateway(p);
    let mut retries = 0;
    for _ in 0..5 {
        let r = gw
            .execute(call(&base, HttpMethod::Get, "/status/503", None, 10_000))
            .await;
        retries += r.attempts.len() - 1;
        assert!(matches!(
            r.retry_stop,
            RetryStop::BudgetExhausted | RetryStop::MaxAttempts
        ));
    }
    assert_eq!(retries, 10, "exactly the reserve");
    assert_eq!(up.count("/status/503"), 5 + 10);
    assert_eq!(gw.snapshot()[0].retry_budget_left, 0);
}

#[tokio::test]
async fn the_circuit_opens_half_opens_after_its_wait_and_closes_on_success() {
    let (up, base) = upstream().await;
    let mut p = policy();
    p.retry.max_attempts = 1;
    p.circuit = CircuitConfig {
        window: 4,
        min_calls: 4,
        failure_rate: 0.5,
        open_wait: Duration::from_millis(300),
        half_open_probes: 1,
        ..CircuitConfig::default()
    };
    let gw = gateway(p);
    for _ in 0..4 {
        gw.execute(call(&base, HttpMethod::Get, "/status/500", None, 5000))
            .await;
    }
    let snap = &gw.snapshot()[0];
    assert_eq!(snap.circuit, CircuitState::Open);
    assert!(
        matches!(snap.trip_reason, Some(TripReason::FailureRate { .. })),
        "{snap:?}"
    );

    let r = gw
        .execute(call(&base, HttpMethod::Get, "/ok", None, 5000))
        .await;
    assert_eq!((r.outcome, r.attempts.len()), (CallOutcome::CircuitOpen, 0));
    assert_eq!(up.count("/ok"), 0, "an open circuit sends nothing");

    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(gw.snapshot()[0].circuit, CircuitState::HalfOpen);
    let r = gw
        .execute(call(&base, HttpMethod::Get, "/ok", None, 5000))
        .await;
    assert_eq!((r.status, r.circuit), (Some(200), CircuitState::HalfOpen));
    assert_eq!(gw.snapshot()[0].circuit, CircuitState::Closed);
}

/// Polls the gateway's snapshot until `pred` holds (at most 5 s).
async fn wait_for_snapshot(
    gw: &HttpGateway,
    pred: impl Fn(&netscope_agent::domain::outcome::ResilienceSnapshot) -> bool,
) -> netscope_agent::domain::outcome::ResilienceSnapshot {
    for _ in 0..1000 {
        let snap = gw.snapshot()[0].clone();
        if pred(&snap) {
            return snap;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "the snapshot never reached the expected state: {:?}",
        gw.snapshot()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bulkhead_bounds_concurrency() {
    let (up, base) = upstream().await;
    let mut p = policy();
    p.max_in_flight = 2;
    let gw = Arc::new(gateway(p));
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (gw, base) = (Arc::clone(&gw), base.clone());
            tokio::spawn(async move {
                gw.execute(call(&base, HttpMethod::Get, "/delay/100", None, 10_000))
                    .await
            })
        })
        .collect();
    // Wait (bounded) for the moment the bulkhead is full, rather than guessing a delay.
    let snap = wait_for_snapshot(&gw, |s| s.in_flight == 2 && s.queue_depth >= 1).await;
    assert_eq!(snap.in_flight, 2, "{snap:?}");
    assert!(snap.queue_depth >= 1, "{snap:?}");
    for c in calls {
        assert_eq!(c.await.unwrap().status, Some(200));
    }
    assert_eq!(up.max_in_flight(), 2);

    // A call that cannot get a slot before its deadline is not sent.
    let mut p = policy();
    p.max_in_flight = 1;
    let gw = Arc::new(gateway(p));
    let slow = {
        let (gw, base) = (Arc::clone(&gw), base.clone());
        tokio::spawn(async move {
            gw.execute(call(&base, HttpMethod::Get, "/delay/500", None, 10_000))
                .await
        })
    };
    wait_for_snapshot(&gw, |s| s.in_flight == 1).await;
    let r = gw
        .execute(call(&base, HttpMethod::Get, "/never", None, 150))
        .await;
    assert_eq!(r.outcome, CallOutcome::BulkheadFull);
    assert_eq!(up.count("/never"), 0);
    slow.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_under_concurrency() {
    let (up, base) = upstream().await;
    let mut p = policy();
    p.rate_per_sec = Some(2); // a token every 500 ms…
    p.burst = 2; // …after a burst of 2
    let gw = Arc::new(gateway(p));
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let (gw, base) = (Arc::clone(&gw), base.clone());
            tokio::spawn(async move {
                gw.execute(call(&base, HttpMethod::Get, "/limited", None, 250))
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for c in calls {
        outcomes.push(c.await.unwrap().outcome);
    }
    let passed = outcomes
        .iter()
        .filter(|o| **o == CallOutcome::Response)
        .count();
    let limited = outcomes
        .iter()
        .filter(|o| **o == CallOutcome::RateLimited)
        .count();
    assert_eq!((passed, limited), (2, 8), "{outcomes:?}");
    assert_eq!(up.count("/limited"), 2);
}

#[tokio::test]
async fn transport_failures_are_classified() {
    let (_up, base) = upstream().await;
    let mut p = policy();
    p.retry.max_attempts = 1;
    p.attempt_timeout = Duration::from_millis(200);
    p.connect_timeout = Duration::from_millis(200);
    let gw = gateway(p);

    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_base = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let r = gw
        .execute(call(&refused_base, HttpMethod::Get, "/", None, 5000))
        .await;
    assert_eq!(r.outcome, CallOutcome::TransportError);
    assert_eq!(r.attempts[0].error, Some(AttemptError::ConnectRefused));

    let r = gw
        .execute(call(&base, HttpMethod::Get, "/reset", None, 5000))
        .await;
    assert_eq!(r.outcome, CallOutcome::TransportError);
    assert!(
        matches!(
            r.attempts[0].error,
            Some(AttemptError::ConnectionReset | AttemptError::Protocol)
        ),
        "{:?}",
        r.attempts[0]
    );

    let r = gw
        .execute(call(&base, HttpMethod::Get, "/delay/2000", None, 5000))
        .await;
    assert_eq!(r.attempts[0].error, Some(AttemptError::Timeout));

    let r = gw
        .execute(call(&base, HttpMethod::Get, "/delay/2000", None, 150))
        .await;
    assert_eq!(r.outcome, CallOutcome::DeadlineExceeded, "{r:?}");

    let mut late = call(&base, HttpMethod::Get, "/late", None, 0);
    late.request.deadline_unix_ms = netscope_agent::clock::now_unix_ms() - 1;
    let r = gw.execute(late).await;
    assert_eq!(
        (r.outcome, r.attempts.len()),
        (CallOutcome::DeadlineExceeded, 0)
    );
}
