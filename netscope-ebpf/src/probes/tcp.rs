//! `tcp:tcp_retransmit_skb`, `tcp:tcp_send_reset`, `tcp:tcp_receive_reset`: counted per tracked
//! socket in `SOCKS`. The socket is each one's first argument: as BTF tracepoints where they
//! load, classic ones otherwise. A retransmission runs in softirq; a classic tracepoint's
//! program is skipped, uncounted, when it interrupts anything that holds the CPU's
//! `bpf_prog_active` (another kprobe or tracepoint program, or a `bpf()` map call of user
//! space — the agent's own reads of its counters), a BTF tracepoint's only when it
//! interrupts itself.

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use netscope_common::SockState;

use super::{Error, field, sock_arg};
use crate::maps::{SOCKS, add_u32, config};

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn ns_retransmit(ctx: TracePointContext) -> u32 {
    if let Err(e) = count(&ctx, config!(retransmit_skaddr), Counter::Retransmit) {
        e.report(&ctx, "ns_retransmit");
    }
    0
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
    if let Err(e) = sock_arg(&ctx).and_then(|sk| count_for(sk, Counter::Retransmit)) {
        e.report(&ctx, "ns_retransmit_btf");
    }
    0
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
    Retransmit,
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
    let field = unsafe {
        match which {
            Counter::Retransmit => &raw mut (*state).retransmits,
            Counter::ResetSent => &raw mut (*state).resets_sent,
            Counter::ResetReceived => &raw mut (*state).resets_received,
        }
    };
    add_u32(field, 1);
    Ok(())
}
