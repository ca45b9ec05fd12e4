//! NetScope's kernel programs. Every entry point is a thin wrapper over a `try_*` function that
//! returns a `Result`; an error is counted and never changes what happens to the traffic.
#![no_std]
#![no_main]
// Atomic adds on map values (`core::sync::atomic` has no RMW operations for the BPF target);
// inline asm for context loads at constant offsets.
#![allow(internal_features)]
#![feature(core_intrinsics, asm_experimental_arch)]

mod maps;
mod object;
mod probes;
mod words;
