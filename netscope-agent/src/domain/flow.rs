//! What NetScope knows about one outbound TCP connection.

use std::{fmt, net::SocketAddr, sync::Arc};

use serde::Serialize;

/// A task's command name as the kernel keeps it (`TASK_COMM_LEN`: at most 15 bytes and a NUL),
/// held inline: a flow is built from every kernel event, and a `String` here was an allocation
/// and a free per event on the ring reader's path.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm {
    bytes: [u8; Self::CAPACITY],
    len: u8,
}

impl Comm {
    const CAPACITY: usize = 16;

    /// The kernel's `comm` field: up to its first NUL. A name that is not UTF-8 gets U+FFFD
    /// for its bad bytes, cut to 16 bytes at a character boundary.
    pub fn from_kernel(raw: &[u8; 16]) -> Self {
        // Once per kernel event: ASCII names (nearly all) are taken as one 16-byte word.
        const LOW: u128 = u128::MAX / 255; // 0x0101…01
        const HIGH: u128 = LOW << 7; // 0x8080…80
        let word = u128::from_le_bytes(*raw);
        if word & HIGH == 0 {
            // Every byte is < 0x80, so `b - 1` borrows from the next byte only where b == 0:
            // the lowest flagged byte is the first NUL (none flagged: 16 bytes long).
            let nul = word.wrapping_sub(LOW) & !word & HIGH;
            let len = nul.trailing_zeros() / 8;
            let kept = u128::MAX.checked_shr(128 - 8 * len).unwrap_or(0);
            return Self {
                bytes: (word & kept).to_le_bytes(),
                // len ≤ 16.
                len: len as u8,
            };
        }
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Self::from(String::from_utf8_lossy(&raw[..end]).as_ref())
    }

