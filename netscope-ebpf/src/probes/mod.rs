//! One module per hook family. Shared plumbing: the error type every `try_*` returns, and
//! checked reads of tracepoint fields at offsets the agent read from tracefs.

pub mod kprobes;
pub mod sock_length;
pub mod state;
pub mod tc;
pub mod tcp;
pub mod turns;

use aya_ebpf::{
    EbpfContext,
    cty::c_void,
    helpers::{bpf_probe_read_kernel, generated::bpf_skc_to_tcp_sock},
    programs::{BtfTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;
use netscope_common::{OFFSET_NONE, counter, sock_head};

use crate::maps::{bump, config, first_on_this_cpu};

/// Kernel-side errors: values that fit a register, counted by the entry point, never acted on.
#[derive(Clone, Copy)]
pub enum Error {
    /// A tracepoint field or kernel memory could not be read.
    Read,
    /// The agent did not provide an offset this program needs.
    NoOffset,
    /// The ring buffer had no room for the event.
    RingFull,
    /// The socket table is full: the connection is not tracked.
    SockTableFull,
}

impl Error {
    fn counter(self) -> u32 {
        match self {
            Self::Read | Self::NoOffset => counter::READ_ERRORS,
            Self::RingFull => counter::EVENTS_DROPPED,
            Self::SockTableFull => counter::SOCK_TABLE_FULL,
        }
    }

    /// Records the error in its counter and, the first time that counter moves on this CPU,
    /// says what happened in the agent's log: an aya-log record through the `AYA_LOGS` ring,
    /// read by the agent into its JSON logs. Only this error path runs it, and only once per
    /// CPU and kind; every later one is only counted (`netscope_kernel_*` metrics).
    #[inline(always)]
    pub fn report<C: EbpfContext>(self, ctx: &C, program: &str) {
        let index = self.counter();
        if first_on_this_cpu(index) {
            match self {
                Self::Read => warn!(
                    ctx,
                    "{}: a read of kernel memory failed (later ones are only counted)", program
                ),
                Self::NoOffset => warn!(
                    ctx,
                    "{}: an offset it needs is missing from its load-time configuration (kernel BTF or tracefs did not give it)",
                    program
                ),
                Self::RingFull => warn!(
                    ctx,
                    "{}: the event ring is full, events are dropped and counted (raise --ring-bytes)",
                    program
                ),
                Self::SockTableFull => warn!(
                    ctx,
                    "{}: the socket table is full, new connections are not tracked (raise --max-connections)",
                    program
                ),
            }
        }
        bump(index);
    }
}

/// A field type of a tracepoint record.
pub trait CtxField: Sized {
    /// The field at `offset`, read with direct context loads when `offset` is one of the usual
    /// aligned offsets; `None` otherwise.
    fn direct(ctx: &TracePointContext, offset: u32) -> Option<Self>;
}

/// One context load whose offset is a constant inside the instruction. Inline asm, because
/// the compiler would otherwise turn `if offset == 8 { load(ctx + 8) }` back into
/// `load(ctx + offset)`, which the verifier rejects ("modified ctx ptr").
macro_rules! ctx_load {
    ($ctx:expr, $offset:expr, $width:literal, [$($off:literal)*]) => {{
        let ctx = $ctx.as_ptr();
        match $offset {
            $($off => {
                let value: u64;
                // SAFETY: a read-only load from the tracepoint context at a constant offset
                // aligned for its width, inside the record (tracefs gave the offset).
                unsafe {
                    core::arch::asm!(
                        concat!("{v} = *(", $width, " *)({c} + ", stringify!($off), ")"),
                        v = out(reg) value,
                        c = in(reg) ctx,
                        options(readonly, nostack, preserves_flags),
                    );
                }
                Some(value)
            })*
            _ => None,
        }
    }};
}

impl CtxField for u64 {
    #[inline(always)]
    fn direct(ctx: &TracePointContext, offset: u32) -> Option<Self> {
        ctx_load!(ctx, offset, "u64", [8 16 24 32 40 48 56 64])
    }
}

impl CtxField for i32 {
    #[inline(always)]
    fn direct(ctx: &TracePointContext, offset: u32) -> Option<Self> {
        ctx_load!(ctx, offset, "u32", [8 12 16 20 24 28 32 36 40 44 48 52 56 60 64 68 72 76])
            .map(|v| v as u32 as i32)
    }
}

impl CtxField for u16 {
    #[inline(always)]
    fn direct(ctx: &TracePointContext, offset: u32) -> Option<Self> {
        ctx_load!(ctx, offset, "u16", [8 10 12 14 16 18 20 22 24 26 28 30 32 34 36 38 40])
            .map(|v| v as u16)
    }
}

impl CtxField for [u8; 4] {
    #[inline(always)]
    fn direct(ctx: &TracePointContext, offset: u32) -> Option<Self> {
        ctx_load!(ctx, offset, "u32", [8 12 16 20 24 28 32 36 40 44 48 52 56 60 64 68])
            .map(|v| (v as u32).to_le_bytes())
    }
}

impl CtxField for [u8; 16] {
    #[inline(always)]
    fn direct(ctx: &TracePointContext, offset: u32) -> Option<Self> {
        Some(v6_from_words(
            u64::direct(ctx, offset)?,
            u64::direct(ctx, offset + 8)?,
        ))
    }
}

/// An IPv6 address from the two little-endian words it was loaded as.
#[inline(always)]
fn v6_from_words(lo: u64, hi: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&lo.to_le_bytes());
    out[8..].copy_from_slice(&hi.to_le_bytes());
    out
}

/// Reads a tracepoint field at `offset` (from the tracefs `format` file): by direct context
/// loads at the usual offsets (no helper call), else — or with `CONFIG.helper_reads` — with
/// `bpf_probe_read`.
#[inline(always)]
pub fn field<T: CtxField>(ctx: &TracePointContext, offset: u32) -> Result<T, Error> {
    if offset == OFFSET_NONE {
        return Err(Error::NoOffset);
    }
    if config!(helper_reads) == 0
        && let Some(value) = T::direct(ctx, offset)
    {
        return Ok(value);
    }
    // SAFETY: bpf_probe_read of the tracepoint record; a bad offset yields an error, not a fault.
    unsafe { ctx.read_at::<T>(offset as usize) }.map_err(|_| Error::Read)
}

/// Reads a kernel struct field at an offset the agent found in BTF; `None` when the offset is
/// unknown or the read faults.
#[inline(always)]
pub fn read_kernel<T: Default>(base: u64, offset: u32) -> Option<T> {
    if offset == OFFSET_NONE {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel faults safely; `base` is a live kernel object of the hook.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

/// How a hook reads the fields of the socket it was given, at offsets from the socket's start
/// that the agent found in BTF (`sock`, `inet_sock` and `tcp_sock` fields alike: each embeds the
/// one before at offset 0).
pub trait SockMem: Copy {
    /// The field at `offset` of the socket at `sk`; `None` when the offset is unknown or the
    /// read faults.
    fn read<T: Copy + Default>(self, sk: u64, offset: u32) -> Option<T>;
}

/// What a connection hook needs from the head of `sock_common`, in network byte order.
#[derive(Clone, Copy)]
pub struct SockHead {
    pub daddr: [u8; 4],
    pub rcv_saddr: [u8; 4],
    pub dport_be: u16,
    pub family: u16,
}

/// Socket fields read with `bpf_probe_read_kernel`: what classic tracepoints and kprobes have,
/// a socket address that is only a number to the verifier.
#[derive(Clone, Copy)]
pub struct Probed;

impl SockMem for Probed {
    #[inline(always)]
    fn read<T: Copy + Default>(self, sk: u64, offset: u32) -> Option<T> {
        read_kernel(sk, offset)
    }
}

/// Socket fields loaded straight from kernel memory through a BTF-typed `struct tcp_sock *`
/// (BTF tracepoints): plain loads the verifier checks against the type — each offset is a
/// constant of the frozen `CONFIG`, each load the size of the member it reads — which the JIT
/// turns into fault-safe loads, with no helper call (a `bpf_probe_read_kernel` per field cost
/// ~20 % of the programs' time). Volatile, so that the compiler never merges two loads into one
/// that would straddle two members.
#[derive(Clone, Copy)]
pub struct Direct(*const u8);

impl Direct {
    /// The tracepoint's first argument (`struct sock *`) as a `tcp_sock`, `None` when the socket
    /// is not a full TCP socket (an MPTCP socket's own state changes, say).
    #[inline(always)]
    pub fn tcp_sock(ctx: &BtfTracePointContext) -> Option<Self> {
        let sk: *mut c_void = ctx.arg(0);
        // SAFETY: the helper checks the socket's kind and returns NULL when it is not TCP.
        let tcp = unsafe { bpf_skc_to_tcp_sock(sk) };
        (!tcp.is_null()).then_some(Self(tcp.cast()))
    }

    #[inline(always)]
    fn load<T: Copy>(self, offset: u32) -> T {
        // SAFETY: the verifier admits the load only at a member of `tcp_sock` of T's size; the
        // JIT makes it fault-safe (a fault reads 0).
        unsafe { self.0.add(offset as usize).cast::<T>().read_volatile() }
    }

    /// An IPv6 address at `offset`, in two loads.
    #[inline(always)]
    pub fn read_v6(self, offset: u32) -> Option<[u8; 16]> {
        if offset == OFFSET_NONE {
            return None;
        }
        Some(v6_from_words(self.load(offset), self.load(offset + 8)))
    }

    /// The head of `sock_common` (see `netscope_common::sock_head`), one load per field: its
    /// members are of different sizes.
    #[inline(always)]
    pub fn head(self) -> SockHead {
        SockHead {
            daddr: self.load::<u32>(sock_head::DADDR).to_le_bytes(),
            rcv_saddr: self.load::<u32>(sock_head::RCV_SADDR).to_le_bytes(),
            dport_be: self.load(sock_head::DPORT),
            family: self.load(sock_head::FAMILY),
        }
    }
}

impl SockMem for Direct {
    #[inline(always)]
    fn read<T: Copy + Default>(self, _sk: u64, offset: u32) -> Option<T> {
        (offset != OFFSET_NONE).then(|| self.load(offset))
    }
}

/// A BTF tracepoint's first argument, the `struct sock *`, as a plain number: read from the
/// context with `bpf_probe_read_kernel`, because loaded directly it is a typed BTF pointer,
/// which the verifiers of the kernels NetScope supports do not all let a program use as a map
/// key or offset by a value known only at load time.
#[inline(always)]
pub fn sock_arg(ctx: &BtfTracePointContext) -> Result<u64, Error> {
    arg(ctx, 0)
}

/// A BTF tracepoint's argument `n`, read with `bpf_probe_read_kernel` as the low bytes of its
/// 8-byte slot: a pointer as a plain number, or an integer. `n` must be one of the
/// tracepoint's arguments on this kernel.
#[inline(always)]
pub fn arg<T>(ctx: &BtfTracePointContext, n: usize) -> Result<T, Error> {
    // SAFETY: the context is the tracepoint's array of u64 arguments, `n` one of them (the
    // caller's contract); the read faults safely.
    unsafe { bpf_probe_read_kernel(ctx.as_ptr().cast::<u64>().add(n).cast::<T>()) }
        .map_err(|_| Error::Read)
}
