//! Tools for local runs, tests and benchmarks: a programmable HTTP upstream.

pub mod upstream;
