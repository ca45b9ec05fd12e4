//! The life of an outbound TCP connection.
//!
//! `sock:inet_sock_set_state`:
//! - CLOSE → SYN_SENT (process context, inside `connect()`): apply the filters, remember pid,
//!   comm, cgroup and the start time in `SOCKS`. Nothing is emitted.
//! - SYN_SENT → ESTABLISHED (softirq): keep the tuple, emit `Established` (connect latency =
//!   its time minus the start).
//! - SYN_SENT → CLOSE: emit `ConnectFailed` with `sk_err` (refused, timed out, …), forget it.
//! - anything else → CLOSE: note the time and the state left. Nothing is emitted yet: after a
//!   half-close the application may still read buffered data.
//!
//! `tcp:tcp_destroy_sock`: the socket is gone, its counters final: emit `Closed` (at the time
//! of the CLOSE transition when there was one), forget it.
//!
//! Each hook has two entry points with one body: the BTF tracepoint (`tp_btf`, what the agent
//! loads when kernel BTF confirms `sock_head`), which gets the kernel's own arguments and
//! reads the few socket fields it needs; and the classic tracepoint, which gets a record the
//! kernel builds field by field for every transition of every socket before the program runs
//! (a cost `bpf_stats` does not show) — kept for kernels where the BTF ones do not load.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated},
    macros::{btf_tracepoint, tracepoint},
    maps::lpm_trie::Key,
    programs::{BtfTracePointContext, TracePointContext},
};
use netscope_common::{
    AF_INET, AF_INET6, ConnEvent, ESTABLISHED_LEN, EventHeader, EventKind, FILTER_CGROUP,
    FILTER_DPORT, FILTER_DST, FILTER_TGID, FlowTuple, SK_ERR_UNKNOWN, SRTT_UNKNOWN, SetStateRecord,
    SockState, WireCounters, counter, tcp_state,
};

use super::{Direct, Error, Probed, SockMem, field, sock_arg};
use crate::{
    maps::{
        EVENTS, FILTER_CGROUP as CGROUPS, FILTER_DPORT as DPORTS, FILTER_DST_V4 as DST_V4,
        FILTER_DST_V6 as DST_V6, FILTER_TGID as TGIDS, SOCK_SCRATCH, SOCKS, WIRE, bump, config,
    },
    words,
};

const IPPROTO_TCP: u16 = 6;

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn ns_set_state(ctx: TracePointContext) -> u32 {
    if let Err(e) = try_set_state(&ctx) {
        e.report(&ctx, "ns_set_state");
    }
    0
}

/// The tracepoint record, field by field at the offsets tracefs gave.
#[inline(always)]
fn read_record(ctx: &TracePointContext) -> Result<SetStateRecord, Error> {
    Ok(SetStateRecord {
        skaddr: field(ctx, config!(set_state.skaddr))?,
        oldstate: field(ctx, config!(set_state.oldstate))?,
        newstate: field(ctx, config!(set_state.newstate))?,
        sport: field(ctx, config!(set_state.sport))?,
        dport: field(ctx, config!(set_state.dport))?,
        family: field(ctx, config!(set_state.family))?,
        protocol: field(ctx, config!(set_state.protocol))?,
        saddr: field(ctx, config!(set_state.saddr))?,
        daddr: field(ctx, config!(set_state.daddr))?,
        saddr_v6: field(ctx, config!(set_state.saddr_v6))?,
        daddr_v6: field(ctx, config!(set_state.daddr_v6))?,
    })
}

