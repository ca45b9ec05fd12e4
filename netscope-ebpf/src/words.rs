//! Plain-data copies and zeroing as 8-byte loads and stores.
//!
//! On BPF a struct assignment between a map value and a ring reservation (`(*ev).tuple =
//! st.tuple`) and a zeroing (`Turn::default()`) were lowered to calls of `memmove` and `memset`
//! subprograms that move one byte per iteration: `llvm-objdump -dr` of the object showed
//! `call memmove` with r3 = 40, 16, 32 and 32 in every `emit`, and `call memset` with 152 and
//! 56 in `on_connect` — about 3,000 instructions per connection, most of NetScope's kernel time
//! above the empty programs' (`bench probe`). These are unrolled `u64` moves instead.
//!
//! Both pointers must be 8-byte aligned: map values and ring reservations are, and the fields
//! moved this way sit at offsets that `netscope_common` asserts are multiples of 8.

use core::ptr::{read_volatile, write_volatile};

/// Copies `*src` to `*dst`, 8 bytes at a time. Volatile, so that LLVM does not fold the moves
/// back into a `memmove` call.
///
/// # Safety
/// `dst` and `src` are valid, 8-byte aligned and do not overlap.
#[inline(always)]
pub unsafe fn copy<T: Copy>(dst: *mut T, src: *const T) {
    const { assert!(size_of::<T>() % 8 == 0) };
    let (dst, src) = (dst.cast::<u64>(), src.cast::<u64>());
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: i < size_of::<T>() / 8, inside both values (the caller's contract).
        unsafe { write_volatile(dst.add(i), read_volatile(src.add(i))) };
        i += 1;
    }
}

/// Writes zeros over `*dst`, 8 bytes at a time.
///
/// # Safety
/// `dst` is valid and 8-byte aligned.
#[inline(always)]
pub unsafe fn zero<T: Copy>(dst: *mut T) {
    const { assert!(size_of::<T>() % 8 == 0) };
    let dst = dst.cast::<u64>();
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: i < size_of::<T>() / 8, inside the value (the caller's contract).
        unsafe { write_volatile(dst.add(i), 0) };
        i += 1;
    }
}
