//! User-space side of the wire contract: `aya::Pod` impls and checked decoding of ring records.

use core::{fmt, mem::size_of};

use crate::{ConnEvent, EventKind, FlowTuple, ProbeConfig, SockState, WireCounters};

// SAFETY: all of these are `#[repr(C)]`, made only of integers and integer arrays, with explicit
// padding fields and size assertions; every bit pattern is a valid value.
unsafe impl aya::Pod for ConnEvent {}
unsafe impl aya::Pod for FlowTuple {}
unsafe impl aya::Pod for WireCounters {}
unsafe impl aya::Pod for SockState {}
unsafe impl aya::Pod for ProbeConfig {}

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is shorter or longer than the event its header announces.
    Size { expected: usize, actual: usize },
    /// The header names a kind this agent does not know (a newer kernel object?).
    UnknownKind(u32),
    /// The header's `len` does not match the size of its kind.
    HeaderLen { kind: u32, len: u32 },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Size { expected, actual } => {
                write!(f, "record of {actual} bytes, expected {expected}")
            }
            Self::UnknownKind(k) => write!(f, "unknown event kind {k}"),
            Self::HeaderLen { kind, len } => {
                write!(f, "event kind {kind} announces {len} bytes")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

impl ConnEvent {
    /// Decodes one ring-buffer record, checking its size, kind and announced length.
    pub fn from_bytes(bytes: &[u8]) -> Result<(EventKind, Self), DecodeError> {
        let expected = size_of::<Self>();
        if bytes.len() != expected {
            return Err(DecodeError::Size {
                expected,
                actual: bytes.len(),
            });
        }
        // SAFETY: length checked above; `ConnEvent` is Pod, so any bytes are a valid value, and
        // `read_unaligned` makes no alignment assumption about the ring's memory.
        let event = unsafe { bytes.as_ptr().cast::<Self>().read_unaligned() };
        let kind = EventKind::from_u32(event.header.kind)
            .ok_or(DecodeError::UnknownKind(event.header.kind))?;
        if event.header.len as usize != expected {
            return Err(DecodeError::HeaderLen {
                kind: event.header.kind,
                len: event.header.len,
            });
        }
        Ok((kind, event))
    }

    /// The event's bytes exactly as the kernel writes them.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `ConnEvent` is `#[repr(C)]` with no implicit padding (size asserted), so every
        // byte of it is initialised.
        unsafe {
            core::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AF_INET6, EventHeader};

    fn sample() -> ConnEvent {
        ConnEvent {
            header: EventHeader {
                kind: EventKind::Closed as u32,
                len: size_of::<ConnEvent>() as u32,
                ts_ns: 123_456_789,
                tgid: 42,
                pid: 43,
                cgroup_id: 0xdead_beef,
                sock_id: 0xffff_8880_1234_5678,
            },
            tuple: FlowTuple {
                family: AF_INET6,
                sport: 50_000,
                dport: 443,
                _pad: 0,
                saddr: [1; 16],
                daddr: [2; 16],
            },
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            start_ns: 1,
            established_ns: 2,
            closed_ns: 3,
            bytes_sent: 3,
            bytes_received: 4,
            send_calls: 5,
            recv_calls: 6,
            wire: WireCounters {
                packets_out: 7,
                bytes_out: 8,
                packets_in: 9,
                bytes_in: 10,
            },
            retransmits: 11,
            resets_sent: 12,
            resets_received: 13,
            srtt_us: 14,
            sk_err: 104,
            old_state: crate::tcp_state::FIN_WAIT2,
            turn: crate::Turn {
                start_ns: 9,
                sent: 10,
                received: 11,
                retransmits: 12,
                _pad: 0,
            },
            prev_turn: crate::Turn::default(),
        }
    }

    #[test]
    fn round_trips_through_bytes() {
        let event = sample();
        let (kind, decoded) = ConnEvent::from_bytes(event.as_bytes()).unwrap();
        assert_eq!(kind, EventKind::Closed);
        assert_eq!(decoded, event);
    }

    #[test]
    fn decodes_from_unaligned_memory() {
        let event = sample();
        let mut buf = vec![0u8; size_of::<ConnEvent>() + 1];
        buf[1..].copy_from_slice(event.as_bytes());
        let (_, decoded) = ConnEvent::from_bytes(&buf[1..]).unwrap();
        assert_eq!(decoded, event);
    }

    #[test]
    fn rejects_short_and_long_records() {
        let event = sample();
        let bytes = event.as_bytes();
        assert_eq!(
            ConnEvent::from_bytes(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Size {
                expected: 272,
                actual: 271
            })
        );
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(matches!(
            ConnEvent::from_bytes(&long),
            Err(DecodeError::Size { actual: 273, .. })
        ));
    }

    #[test]
    fn rejects_unknown_kind_and_bad_len() {
        let mut event = sample();
        event.header.kind = 99;
        assert_eq!(
            ConnEvent::from_bytes(event.as_bytes()),
            Err(DecodeError::UnknownKind(99))
        );
        let mut event = sample();
        event.header.len = 12;
        assert_eq!(
            ConnEvent::from_bytes(event.as_bytes()),
            Err(DecodeError::HeaderLen { kind: 3, len: 12 })
        );
    }

    #[test]
    fn kind_numbers_are_stable() {
        assert_eq!(EventKind::Established as u32, 1);
        assert_eq!(EventKind::ConnectFailed as u32, 2);
        assert_eq!(EventKind::Closed as u32, 3);
        for k in 0..8 {
            if let Some(kind) = EventKind::from_u32(k) {
                assert_eq!(kind as u32, k);
            }
        }
    }
}
