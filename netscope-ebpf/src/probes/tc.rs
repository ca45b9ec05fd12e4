//! TC classifier, egress and ingress: wire packets and bytes of tracked outbound TCP flows.
//! Always returns `TC_ACT_UNSPEC` (TCX "next"): the probe never decides a packet's fate and lets
//! any program after it run. Ethernet-framed devices only (lo, veth, physical NICs).
//!
//! Cost control: an egress packet carries its socket (`skb->sk`), so egress counting is one
//! lookup of the socket in `SOCKS`, without parsing headers, except while the handshake runs:
//! the SYN registers the flow's tuple in `WIRE` for ingress. An ingress packet has no socket yet:
//! its headers are read by direct packet access and its tuple looked up in `WIRE`, which holds
//! tracked flows only. The socket's end takes both.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use netscope_common::{AF_INET, AF_INET6, FlowTuple, WireCounters};

use super::Error;
use crate::maps::{SOCKS, WIRE, add_u64};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;

#[classifier]
pub fn ns_tc_egress(ctx: TcContext) -> i32 {
    if let Err(e) = try_count(&ctx, true) {
        e.report(&ctx, "ns_tc_egress");
    }
    TC_ACT_UNSPEC
}

#[classifier]
pub fn ns_tc_ingress(ctx: TcContext) -> i32 {
    if let Err(e) = try_count(&ctx, false) {
        e.report(&ctx, "ns_tc_ingress");
    }
    TC_ACT_UNSPEC
}

/// A pointer to a `T` at `offset` in the packet, if the packet's linear part holds it.
#[inline(always)]
fn at<T>(ctx: &TcContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Result<T, Error> {
    // SAFETY: `at` checked the bounds against data_end; reads may be unaligned.
    at::<T>(ctx, offset)
        .map(|p| unsafe { p.read_unaligned() })
        .ok_or(Error::Read)
}

fn try_count(ctx: &TcContext, egress: bool) -> Result<(), Error> {
    if egress {
        count_egress(ctx)
    } else {
        count_ingress(ctx)
    }
}

fn count_egress(ctx: &TcContext) -> Result<(), Error> {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: the context of a classifier is its __sk_buff; `sk` is the sending socket or null.
    // Using its address as a map key needs a privileged loader (CAP_PERFMON: pointer leaks).
    let sk = unsafe { (*skb).__bindgen_anon_2.sk } as u64;
    if sk == 0 {
        return Ok(());
    }
    let Some(state) = SOCKS.get_ptr_mut(&sk) else {
        return Ok(()); // not a tracked outbound connection
    };
    let len = u64::from(ctx.len());
    // SAFETY: `state` points into a live SOCKS value; fields are updated atomically.
    unsafe {
        add_u64(&raw mut (*state).wire_out.packets_out, 1);
        add_u64(&raw mut (*state).wire_out.bytes_out, len);
        if (*state).established_ns != 0 {
            return Ok(());
        }
    }
    // Handshake (SYN or its retransmission): register the tuple so that the answers are
    // counted at ingress. A fresh entry also clears whatever an earlier flow on it left.
    let Some(tuple) = tuple(ctx, true)? else {
        return Ok(());
    };
    let _ = WIRE.insert(&tuple, &WireCounters::default(), 0);
    Ok(())
}

fn count_ingress(ctx: &TcContext) -> Result<(), Error> {
    let Some(tuple) = tuple(ctx, false)? else {
        return Ok(());
    };
    if let Some(counters) = WIRE.get_ptr_mut(&tuple) {
        // SAFETY: `counters` points into a live WIRE value; fields are updated atomically.
        unsafe {
            add_u64(&raw mut (*counters).packets_in, 1);
            add_u64(&raw mut (*counters).bytes_in, u64::from(ctx.len()));
        }
    }
    Ok(())
}

/// The packet's TCP tuple oriented from the local (connecting) side; `None` if not TCP.
#[inline(always)]
fn tuple(ctx: &TcContext, egress: bool) -> Result<Option<FlowTuple>, Error> {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: the context of a classifier is its __sk_buff.
    let protocol = u16::from_be(unsafe { (*skb).protocol } as u16);
    let mut key = FlowTuple::default();
    let l4 = match protocol {
        ETH_P_IP => {
            let version_ihl: u8 = read(ctx, ETH_HLEN)?;
            let proto: u8 = read(ctx, ETH_HLEN + 9)?;
            if version_ihl >> 4 != 4 || proto != IPPROTO_TCP {
                return Ok(None);
            }
            let src: [u8; 4] = read(ctx, ETH_HLEN + 12)?;
            let dst: [u8; 4] = read(ctx, ETH_HLEN + 16)?;
            key.family = AF_INET;
            let (local, remote) = if egress { (src, dst) } else { (dst, src) };
            key.saddr[..4].copy_from_slice(&local);
            key.daddr[..4].copy_from_slice(&remote);
            ETH_HLEN + usize::from(version_ihl & 0x0f) * 4
        }
        ETH_P_IPV6 => {
            // Extension headers before TCP are not followed.
            let next: u8 = read(ctx, ETH_HLEN + 6)?;
            if next != IPPROTO_TCP {
                return Ok(None);
            }
            let src: [u8; 16] = read(ctx, ETH_HLEN + 8)?;
            let dst: [u8; 16] = read(ctx, ETH_HLEN + 24)?;
            key.family = AF_INET6;
            (key.saddr, key.daddr) = if egress { (src, dst) } else { (dst, src) };
            ETH_HLEN + 40
        }
        _ => return Ok(None),
    };
    let sport = u16::from_be(read::<u16>(ctx, l4)?);
    let dport = u16::from_be(read::<u16>(ctx, l4 + 2)?);
    (key.sport, key.dport) = if egress {
        (sport, dport)
    } else {
        (dport, sport)
    };
    Ok(Some(key))
}
