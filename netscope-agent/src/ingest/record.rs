//! One consumed Kafka record, copied out of librdkafka without trusting its bytes.
//!
//! Header names are bytes on the wire. rdkafka's `Headers::iter`/`try_get` turn each name into a
//! `&str` with `unwrap()`, so one record whose header name is not UTF-8 panics whoever reads it,
//! and, its offset never committed, every agent of the group after it. This module reads the
//! headers through librdkafka's own C accessors instead, as bytes, and never panics.

use std::ffi::CStr;

use rdkafka::{
    Message as _, Timestamp,
    bindings::{rd_kafka_header_cnt, rd_kafka_header_get_all, rd_kafka_message_headers},
    message::BorrowedMessage,
    types::RDKafkaRespErr,
};

use crate::domain::RecordRef;

/// One record header as it came: name and value are bytes (Kafka does not promise UTF-8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub name: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

impl RecordHeader {
    /// The name, when it is UTF-8.
    pub fn name_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.name).ok()
    }

    /// Name and value bytes together (what the record-header budget counts).
    pub fn len(&self) -> usize {
        self.name.len() + self.value.as_ref().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A consumed record that owns its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (create or log-append time), Unix ms, when it has one.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<RecordHeader>,
}

impl ConsumedRecord {
    /// Copies a record out of the consumer's buffer. Never panics on the record's content.
    pub fn from_borrowed(m: &BorrowedMessage<'_>) -> Self {
        let timestamp_ms = match m.timestamp() {
            Timestamp::NotAvailable => None,
            Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
        };
        Self {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms,
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: headers_of(m),
        }
    }

    pub fn record_ref(&self) -> RecordRef {
        RecordRef {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }

    /// `topic/partition/offset`, as logs and the dead-letter topic name a record.
    pub fn source(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }

    /// Bytes of every header's name and value.
    pub fn header_bytes(&self) -> usize {
        self.headers.iter().map(RecordHeader::len).sum()
    }
}

/// The message's headers, names and values as bytes, through librdkafka's C accessors.
fn headers_of(m: &BorrowedMessage<'_>) -> Vec<RecordHeader> {
    let mut hdrs = std::ptr::null_mut();
    // SAFETY: `m.ptr()` is the live message `m` borrows; librdkafka hands back a pointer to the
    // message's own headers (or an error and no pointer), valid while `m` is.
    let err = unsafe { rd_kafka_message_headers(m.ptr(), &raw mut hdrs) };
    if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || hdrs.is_null() {
        return Vec::new();
    }
    // SAFETY: `hdrs` is the message's header list, checked non-null above.
    let count = unsafe { rd_kafka_header_cnt(hdrs) };
    let mut out = Vec::with_capacity(count);
    for idx in 0..count {
        let mut name = std::ptr::null();
        let mut value = std::ptr::null();
        let mut size = 0usize;
        // SAFETY: `idx < count`; librdkafka writes a NUL-terminated name, and a value pointer
        // with its size (null for a null value), both owned by the header list.
        let err = unsafe {
            rd_kafka_header_get_all(hdrs, idx, &raw mut name, &raw mut value, &raw mut size)
        };
        if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            continue;
        }
        // SAFETY: a non-null, NUL-terminated string owned by the header list.
        let name = unsafe { CStr::from_ptr(name) }.to_bytes().to_vec();
        let value = (!value.is_null()).then(|| {
            // SAFETY: librdkafka's value pointer and its size, owned by the header list.
            unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }.to_vec()
        });
        out.push(RecordHeader { name, value });
    }
    out
}

/// A name as text for logs and for the dead-letter copy: UTF-8 as is, any other byte as `\xNN`.
pub fn escape_name(name: &[u8]) -> String {
    name.utf8_chunks().fold(String::new(), |mut s, chunk| {
        s.push_str(chunk.valid());
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_is_not_utf8_is_escaped_byte_by_byte_and_the_rest_kept() {
        assert_eq!(escape_name(b"trace\xffid\xc3"), "trace\\xffid\\xc3");
        assert_eq!(escape_name("héllo".as_bytes()), "héllo");
    }

    #[test]
    fn header_bytes_count_names_and_values_and_source_names_the_record() {
        let record = ConsumedRecord {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            timestamp_ms: None,
            key: None,
            payload: None,
            headers: vec![
                RecordHeader {
                    name: b"\xfftraceparent".to_vec(),
                    value: Some(b"bad".to_vec()),
                },
                RecordHeader {
                    name: b"TraceParent".to_vec(),
                    value: Some(b"good".to_vec()),
                },
            ],
        };
        assert_eq!(record.header_bytes(), 12 + 3 + 11 + 4);
        assert_eq!(record.source(), "t/0/1");
    }
}
