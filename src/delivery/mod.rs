//! Delivery: the I/O side of outbound postbacks. Owns the only reqwest client (SSRF-safe),
//! attempt records and their redaction, and the per-endpoint concurrency cap.
//!
//! Flow: `ssrf` policy → `client::DeliveryClient::send` (uses `redact`) → `AttemptRecord`;
//! `limiter` bounds concurrent sends per endpoint.

pub mod admin;
pub mod client;
pub mod clock;
pub mod limiter;
pub mod redact;
pub mod ssrf;
pub mod worker;

pub use client::{AttemptRecord, ClientConfig, ClientError, DeliveryClient, GuardedResolver};
pub use clock::{Clock, SystemClock};
pub use limiter::{KeyedLimiter, KeyedPermit};
pub use redact::redact_url;
pub use ssrf::{ALLOW_ENV, AddressPolicy, AllowList, BlockReason, Blocked, SsrfError, classify_ip};
