//! The wall clock of the delivery path, injectable so retry timing can be tested by moving
//! time by hand instead of waiting for it.
//!
//! The worker reads it when an attempt starts and when it ends; everything it stores or
//! schedules (the attempt's `started_at`, the `webhook-timestamp`, a `Retry-After` date, the
//! next attempt's `run_at`) is computed from those two readings. Elapsed time inside one
//! attempt (latency, client timeouts) is tokio's monotonic time, which tests control with
//! `tokio::time::pause()` instead.

use chrono::{DateTime, Utc};

/// Where the delivery worker reads the current UTC time.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The real clock, the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}
