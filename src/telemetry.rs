//! Logging and metrics.
//!
//! * Logging: human-readable lines to stderr, filtered by `RUST_LOG` (default `info`).
//!   Messages are capitalised sentences with key=value fields; secrets are never logged.
//! * Metrics: the `metrics` facade with a process-wide Prometheus recorder, rendered by
//!   `GET /metrics`. Every series is named and described in [`describe`]; labels are small
//!   closed sets (route templates, status codes, verdicts, connector names), never ids.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls are ignored (tests call it freely).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Latency buckets (seconds): a commit is ~1–50 ms, an outbound attempt up to the 15 s timeout.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
];
/// Items per writer batch.
const ITEMS_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide recorder, installed on first use. Several gateways built in one process
/// (the tests do this) share it, as they would share any global. `None` only if another
/// recorder was installed first, in which case that one receives the metrics.
pub fn metrics() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(WRITER_BATCH_ITEMS.into()),
                        ITEMS_BUCKETS,
                    )
                })
                .and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(handle) => {
                    describe();
                    let upkeep = handle.clone();
                    // A plain thread: the recorder outlives any one runtime (tests build many).
                    let _ = std::thread::Builder::new()
                        .name("metrics-upkeep".into())
                        .spawn(move || {
                            loop {
                                std::thread::sleep(UPKEEP_EVERY);
                                upkeep.run_upkeep();
                            }
                        });
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(%error, "Metrics recorder not installed; /metrics will be empty.");
                    None
                }
            }
        })
        .as_ref()
}

pub const HTTP_REQUESTS: &str = "postgate_http_requests_total";
pub const HTTP_DURATION: &str = "postgate_http_request_duration_seconds";
pub const CONVERSIONS: &str = "postgate_conversions_total";
pub const WEBHOOK_EVENTS: &str = "postgate_webhook_events_total";
pub const WRITER_BATCH_ITEMS: &str = "postgate_writer_batch_items";
pub const WRITER_COMMIT: &str = "postgate_writer_commit_seconds";
pub const WRITER_FAILURES: &str = "postgate_writer_failures_total";
pub const SPOOLED: &str = "postgate_spooled_total";
pub const SPOOL_DRAINED: &str = "postgate_spool_drained_total";
pub const SPOOL_DEAD: &str = "postgate_spool_dead_total";
pub const SPOOL_PENDING: &str = "postgate_spool_pending";
pub const SPOOL_WRITABLE: &str = "postgate_spool_writable";
pub const DELIVERY_ATTEMPTS: &str = "postgate_delivery_attempts_total";
pub const DELIVERY_DURATION: &str = "postgate_delivery_attempt_duration_seconds";
pub const DELIVERY_WORKER_RESTARTS: &str = "postgate_delivery_worker_restarts_total";
pub const DELIVERY_FIRST_ATTEMPTS: &str = "postgate_delivery_first_attempts_total";

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route template and status code."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request, by route template."
    );
    describe_counter!(
        CONVERSIONS,
        "Conversion decisions committed, by channel (postback, webhook; spooled ones when replayed) and verdict."
    );
    describe_counter!(
        WEBHOOK_EVENTS,
        "Webhook outcomes recorded, by connector and status: one per decision (accepted, duplicate, rejected) and one per reason an event or part of it was stored without one (unmapped)."
    );
    describe_histogram!(
        WRITER_BATCH_ITEMS,
        "Conversions and clicks committed per writer batch."
    );
    describe_histogram!(
        WRITER_COMMIT,
        Unit::Seconds,
        "Time to commit one writer batch."
    );
    describe_counter!(
        WRITER_FAILURES,
        "Writer failures: batches whose database could not be reached (unavailable), batches retried item by item (batch), and requests that could not be written (item)."
    );
    describe_counter!(
        SPOOLED,
        "Verified requests appended to the local spool because the database could not take them."
    );
    describe_counter!(
        SPOOL_DRAINED,
        "Spooled requests replayed into the database."
    );
    describe_counter!(
        SPOOL_DEAD,
        "Spooled requests moved to dead.log after the give-up period (kept, never deleted)."
    );
    describe_gauge!(SPOOL_PENDING, "Spooled requests waiting to be replayed.");
    describe_gauge!(
        SPOOL_WRITABLE,
        "1 if the last spool append succeeded, else 0."
    );
    describe_counter!(
        DELIVERY_ATTEMPTS,
        "Outbound postback attempts, by what followed (delivered, retry, paused, dead)."
    );
    describe_histogram!(
        DELIVERY_DURATION,
        Unit::Seconds,
        "Duration of outbound postback attempts (a destination refused by the address policy counts as ~0)."
    );
    describe_counter!(
        DELIVERY_WORKER_RESTARTS,
        "Times the delivery worker failed (its job table could not be polled) and a new one was started."
    );
    describe_counter!(
        DELIVERY_FIRST_ATTEMPTS,
        "Deliveries of newly recorded conversions, by how their first attempt reaches the worker: handed_off (at once, from the writer) or queued (apalis polls it: no worker here, handoff off, or the handoff queue was full). Status changes' deliveries always go through apalis and are not counted."
    );
    // Shown as 0 from the start, so `rate()` and alerts work before the first outage.
    for name in [SPOOLED, SPOOL_DRAINED, SPOOL_DEAD, DELIVERY_WORKER_RESTARTS] {
        metrics::counter!(name).increment(0);
    }
}
