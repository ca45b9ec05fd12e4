//! Wire types shared by NetScope's eBPF programs (`netscope-ebpf`) and its agent.
//!
//! Every type here is `#[repr(C)]`, has no `bool`, no implicit padding, and a compile-time size
//! assertion: a layout change fails the build on both sides instead of corrupting events.
//! Byte decoding and `aya::Pod` impls live behind the `user` feature, never in the kernel build.
#![cfg_attr(target_arch = "bpf", no_std)]

#[cfg(feature = "user")]
mod decode;
#[cfg(feature = "user")]
pub use decode::DecodeError;

/// Compile-time guard: these fields sit at offsets that are multiples of 8, because the kernel
/// programs move them 8 bytes at a time (`netscope-ebpf`'s `words`).
macro_rules! word_aligned {
    ($ty:ty: $($field:ident),+) => {
        const _: () = assert!($(core::mem::offset_of!($ty, $field) % 8 == 0)&&+);
    };
}

/// Kinds of events on the ring buffer. Numbers are stable: never reuse or renumber one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// SYN_SENT → ESTABLISHED: an outbound connect completed.
    Established = 1,
    /// SYN_SENT → CLOSE: an outbound connect failed (refused, timed out, aborted…).
    ConnectFailed = 2,
    /// A tracked connection's socket was destroyed (`tcp:tcp_destroy_sock`), after it reached
    /// CLOSE and the application let go of it: final counters, nothing can change them after.
    Closed = 3,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Established),
            2 => Some(Self::ConnectFailed),
            3 => Some(Self::Closed),
            _ => None,
        }
    }
}

/// Header shared by every ring-buffer event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] as u32.
    pub kind: u32,
    /// Size in bytes of the whole event, header included; lets the reader reject torn records.
    pub len: u32,
    /// CLOCK_MONOTONIC nanoseconds at which the kernel saw the transition (for `Closed`: to
    /// CLOSE, or the socket's destruction when it was not seen closing).
    pub ts_ns: u64,
    /// Process (thread group) that called `connect()`.
    pub tgid: u32,
    /// Thread that called `connect()`.
    pub pid: u32,
    /// cgroup v2 id of the connecting task.
    pub cgroup_id: u64,
    /// Kernel socket address: identifies the connection while it lives (reused after close, so
    /// user space keys flows by `(sock_id, start_ns)`).
    pub sock_id: u64,
}
const _: () = assert!(size_of::<EventHeader>() == 40);

/// Address families as the kernel numbers them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// A TCP 4-tuple, oriented from the connecting (local) side. Ports in host byte order; an IPv4
/// address sits in the first 4 bytes of its 16-byte field, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowTuple {
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}
const _: () = assert!(size_of::<FlowTuple>() == 40);
word_aligned!(FlowTuple: saddr, daddr);

/// Packets and bytes the TC classifier saw on the wire for one flow (`skb->len`, L2 included;
/// a GSO/GRO aggregate counts as one packet, as tcpdump shows it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireCounters {
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
}
const _: () = assert!(size_of::<WireCounters>() == 32);

/// One exchange on a connection as the kernel delimits it: a turn starts at the connection's
/// first send, and again at every send that follows received data (HTTP/1.1's request, then
/// its response). It holds the connection's counters *at its start*, so a turn's share is the
/// next turn's counters (or the connection's current ones) minus its own. `start_ns == 0`: no
/// such turn (yet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Turn {
    /// CLOCK_MONOTONIC ns of the send that started it.
    pub start_ns: u64,
    pub sent: u64,
    pub received: u64,
    pub retransmits: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Turn>() == 32);

