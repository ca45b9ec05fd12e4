//! Empty programs on the same hooks as NetScope's, loaded only by `cargo xtask bench probe`:
//! their run time is the floor (hook dispatch) against which NetScope's cost is measured.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, kprobe, tracepoint},
    programs::{ProbeContext, TcContext, TracePointContext},
};

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn nop_set_state(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn nop_send_length(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn nop_recv_length(_ctx: TracePointContext) -> u32 {
    0
}

#[kprobe]
pub fn nop_tcp_sendmsg(_ctx: ProbeContext) -> u32 {
    0
}

#[kprobe]
pub fn nop_tcp_cleanup_rbuf(_ctx: ProbeContext) -> u32 {
    0
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn nop_retransmit(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn nop_send_reset(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn nop_recv_reset(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint(category = "tcp", name = "tcp_destroy_sock")]
pub fn nop_destroy_sock(_ctx: TracePointContext) -> u32 {
    0
}

#[classifier]
pub fn nop_tc_egress(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[classifier]
pub fn nop_tc_ingress(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}
