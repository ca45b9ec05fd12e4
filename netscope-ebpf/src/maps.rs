//! Every map and global of the kernel object, in one place. Sizes here are defaults; the agent
//! overrides them at load time (`EbpfLoader::map_max_entries`).

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie, PerCpuArray, RingBuf},
};
use netscope_common::{ConnEvent, FlowTuple, ProbeConfig, SockState, WireCounters};

/// The one ring buffer: `ConnEvent`s, submitted without wake-up below `CONFIG.wakeup_bytes`.
/// Sized by the agent at load (`--ring-bytes`, 4 MiB by default: ~15k events).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Tracked outbound connections, keyed by kernel socket address.
#[map]
pub static SOCKS: HashMap<u64, SockState> = HashMap::with_max_entries(65_536, 0);

/// One `SockState` per CPU to build a new entry in (see `on_connect`).
#[map]
pub static SOCK_SCRATCH: PerCpuArray<SockState> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counters, indexed by `netscope_common::counter::*`.
#[map]
pub static COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(netscope_common::counter::COUNT, 0);

/// Ingress wire counters of tracked flows, keyed by the tuple oriented from the connecting side.
/// An entry is created by the tracked socket's SYN at TC egress and removed with the socket.
#[map]
pub static WIRE: HashMap<FlowTuple, WireCounters> = HashMap::with_max_entries(65_536, 0);

/// Filters, filled by user space; consulted only when the matching `FILTER_*` bit is set.
#[map]
pub static FILTER_TGID: HashMap<u32, u8> = HashMap::with_max_entries(1_024, 0);
#[map]
pub static FILTER_CGROUP: HashMap<u64, u8> = HashMap::with_max_entries(1_024, 0);
#[map]
pub static FILTER_DPORT: HashMap<u16, u8> = HashMap::with_max_entries(1_024, 0);
#[map]
pub static FILTER_DST_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(1_024, 0);
#[map]
pub static FILTER_DST_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(1_024, 0);

/// Load-time configuration (tracepoint offsets, kernel struct offsets, filters). Read it only
/// through [`config!`] so that every read is volatile and the loader's value is the one used.
#[unsafe(no_mangle)]
pub static CONFIG: ProbeConfig = ProbeConfig::UNSET;

/// Reads one field of [`CONFIG`] with a volatile load (the compiler must not fold the default).
macro_rules! config {
    ($($field:ident).+) => {
        // SAFETY: CONFIG is a plain-data static that lives for the program's lifetime.
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::CONFIG.$($field).+) }
    };
}
pub(crate) use config;

/// Is this per-CPU counter still at zero on this CPU?
#[inline(always)]
pub fn first_on_this_cpu(index: u32) -> bool {
    COUNTERS.get(index).is_some_and(|v| *v == 0)
}

/// Adds one to a per-CPU counter. Atomic because a softirq program may interrupt a
/// process-context one on the same CPU.
#[inline(always)]
pub fn bump(index: u32) {
    if let Some(ptr) = COUNTERS.get_ptr_mut(index) {
        add_u64(ptr, 1);
    }
}

#[inline(always)]
pub fn add_u64(field: *mut u64, value: u64) {
    // SAFETY: callers pass pointers into map values, valid and 8-byte aligned. Lowered to the
    // BPF atomic add instruction (`lock *(u64 *)(r + 0) += v`).
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, value) };
}

#[inline(always)]
pub fn add_u32(field: *mut u32, value: u32) {
    // SAFETY: callers pass pointers into map values, valid and 4-byte aligned.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(field, value) };
}

/// Compile-time guard: the event must fit a single ring reservation the verifier accepts.
const _: () = assert!(size_of::<ConnEvent>() % 8 == 0);