/// Per-socket state the kernel keeps for a tracked outbound connection (map `SOCKS`, keyed by
/// socket address). User space may read it to sample a live connection's counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockState {
    pub start_ns: u64,
    pub established_ns: u64,
    /// When the socket reached CLOSE; 0 while it has not.
    pub closed_ns: u64,
    /// The 4-tuple, complete from ESTABLISHED on (the source port is 0 before).
    pub tuple: FlowTuple,
    /// `bpf_get_current_pid_tgid()` at connect time: tgid in the high half.
    pub pid_tgid: u64,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub send_calls: u64,
    pub recv_calls: u64,
    pub retransmits: u32,
    pub resets_sent: u32,
    pub resets_received: u32,
    /// The state the socket left for CLOSE; 0 while it has not.
    pub close_from_state: u32,
    /// Egress wire counters of the TC classifier (ingress ones are in the `WIRE` map, keyed by
    /// tuple, because an arriving packet has no socket yet at TC ingress). Only `*_out` is used.
    pub wire_out: WireCounters,
    /// The current turn and the one before it.
    pub turn: Turn,
    pub prev_turn: Turn,
    /// Without the length tracepoints: `tcp_sock.write_seq` and `copied_seq` at ESTABLISHED;
    /// the bytes the application wrote and read are their distance from these.
    pub write_seq_base: u32,
    pub copied_seq_base: u32,
}
const _: () = assert!(size_of::<SockState>() == 248);
word_aligned!(SockState: tuple, comm, turn, prev_turn);

/// The one event type on the ring buffer: the connection's identity and, for `Closed` and
/// `ConnectFailed`, its final counters.
///
/// An `Established` record is only the first [`ESTABLISHED_LEN`] bytes: what is known when a
/// connect completes (identity, times, SRTT, SYN retransmits). What follows is only known at
/// the end, and the decoder gives it its "not yet" values for an `Established` event: zeros,
/// `sk_err` [`SK_ERR_UNKNOWN`], `old_state` SYN_SENT. (120 bytes instead of 272: fewer cache
/// lines written by the kernel and read by the agent, twice the connects in the same ring.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEvent {
    pub header: EventHeader,
    pub tuple: FlowTuple,
    pub comm: [u8; 16],
    /// CLOCK_MONOTONIC ns of CLOSE → SYN_SENT (inside `connect()`).
    pub start_ns: u64,
    /// CLOCK_MONOTONIC ns of SYN_SENT → ESTABLISHED; 0 if never established.
    pub established_ns: u64,
    /// Smoothed RTT in µs at the time of the event; `u32::MAX` when the kernel offset is unknown.
    pub srtt_us: u32,
    pub retransmits: u32,
    // ---- end of an `Established` record (ESTABLISHED_LEN) ----
    /// CLOCK_MONOTONIC ns of the transition to CLOSE.
    pub closed_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub send_calls: u64,
    pub recv_calls: u64,
    pub wire: WireCounters,
    pub resets_sent: u32,
    pub resets_received: u32,
    /// `sk->sk_err` (positive errno) at the time of the event; `-1` when unknown.
    pub sk_err: i32,
    /// TCP state the socket left for CLOSE (`TCP_*` numbering of the kernel); for
    /// `Established`, SYN_SENT.
    pub old_state: u32,
    /// For `Closed`: the connection's last two turns (a call that read its response just
    /// before the close finds its share here).
    pub turn: Turn,
    pub prev_turn: Turn,
}
const _: () = assert!(size_of::<ConnEvent>() == 272);
word_aligned!(ConnEvent: tuple, comm, closed_ns, wire, turn, prev_turn);

/// Bytes of an `Established` record: the fields of [`ConnEvent`] before `closed_ns`.
pub const ESTABLISHED_LEN: usize = core::mem::offset_of!(ConnEvent, closed_ns);
const _: () = assert!(ESTABLISHED_LEN == 120);

impl EventKind {
    /// Bytes of this kind's record on the ring.
    pub const fn record_len(self) -> usize {
        match self {
            Self::Established => ESTABLISHED_LEN,
            Self::ConnectFailed | Self::Closed => size_of::<ConnEvent>(),
        }
    }
}

/// Value of an unknown `srtt_us`.
pub const SRTT_UNKNOWN: u32 = u32::MAX;
/// Value of an unknown `sk_err`.
pub const SK_ERR_UNKNOWN: i32 = -1;

