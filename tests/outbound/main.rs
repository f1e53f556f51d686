//! Integration tests of outbound postbacks: the SSRF-safe client against local receivers,
//! the Standard Webhooks vectors, and the real gateway delivering to a recording affiliate.

mod crash;
mod delivery_client;
mod gateway;
mod handoff;
mod harness;
mod multi;
mod outage;
mod standard_webhooks_vectors;
#[path = "../support/mod.rs"]
mod support;
