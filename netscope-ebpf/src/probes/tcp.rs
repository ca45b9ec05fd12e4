//! `tcp:tcp_retransmit_skb`, `tcp:tcp_send_reset`, `tcp:tcp_receive_reset`: counted per tracked
//! socket in `SOCKS`.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use netscope_common::SockState;

use super::{Error, field};
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

#[derive(Clone, Copy)]
enum Counter {
    Retransmit,
    ResetSent,
    ResetReceived,
}

#[inline(always)]
fn count(ctx: &TracePointContext, skaddr_offset: u32, which: Counter) -> Result<(), Error> {
    // A reset sent for a packet that matched no socket has a NULL skaddr: no entry, no count.
    let sk: u64 = field(ctx, skaddr_offset)?;
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