/// Offsets into tracepoint records, read from tracefs `format` files at load time.
/// `OFFSET_NONE` marks a field this kernel does not have.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetStateOffsets {
    pub skaddr: u32,
    pub oldstate: u32,
    pub newstate: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub protocol: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SetStateOffsets>() == 48);

/// The fields of `sock:inet_sock_set_state` the programs use (read one by one at the offsets
/// tracefs gave; this is not the kernel's layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetStateRecord {
    pub skaddr: u64,
    pub oldstate: i32,
    pub newstate: i32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub saddr_v6: [u8; 16],
    pub daddr_v6: [u8; 16],
}
const _: () = assert!(size_of::<SetStateRecord>() == 64);
word_aligned!(SetStateRecord: saddr_v6, daddr_v6);

/// Offsets of `sock:sock_send_length` / `sock:sock_recv_length` records.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockLengthOffsets {
    pub sk: u32,
    pub ret: u32,
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SockLengthOffsets>() == 16);

/// The fields of `sock:sock_{send,recv}_length` the programs use (read one by one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockLengthRecord {
    pub sk_lo: u32,
    pub sk_hi: u32,
    pub family: u16,
    pub protocol: u16,
    pub ret: i32,
    pub flags: i32,
}
const _: () = assert!(size_of::<SockLengthRecord>() == 20);

impl SockLengthRecord {
    pub const fn sk(&self) -> u64 {
        ((self.sk_hi as u64) << 32) | self.sk_lo as u64
    }
}

pub const OFFSET_NONE: u32 = u32::MAX;

/// Filter bits of [`ProbeConfig::filters`]: each set bit adds one condition that a new
/// connection must meet to be tracked (all set conditions must hold).
pub const FILTER_TGID: u32 = 1 << 0;
pub const FILTER_CGROUP: u32 = 1 << 1;
pub const FILTER_DPORT: u32 = 1 << 2;
pub const FILTER_DST: u32 = 1 << 3;

/// Load-time configuration of the kernel programs (the global `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    pub set_state: SetStateOffsets,
    pub send_length: SockLengthOffsets,
    pub recv_length: SockLengthOffsets,
    /// `skaddr` in `tcp:tcp_retransmit_skb`, `tcp:tcp_send_reset`, `tcp:tcp_receive_reset`,
    /// `tcp:tcp_destroy_sock`.
    pub retransmit_skaddr: u32,
    pub send_reset_skaddr: u32,
    pub receive_reset_skaddr: u32,
    pub destroy_skaddr: u32,
    /// 1 when a TC classifier is attached somewhere (otherwise `WIRE` is never consulted).
    pub tc_attached: u32,
    /// 1 to read tracepoint fields with `bpf_probe_read` only (no direct context loads).
    pub helper_reads: u32,
    /// 1 when `sock:sock_send_length`/`sock_recv_length` are attached (Linux ≥ 6.4): bytes and
    /// calls are counted as they happen. 0 (older kernels): a connection's bytes are read from
    /// `tcp_sock` at its close, as tcplife does, and calls are not counted.
    pub length_hooks: u32,
    /// Offset of `sk_err` in `struct sock` (from kernel BTF), or `OFFSET_NONE`.
    pub sock_sk_err: u32,
    /// Offset of `srtt_us` in `struct tcp_sock` (from kernel BTF), or `OFFSET_NONE`.
    pub tcp_srtt_us: u32,
    /// `FILTER_*` bits.
    pub filters: u32,
    /// Offsets of `bytes_sent`, `bytes_retrans` and `bytes_received` in `struct tcp_sock`
    /// (kernel BTF, Linux ≥ 4.19), or `OFFSET_NONE`: what a connection sent (payload, its
    /// retransmissions taken out) and received when `length_hooks` is 0.
    pub tcp_bytes_sent: u32,
    pub tcp_bytes_retrans: u32,
    pub tcp_bytes_received: u32,
    /// Offsets of `write_seq` and `copied_seq` in `struct tcp_sock` (kernel BTF): with
    /// `length_hooks` 0, the kprobes on `tcp_sendmsg` and `tcp_cleanup_rbuf` count a live
    /// connection's bytes from them.
    pub tcp_write_seq: u32,
    /// Bytes of unread data in the ring at which the producer forces a wake-up of user space;
    /// below it events are submitted without wake-up and user space polls on a timer.
    pub wakeup_bytes: u64,
    pub tcp_copied_seq: u32,
    /// Offsets of `sk_protocol` in `struct sock` and of `skc_v6_daddr`, `skc_v6_rcv_saddr` in
    /// `struct sock_common` (kernel BTF), or `OFFSET_NONE`: the BTF tracepoints read a
    /// connection's protocol and IPv6 addresses from its socket (see [`sock_head`]).
    pub sock_protocol: u32,
    pub sock_v6_daddr: u32,
    pub sock_v6_rcv_saddr: u32,
    /// Offset of `inet_sport` (`__be16`) in `struct inet_sock` (kernel BTF), or `OFFSET_NONE`:
    /// the local port as the classic tracepoint reports it (`skc_num` is already 0 when a
    /// failed connect's socket reaches CLOSE: its port went back first).
    pub inet_sport: u32,
    /// `skbaddr` in `tcp:tcp_retransmit_skb`.
    pub retransmit_skbaddr: u32,
    /// `err` in `tcp:tcp_retransmit_skb`, or `OFFSET_NONE`. Where the tracepoint has it (newer
    /// kernels, as its third argument), it also fires for a retransmission that was not sent;
    /// before, only for one that was. Only those sent are counted.
    pub retransmit_err: u32,
    /// Offset of `tcp_gso_segs` in `struct sk_buff` (its `cb`, from kernel BTF, plus the
    /// member's place in `struct tcp_skb_cb`), or `OFFSET_NONE`: a retransmission counts the
    /// skb's segments, as `tcpi_total_retrans` does.
    pub skb_gso_segs: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ProbeConfig>() == 184);
