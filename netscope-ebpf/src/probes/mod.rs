//! One module per hook family. Shared plumbing: the error type every `try_*` returns, and
//! checked reads of tracepoint fields at offsets the agent read from tracefs.

pub mod baseline;
pub mod sock_length;
pub mod state;
pub mod tc;
pub mod tcp;

use aya_ebpf::programs::TracePointContext;
use netscope_common::{OFFSET_NONE, counter};

use crate::maps::bump;

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
    /// Records the error in its counter.
    #[inline(always)]
    pub fn count(self) {
        bump(match self {
            Self::Read | Self::NoOffset => counter::READ_ERRORS,
            Self::RingFull => counter::EVENTS_DROPPED,
            Self::SockTableFull => counter::SOCK_TABLE_FULL,
        });
    }
}

/// Reads a tracepoint field at `offset` (from the tracefs `format` file).
#[inline(always)]
pub fn field<T>(ctx: &TracePointContext, offset: u32) -> Result<T, Error> {
    if offset == OFFSET_NONE {
        return Err(Error::NoOffset);
    }
    // SAFETY: bpf_probe_read of the tracepoint record; a bad offset yields an error, not a fault.
    unsafe { ctx.read_at::<T>(offset as usize) }.map_err(|_| Error::Read)
}
