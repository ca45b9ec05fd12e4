//! W3C Trace Context (`traceparent`, `tracestate`) and `x-request-id` from Kafka headers.
//! An invalid `traceparent` is ignored and a new trace is started, as the spec says; it is
//! counted, never a reason to reject the message.

use rand::Rng as _;

use crate::domain::{SpanId, TraceId};

/// What became of the incoming `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceParentStatus {
    Valid,
    Absent,
    /// Present but invalid: ignored, a new trace started.
    Invalid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: TraceId,
    pub parent_span_id: Option<SpanId>,
    pub flags: u8,
    pub tracestate: Option<String>,
    pub status: TraceParentStatus,
}

pub use crate::domain::trace::parse_traceparent;

/// `tracestate` is passed on only when short and printable (the spec's 512-character guidance).
fn valid_tracestate(value: &str) -> bool {
    !value.is_empty() && value.len() <= 512 && value.bytes().all(|b| (0x20..0x7f).contains(&b))
}

pub fn random_trace_id() -> TraceId {
    loop {
        let id: [u8; 16] = rand::rng().random();
        if id != [0; 16] {
            return TraceId(id);
        }
    }
}

pub fn random_span_id() -> SpanId {
    loop {
        let id: [u8; 8] = rand::rng().random();
        if id != [0; 8] {
            return SpanId(id);
        }
    }
}

/// The trace this call belongs to, from the message's `traceparent`/`tracestate` headers.
pub fn trace_context(traceparent: Option<&[u8]>, tracestate: Option<&[u8]>) -> TraceContext {
    let Some(raw) = traceparent else {
        return new_trace(TraceParentStatus::Absent);
    };
    match std::str::from_utf8(raw)
        .ok()
        .map(str::trim)
        .and_then(parse_traceparent)
    {
        Some((trace_id, parent, flags)) => TraceContext {
            trace_id,
            parent_span_id: Some(parent),
            flags,
            tracestate: tracestate
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::trim)
                .filter(|v| valid_tracestate(v))
                .map(str::to_owned),
            status: TraceParentStatus::Valid,
        },
        None => new_trace(TraceParentStatus::Invalid),
    }
}

fn new_trace(status: TraceParentStatus) -> TraceContext {
    TraceContext {
        trace_id: random_trace_id(),
        parent_span_id: None,
        flags: 0x01,
        tracestate: None,
        status,
    }
}

/// The request id: the `x-request-id` header when it is 1–128 visible ASCII characters, else a
/// new random one (the bool says it was generated).
pub fn request_id(header: Option<&[u8]>) -> (String, bool) {
    match header.and_then(|v| std::str::from_utf8(v).ok()) {
        Some(v) if (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()) => {
            (v.to_owned(), false)
        }
        _ => (random_trace_id().to_string(), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example() {
        let (t, p, f) = parse_traceparent(VALID).unwrap();
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.to_string(), "00f067aa0ba902b7");
        assert_eq!(f, 1);
    }

    #[test]
    fn rejects_what_the_spec_rejects() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn accepts_future_versions_with_more_fields() {
        let future =
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        assert!(parse_traceparent(future).is_some());
        let glued = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert_eq!(parse_traceparent(glued), None);
    }

    #[test]
    fn invalid_traceparent_starts_a_new_trace_and_drops_tracestate() {
        let ctx = trace_context(Some(b"garbage"), Some(b"vendor=1"));
        assert_eq!(ctx.status, TraceParentStatus::Invalid);
        assert_eq!(ctx.parent_span_id, None);
        assert_eq!(ctx.tracestate, None);
        let ctx = trace_context(Some(VALID.as_bytes()), Some(b"vendor=1"));
        assert_eq!(ctx.status, TraceParentStatus::Valid);
        assert_eq!(ctx.tracestate.as_deref(), Some("vendor=1"));
        assert_eq!(trace_context(None, None).status, TraceParentStatus::Absent);
        assert_ne!(
            trace_context(None, None).trace_id,
            trace_context(None, None).trace_id
        );
    }

    #[test]
    fn request_ids_are_kept_or_generated() {
        assert_eq!(request_id(Some(b"req-42")), ("req-42".to_owned(), false));
        for bad in [&b""[..], b"has space", b"\xff\xfe", &[b'a'; 129][..]] {
            let (id, generated) = request_id(Some(bad));
            assert!(generated, "{bad:?}");
            assert_eq!(id.len(), 32);
        }
        assert!(request_id(None).1);
    }
}