const _: () = assert!(core::mem::offset_of!(ProbeConfig, wakeup_bytes) == 136);

impl ProbeConfig {
    /// A configuration in which every offset is unknown: the programs do nothing until user
    /// space overrides it at load time.
    pub const UNSET: Self = Self {
        set_state: SetStateOffsets {
            skaddr: OFFSET_NONE,
            oldstate: OFFSET_NONE,
            newstate: OFFSET_NONE,
            sport: OFFSET_NONE,
            dport: OFFSET_NONE,
            family: OFFSET_NONE,
            protocol: OFFSET_NONE,
            saddr: OFFSET_NONE,
            daddr: OFFSET_NONE,
            saddr_v6: OFFSET_NONE,
            daddr_v6: OFFSET_NONE,
            _pad: 0,
        },
        send_length: SockLengthOffsets {
            sk: OFFSET_NONE,
            ret: OFFSET_NONE,
            flags: OFFSET_NONE,
            _pad: 0,
        },
        recv_length: SockLengthOffsets {
            sk: OFFSET_NONE,
            ret: OFFSET_NONE,
            flags: OFFSET_NONE,
            _pad: 0,
        },
        retransmit_skaddr: OFFSET_NONE,
        send_reset_skaddr: OFFSET_NONE,
        receive_reset_skaddr: OFFSET_NONE,
        destroy_skaddr: OFFSET_NONE,
        tc_attached: 0,
        helper_reads: 0,
        length_hooks: 0,
        sock_sk_err: OFFSET_NONE,
        tcp_srtt_us: OFFSET_NONE,
        filters: 0,
        tcp_bytes_sent: OFFSET_NONE,
        tcp_bytes_retrans: OFFSET_NONE,
        tcp_bytes_received: OFFSET_NONE,
        tcp_write_seq: OFFSET_NONE,
        wakeup_bytes: 0,
        tcp_copied_seq: OFFSET_NONE,
        sock_protocol: OFFSET_NONE,
        sock_v6_daddr: OFFSET_NONE,
        sock_v6_rcv_saddr: OFFSET_NONE,
        inet_sport: OFFSET_NONE,
        retransmit_skbaddr: OFFSET_NONE,
        retransmit_err: OFFSET_NONE,
        skb_gso_segs: OFFSET_NONE,
        _pad: 0,
    };
}

