//! Kernel wire events → domain flows.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netscope_common::{
    AF_INET, ConnEvent, EventKind, FlowTuple, SK_ERR_UNKNOWN, SRTT_UNKNOWN, WireCounters,
};

use crate::clock::MonoClock;
use crate::domain::{Comm, Flow, FlowId, FlowOutcome, FlowState, FlowUpdateKind, Turn, WireStats};

fn ip(family: u16, bytes: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        // An AF_INET6 socket talking to an IPv4 peer shows ::ffff:a.b.c.d: show a.b.c.d.
        Ipv6Addr::from(*bytes).to_canonical()
    }
}

/// (local, remote) socket addresses of a tuple oriented from the connecting side.
pub fn endpoints(tuple: &FlowTuple) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(ip(tuple.family, &tuple.saddr), tuple.sport),
        SocketAddr::new(ip(tuple.family, &tuple.daddr), tuple.dport),
    )
}

fn wire(w: &WireCounters) -> Option<WireStats> {
    (*w != WireCounters::default()).then_some(WireStats {
        packets_out: w.packets_out,
        bytes_out: w.bytes_out,
        packets_in: w.packets_in,
        bytes_in: w.bytes_in,
    })
}

/// The end of a connection is its transition to CLOSE; a socket destroyed without one (never
/// seen closing) ends at its destruction.
fn end_ns(ev: &ConnEvent) -> u64 {
    if ev.closed_ns != 0 {
        ev.closed_ns
    } else {
        ev.header.ts_ns
    }
}

pub fn update_kind(kind: EventKind) -> FlowUpdateKind {
    match kind {
        EventKind::Established => FlowUpdateKind::Established,
        EventKind::ConnectFailed => FlowUpdateKind::Failed,
        EventKind::Closed => FlowUpdateKind::Closed,
    }
}

/// Which of an event's call counts mean something: the kernel counts send calls when it hooks
/// every send (the length tracepoint or the `tcp_sendmsg` kprobe), receive calls only with the
/// length tracepoint (`tcp_cleanup_rbuf` does not run once per call).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountedCalls {
    pub sends: bool,
    pub receives: bool,
}

impl CountedCalls {
    pub const BOTH: Self = Self {
        sends: true,
        receives: true,
    };
    pub const NONE: Self = Self {
        sends: false,
        receives: false,
    };
}

/// The flow as this one event describes it (every event carries the whole identity).
pub fn flow_from_event(
    kind: EventKind,
    ev: &ConnEvent,
    clock: &MonoClock,
    counted: CountedCalls,
) -> Flow {
    let (local, remote) = endpoints(&ev.tuple);
    let errno = (ev.sk_err != SK_ERR_UNKNOWN).then_some(ev.sk_err);
    let (state, outcome, end) = match kind {
        EventKind::Established => (FlowState::Established, None, None),
        EventKind::ConnectFailed => (
            FlowState::Failed,
            Some(FlowOutcome::of_failed_connect(errno, ev.resets_received)),
            Some(clock.to_unix_ns(end_ns(ev))),
        ),
        EventKind::Closed => (
            FlowState::Closed,
            Some(FlowOutcome::of_close(
                errno,
                ev.resets_received,
                ev.resets_sent,
            )),
            Some(clock.to_unix_ns(end_ns(ev))),
        ),
    };
    Flow {
        id: FlowId {
            sock_id: ev.header.sock_id,
            start_mono_ns: ev.start_ns,
        },
        state,
        outcome,
        pid: ev.header.tgid,
        tid: ev.header.pid,
        comm: Comm::from_kernel(&ev.comm),
        cgroup_id: ev.header.cgroup_id,
        local,
        remote,
        start_unix_ns: clock.to_unix_ns(ev.start_ns),
        connect_latency_ns: (ev.established_ns != 0)
            .then(|| ev.established_ns.saturating_sub(ev.start_ns)),
        end_unix_ns: end,
        errno,
        bytes_sent: ev.bytes_sent,
        bytes_received: ev.bytes_received,
        send_calls: counted.sends.then_some(ev.send_calls),
        recv_calls: counted.receives.then_some(ev.recv_calls),
        retransmits: ev.retransmits,
        resets_sent: ev.resets_sent,
        resets_received: ev.resets_received,
        srtt_us: (ev.srtt_us != SRTT_UNKNOWN).then_some(ev.srtt_us),
        wire: wire(&ev.wire),
        turns: [turn(&ev.turn), turn(&ev.prev_turn)],
    }
}

