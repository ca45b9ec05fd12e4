use std::path::PathBuf;

use super::*;
use crate::{
    domain::targets::Target,
    ingest::{record::RecordHeader, samples, trace_context::TraceParentStatus},
};

const NOW: u64 = 1_800_000_000_000;

pub(crate) fn demo_targets() -> Targets {
    Targets(vec![Target::example()])
}

fn normalizer() -> Normalizer {
    Normalizer::new(demo_targets(), Limits::default())
}

fn samples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/requests")
}

/// Kafka record headers from names and values given as text.
fn record_headers(headers: &[(&str, Option<&[u8]>)]) -> Vec<RecordHeader> {
    headers
        .iter()
        .map(|(name, value)| RecordHeader {
            name: name.as_bytes().to_vec(),
            value: value.map(<[u8]>::to_vec),
        })
        .collect()
}

fn incoming<'a>(payload: Option<&'a [u8]>, headers: &'a [RecordHeader]) -> Incoming<'a> {
    Incoming {
        payload,
        headers,
        received_unix_ms: NOW,
        record_unix_ms: None,
    }
}

#[test]
fn every_valid_sample_normalises() {
    let n = normalizer();
    let valid = samples::valid(&samples_dir()).unwrap();
    assert!(valid.len() >= 3);
    for (name, bytes) in &valid {
        let out = n.normalize(&incoming(Some(bytes), &[]));
        assert!(out.is_ok(), "{name}: {:?}", out.err());
    }
}

