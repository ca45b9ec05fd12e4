//! User-space side of the wire contract: `aya::Pod` impls and checked decoding of ring records.

use core::{fmt, mem::size_of};

use crate::{
    ConnEvent, ESTABLISHED_LEN, EventHeader, EventKind, FlowTuple, ProbeConfig, SK_ERR_UNKNOWN,
    SockState, WireCounters, tcp_state,
};

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
    /// Decodes one ring-buffer record, checking its size, kind and announced length (an
    /// `Established` record is the event's first [`ESTABLISHED_LEN`] bytes; the rest takes its
    /// "not yet" values).
    pub fn from_bytes(bytes: &[u8]) -> Result<(EventKind, Self), DecodeError> {
        let header_len = size_of::<EventHeader>();
        if bytes.len() < header_len {
            return Err(DecodeError::Size {
                expected: header_len,
                actual: bytes.len(),
            });
        }
        // SAFETY: at least a header's bytes (checked above); `EventHeader` is plain integers, so
        // any bytes are a valid value, and `read_unaligned` makes no alignment assumption about
        // the ring's memory.
        let header = unsafe { bytes.as_ptr().cast::<EventHeader>().read_unaligned() };
        let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
        let expected = kind.record_len();
        if bytes.len() != expected {
            return Err(DecodeError::Size {
                expected,
                actual: bytes.len(),
            });
        }
        if header.len as usize != expected {
            return Err(DecodeError::HeaderLen {
                kind: header.kind,
                len: header.len,
            });
        }
        let event = match kind {
            // SAFETY (both arms): the slice holds exactly `expected` bytes (checked above) of a
            // `#[repr(C)]` Pod value; every bit pattern of its fields is valid, and neither read
            // assumes the ring's memory is aligned.
            EventKind::Established => {
                let mut event = Self {
                    sk_err: SK_ERR_UNKNOWN,
                    old_state: tcp_state::SYN_SENT,
                    ..Self::default()
                };
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        (&raw mut event).cast::<u8>(),
                        ESTABLISHED_LEN,
                    );
                }
                event
            }
            EventKind::ConnectFailed | EventKind::Closed => unsafe {
                bytes.as_ptr().cast::<Self>().read_unaligned()
            },
        };
        Ok((kind, event))
    }

    /// The event's record exactly as the kernel writes it for its header's kind (all of the
    /// event for an unknown kind).
    pub fn as_bytes(&self) -> &[u8] {
        let len =
            EventKind::from_u32(self.header.kind).map_or(size_of::<Self>(), EventKind::record_len);
        // SAFETY: `ConnEvent` is `#[repr(C)]` with no implicit padding (size asserted), so every
        // byte of it is initialised; `len` ≤ its size.
        unsafe { core::slice::from_raw_parts((self as *const Self).cast::<u8>(), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AF_INET6;

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
            old_state: tcp_state::FIN_WAIT2,
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
    fn a_record_shorter_than_a_header_is_rejected_before_its_kind_is_read() {
        let event = sample();
        assert_eq!(
            ConnEvent::from_bytes(&event.as_bytes()[..12]),
            Err(DecodeError::Size {
                expected: size_of::<EventHeader>(),
                actual: 12
            })
        );
        assert_eq!(
            ConnEvent::from_bytes(&[]),
            Err(DecodeError::Size {
                expected: 40,
                actual: 0
            })
        );
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
    fn an_established_record_is_the_events_first_120_bytes_and_the_rest_reads_as_not_yet_known() {
        let full = sample();
        let mut event = full;
        event.header.kind = EventKind::Established as u32;
        event.header.len = ESTABLISHED_LEN as u32;
        let bytes = event.as_bytes();
        assert_eq!(bytes.len(), 120);
        let (kind, decoded) = ConnEvent::from_bytes(bytes).unwrap();
        assert_eq!(kind, EventKind::Established);
        let expected = ConnEvent {
            header: event.header,
            tuple: full.tuple,
            comm: full.comm,
            start_ns: full.start_ns,
            established_ns: full.established_ns,
            srtt_us: full.srtt_us,
            retransmits: full.retransmits,
            sk_err: SK_ERR_UNKNOWN,
            old_state: tcp_state::SYN_SENT,
            ..ConnEvent::default()
        };
        assert_eq!(decoded, expected);
    }

    #[test]
    fn an_established_record_of_a_closed_events_length_is_rejected() {
        let mut event = sample();
        event.header.kind = EventKind::Established as u32;
        let whole = {
            let p = (&raw const event).cast::<u8>();
            // SAFETY: the whole Pod event's bytes.
            unsafe { core::slice::from_raw_parts(p, size_of::<ConnEvent>()) }
        };
        assert_eq!(
            ConnEvent::from_bytes(whole),
            Err(DecodeError::Size {
                expected: 120,
                actual: 272
            })
        );
        assert_eq!(
            ConnEvent::from_bytes(event.as_bytes()),
            Err(DecodeError::HeaderLen { kind: 1, len: 272 })
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
