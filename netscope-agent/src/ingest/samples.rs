//! The stored request samples (`samples/requests/`): valid v1 messages and the malformed corpus
//! with the rejection each must get. Used by the unit and broker tests.

use std::{fs, io, path::Path};

use serde::Deserialize;

use super::record::RecordHeader;

#[derive(Deserialize)]
struct Entry {
    file: Option<String>,
    generate: Option<String>,
    reason: String,
}

/// One malformed message and the reason code it must be rejected with.
#[derive(Clone, Debug)]
pub struct Malformed {
    pub name: String,
    /// `None`: a record without payload.
    pub payload: Option<Vec<u8>>,
    /// Kafka record headers the message is sent with (names as bytes: some are not UTF-8).
    pub headers: Vec<RecordHeader>,
    pub reason: String,
}

/// A valid request whose Kafka record carries hostile headers.
fn with_headers(headers: Vec<RecordHeader>) -> (Option<Vec<u8>>, Vec<RecordHeader>) {
    let valid = br#"{"schema_version":1,"method":"GET","url":"http://127.0.0.1:18080/orders/1"}"#;
    (Some(valid.to_vec()), headers)
}

fn header(name: &[u8], value: &[u8]) -> RecordHeader {
    RecordHeader {
        name: name.to_vec(),
        value: Some(value.to_vec()),
    }
}

/// Reads `malformed/manifest.json` under `dir` (e.g. `samples/requests`).
pub fn malformed(dir: &Path) -> io::Result<Vec<Malformed>> {
    let manifest = fs::read(dir.join("malformed/manifest.json"))?;
    let entries: Vec<Entry> = serde_json::from_slice(&manifest).map_err(io::Error::other)?;
    entries
        .into_iter()
        .map(|e| {
            let no_headers = Vec::new;
            let (name, (payload, headers)) = match (e.file, e.generate.as_deref()) {
                (Some(f), _) => (
                    f.clone(),
                    (Some(fs::read(dir.join("malformed").join(f))?), no_headers()),
                ),
                (None, Some("empty")) => ("generated: empty".to_owned(), (None, no_headers())),
                (None, Some("oversized")) => (
                    "generated: 3 MiB".to_owned(),
                    (Some(vec![b' '; 3 << 20]), no_headers()),
                ),
                (None, Some("header_name_not_utf8")) => (
                    "generated: a record header name that is not UTF-8".to_owned(),
                    with_headers(vec![header(b"x-\xff\xfe-id", b"1")]),
                ),
                (None, Some("thousand_headers")) => (
                    "generated: 1,000 record headers".to_owned(),
                    with_headers(
                        (0..1000)
                            .map(|i| header(format!("h{i}").as_bytes(), b"v"))
                            .collect(),
                    ),
                ),
                (None, Some("header_of_1_mib")) => (
                    "generated: a record header of 1 MiB".to_owned(),
                    with_headers(vec![header(b"x-big", &vec![b'a'; 1 << 20])]),
                ),
                (None, Some("oversized_body")) => {
                    let body = "x".repeat((1 << 20) + 1);
                    let msg = serde_json::json!({"schema_version": 1, "method": "POST",
                        "url": "http://127.0.0.1:18080/orders", "body": body});
                    (
                        "generated: 1 MiB + 1 body".to_owned(),
                        (Some(msg.to_string().into_bytes()), no_headers()),
                    )
                }
                (None, other) => {
                    return Err(io::Error::other(format!(
                        "manifest: unknown generator {other:?}"
                    )));
                }
            };
            Ok(Malformed {
                name,
                payload,
                headers,
                reason: e.reason,
            })
        })
        .collect()
}

/// The valid v1 samples: (file name, bytes).
pub fn valid(dir: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir.join("v1"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((name, fs::read(&path)?));
        }
    }
    out.sort();
    Ok(out)
}
