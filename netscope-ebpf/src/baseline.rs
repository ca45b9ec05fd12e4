//! The empty baseline, an object of its own (`netscope-baseline.o`) that only `cargo xtask bench
//! probe` loads: NetScope's programs by the same names, on the same hooks, each returning at
//! once, beside NetScope's maps and globals, so that the agent's loader takes it as it takes the
//! real object. Their run time is the floor (hook dispatch) against which NetScope's cost is
//! measured. The DaemonSet's object (`netscope.o`) holds none of this.
#![no_std]
#![no_main]
#![allow(internal_features)]
#![feature(core_intrinsics)]

// The same maps and globals as the real object; their helpers go unused here.
#[allow(dead_code, unused_macros, unused_imports)]
mod maps;
mod object;

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{btf_tracepoint, classifier, kprobe, tracepoint},
    programs::{BtfTracePointContext, ProbeContext, TcContext, TracePointContext},
};

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn ns_set_state(_ctx: TracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn ns_set_state_btf(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn ns_send_length(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn ns_recv_length(_ctx: TracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn ns_send_length_btf(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn ns_recv_length_btf(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[kprobe]
pub fn ns_tcp_sendmsg(_ctx: ProbeContext) -> u32 {
    0
}

#[kprobe]
pub fn ns_tcp_cleanup_rbuf(_ctx: ProbeContext) -> u32 {
    0
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn ns_retransmit(_ctx: TracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn ns_retransmit_btf(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn ns_send_reset(_ctx: TracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn ns_send_reset_btf(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn ns_recv_reset(_ctx: TracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn ns_recv_reset_btf(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[tracepoint(category = "tcp", name = "tcp_destroy_sock")]
pub fn ns_destroy_sock(_ctx: TracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn ns_destroy_sock_btf(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[classifier]
pub fn ns_tc_egress(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[classifier]
pub fn ns_tc_ingress(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}
