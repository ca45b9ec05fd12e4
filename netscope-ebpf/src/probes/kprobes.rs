//! Kernels without `sock:sock_send_length`/`sock_recv_length` (before 6.4): kprobes on
//! `tcp_sendmsg` (entry) and `tcp_cleanup_rbuf` (called at the end of every read that consumed
//! data) keep a live connection's bytes from TCP's own sequence numbers — `write_seq`, the end
//! of what the application wrote, and `copied_seq`, the end of what it read — as distances from
//! their values at ESTABLISHED. No length argument is needed, so the count is exact whatever
//! the call sizes, partial writes and `MSG_PEEK` (a peek does not move `copied_seq`) included.
//! One difference from the tracepoints: reading the peer's FIN moves `copied_seq` by one, so a
//! live connection that has read its EOF shows one byte more received until it closes (the
//! `Closed` event's totals are TCP's byte counters, which do not count the FIN).
//! `tcp_sendmsg` also marks where a turn starts (see `turns`) and counts send calls; read
//! calls are not counted on this path (`tcp_cleanup_rbuf` can run several times per read).
//! Offsets come from kernel BTF.

use aya_ebpf::{macros::kprobe, programs::ProbeContext};
use netscope_common::SockState;

use super::{Error, read_kernel, turns};
use crate::maps::{SOCKS, add_u64, config};

#[kprobe]
pub fn ns_tcp_sendmsg(ctx: ProbeContext) -> u32 {
    if let Err(e) = try_sendmsg(&ctx) {
        e.report(&ctx, "ns_tcp_sendmsg");
    }
    0
}

#[kprobe]
pub fn ns_tcp_cleanup_rbuf(ctx: ProbeContext) -> u32 {
    if let Err(e) = try_cleanup_rbuf(&ctx) {
        e.report(&ctx, "ns_tcp_cleanup_rbuf");
    }
    0
}

fn try_sendmsg(ctx: &ProbeContext) -> Result<(), Error> {
    let sk: u64 = ctx.arg(0).ok_or(Error::Read)?;
    let Some(state) = SOCKS.get_ptr_mut(&sk) else {
        return Ok(());
    };
    refresh(sk, state)?;
    turns::on_send(state);
    // SAFETY: `state` points into a live SOCKS value.
    add_u64(unsafe { &raw mut (*state).send_calls }, 1);
    Ok(())
}

fn try_cleanup_rbuf(ctx: &ProbeContext) -> Result<(), Error> {
    let sk: u64 = ctx.arg(0).ok_or(Error::Read)?;
    let Some(state) = SOCKS.get_ptr_mut(&sk) else {
        return Ok(());
    };
    // Read calls are not counted here: a blocking read that waits for more data cleans up
    // the receive buffer several times (before 5.17 also before processing its backlog).
    refresh(sk, state)
}

/// Brings the socket's byte totals up to its sequence numbers (nothing before ESTABLISHED,
/// when the bases are not set yet).
#[inline(always)]
fn refresh(sk: u64, state: *mut SockState) -> Result<(), Error> {
    // SAFETY: `state` points into a live SOCKS value; the stores below are plain (a racing
    // refresh from another CPU stores a total that `advance` never moves backwards).
    let st = unsafe { &mut *state };
    if st.established_ns == 0 {
        return Ok(());
    }
    let write_seq: u32 = read_kernel(sk, config!(tcp_write_seq)).ok_or(Error::NoOffset)?;
    let copied_seq: u32 = read_kernel(sk, config!(tcp_copied_seq)).ok_or(Error::NoOffset)?;
    st.bytes_sent = advance(st.bytes_sent, write_seq.wrapping_sub(st.write_seq_base));
    st.bytes_received = advance(
        st.bytes_received,
        copied_seq.wrapping_sub(st.copied_seq_base),
    );
    Ok(())
}

/// A 64-bit total from the low 32 bits a sequence distance gives: it moves forward by the
/// 32-bit difference; a value behind the total (another CPU already stored a newer one) leaves
/// it. Correct while less than 2 GiB pass between two refreshes of one socket.
#[inline(always)]
fn advance(total: u64, low: u32) -> u64 {
    let delta = low.wrapping_sub(total as u32);
    if delta < 1 << 31 {
        total + u64::from(delta)
    } else {
        total
    }
}