    pub fn as_str(&self) -> &str {
        let bytes = &self.bytes[..usize::from(self.len)];
        // SAFETY: `bytes` is UTF-8: `from_kernel` keeps ASCII bytes as they are and gives
        // anything else to `from`, which stores a `str`'s prefix cut at a character boundary;
        // nothing else writes `bytes` or `len`. (Checking it again cost ~70 instructions on
        // every flow update's metrics and every serialised flow.)
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

/// The longest prefix of `name` that fits, cut at a character boundary.
impl From<&str> for Comm {
    fn from(name: &str) -> Self {
        let mut len = name.len().min(Self::CAPACITY);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0; Self::CAPACITY];
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        Self {
            bytes,
            // len ≤ CAPACITY = 16.
            len: len as u8,
        }
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for Comm {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Identity of a connection: the kernel reuses socket addresses, so the start time is part of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FlowId {
    /// Kernel socket address (serialized as hex: it exceeds JSON's exact integer range).
    #[serde(serialize_with = "hex_u64")]
    pub sock_id: u64,
    /// CLOCK_MONOTONIC ns of the `connect()` that started it.
    pub start_mono_ns: u64,
}

/// `0x…`, lower-case, without leading zeros (`{:#x}`), formatted on the stack: every printed
/// line, page and live message carries one, and `fmt` machinery was a tenth of `probe`'s printer.
fn hex_u64<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 18];
    let digits = ((64 - v.leading_zeros()).max(1)).div_ceil(4) as usize;
    buf[..2].copy_from_slice(b"0x");
    for i in 0..digits {
        let nibble = (v >> (4 * (digits - 1 - i))) & 0xf;
        buf[2 + i] = b"0123456789abcdef"[nibble as usize];
    }
    s.serialize_str(std::str::from_utf8(&buf[..2 + digits]).map_err(serde::ser::Error::custom)?)
}

/// Writes `value` in decimal at `buf[at..]`; returns the end.
fn put_decimal(buf: &mut [u8], at: usize, value: u16) -> usize {
    let mut digits = [0u8; 5];
    let (mut len, mut v) = (0, value);
    loop {
        digits[len] = b'0' + (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for (i, d) in digits[..len].iter().rev().enumerate() {
        buf[at + i] = *d;
    }
    at + len
}

/// A socket address as std's `Display` writes it; IPv4 (nearly every flow) formatted on the
/// stack, IPv6 through `Display` (its zero compression is not worth repeating).
fn socket_addr<S: serde::Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
    let SocketAddr::V4(v4) = a else {
        return s.collect_str(a);
    };
    let mut buf = [0u8; 21];
    let mut n = 0;
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        n = put_decimal(&mut buf, n, u16::from(octet));
        buf[n] = if i == 3 { b':' } else { b'.' };
        n += 1;
    }
    n = put_decimal(&mut buf, n, v4.port());
    s.serialize_str(std::str::from_utf8(&buf[..n]).map_err(serde::ser::Error::custom)?)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowState {
    Established,
    Closed,
    Failed,
}

/// How a connection ended.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    strum::EnumString,
    strum::EnumIter,
    strum::EnumCount,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum FlowOutcome {
    /// Orderly close (FIN).
    Closed,
    /// The peer sent a RST.
    ResetByPeer,
    /// This host sent a RST (e.g. `SO_LINGER` 0, or unread data at close).
    ResetLocally,
    /// Connect refused (RST in answer to the SYN).
    Refused,
    /// Connect or retransmission timed out.
    TimedOut,
    /// No route / host unreachable.
    Unreachable,
    /// The application gave up before the handshake completed.
    Aborted,
    /// Failed with another errno.
    Failed,
}

const ECONNREFUSED: i32 = 111;
const ETIMEDOUT: i32 = 110;
const ECONNRESET: i32 = 104;
const EHOSTUNREACH: i32 = 113;
const ENETUNREACH: i32 = 101;
const EHOSTDOWN: i32 = 112;

impl FlowOutcome {
    /// Outcome of a connect that never reached ESTABLISHED.
    pub fn of_failed_connect(errno: Option<i32>, resets_received: u32) -> Self {
        match errno {
            Some(ECONNREFUSED) => Self::Refused,
            Some(ETIMEDOUT) => Self::TimedOut,
            Some(EHOSTUNREACH | ENETUNREACH | EHOSTDOWN) => Self::Unreachable,
            Some(0) => Self::Aborted,
            None if resets_received > 0 => Self::Refused,
            _ => Self::Failed,
        }
    }

    /// Outcome of an established connection that reached CLOSE.
    pub fn of_close(errno: Option<i32>, resets_received: u32, resets_sent: u32) -> Self {
        // The reset counters come first: an abortive local close (SO_LINGER 0) also leaves
        // ECONNRESET in sk_err.
        if resets_received > 0 {
            Self::ResetByPeer
        } else if resets_sent > 0 {
            Self::ResetLocally
        } else if errno == Some(ECONNRESET) {
            Self::ResetByPeer
        } else if errno == Some(ETIMEDOUT) {
            Self::TimedOut
        } else {
            Self::Closed
        }
    }
}

/// What the TC classifier saw on the wire for a flow (`skb->len`, L2 header included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WireStats {
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Flow {
    pub id: FlowId,
    pub state: FlowState,
    pub outcome: Option<FlowOutcome>,
    /// Process (tgid) and thread that called `connect()`, and its command name.
    pub pid: u32,
    pub tid: u32,
    pub comm: Comm,
    pub cgroup_id: u64,
    #[serde(serialize_with = "socket_addr")]
    pub local: SocketAddr,
    #[serde(serialize_with = "socket_addr")]
    pub remote: SocketAddr,
    /// Wall-clock time of the `connect()`, ns since the Unix epoch.
    pub start_unix_ns: u64,
    /// SYN_SENT → ESTABLISHED.
    pub connect_latency_ns: Option<u64>,
    /// Wall-clock time of the close or failure, ns since the Unix epoch.
    pub end_unix_ns: Option<u64>,
    /// `sk_err` at the end, when known (a positive errno; 0 for none).
    pub errno: Option<i32>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Send and receive calls on the socket, when every message is hooked (`run`, or `probe
    /// --per-message-hooks`); `None` when only the totals at close are read.
    pub send_calls: Option<u64>,
    pub recv_calls: Option<u64>,
    pub retransmits: u32,
    pub resets_sent: u32,
    pub resets_received: u32,
    /// Smoothed RTT, when the kernel exposes it.
    pub srtt_us: Option<u32>,
    /// Only when a TC classifier saw the flow.
    pub wire: Option<WireStats>,
    /// The connection's last two turns, newest first, as its `Closed` event gave them (an open
    /// connection's live ones are read from the kernel).
    #[serde(skip)]
    pub turns: [Turn; 2],
}

/// One exchange on a connection (a request, then its response) as the kernel delimits it: it
/// starts at a send that follows received data, and holds the connection's counters at that
/// instant. `start_mono_ns == 0`: no such turn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Turn {
    pub start_mono_ns: u64,
    pub sent: u64,
    pub received: u64,
    pub retransmits: u32,
}

impl Flow {
    pub fn is_finished(&self) -> bool {
        matches!(self.state, FlowState::Closed | FlowState::Failed)
    }

    /// Lifetime from `connect()` to close, when closed.
    pub fn duration_ns(&self) -> Option<u64> {
        self.end_unix_ns
            .map(|end| end.saturating_sub(self.start_unix_ns))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowUpdateKind {
    Established,
    Closed,
    Failed,
}

/// A change to a flow, as published on the [`super::EventBus`]. The flow is shared with the
/// flow table that keeps it: one allocation per kernel event, no copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowUpdate {
    pub kind: FlowUpdateKind,
    pub flow: Arc<Flow>,
}

/// A closed loopback flow from `local_port` to port 80, for tests.
#[cfg(test)]
pub(crate) fn sample_flow(sock_id: u64, local_port: u16) -> Flow {
    Flow {
        id: FlowId {
            sock_id,
            start_mono_ns: 1,
        },
        state: FlowState::Closed,
        outcome: Some(FlowOutcome::Closed),
        pid: 1,
        tid: 1,
        comm: "t".into(),
        cgroup_id: 0,
        local: SocketAddr::from(([127, 0, 0, 1], local_port)),
        remote: SocketAddr::from(([127, 0, 0, 1], 80)),
        start_unix_ns: 0,
        connect_latency_ns: Some(1),
        end_unix_ns: None,
        errno: None,
        bytes_sent: 0,
        bytes_received: 0,
        send_calls: Some(0),
        recv_calls: Some(0),
        retransmits: 0,
        resets_sent: 0,
        resets_received: 0,
        srtt_us: None,
        wire: None,
        turns: [Turn::default(); 2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_addresses_serialise_as_std_formats_them() {
        for sock_id in [0, 1, 0xf, 0x10, 0xffff_8881_2345_6780, u64::MAX] {
            let id = FlowId {
                sock_id,
                start_mono_ns: 7,
            };
            let expected = format!("{{\"sock_id\":\"{sock_id:#x}\",\"start_mono_ns\":7}}");
            assert_eq!(serde_json::to_string(&id).unwrap(), expected);
        }
        let addresses: [SocketAddr; 5] = [
            ([0, 0, 0, 0], 0).into(),
            ([255, 255, 255, 255], 65_535).into(),
            ([10, 0, 12, 7], 8080).into(),
            ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 443).into(),
            "[::ffff:10.0.0.1]:80".parse().unwrap(),
        ];
        for addr in addresses {
            let mut flow = sample_flow(1, 1);
            (flow.local, flow.remote) = (addr, addr);
            let json: serde_json::Value = serde_json::to_value(&flow).unwrap();
            assert_eq!(json["local"], addr.to_string(), "{addr}");
            assert_eq!(json["remote"], addr.to_string(), "{addr}");
        }
    }

    #[test]
    fn failed_connect_outcomes_follow_errno() {
        assert_eq!(
            FlowOutcome::of_failed_connect(Some(111), 1),
            FlowOutcome::Refused
        );
        assert_eq!(
            FlowOutcome::of_failed_connect(Some(110), 0),
            FlowOutcome::TimedOut
        );
        assert_eq!(
            FlowOutcome::of_failed_connect(Some(113), 0),
            FlowOutcome::Unreachable
        );
        assert_eq!(
            FlowOutcome::of_failed_connect(Some(0), 0),
            FlowOutcome::Aborted
        );
        assert_eq!(
            FlowOutcome::of_failed_connect(None, 1),
            FlowOutcome::Refused
        );
        assert_eq!(FlowOutcome::of_failed_connect(None, 0), FlowOutcome::Failed);
        assert_eq!(
            FlowOutcome::of_failed_connect(Some(22), 0),
            FlowOutcome::Failed
        );
    }

    #[test]
    fn close_outcomes_prefer_resets() {
        assert_eq!(FlowOutcome::of_close(Some(0), 0, 0), FlowOutcome::Closed);
        assert_eq!(
            FlowOutcome::of_close(Some(104), 0, 0),
            FlowOutcome::ResetByPeer
        );
        assert_eq!(
            FlowOutcome::of_close(Some(0), 1, 0),
            FlowOutcome::ResetByPeer
        );
        assert_eq!(
            FlowOutcome::of_close(Some(0), 0, 1),
            FlowOutcome::ResetLocally
        );
        assert_eq!(
            FlowOutcome::of_close(Some(110), 0, 0),
            FlowOutcome::TimedOut
        );
        assert_eq!(FlowOutcome::of_close(None, 0, 0), FlowOutcome::Closed);
    }

    #[test]
    fn a_command_name_is_read_up_to_its_nul_or_all_sixteen_bytes() {
        assert_eq!(Comm::from_kernel(b"curl\0\0\0\0\0\0\0\0\0\0\0\0"), "curl");
        assert_eq!(Comm::from_kernel(b"abcdefghijklmnop"), "abcdefghijklmnop");
        assert_eq!(Comm::from_kernel(&[0; 16]), "");
    }

    #[test]
    fn bytes_after_the_nul_are_not_part_of_the_name() {
        let comm = Comm::from_kernel(b"ab\0zzzz\0\x7f\x01yyyyyy");
        assert_eq!(comm, "ab");
        assert_eq!(comm, Comm::from("ab"), "stale bytes kept past the name");
        assert_eq!(Comm::from_kernel(b"\0bcdefghijklmnop"), Comm::default());
        assert_eq!(Comm::from_kernel(b"abcdefghijklmno\0"), "abcdefghijklmno");
    }

    #[test]
    fn a_command_name_that_is_not_utf8_keeps_whole_characters_only() {
        // 0xff is no UTF-8: each becomes U+FFFD (3 bytes); 16 bytes hold "a" and five of them.
        let comm = Comm::from_kernel(&[
            b'a', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ]);
        assert_eq!(comm, "a\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}");
        assert_eq!(Comm::from("ééééééééé").as_str().len(), 16);
    }

    #[test]
    fn a_command_name_serializes_as_a_json_string() {
        let json = serde_json::to_string(&Comm::from("java")).unwrap();
        assert_eq!(json, "\"java\"");
    }
}
