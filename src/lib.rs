//! postgate: a server-to-server conversion-tracking gateway.
//!
//! The crate in the order data flows:
//!
//! * [`config`] — the TOML file, `${ENV}` interpolation and overrides, validated at load.
//! * [`domain`] — the vocabulary: signed [`domain::ClickId`]s, exact [`domain::Money`], the
//!   [`domain::CanonicalPostback`] every source becomes, reasons and receipts.
//! * [`http`] — the only axum module: extracts requests, hands them to the pipeline.
//! * [`pipeline`] — the one orchestrator: click → redirect; postback → decision → receipt.
//! * [`s2s`] — the S2S postback source: parameters, aliases, token → canonical postback.
//! * [`connector`] — webhook sources (`connectors/*.toml`): verify signatures and tokens,
//!   decode JSON / form / query / SOAP bodies, split into events.
//! * [`mapping`] — `mappings/<connector>/*.toml`: JSONPath mappings from events to canonical
//!   postbacks, compiled once, with test cases that `postgate check` runs.
//! * [`connector`] — webhook sources (`connectors/*.toml`): verify signatures and tokens,
//!   decode JSON / form / query / SOAP bodies, split into events.
//! * [`mapping`] — `mappings/<connector>/*.toml`: JSONPath mappings from events to canonical
//!   postbacks, compiled once, with test cases that `postgate check` runs.
//! * [`attribution`] — offer terms, click window, lag, FX, payout rules → [`attribution::Decision`];
//!   then dedupe and status transitions inside the writer's transaction.
//! * [`ledger`] — double-entry postings and derived balances.
//! * [`store`] — SQLite, migrations, the catalog snapshot and the group-commit writer.
//! * [`spool`] — when the database cannot be reached: verified requests fsync'd to local
//!   segment files, answered 202 `queued`, and replayed into the pipeline by a drainer.
//! * [`outbound`] — affiliate postbacks, the pure part: endpoints, templates, Standard Webhooks
//!   signing, the retry schedule and the queue's job type. Deliveries are enqueued by the
//!   writer in the conversion's own transaction.
//! * [`delivery`] — the worker that sends them: the only reqwest client (SSRF-safe), the
//!   attempt log, dead letters and replay.
//! * [`startup`] / [`telemetry`] — wiring the above into a running server.

pub mod attribution;
pub mod config;
pub mod connector;
pub mod delivery;
pub mod domain;
pub mod http;
pub mod ledger;
pub mod mapping;
pub mod outbound;
pub mod pipeline;
pub mod s2s;
pub mod spool;
pub mod startup;
pub mod store;
pub mod telemetry;