#[test]
fn a_post_with_a_key_is_retryable_and_carries_its_context() {
    let bytes = std::fs::read(samples_dir().join("v1/post-payment-with-key.json")).unwrap();
    let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let headers = record_headers(&[
        ("traceparent", Some(&tp[..])),
        ("X-Request-Id", Some(&b"req-1"[..])),
    ]);
    let out = normalizer()
        .normalize(&incoming(Some(&bytes), &headers))
        .unwrap();
    let CallRequest { ctx, request } = &out.call;
    assert_eq!(request.method, HttpMethod::Post);
    assert!(
        request.retryable(ctx),
        "POST with an idempotency key may be retried"
    );
    assert_eq!(ctx.idempotency_key.as_deref(), Some("pay-7f3a-0001"));
    assert_eq!(ctx.route.0, "payments");
    assert_eq!(ctx.target.0, "demo");
    assert_eq!(ctx.request_id, "req-1");
    assert_eq!(ctx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(ctx.parent_span_id.unwrap().to_string(), "00f067aa0ba902b7");
    assert_ne!(
        ctx.span_id,
        ctx.parent_span_id.unwrap(),
        "a new span for the call"
    );
    assert_eq!(ctx.internal_ip, Some("10.20.30.40".parse().unwrap()));
    assert_eq!(ctx.external_ip, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(request.deadline_unix_ms, NOW + 3000);
    assert_eq!(
        request.headers,
        vec![("content-type".to_owned(), "application/json".to_owned())]
    );
    assert_eq!(out.traceparent, TraceParentStatus::Valid);
    assert!(!out.request_id_generated);
}

#[test]
fn a_post_without_a_key_is_not_retryable_and_base64_bodies_decode() {
    let msg = br#"{"schema_version":1,"method":"POST","url":"http://127.0.0.1:18080/x#frag"}"#;
    let out = normalizer().normalize(&incoming(Some(msg), &[])).unwrap();
    assert!(!out.call.request.retryable(&out.call.ctx));
    assert_eq!(
        out.call.request.url.as_str(),
        "http://127.0.0.1:18080/x",
        "fragment dropped"
    );
    assert_eq!(out.call.ctx.route.0, "default");
    assert_eq!(
        out.call.request.deadline_unix_ms,
        NOW + 10_000,
        "default timeout"
    );
    let bytes = std::fs::read(samples_dir().join("v1/put-binary.json")).unwrap();
    let out = normalizer()
        .normalize(&incoming(Some(&bytes), &[]))
        .unwrap();
    assert_eq!(out.call.request.body, vec![0, 1, 2, 3, 255]);
}

#[test]
fn a_malformed_traceparent_starts_a_new_trace_and_is_not_rejected() {
    let bytes = std::fs::read(samples_dir().join("v1/get-order.json")).unwrap();
    let headers = record_headers(&[
        ("traceparent", Some(&b"00-zz-bad"[..])),
        ("tracestate", Some(&b"a=1"[..])),
    ]);
    let out = normalizer()
        .normalize(&incoming(Some(&bytes), &headers))
        .unwrap();
    assert_eq!(out.traceparent, TraceParentStatus::Invalid);
    assert_eq!(out.call.ctx.parent_span_id, None);
    assert_eq!(out.call.ctx.tracestate, None);
    assert!(out.request_id_generated);
}

#[test]
fn every_malformed_sample_gets_its_reason_and_every_reason_has_a_sample() {
    let n = normalizer();
    let corpus = samples::malformed(&samples_dir()).unwrap();
    assert!(
        corpus.len() >= 30,
        "the corpus must have at least 30 messages"
    );
    let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for case in &corpus {
        let mut headers = record_headers(&[("traceparent", Some(&tp[..]))]);
        headers.extend(case.headers.iter().cloned());
        let rejection = n
            .normalize(&incoming(case.payload.as_deref(), &headers))
            .expect_err(&case.name);
        assert_eq!(
            rejection.reason.code(),
            case.reason,
            "{}: {}",
            case.name,
            rejection.detail
        );
        assert!(!rejection.detail.is_empty(), "{}", case.name);
        assert_eq!(
            rejection.trace.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
    for reason in <RejectReason as strum::IntoEnumIterator>::iter().filter(|r| r.about_content()) {
        assert!(
            corpus.iter().any(|c| c.reason == reason.code()),
            "no sample in the corpus for `{}`",
            reason.code()
        );
    }
}

#[test]
fn arbitrary_bytes_are_rejected_never_a_panic() {
    use rand::{Rng as _, SeedableRng as _};
    let n = normalizer();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let valid = std::fs::read(samples_dir().join("v1/post-payment-with-key.json")).unwrap();
    for _ in 0..5_000 {
        // Random bytes, and the valid sample with a few bytes flipped.
        let mut bytes = valid.clone();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..bytes.len());
            bytes[i] = rng.random();
        }
        let _ = n.normalize(&incoming(Some(&bytes), &[]));
        let noise: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
        assert!(n.normalize(&incoming(Some(&noise), &[])).is_err());
    }
}

#[test]
fn the_v1_field_list_is_exactly_what_the_schema_decodes() {
    let every_field = serde_json::json!({
        "schema_version": 1, "method": "GET", "url": "http://127.0.0.1:18080/",
        "headers": {}, "body": "a", "body_base64": "YQ==", "route": "orders",
        "idempotency_key": "k", "timeout_ms": 1, "deadline_unix_ms": 2, "source_ip": "10.0.0.1"
    });
    let object = every_field.as_object().unwrap();
    assert_eq!(object.len(), V1_FIELDS.len());
    assert!(object.keys().all(|k| V1_FIELDS.contains(&k.as_str())));
    // serde refuses unknown fields: a listed name the struct lacks would fail here.
    let bytes = every_field.to_string();
    assert!(normalizer().decode(Some(bytes.as_bytes())).is_ok());
}

#[test]
fn a_record_past_the_age_limit_expires_and_a_deadline_counts_from_the_records_timestamp() {
    let bytes = std::fs::read(samples_dir().join("v1/post-payment-with-key.json")).unwrap();
    let at = |record_unix_ms| Incoming {
        payload: Some(&bytes),
        headers: &[],
        received_unix_ms: NOW,
        record_unix_ms,
    };
    let n = normalizer();
    let old = n
        .normalize(&at(Some(NOW - 15 * 60 * 1000 - 1)))
        .unwrap_err();
    assert_eq!(old.reason, RejectReason::Expired, "{}", old.detail);
    // The sample asks for 3 s: two of them were spent in Kafka.
    let out = n.normalize(&at(Some(NOW - 2000))).unwrap();
    assert_eq!(out.call.request.deadline_unix_ms, NOW + 1000);
    // A producer clock ahead of ours does not extend the deadline.
    let out = n.normalize(&at(Some(NOW + 60_000))).unwrap();
    assert_eq!(out.call.request.deadline_unix_ms, NOW + 3000);
    let unlimited = Normalizer::new(
        demo_targets(),
        Limits {
            max_record_age_ms: None,
            ..Limits::default()
        },
    );
    assert!(unlimited.normalize(&at(Some(0))).is_ok());
}

#[test]
fn header_lookup_ignores_ascii_case_and_skips_names_that_are_not_utf8() {
    let headers = vec![
        RecordHeader {
            name: b"\xfftraceparent".to_vec(),
            value: Some(b"bad".to_vec()),
        },
        RecordHeader {
            name: b"TraceParent".to_vec(),
            value: Some(b"good".to_vec()),
        },
    ];
    let msg = incoming(None, &headers);
    assert_eq!(msg.header("traceparent"), Some(&b"good"[..]));
    assert_eq!(msg.header("x-request-id"), None);
}
