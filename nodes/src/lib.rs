//! flowrun's node library. Every `#[node]` function here is registered when this crate is linked.
//!
//! - [`demo`]: small nodes over numbers, for examples, tests and benchmarks;
//! - [`tables`]: generic table nodes (CSV in, concatenation, counts);
//! - [`pv`]: the PV-installation pipeline of `flows/doi_pv.toml`.
//!
//! Each node is a plain function: call it directly in a unit test.

pub mod demo;
pub mod pv;
pub mod tables;

/// Makes sure this crate is linked into a binary (so its nodes are registered). Call it once from `main`.
pub fn link() {}