/// The state fields first: most of the ~10 transitions of a connection's two sockets matter
/// to nobody, and they leave after two reads; the whole record is read only for the three
/// transitions of an outbound connect.
fn try_set_state(ctx: &TracePointContext) -> Result<(), Error> {
    let new = field::<i32>(ctx, config!(set_state.newstate))? as u32;
    if !matches!(
        new,
        tcp_state::SYN_SENT | tcp_state::ESTABLISHED | tcp_state::CLOSE
    ) || field::<u16>(ctx, config!(set_state.protocol))? != IPPROTO_TCP
    {
        return Ok(());
    }
    let old = field::<i32>(ctx, config!(set_state.oldstate))? as u32;
    transition(
        old,
        new,
        || field(ctx, config!(set_state.skaddr)),
        |_| Ok(Some((read_record(ctx)?, Probed))),
    )
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`, as BTF types it.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn ns_set_state_btf(ctx: BtfTracePointContext) -> u32 {
    if let Err(e) = try_set_state_btf(&ctx) {
        e.report(&ctx, "ns_set_state_btf");
    }
    0
}

/// The states are plain arguments: a transition that matters to nobody costs two loads.
fn try_set_state_btf(ctx: &BtfTracePointContext) -> Result<(), Error> {
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    transition(
        old as u32,
        new as u32,
        || sock_arg(ctx),
        |sk| match Direct::tcp_sock(ctx) {
            Some(mem) => Ok(Some((sock_record(sk, mem)?, mem))),
            None => Ok(None), // not a TCP socket
        },
    )
}

/// What a transition does, whichever tracepoint reported it. `sk` and `record` (with the way
/// to read more of the socket) are read only for the transitions that need them.
#[inline(always)]
fn transition<M: SockMem>(
    old: u32,
    new: u32,
    sk: impl FnOnce() -> Result<u64, Error>,
    record: impl FnOnce(u64) -> Result<Option<(SetStateRecord, M)>, Error>,
) -> Result<(), Error> {
    match (old, new) {
        (tcp_state::CLOSE, tcp_state::SYN_SENT)
        | (tcp_state::SYN_SENT, tcp_state::ESTABLISHED | tcp_state::CLOSE) => {}
        (_, tcp_state::CLOSE) => return on_close(sk()?, old),
        _ => return Ok(()),
    }
    let Some((rec, mem)) = record(sk()?)? else {
        return Ok(());
    };
    if rec.protocol != IPPROTO_TCP {
        return Ok(()); // e.g. an MPTCP socket: its TCP subflows are what is tracked
    }
    match new {
        tcp_state::SYN_SENT => on_connect(&rec),
        tcp_state::ESTABLISHED => on_established(&rec, mem),
        _ => on_connect_failed(&rec, mem),
    }
}

/// The record a classic tracepoint would have built, from the socket itself: the IPv4
/// addresses, remote port and family from the head of `sock_common`; the local port, the
/// protocol and (IPv6 only) the addresses at their BTF offsets.
#[inline(always)]
fn sock_record(sk: u64, mem: Direct) -> Result<SetStateRecord, Error> {
    let head = mem.head();
    let mut rec = SetStateRecord {
        skaddr: sk,
        sport: u16::from_be(mem.read(sk, config!(inet_sport)).ok_or(Error::NoOffset)?),
        dport: u16::from_be(head.dport_be),
        family: head.family,
        protocol: mem
            .read(sk, config!(sock_protocol))
            .ok_or(Error::NoOffset)?,
        saddr: head.rcv_saddr,
        daddr: head.daddr,
        ..SetStateRecord::default()
    };
    if head.family == AF_INET6 {
        rec.saddr_v6 = mem
            .read_v6(config!(sock_v6_rcv_saddr))
            .ok_or(Error::NoOffset)?;
        rec.daddr_v6 = mem.read_v6(config!(sock_v6_daddr)).ok_or(Error::NoOffset)?;
    }
    Ok(rec)
}

#[tracepoint(category = "tcp", name = "tcp_destroy_sock")]
pub fn ns_destroy_sock(ctx: TracePointContext) -> u32 {
    if let Err(e) = field(&ctx, config!(destroy_skaddr)).and_then(|sk| destroy(sk, Probed)) {
        e.report(&ctx, "ns_destroy_sock");
    }
    0
}

/// `tcp_destroy_sock(struct sock *sk)`, as BTF types it.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn ns_destroy_sock_btf(ctx: BtfTracePointContext) -> u32 {
    let destroyed = match Direct::tcp_sock(&ctx) {
        Some(mem) => sock_arg(&ctx).and_then(|sk| destroy(sk, mem)),
        None => Ok(()),
    };
    if let Err(e) = destroyed {
        e.report(&ctx, "ns_destroy_sock_btf");
    }
    0
}

fn destroy(sk: u64, mem: impl SockMem) -> Result<(), Error> {
    let Some(state) = SOCKS.get_ptr_mut(&sk) else {
        return Ok(());
    };
    // SAFETY: `state` points into a live SOCKS value.
    let (old, closed) = unsafe { ((*state).close_from_state, (*state).closed_ns) };
    let wire = take_wire(state);
    // The event's time is the transition to CLOSE, whose time is already read (usually
    // microseconds before); only a socket destroyed without one reads the clock here.
    let now = if closed != 0 {
        closed
    } else {
        // SAFETY: helper without arguments.
        unsafe { bpf_ktime_get_ns() }
    };
    let emitted = emit(EventKind::Closed, now, (sk, mem), state, &wire, old);
    let _ = SOCKS.remove(&sk);
    emitted
}

fn on_connect(rec: &SetStateRecord) -> Result<(), Error> {
    let sk = rec.skaddr;
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if !admitted(rec, pid_tgid, cgroup_id) {
        bump(counter::CONNECTS_FILTERED);
        return Ok(());
    }
    // Built in per-CPU scratch space: a `SockState` on the stack would take the program past
    // what older verifiers (5.10, 6.1) allow for its combined stack. Zeroed a word at a time,
    // then the fields known at connect time.
    let state = SOCK_SCRATCH.get_ptr_mut(0).ok_or(Error::Read)?;
    // SAFETY: the scratch entry is this CPU's, 8-byte aligned, and only used here, in process
    // context (CLOSE → SYN_SENT happens inside `connect()`).
    unsafe {
        words::zero(state);
        (*state).start_ns = bpf_ktime_get_ns();
        (*state).pid_tgid = pid_tgid;
        (*state).cgroup_id = cgroup_id;
        // Straight into the entry; on failure the name stays zero (empty).
        let comm = &raw mut (*state).comm;
        generated::bpf_get_current_comm(comm.cast(), size_of::<[u8; 16]>() as u32);
    }
    // BPF_ANY: a socket address reused after a close, or a second connect() on the same socket,
    // starts a new connection.
    // SAFETY: `state` points into the live scratch entry, fully written above.
    SOCKS
        .insert(&sk, unsafe { &*state }, 0)
        .map_err(|_| Error::SockTableFull)?;
    bump(counter::CONNECTS_TRACKED);
    Ok(())
}

/// Every set filter must admit the connection.
#[inline(always)]
fn admitted(rec: &SetStateRecord, pid_tgid: u64, cgroup_id: u64) -> bool {
    let filters = config!(filters);
    if filters == 0 {
        return true;
    }
    // SAFETY (all `get`s below): the values are only tested for presence, never held.
    if filters & FILTER_TGID != 0 && unsafe { TGIDS.get(&((pid_tgid >> 32) as u32)) }.is_none() {
        return false;
    }
    if filters & FILTER_CGROUP != 0 && unsafe { CGROUPS.get(&cgroup_id) }.is_none() {
        return false;
    }
    if filters & FILTER_DPORT != 0 && unsafe { DPORTS.get(&rec.dport) }.is_none() {
        return false;
    }
    if filters & FILTER_DST != 0 {
        let hit = if rec.family == AF_INET {
            DST_V4.get(&Key::new(32, rec.daddr)).is_some()
        } else if rec.family == AF_INET6 {
            DST_V6.get(&Key::new(128, rec.daddr_v6)).is_some()
        } else {
            false
        };
        if !hit {
            return false;
        }
    }
    true
}

fn on_established(rec: &SetStateRecord, mem: impl SockMem) -> Result<(), Error> {
    let sk = rec.skaddr;
    let Some(state) = SOCKS.get_ptr_mut(&sk) else {
        return Ok(()); // not an outbound connection we track
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // Without the length tracepoints the kprobes count bytes from the sequence numbers; the
    // kernel sets `copied_seq` before it moves the socket to ESTABLISHED.
    let (write_seq, copied_seq) = if config!(length_hooks) == 0 {
        (
            mem.read::<u32>(sk, config!(tcp_write_seq)).unwrap_or(0),
            mem.read::<u32>(sk, config!(tcp_copied_seq)).unwrap_or(0),
        )
    } else {
        (0, 0)
    };
    // SAFETY: `state` points into a live SOCKS value.
    unsafe {
        (*state).established_ns = now;
        write_tuple(&raw mut (*state).tuple, rec);
        (*state).write_seq_base = write_seq;
        (*state).copied_seq_base = copied_seq;
    }
    emit_established(now, (sk, mem), state)
}

fn on_connect_failed(rec: &SetStateRecord, mem: impl SockMem) -> Result<(), Error> {
    let sk = rec.skaddr;
    let Some(state) = SOCKS.get_ptr_mut(&sk) else {
        return Ok(());
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `state` points into a live SOCKS value.
    unsafe {
        (*state).closed_ns = now;
        (*state).close_from_state = tcp_state::SYN_SENT;
        // The source port is known by now (it is 0 at SYN_SENT).
        write_tuple(&raw mut (*state).tuple, rec);
    }
    let wire = take_wire(state);
    let emitted = emit(
        EventKind::ConnectFailed,
        now,
        (sk, mem),
        state,
        &wire,
        tcp_state::SYN_SENT,
    );
    let _ = SOCKS.remove(&sk);
    emitted
}

fn on_close(sk: u64, old: u32) -> Result<(), Error> {
    if let Some(state) = SOCKS.get_ptr_mut(&sk) {
        // SAFETY: `state` points into a live SOCKS value; helper without arguments.
        unsafe {
            (*state).closed_ns = bpf_ktime_get_ns();
            (*state).close_from_state = old;
        }
    }
    Ok(())
}

/// Writes the record's 4-tuple into a map value, a word at a time (see `words`).
///
/// # Safety
/// `dst` points into a live map value, 8-byte aligned.
#[inline(always)]
unsafe fn write_tuple(dst: *mut FlowTuple, rec: &SetStateRecord) {
    // SAFETY: the caller's contract; the addresses sit at 8-byte offsets of both the tuple and
    // the record (asserted in `netscope_common`).
    unsafe {
        words::zero(dst);
        (*dst).family = rec.family;
        (*dst).sport = rec.sport;
        (*dst).dport = rec.dport;
        if rec.family == AF_INET {
            let v4 = |a: *mut [u8; 16]| a.cast::<u32>();
            v4(&raw mut (*dst).saddr).write_volatile(u32::from_ne_bytes(rec.saddr));
            v4(&raw mut (*dst).daddr).write_volatile(u32::from_ne_bytes(rec.daddr));
        } else {
            words::copy(&raw mut (*dst).saddr, &raw const rec.saddr_v6);
            words::copy(&raw mut (*dst).daddr, &raw const rec.daddr_v6);
        }
    }
}

/// Takes what the TC classifier counted for this flow: egress from the socket's state,
/// ingress from `WIRE` (whose entry is removed).
fn take_wire(state: *const SockState) -> WireCounters {
    // SAFETY: `state` points into a live SOCKS value.
    let mut wire = unsafe { (*state).wire_out };
    if config!(tc_attached) == 0 {
        return wire;
    }
    // SAFETY: `state` points into a live SOCKS value (a map value is a valid key argument);
    // the ingress value is copied out before its entry is removed.
    let tuple = unsafe { &(*state).tuple };
    if let Some(ingress) = unsafe { WIRE.get(tuple) } {
        wire.packets_in = ingress.packets_in;
        wire.bytes_in = ingress.bytes_in;
        let _ = WIRE.remove(tuple);
    }
    wire
}

/// Without the length hooks (Linux < 6.4): a closed connection's bytes from TCP's own counters
/// (tcplife's way). Sent: payload transmitted minus retransmitted. Received: `bytes_received`
/// counts the peer's FIN as one byte, and the FIN came in when the socket closed from a state
/// that follows it (CLOSE_WAIT, LAST_ACK, CLOSING, FIN_WAIT2 through TIME_WAIT).
#[inline(always)]
fn tcp_totals((sk, mem): (u64, impl SockMem), close_from: u32) -> (u64, u64) {
    let sent = mem.read::<u64>(sk, config!(tcp_bytes_sent)).unwrap_or(0);
    let retrans = mem.read::<u64>(sk, config!(tcp_bytes_retrans)).unwrap_or(0);
    let received = mem
        .read::<u64>(sk, config!(tcp_bytes_received))
        .unwrap_or(0);
    let fin_in = matches!(
        close_from,
        tcp_state::CLOSE_WAIT
            | tcp_state::LAST_ACK
            | tcp_state::CLOSING
            | tcp_state::FIN_WAIT2
            | tcp_state::TIME_WAIT
    );
    (
        sent.saturating_sub(retrans),
        received.saturating_sub(u64::from(fin_in)),
    )
}

/// An `Established` record: the first `ESTABLISHED_LEN` bytes of a `ConnEvent` (see
/// `netscope_common`), what is known when the connect completes.
fn emit_established(
    now: u64,
    sk: (u64, impl SockMem),
    state: *const SockState,
) -> Result<(), Error> {
    let Some(mut entry) = EVENTS.reserve::<[u64; ESTABLISHED_LEN / 8]>(0) else {
        return Err(Error::RingFull);
    };
    let ev = entry.as_mut_ptr().cast::<ConnEvent>();
    // SAFETY: `state` points into a live SOCKS value; `ev` points to the reservation, 8-byte
    // aligned and `ESTABLISHED_LEN` bytes long, and `write_opening` writes only the fields that
    // lie before that length, each once, before the record is submitted.
    unsafe { write_opening(ev, EventKind::Established, now, sk, &*state) };
    entry.submit(wake_flags());
    bump(counter::EVENTS_EMITTED);
    Ok(())
}

/// The end of a connection (`Closed`, `ConnectFailed`): the whole `ConnEvent`, with `wire` the
/// flow's wire counters. Inlined: a BPF call passes at most five arguments in registers.
#[inline(always)]
fn emit(
    kind: EventKind,
    now: u64,
    sk: (u64, impl SockMem),
    state: *const SockState,
    wire: &WireCounters,
    old: u32,
) -> Result<(), Error> {
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        return Err(Error::RingFull);
    };
    // SAFETY: `state` points into a live SOCKS value; the reservation is exclusively ours.
    let st = unsafe { &*state };
    // TCP's own totals only for a connection that was established: a failed connect sent
    // and received nothing to count.
    let (bytes_sent, bytes_received) = match kind {
        EventKind::Closed if config!(length_hooks) == 0 => tcp_totals(sk, st.close_from_state),
        _ => (st.bytes_sent, st.bytes_received),
    };
    let sk_err =
        sk.1.read::<i32>(sk.0, config!(sock_sk_err))
            .unwrap_or(SK_ERR_UNKNOWN);
    // Field by field into the reservation: a whole `ConnEvent` built on the stack first would
    // not fit the 512-byte BPF stack next to the rest of `ns_set_state`.
    let ev: *mut ConnEvent = entry.as_mut_ptr();
    // SAFETY: `ev` points to the reservation, sized for one `ConnEvent`, written once below
    // before it is submitted; every field is plain data.
    unsafe {
        write_opening(ev, kind, now, sk, st);
        (*ev).closed_ns = st.closed_ns;
        (*ev).bytes_sent = bytes_sent;
        (*ev).bytes_received = bytes_received;
        (*ev).send_calls = st.send_calls;
        (*ev).recv_calls = st.recv_calls;
        (*ev).wire = *wire;
        (*ev).resets_sent = st.resets_sent;
        (*ev).resets_received = st.resets_received;
        (*ev).sk_err = sk_err;
        (*ev).old_state = old;
        words::copy(&raw mut (*ev).turn, &raw const st.turn);
        words::copy(&raw mut (*ev).prev_turn, &raw const st.prev_turn);
    }
    entry.submit(wake_flags());
    bump(counter::EVENTS_EMITTED);
    Ok(())
}

/// Writes the fields every record carries: those before `closed_ns`.
///
/// # Safety
/// `ev` points to a ring reservation at least `kind.record_len()` bytes long, 8-byte aligned.
#[inline(always)]
unsafe fn write_opening(
    ev: *mut ConnEvent,
    kind: EventKind,
    now: u64,
    (sk, mem): (u64, impl SockMem),
    st: &SockState,
) {
    let srtt = mem
        .read::<u32>(sk, config!(tcp_srtt_us))
        .map_or(SRTT_UNKNOWN, |v| v >> 3);
    // SAFETY: the caller's contract; every field written lies before `ESTABLISHED_LEN`.
    unsafe {
        (*ev).header = EventHeader {
            kind: kind as u32,
            len: kind.record_len() as u32,
            ts_ns: now,
            tgid: (st.pid_tgid >> 32) as u32,
            pid: st.pid_tgid as u32,
            cgroup_id: st.cgroup_id,
            sock_id: sk,
        };
        words::copy(&raw mut (*ev).tuple, &raw const st.tuple);
        words::copy(&raw mut (*ev).comm, &raw const st.comm);
        (*ev).start_ns = st.start_ns;
        (*ev).established_ns = st.established_ns;
        (*ev).srtt_us = srtt;
        (*ev).retransmits = st.retransmits;
    }
}

/// Wake user space only when enough is waiting; otherwise it polls on a timer.
#[inline(always)]
fn wake_flags() -> u64 {
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let flags = if waiting >= config!(wakeup_bytes) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    flags as u64
}
