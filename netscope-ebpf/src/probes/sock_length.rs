//! `sock:sock_send_length` / `sock:sock_recv_length`: bytes and calls per tracked socket,
//! aggregated in `SOCKS` (no ring event per call).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use netscope_common::SockState;

use super::{Error, field};
use crate::maps::{SOCKS, add_u64, config};

/// `MSG_PEEK` reads leave the data in the socket: they are not received bytes.
const MSG_PEEK: i32 = 2;

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn ns_send_length(ctx: TracePointContext) -> u32 {
    if let Err(e) = try_send(&ctx) {
        e.count();
    }
    0
}

#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn ns_recv_length(ctx: TracePointContext) -> u32 {
    if let Err(e) = try_recv(&ctx) {
        e.count();
    }
    0
}

fn try_send(ctx: &TracePointContext) -> Result<(), Error> {
    let sk: u64 = field(ctx, config!(send_length.sk))?;
    let Some(state) = SOCKS.get_ptr_mut(&sk) else {
        return Ok(());
    };
    let ret: i32 = field(ctx, config!(send_length.ret))?;
    account(state, ret, true);
    Ok(())
}

fn try_recv(ctx: &TracePointContext) -> Result<(), Error> {
    let sk: u64 = field(ctx, config!(recv_length.sk))?;
    let Some(state) = SOCKS.get_ptr_mut(&sk) else {
        return Ok(());
    };
    let ret: i32 = field(ctx, config!(recv_length.ret))?;
    let flags: i32 = field(ctx, config!(recv_length.flags))?;
    if flags & MSG_PEEK == 0 {
        account(state, ret, false);
    }
    Ok(())
}

/// A call that returned an error is not counted; a zero-length read (EOF) is a call of 0 bytes.
#[inline(always)]
fn account(state: *mut SockState, ret: i32, send: bool) {
    if ret < 0 {
        return;
    }
    // SAFETY: `state` points into a live SOCKS value; fields are updated atomically.
    unsafe {
        if send {
            add_u64(&raw mut (*state).bytes_sent, ret as u64);
            add_u64(&raw mut (*state).send_calls, 1);
        } else {
            add_u64(&raw mut (*state).bytes_received, ret as u64);
            add_u64(&raw mut (*state).recv_calls, 1);
        }
    }
}
