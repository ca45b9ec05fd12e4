//! Turns: where one exchange on a connection ends and the next begins.
//!
//! A turn starts at the connection's first send, and again at every send that follows data
//! received since the turn began (HTTP/1.1: the request, then its response; the next request
//! starts the next turn). The kernel records the counters at that instant, before the new
//! send is counted, and keeps the current turn and the one before it in `SOCKS` (and in the
//! `Closed` event). User space never has to read a counter at the "end" of a call, which it
//! cannot do exactly: by then the client may have returned the connection to its pool and the
//! next call may have sent on it. It picks the turn that started inside the call's attempt.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use netscope_common::{SockState, Turn};

/// Called on every send, before its bytes are counted.
#[inline(always)]
pub fn on_send(state: *mut SockState) {
    // SAFETY: `state` points into a live SOCKS value. One task sends on a connection at a time
    // (HTTP/1.1); a racing second sender could at worst start the same turn twice.
    let st = unsafe { &mut *state };
    if st.turn.start_ns != 0 && st.bytes_received == st.turn.received {
        return; // more of the same turn's request
    }
    st.prev_turn = st.turn;
    st.turn = Turn {
        // SAFETY: helper without arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
        sent: st.bytes_sent,
        received: st.bytes_received,
        retransmits: st.retransmits,
        _pad: 0,
    };
}
