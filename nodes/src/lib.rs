//! flowrun's core node library. Every `#[node]` function here is registered when this crate is linked.
//! The PV pipeline is its own crate, `flowrun-pv` (`nodes/pv`), so that examples and tests of the engine
//! do not link reqwest, h3o and proj4rs.
//!
//! - [`demo`]: small nodes over numbers, for examples, tests and benchmarks;
//! - [`tables`]: generic table nodes (CSV in, concatenation, counts);
//!
//! Each node is a plain function: call it directly in a unit test.

pub mod demo;
pub mod tables;

/// Makes sure this crate is linked into a binary (so its nodes are registered). Call it once from `main`.
pub fn link() {}
