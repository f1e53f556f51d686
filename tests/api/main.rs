//! Integration tests: the real gateway over HTTP, a fresh database per test.

mod clicks;
mod crash;
mod decisions;
mod helpers;
mod hooks;
mod ledger;
mod metrics;
mod requests;
mod spool;
#[path = "../support/mod.rs"]
mod support;
