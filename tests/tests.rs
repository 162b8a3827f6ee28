//! Integration tests: they drive the real `flowrun` binary, as a user would.
//!
//! One test binary, modules by theme (as ripgrep does). Flows are written into temporary directories so
//! that every `file:line:col` a test asserts is visible next to the flow text.

mod util;

mod cache;
mod cli;
mod code_version;
mod concurrency;
mod corpus;
mod crs;
mod download;
mod graph;
mod interrupt;
mod lake;
mod pv;
mod pv_unseen;
mod remote;
mod run;
mod servers;
mod stac;
mod torture;
mod validation;
