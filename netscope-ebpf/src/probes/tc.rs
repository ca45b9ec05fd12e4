//! TC classifier, egress and ingress: wire packets and bytes per TCP flow in `WIRE`.
//! Always returns `TC_ACT_UNSPEC` (TCX "next"): the probe never decides a packet's fate and lets
//! any program after it run. Ethernet-framed devices only (lo, veth, physical NICs).

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_NOEXIST, TC_ACT_UNSPEC},
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

fn try_count(ctx: &TcContext, egress: bool) -> Result<(), Error> {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: the context of a classifier is its __sk_buff.
    let protocol = u16::from_be(unsafe { (*skb).protocol } as u16);
    let mut key = FlowTuple::default();
    let l4 = match protocol {
        ETH_P_IP => {
            let version_ihl: u8 = ctx.load(ETH_HLEN).map_err(|_| Error::Read)?;
            let proto: u8 = ctx.load(ETH_HLEN + 9).map_err(|_| Error::Read)?;
            if version_ihl >> 4 != 4 || proto != IPPROTO_TCP {
                return Ok(());
            }
            let src: [u8; 4] = ctx.load(ETH_HLEN + 12).map_err(|_| Error::Read)?;
            let dst: [u8; 4] = ctx.load(ETH_HLEN + 16).map_err(|_| Error::Read)?;
            key.family = AF_INET;
            let (local, remote) = if egress { (src, dst) } else { (dst, src) };
            key.saddr[..4].copy_from_slice(&local);
            key.daddr[..4].copy_from_slice(&remote);
            ETH_HLEN + usize::from(version_ihl & 0x0f) * 4
        }
        ETH_P_IPV6 => {
            // Extension headers before TCP are not followed.
            let next: u8 = ctx.load(ETH_HLEN + 6).map_err(|_| Error::Read)?;
            if next != IPPROTO_TCP {
                return Ok(());
            }
            let src: [u8; 16] = ctx.load(ETH_HLEN + 8).map_err(|_| Error::Read)?;
            let dst: [u8; 16] = ctx.load(ETH_HLEN + 24).map_err(|_| Error::Read)?;
            key.family = AF_INET6;
            (key.saddr, key.daddr) = if egress { (src, dst) } else { (dst, src) };
            ETH_HLEN + 40
        }
        _ => return Ok(()),
    };
    let sport = u16::from_be(ctx.load::<u16>(l4).map_err(|_| Error::Read)?);
    let dport = u16::from_be(ctx.load::<u16>(l4 + 2).map_err(|_| Error::Read)?);
    (key.sport, key.dport) = if egress {
        (sport, dport)
    } else {
        (dport, sport)
    };
    let len = u64::from(ctx.len());

    if let Some(counters) = WIRE.get_ptr_mut(&key) {
        add(counters, egress, len);
        return Ok(());
    }
    let mut fresh = WireCounters::default();
    if egress {
        (fresh.packets_out, fresh.bytes_out) = (1, len);
    } else {
        (fresh.packets_in, fresh.bytes_in) = (1, len);
    }
    if WIRE.insert(&key, &fresh, u64::from(BPF_NOEXIST)).is_err() {
        // Another CPU created the entry first: add to it instead.
        if let Some(counters) = WIRE.get_ptr_mut(&key) {
            add(counters, egress, len);
        }
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
