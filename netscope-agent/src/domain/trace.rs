//! W3C Trace Context's `traceparent` value, parsed wherever it comes from (Kafka headers, the
//! API's requests).

use super::{SpanId, TraceId};

fn lower_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Parses a `traceparent` value (W3C Trace Context, level 1, §3.2).
pub fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, u8)> {
    let version = lower_hex::<1>(value.get(0..2)?)?[0];
    if version == 0xff {
        return None;
    }
    // Version 00 is exactly 55 characters; a later version may append fields after a '-'.
    if (version == 0 && value.len() != 55)
        || (version > 0 && value.len() > 55 && value.as_bytes()[55] != b'-')
    {
        return None;
    }
    let head = value.get(0..55)?;
    let mut parts = head.split('-');
    let (_, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let trace = lower_hex::<16>(trace).filter(|t| t != &[0; 16])?;
    let parent = lower_hex::<8>(parent).filter(|p| p != &[0; 8])?;
    let flags = lower_hex::<1>(flags)?[0];
    Some((TraceId(trace), SpanId(parent), flags))
}
