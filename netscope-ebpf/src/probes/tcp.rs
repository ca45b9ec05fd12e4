//! `tcp:tcp_retransmit_skb`, `tcp:tcp_send_reset`, `tcp:tcp_receive_reset`: counted per tracked
//! socket in `SOCKS`. The socket is each one's first argument: as BTF tracepoints where they
//! load, classic ones otherwise. A retransmission runs in softirq; a classic tracepoint's
//! program is skipped, uncounted, when it interrupts anything that holds the CPU's
//! `bpf_prog_active` (another kprobe or tracepoint program, or a `bpf()` map call of user
//! space — the agent's own reads of its counters), a BTF tracepoint's only when it
//! interrupts itself.
//!
//! A retransmission counts what the kernel adds to `tcp_info.tcpi_total_retrans`: the segments
//! of the retransmitted skb (`tcp_skb_pcount`, its `tcp_gso_segs`; a GSO skb of a bulk transfer
//! holds several), not one per tracepoint hit; and only a retransmission that was sent (on
//! newer kernels the tracepoint carries an `err` (its third argument) and also fires, with it
//! non-zero, for one that was not).

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use netscope_common::{OFFSET_NONE, SockState};

use super::{Error, arg, field, read_kernel, sock_arg};
use crate::maps::{SOCKS, add_u32, config};

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn ns_retransmit(ctx: TracePointContext) -> u32 {
    if let Err(e) = try_retransmit(&ctx) {
        e.report(&ctx, "ns_retransmit");
    }
    0
}

#[inline(always)]
fn try_retransmit(ctx: &TracePointContext) -> Result<(), Error> {
    let err = config!(retransmit_err);
    if err != OFFSET_NONE && field::<i32>(ctx, err)? != 0 {
        return Ok(());
    }
    let skb = field(ctx, config!(retransmit_skbaddr))?;
    count(ctx, config!(retransmit_skaddr), Counter::Retransmit { skb })
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn ns_send_reset(ctx: TracePointContext) -> u32 {
    if let Err(e) = count(&ctx, config!(send_reset_skaddr), Counter::ResetSent) {
        e.report(&ctx, "ns_send_reset");
    }
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn ns_recv_reset(ctx: TracePointContext) -> u32 {
    if let Err(e) = count(&ctx, config!(receive_reset_skaddr), Counter::ResetReceived) {
        e.report(&ctx, "ns_recv_reset");
    }
    0
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn ns_retransmit_btf(ctx: BtfTracePointContext) -> u32 {
    if let Err(e) = try_retransmit_btf(&ctx) {
        e.report(&ctx, "ns_retransmit_btf");
    }
    0
}

#[inline(always)]
fn try_retransmit_btf(ctx: &BtfTracePointContext) -> Result<(), Error> {
    // `err`, the third argument, exists where tracefs showed its field.
    if config!(retransmit_err) != OFFSET_NONE && arg::<i32>(ctx, 2)? != 0 {
        return Ok(());
    }
    count_for(sock_arg(ctx)?, Counter::Retransmit { skb: arg(ctx, 1)? })
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn ns_send_reset_btf(ctx: BtfTracePointContext) -> u32 {
    if let Err(e) = sock_arg(&ctx).and_then(|sk| count_for(sk, Counter::ResetSent)) {
        e.report(&ctx, "ns_send_reset_btf");
    }
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn ns_recv_reset_btf(ctx: BtfTracePointContext) -> u32 {
    if let Err(e) = sock_arg(&ctx).and_then(|sk| count_for(sk, Counter::ResetReceived)) {
        e.report(&ctx, "ns_recv_reset_btf");
    }
    0
}

#[derive(Clone, Copy)]
enum Counter {
    /// A retransmitted skb (its address): counted by its segments.
    Retransmit {
        skb: u64,
    },
    ResetSent,
    ResetReceived,
}

#[inline(always)]
fn count(ctx: &TracePointContext, skaddr_offset: u32, which: Counter) -> Result<(), Error> {
    count_for(field(ctx, skaddr_offset)?, which)
}

/// A reset sent for a packet that matched no socket has a NULL socket: no entry, no count.
#[inline(always)]
fn count_for(sk: u64, which: Counter) -> Result<(), Error> {
    let Some(state) = SOCKS.get_ptr_mut(&sk) else {
        return Ok(());
    };
    let state: *mut SockState = state;
    // SAFETY: `state` points into a live SOCKS value; fields are updated atomically.
    let (field, n) = unsafe {
        match which {
            Counter::Retransmit { skb } => (&raw mut (*state).retransmits, segs(skb)),
            Counter::ResetSent => (&raw mut (*state).resets_sent, 1),
            Counter::ResetReceived => (&raw mut (*state).resets_received, 1),
        }
    };
    add_u32(field, n);
    Ok(())
}

/// The segments a retransmitted skb holds (`tcp_skb_pcount`), at least 1: one when the kernel's
/// BTF did not give the offset of `tcp_gso_segs` or the read faults.
#[inline(always)]
fn segs(skb: u64) -> u32 {
    read_kernel::<u16>(skb, config!(skb_gso_segs)).map_or(1, |n| u32::from(n).max(1))
}
