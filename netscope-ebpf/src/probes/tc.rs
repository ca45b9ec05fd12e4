//! TC classifier, egress and ingress: wire packets and bytes per outbound TCP flow in `WIRE`.
//! Always returns `TC_ACT_UNSPEC` (TCX "next"): the probe never decides a packet's fate and lets
//! any program after it run. Ethernet-framed devices only (lo, veth, physical NICs).
//!
//! Cost control: headers are read with direct packet access, and only an outbound SYN creates
//! an entry; every other packet is one lookup. Flows this host did not open (the server side of
//! an inbound connection) never enter the map. The socket's destruction takes the entry.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use netscope_common::{AF_INET, AF_INET6, FlowTuple, WireCounters};

use super::Error;
use crate::maps::{WIRE, add_u64};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;

#[classifier]
pub fn ns_tc_egress(ctx: TcContext) -> i32 {
    if let Err(e) = try_count(&ctx, true) {
        e.count();
    }
    TC_ACT_UNSPEC
}

#[classifier]
pub fn ns_tc_ingress(ctx: TcContext) -> i32 {
    if let Err(e) = try_count(&ctx, false) {
        e.count();
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

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

fn try_count(ctx: &TcContext, egress: bool) -> Result<(), Error> {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: the context of a classifier is its __sk_buff.
    let protocol = u16::from_be(unsafe { (*skb).protocol } as u16);
    let mut key = FlowTuple::default();
    let l4 = match protocol {
        ETH_P_IP => {
            let version_ihl: u8 = read(ctx, ETH_HLEN)?;
            let proto: u8 = read(ctx, ETH_HLEN + 9)?;
            if version_ihl >> 4 != 4 || proto != IPPROTO_TCP {
                return Ok(());
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
                return Ok(());
            }
            let src: [u8; 16] = read(ctx, ETH_HLEN + 8)?;
            let dst: [u8; 16] = read(ctx, ETH_HLEN + 24)?;
            key.family = AF_INET6;
            (key.saddr, key.daddr) = if egress { (src, dst) } else { (dst, src) };
            ETH_HLEN + 40
        }
        _ => return Ok(()),
    };
    let sport = u16::from_be(read::<u16>(ctx, l4)?);
    let dport = u16::from_be(read::<u16>(ctx, l4 + 2)?);
    let flags: u8 = read(ctx, l4 + 13)?;
    (key.sport, key.dport) = if egress {
        (sport, dport)
    } else {
        (dport, sport)
    };
    let len = u64::from(ctx.len());
    let outbound_syn = egress && flags & (TCP_SYN | TCP_ACK) == TCP_SYN;

    match WIRE.get_ptr_mut(&key) {
        // A SYN on a tuple whose previous flow got answers starts a new flow; a SYN without
        // answer so far is a retransmission of the current one.
        // SAFETY: `counters` points into a live WIRE value.
        Some(counters) if !(outbound_syn && unsafe { (*counters).packets_in } != 0) => {
            add(counters, egress, len);
        }
        Some(_) | None if outbound_syn => {
            let fresh = WireCounters {
                packets_out: 1,
                bytes_out: len,
                packets_in: 0,
                bytes_in: 0,
            };
            let _ = WIRE.insert(&key, &fresh, 0);
        }
        _ => {}
    }
    Ok(())
}

#[inline(always)]
fn add(counters: *mut WireCounters, egress: bool, len: u64) {
    // SAFETY: `counters` points into a live WIRE value; fields are updated atomically.
    unsafe {
        if egress {
            add_u64(&raw mut (*counters).packets_out, 1);
            add_u64(&raw mut (*counters).bytes_out, len);
        } else {
            add_u64(&raw mut (*counters).packets_in, 1);
            add_u64(&raw mut (*counters).bytes_in, len);
        }
    }
}
