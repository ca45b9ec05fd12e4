//! The audit trail's batch format, independent of where batches are stored: one write-once
//! object per sealed spool segment, gzip-compressed NDJSON of `AuditEvent`s, under a key derived
//! from its content only — `v1/<yyyy-mm-dd>/<hh>/<node>/<first:020>-<last:020>.ndjson.gz`,
//! dated (UTC) by its first event — so that a retried upload finds its own object.

use std::io::{Read as _, Write as _};

use flate2::{Compression, read::GzDecoder, write::GzEncoder};

use crate::domain::audit::AuditEvent;

/// A stored batch that is not gzip NDJSON of audit events.
#[derive(Debug, thiserror::Error)]
#[error("audit batch `{key}` is not valid gzip NDJSON of audit events: {detail}")]
pub struct CorruptBatch {
    pub key: String,
    pub detail: String,
}

/// (year, month, day, hour) in UTC of a Unix time in ms.
pub fn utc_parts(unix_ms: u64) -> (i64, u32, u32, u32) {
    let nanos = i128::from(unix_ms) * 1_000_000;
    // Keys have four-digit years: beyond 9999 (refused by `audit verify`) the last instant is
    // used rather than failing an upload.
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(time::macros::datetime!(9999-12-31 23:59:59.999 UTC));
    (
        i64::from(at.year()),
        u32::from(u8::from(at.month())),
        u32::from(at.day()),
        u32::from(at.hour()),
    )
}

/// `v1/<yyyy-mm-dd>/<hh>/`: where the batches starting in that UTC hour are.
pub fn hour_prefix(unix_ms: u64) -> String {
    let (y, m, d, h) = utc_parts(unix_ms);
    format!("v1/{y:04}-{m:02}-{d:02}/{h:02}/")
}

/// The key of a batch of `node`'s events `first..=last`, dated by its first event.
pub fn batch_key(node: &str, first: u64, last: u64, first_unix_ms: u64) -> String {
    format!(
        "{}{node}/{first:020}-{last:020}.ndjson.gz",
        hour_prefix(first_unix_ms)
    )
}

/// A batch's body: gzip-compressed NDJSON of events already serialised (one JSON each).
pub fn encode_lines<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    for line in lines {
        // Writing to a Vec cannot fail.
        let _ = gz.write_all(line);
        let _ = gz.write_all(b"\n");
    }
    gz.finish().unwrap_or_default()
}

/// Gzip-compressed NDJSON of the events.
pub fn encode_batch(events: &[AuditEvent]) -> Vec<u8> {
    // Serialising our own types cannot fail.
    let lines: Vec<Vec<u8>> = events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap_or_default())
        .collect();
    encode_lines(lines.iter().map(Vec::as_slice))
}

/// The events of a batch stored under `key`.
pub fn decode_batch(key: &str, bytes: &[u8]) -> Result<Vec<AuditEvent>, CorruptBatch> {
    let corrupt = |detail: String| CorruptBatch {
        key: key.to_owned(),
        detail,
    };
    let mut text = String::new();
    GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .map_err(|e| corrupt(e.to_string()))?;
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(|e| corrupt(e.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(utc_parts(0), (1970, 1, 1, 0));
        assert_eq!(utc_parts(951_782_400_000 + 3_600_000 * 5), (2000, 2, 29, 5));
        assert_eq!(utc_parts(1_795_690_000_123), (2026, 11, 26, 10)); // date -u -d @1795690000
        assert_eq!(
            batch_key("node-a", 1, 512, 1_795_690_000_123),
            "v1/2026-11-26/10/node-a/00000000000000000001-00000000000000000512.ndjson.gz"
        );
    }

    #[test]
    fn batches_round_trip_and_corruption_is_detected() {
        let sample = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../samples/audit/v1/full.json"
        ))
        .unwrap();
        let event: AuditEvent = serde_json::from_slice(&sample).unwrap();
        let events = vec![event.clone(), event];
        let bytes = encode_batch(&events);
        assert_eq!(decode_batch("k", &bytes).unwrap(), events);
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        assert!(decode_batch("k", &bad).is_err());
        assert!(decode_batch("k", b"not gzip").is_err());
    }
}
