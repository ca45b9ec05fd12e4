//! Contract tests: stored samples of every version decode; the schema's required fields are
//! exactly what the code requires; the code never requires more than version 1 did.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::*;
use crate::domain::{
    RouteName,
    call::RequestContext,
    outcome::{Attempt, RequestLine},
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn samples() -> Vec<(u32, PathBuf)> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(root().join("samples/audit")).unwrap() {
        let dir = dir.unwrap().path();
        let version: u32 = dir.file_name().unwrap().to_str().unwrap()[1..]
            .parse()
            .unwrap();
        for f in std::fs::read_dir(&dir).unwrap() {
            out.push((version, f.unwrap().path()));
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn every_stored_sample_of_every_version_still_decodes() {
    let all = samples();
    assert!(
        all.len() >= 2,
        "samples/audit/v1 has the full and the minimal sample"
    );
    for (version, path) in all {
        let event: AuditEvent = serde_json::from_value(read(&path))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(event.event_version, version, "{}", path.display());
        assert!(event.event_version <= AUDIT_EVENT_VERSION);
        assert_eq!(event.event_id, format!("{}-{}", event.node, event.sequence));
    }
}

/// (path in the document, required field names) for every object of the schema.
fn required_sets(schema: &Value, at: &str, out: &mut Vec<(String, Vec<String>)>) {
    if let Some(req) = schema.get("required").and_then(Value::as_array) {
        out.push((
            at.to_owned(),
            req.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
        ));
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let path = if at.is_empty() {
                name.clone()
            } else {
                format!("{at}.{name}")
            };
            required_sets(sub, &path, out);
            if let Some(items) = sub.get("items") {
                required_sets(items, &format!("{path}[]"), out);
            }
        }
    }
}

fn remove(value: &mut Value, path: &str, field: &str) {
    let mut v = value;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        v = if let Some(name) = part.strip_suffix("[]") {
            &mut v[name][0]
        } else {
            &mut v[part]
        };
    }
    v.as_object_mut().unwrap().remove(field);
}

#[test]
fn the_code_requires_exactly_what_schema_v1_requires() {
    let schema = read(&root().join("docs/audit-event-v1.schema.json"));
    let mut sets = Vec::new();
    required_sets(&schema, "", &mut sets);
    let full = read(&root().join("samples/audit/v1/full.json"));
    // Only required fields (the minimal sample) is enough…
    let minimal = read(&root().join("samples/audit/v1/minimal.json"));
    serde_json::from_value::<AuditEvent>(minimal.clone()).unwrap();
    // …and every field the schema requires really is: without it, decoding fails.
    for (path, fields) in &sets {
        for field in fields {
            let mut v = full.clone();
            remove(&mut v, path, field);
            assert!(
                serde_json::from_value::<AuditEvent>(v).is_err(),
                "`{path}.{field}` is required by the schema but the code accepts its absence"
            );
        }
    }
}

#[test]
fn an_event_round_trips_and_records_no_body_nor_query() {
    let result = OutboundResult {
        ctx: RequestContext {
            idempotency_key: Some("k1".into()),
            route: RouteName("orders".into()),
            external_ip: Some("127.0.0.1".parse().unwrap()),
            ..RequestContext::example("r1")
        },
        method: "POST",
        request: RequestLine::of(
            &"http://127.0.0.1:18080/orders/1?token=secret"
                .parse()
                .unwrap(),
        ),
        outcome: CallOutcome::Response,
        status: Some(201),
        attempts: vec![Attempt {
            number: 1,
            status: Some(201),
            error: None,
            duration_ms: 1.5,
            backoff_ms: 0.0,
        }],
        retry_stop: RetryStop::Succeeded,
        started_unix_ms: 1,
        duration_ms: 1.6,
        request_bytes: 12,
        response_bytes: 2,
        circuit: CircuitState::Closed,
        network: NetworkFacts::default(),
    };
    let event = AuditEvent::of(&result, "node-a", 7, 99);
    let text = serde_json::to_string(&event).unwrap();
    assert!(
        !text.contains("secret"),
        "the query string is not recorded: {text}"
    );
    assert_eq!(event.request.path, "/orders/1");
    assert_eq!(event.outcome.outcome, "response");
    assert_eq!(event.outcome.retry_stop, "succeeded");
    assert_eq!(event.event_id, "node-a-7");
    let back: AuditEvent = serde_json::from_str(&text).unwrap();
    assert_eq!(back, event);
}
