//! Integration tests: the real gateway over HTTP, a fresh database per test.

mod clicks;
mod decisions;
mod helpers;
mod hooks;
mod ledger;
mod requests;
