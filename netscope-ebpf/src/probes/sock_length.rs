//! `sock:sock_send_length` / `sock:sock_recv_length`: bytes and calls per tracked socket,
//! aggregated in `SOCKS` (no ring event per call). As BTF tracepoints (their arguments are
//! `(struct sock *sk, int ret, int flags)`) where they load, as classic ones otherwise.

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use netscope_common::{SockLengthRecord, SockState};

use super::{Error, field, turns};
use crate::maps::{SOCKS, add_u64, config};

/// `MSG_PEEK` reads leave the data in the socket: they are not received bytes.
const MSG_PEEK: i32 = 2;

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn ns_send_length(ctx: TracePointContext) -> u32 {
    if let Err(e) = try_send(&ctx) {
        e.report(&ctx, "ns_send_length");
    }
    0
}

#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn ns_recv_length(ctx: TracePointContext) -> u32 {
    if let Err(e) = try_recv(&ctx) {
        e.report(&ctx, "ns_recv_length");
    }
    0
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn ns_send_length_btf(ctx: BtfTracePointContext) -> u32 {
    if let Err(e) = try_account_btf(&ctx, true) {
        e.report(&ctx, "ns_send_length_btf");
    }
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn ns_recv_length_btf(ctx: BtfTracePointContext) -> u32 {
    if let Err(e) = try_account_btf(&ctx, false) {
        e.report(&ctx, "ns_recv_length_btf");
    }
    0
}

/// The arguments as they come: no helper call before the socket's lookup (the socket pointer
/// is the key as it is; these hooks run at every send and receive on the node).
#[inline(always)]
fn try_account_btf(ctx: &BtfTracePointContext, send: bool) -> Result<(), Error> {
    let ret: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    if !send && flags & MSG_PEEK != 0 {
        return Ok(());
    }
    let sk: u64 = ctx.arg(0);
    if let Some(state) = SOCKS.get_ptr_mut(&sk) {
        account(state, ret, send);
    }
    Ok(())
}

/// The record, field by field at the offsets tracefs gave.
#[inline(always)]
fn read_record(
    ctx: &TracePointContext,
    sk: u32,
    ret: u32,
    flags: u32,
) -> Result<SockLengthRecord, Error> {
    let sk: u64 = field(ctx, sk)?;
    Ok(SockLengthRecord {
        sk_lo: sk as u32,
        sk_hi: (sk >> 32) as u32,
        family: 0,
        protocol: 0,
        ret: field(ctx, ret)?,
        flags: field(ctx, flags)?,
    })
}

fn try_send(ctx: &TracePointContext) -> Result<(), Error> {
    let offsets = (
        config!(send_length.sk),
        config!(send_length.ret),
        config!(send_length.flags),
    );
    try_account(ctx, offsets, true)
}

fn try_recv(ctx: &TracePointContext) -> Result<(), Error> {
    let offsets = (
        config!(recv_length.sk),
        config!(recv_length.ret),
        config!(recv_length.flags),
    );
    try_account(ctx, offsets, false)
}

#[inline(always)]
fn try_account(
    ctx: &TracePointContext,
    (sk, ret, flags): (u32, u32, u32),
    send: bool,
) -> Result<(), Error> {
    let rec = read_record(ctx, sk, ret, flags)?;
    if !send && rec.flags & MSG_PEEK != 0 {
        return Ok(());
    }
    if let Some(state) = SOCKS.get_ptr_mut(&rec.sk()) {
        account(state, rec.ret, send);
    }
    Ok(())
}

/// A call that returned an error is not counted; a zero-length read (EOF) is a call of 0 bytes.
/// A send that wrote something may start a turn (before its bytes are counted).
#[inline(always)]
fn account(state: *mut SockState, ret: i32, send: bool) {
    if ret < 0 {
        return;
    }
    if send && ret > 0 {
        turns::on_send(state);
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