/// A kernel turn (from the ring or from `SOCKS`) as the domain's.
pub fn turn(t: &netscope_common::Turn) -> Turn {
    Turn {
        start_mono_ns: t.start_ns,
        sent: t.sent,
        received: t.received,
        retransmits: t.retransmits,
    }
}

#[cfg(test)]
mod tests {
    use netscope_common::{AF_INET6, EventHeader};

    use super::*;

    fn event(kind: EventKind) -> ConnEvent {
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        ConnEvent {
            header: EventHeader {
                kind: kind as u32,
                len: kind.record_len() as u32,
                ts_ns: 5_000,
                tgid: 10,
                pid: 11,
                cgroup_id: 1,
                sock_id: 0xabc,
            },
            tuple: FlowTuple {
                family: AF_INET,
                sport: 40_000,
                dport: 8080,
                _pad: 0,
                saddr,
                daddr,
            },
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            start_ns: 1_000,
            established_ns: 1_250,
            sk_err: 0,
            srtt_us: SRTT_UNKNOWN,
            ..ConnEvent::default()
        }
    }

    #[test]
    fn established_event_gives_latency_and_endpoints() {
        let flow = flow_from_event(
            EventKind::Established,
            &event(EventKind::Established),
            &MonoClock::with_offset(1_000_000),
            CountedCalls::BOTH,
        );
        assert_eq!(flow.state, FlowState::Established);
        assert_eq!(flow.connect_latency_ns, Some(250));
        assert_eq!(flow.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(flow.remote, "127.0.0.2:8080".parse().unwrap());
        assert_eq!(flow.comm, "curl");
        assert_eq!(flow.start_unix_ns, 1_001_000);
        assert_eq!(flow.end_unix_ns, None);
        assert_eq!(flow.srtt_us, None);
        assert_eq!(flow.wire, None);
    }

    #[test]
    fn failed_connect_is_refused_by_errno() {
        let mut ev = event(EventKind::ConnectFailed);
        ev.established_ns = 0;
        ev.closed_ns = 4_000;
        ev.sk_err = 111;
        let flow = flow_from_event(
            EventKind::ConnectFailed,
            &ev,
            &MonoClock::with_offset(0),
            CountedCalls::BOTH,
        );
        assert_eq!(flow.state, FlowState::Failed);
        assert_eq!(flow.outcome, Some(FlowOutcome::Refused));
        assert_eq!(flow.connect_latency_ns, None);
        assert_eq!(
            flow.end_unix_ns,
            Some(4_000),
            "ends at CLOSE, not at the event"
        );
        assert_eq!(flow.duration_ns(), Some(3_000));
    }

    #[test]
    fn v4_mapped_v6_is_shown_as_v4() {
        let mut ev = event(EventKind::Closed);
        ev.tuple.family = AF_INET6;
        ev.tuple.daddr = Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets();
        let flow = flow_from_event(
            EventKind::Closed,
            &ev,
            &MonoClock::with_offset(0),
            CountedCalls::BOTH,
        );
        assert_eq!(flow.remote.ip(), IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
    }

    #[test]
    fn call_counts_are_unknown_not_zero_when_messages_are_not_hooked() {
        let mut ev = event(EventKind::Closed);
        (ev.send_calls, ev.recv_calls, ev.bytes_sent) = (3, 2, 900);
        let clock = MonoClock::with_offset(0);
        let hooked = flow_from_event(EventKind::Closed, &ev, &clock, CountedCalls::BOTH);
        assert_eq!((hooked.send_calls, hooked.recv_calls), (Some(3), Some(2)));
        let sends_only = CountedCalls {
            sends: true,
            receives: false,
        };
        let kprobes = flow_from_event(EventKind::Closed, &ev, &clock, sends_only);
        assert_eq!((kprobes.send_calls, kprobes.recv_calls), (Some(3), None));
        (ev.send_calls, ev.recv_calls) = (0, 0);
        let totals_only = flow_from_event(EventKind::Closed, &ev, &clock, CountedCalls::NONE);
        assert_eq!(
            (totals_only.send_calls, totals_only.recv_calls),
            (None, None)
        );
        assert_eq!(totals_only.bytes_sent, 900, "bytes are known either way");
    }
}