/// The head of `struct sock_common` (at offset 0 of `struct sock`), as every kernel NetScope
/// supports lays it out: the BTF tracepoint programs load the IPv4 tuple from these fields.
/// The agent loads those programs only when the kernel's BTF puts each field at the offset
/// given here. (The local port is read from `inet_sock`.)
pub mod sock_head {
    /// `skc_daddr`, `__be32`.
    pub const DADDR: u32 = 0;
    /// `skc_rcv_saddr`, `__be32`.
    pub const RCV_SADDR: u32 = 4;
    /// `skc_dport`, `__be16`.
    pub const DPORT: u32 = 12;
    /// `skc_family`, `unsigned short`.
    pub const FAMILY: u32 = 16;
}

/// Indexes of the per-CPU kernel counters (map `COUNTERS`).
pub mod counter {
    /// Events successfully submitted to the ring buffer.
    pub const EVENTS_EMITTED: u32 = 0;
    /// Events lost because the ring buffer had no room (failed reserve).
    pub const EVENTS_DROPPED: u32 = 1;
    /// Outbound connects admitted by the filters and tracked.
    pub const CONNECTS_TRACKED: u32 = 2;
    /// Outbound connects rejected by the filters.
    pub const CONNECTS_FILTERED: u32 = 3;
    /// Outbound connects not tracked because the socket table was full.
    pub const SOCK_TABLE_FULL: u32 = 4;
    /// Reads of tracepoint or kernel memory that failed.
    pub const READ_ERRORS: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;

    pub const NAMES: [&str; COUNT as usize] = [
        "events_emitted",
        "events_dropped",
        "connects_tracked",
        "connects_filtered",
        "sock_table_full",
        "read_errors",
    ];
}

/// Kernel TCP states (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: u32 = 1;
    pub const SYN_SENT: u32 = 2;
    pub const SYN_RECV: u32 = 3;
    pub const FIN_WAIT1: u32 = 4;
    pub const FIN_WAIT2: u32 = 5;
    pub const TIME_WAIT: u32 = 6;
    pub const CLOSE: u32 = 7;
    pub const CLOSE_WAIT: u32 = 8;
    pub const LAST_ACK: u32 = 9;
    pub const LISTEN: u32 = 10;
    pub const CLOSING: u32 = 11;

    pub const fn name(state: u32) -> &'static str {
        match state {
            ESTABLISHED => "ESTABLISHED",
            SYN_SENT => "SYN_SENT",
            SYN_RECV => "SYN_RECV",
            FIN_WAIT1 => "FIN_WAIT1",
            FIN_WAIT2 => "FIN_WAIT2",
            TIME_WAIT => "TIME_WAIT",
            CLOSE => "CLOSE",
            CLOSE_WAIT => "CLOSE_WAIT",
            LAST_ACK => "LAST_ACK",
            LISTEN => "LISTEN",
            CLOSING => "CLOSING",
            _ => "UNKNOWN",
        }
    }
}

/// Names of maps and programs in the kernel object, so both sides agree on them.
pub mod names {
    pub const MAP_EVENTS: &str = "EVENTS";
    pub const MAP_SOCKS: &str = "SOCKS";
    pub const MAP_COUNTERS: &str = "COUNTERS";
    pub const MAP_WIRE: &str = "WIRE";
    pub const MAP_FILTER_TGID: &str = "FILTER_TGID";
    pub const MAP_FILTER_CGROUP: &str = "FILTER_CGROUP";
    pub const MAP_FILTER_DPORT: &str = "FILTER_DPORT";
    pub const MAP_FILTER_DST_V4: &str = "FILTER_DST_V4";
    pub const MAP_FILTER_DST_V6: &str = "FILTER_DST_V6";
    pub const GLOBAL_CONFIG: &str = "CONFIG";
}
