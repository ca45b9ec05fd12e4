//! `netscope-agent audit verify`: reads a time range of the audit trail back from RGW and checks
//! it against the per-node sequence numbers — gaps (events missing between the first and last
//! one seen in the range), duplicates (a sequence stored twice) and batches whose content does
//! not match their key.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    batch::{decode_batch, hour_prefix},
    s3::{S3Error, S3Store},
};

const HOUR_MS: u64 = 3_600_000;
/// 9999-12-31T23:59:59.999Z: keys have four-digit years.
const MAX_UNIX_MS: u64 = 253_402_300_799_999;

/// `2026-11-26T10:00:00Z` (seconds optional, `Z` required) or Unix milliseconds.
pub fn parse_time(s: &str) -> Result<u64, String> {
    use time::{PrimitiveDateTime, macros::format_description};
    if let Ok(ms) = s.parse::<u64>() {
        return (ms <= MAX_UNIX_MS)
            .then_some(ms)
            .ok_or_else(|| format!("`{s}`: after 9999-12-31"));
    }
    let bad = || format!("`{s}`: expected YYYY-MM-DDTHH:MM[:SS]Z (UTC) or Unix milliseconds");
    let with_seconds = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    let without = format_description!("[year]-[month]-[day]T[hour]:[minute]Z");
    let at = PrimitiveDateTime::parse(s, with_seconds)
        .or_else(|_| PrimitiveDateTime::parse(s, without))
        .map_err(|_| bad())?;
    let secs = at.assume_utc().unix_timestamp();
    u64::try_from(secs).map(|s| s * 1000).map_err(|_| bad())
}

/// A run of missing sequences, `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub first: u64,
    pub last: u64,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeReport {
    pub events: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub gaps: Vec<Gap>,
    /// Sequences stored more than once.
    pub duplicates: Vec<u64>,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub from_unix_ms: u64,
    pub to_unix_ms: u64,
    pub objects: u64,
    pub nodes: BTreeMap<String, NodeReport>,
    /// Batches that do not decode or whose events do not match their key.
    pub bad_objects: Vec<String>,
}

impl VerifyReport {
    pub fn complete(&self) -> bool {
        self.bad_objects.is_empty()
            && self
                .nodes
                .values()
                .all(|n| n.gaps.is_empty() && n.duplicates.is_empty())
    }
}

/// `first-last` from `…/<first:020>-<last:020>.ndjson.gz`.
fn key_range(key: &str) -> Option<(u64, u64)> {
    let name = key.rsplit('/').next()?.strip_suffix(".ndjson.gz")?;
    let (a, b) = name.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Gaps and duplicates of a node's sequences.
pub fn check_sequences(mut seqs: Vec<u64>) -> NodeReport {
    seqs.sort_unstable();
    let mut report = NodeReport {
        events: seqs.len() as u64,
        first_sequence: seqs.first().copied().unwrap_or(0),
        last_sequence: seqs.last().copied().unwrap_or(0),
        ..NodeReport::default()
    };
    for pair in seqs.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a == b {
            if report.duplicates.last() != Some(&a) {
                report.duplicates.push(a);
            }
        } else if b > a + 1 {
            report.gaps.push(Gap {
                first: a + 1,
                last: b - 1,
            });
        }
    }
    report
}

/// Reads every batch that may hold events of `[from, to)` (batches are keyed by their first
/// event's hour, and a batch spans less than an hour) and checks them.
pub async fn verify(
    store: &S3Store,
    from_unix_ms: u64,
    to_unix_ms: u64,
    node: Option<&str>,
) -> Result<VerifyReport, S3Error> {
    let mut report = VerifyReport {
        from_unix_ms,
        to_unix_ms,
        ..VerifyReport::default()
    };
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    // From the hour before `from` (a batch started then may hold events of the range) up to
    // and including the hour of `to`.
    let start_after = hour_prefix((from_unix_ms / HOUR_MS).saturating_sub(1) * HOUR_MS);
    let end = hour_prefix((to_unix_ms / HOUR_MS + 1) * HOUR_MS);
    let keys = store
        .list_range("v1/", Some(&start_after), Some(&end))
        .await?;
    let node_dir = node.map(|n| format!("/{n}/"));
    for key in keys {
        if node_dir.as_ref().is_some_and(|d| !key.contains(d.as_str())) {
            continue;
        }
        report.objects += 1;
        let events = match decode_batch(&key, &store.get(&key).await?) {
            Ok(events) => events,
            Err(e) => {
                report.bad_objects.push(format!("{key}: {e}"));
                continue;
            }
        };
        let in_key: Vec<u64> = events.iter().map(|e| e.sequence).collect();
        let consecutive = key_range(&key).is_some_and(|(a, b)| {
            b >= a && in_key.len() as u64 == b - a + 1 && in_key.iter().copied().eq(a..=b)
        });
        if !consecutive {
            report.bad_objects.push(format!(
                "{key}: its events are not the sequences its key names"
            ));
        }
        for e in events {
            if (from_unix_ms..to_unix_ms).contains(&e.timestamp_unix_ms) {
                seqs.entry(e.node).or_default().push(e.sequence);
            }
        }
    }
    report.nodes = seqs
        .into_iter()
        .map(|(n, s)| (n, check_sequences(s)))
        .collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_utc_and_nonsense_is_refused() {
        assert_eq!(parse_time("1970-01-01T00:00Z").unwrap(), 0);
        assert_eq!(
            parse_time("2026-11-26T10:46:40Z").unwrap(),
            1_795_690_000_000
        );
        assert_eq!(parse_time("2000-02-29T05:00:00Z").unwrap(), 951_800_400_000);
        assert_eq!(parse_time("1795690000123").unwrap(), 1_795_690_000_123);
        assert_eq!(
            parse_time("9999-12-31T23:59:59Z").unwrap(),
            MAX_UNIX_MS - 999
        );
        assert!(parse_time("253402300800000").is_err());
        for bad in [
            "2026-11-26",
            "2026-11-26T10:00:00",
            "2026-02-30T00:00Z",
            "2026-13-01T00:00Z",
            "2026-11-26T24:00Z",
            "2026-11-26T10:00:00:00Z",
            "yesterday",
        ] {
            let err = parse_time(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn gaps_and_duplicates_are_listed() {
        let r = check_sequences(vec![7, 3, 4, 4, 4, 9, 10, 13]);
        assert_eq!((r.events, r.first_sequence, r.last_sequence), (8, 3, 13));
        assert_eq!(
            r.gaps,
            vec![
                Gap { first: 5, last: 6 },
                Gap { first: 8, last: 8 },
                Gap {
                    first: 11,
                    last: 12
                }
            ]
        );
        assert_eq!(r.duplicates, vec![4]);
        let clean = check_sequences((1..=100).rev().collect());
        assert!(clean.gaps.is_empty() && clean.duplicates.is_empty());
        assert_eq!(
            key_range("v1/2026-11-26/10/n/00000000000000000001-00000000000000000512.ndjson.gz"),
            Some((1, 512))
        );
    }
}
