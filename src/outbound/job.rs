//! The durable queue's job: which delivery, which series, which attempt.
//!
//! Contract
//! - Input: a delivery id (row in postgate's `deliveries` table), its attempt series (a replay
//!   starts a new one) and an attempt number.
//! - Output: [`DeliveryJob`], a plain serde type stored as JSON by apalis, and its
//!   idempotency key.
//! - Errors / side effects: none.
//!
//! One job per attempt (see docs/OUTBOUND.md): the delay lives in the job's `run_at`, and
//! the key `"{delivery_id}:{series}:{attempt_no}"` makes a re-push after a crash a no-op.

use serde::{Deserialize, Serialize};

/// The apalis queue (`Jobs.job_type`). Explicit, never the type name: a moved type would
/// otherwise orphan every queued job.
pub const QUEUE: &str = "postgate.outbound";

/// How often apalis re-runs a job whose handler failed on infrastructure (database down).
/// HTTP failures never count here: they are our own schedule's business.
pub const INFRA_ATTEMPTS: i64 = 3;

/// One attempt of one delivery. Everything else (URL, values, state) is read from the
/// `deliveries` and `conversions` rows when the job runs, so config fixes apply to retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryJob {
    pub delivery_id: String,
    /// 1-based; a replay increments it.
    pub series: u32,
    /// 1-based within the series; 1 is the first attempt.
    pub attempt_no: u32,
}

impl DeliveryJob {
    /// The first attempt of a series.
    pub fn first(delivery_id: &str, series: u32) -> Self {
        Self {
            delivery_id: delivery_id.to_owned(),
            series,
            attempt_no: 1,
        }
    }

    /// The job for the attempt after this one.
    pub fn next(&self) -> Self {
        Self {
            delivery_id: self.delivery_id.clone(),
            series: self.series,
            attempt_no: self.attempt_no.saturating_add(1),
        }
    }

    /// apalis idempotency key: unique per (delivery, series, attempt).
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}:{}", self.delivery_id, self.series, self.attempt_no)
    }

    /// The job as apalis-sqlite stores it (its codec is JSON).
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and integers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_attempt_has_its_own_idempotency_key_and_a_stable_json_shape() {
        let j = DeliveryJob::first("d", 1);
        assert_eq!(j.idempotency_key(), "d:1:1");
        assert_eq!(j.next().idempotency_key(), "d:1:2");
        assert_eq!(
            String::from_utf8(j.encode()).expect("test value"),
            r#"{"delivery_id":"d","series":1,"attempt_no":1}"#
        );
        assert!(
            serde_json::from_str::<DeliveryJob>(
                r#"{"delivery_id":"d","series":1,"attempt_no":1,"x":0}"#
            )
            .is_err()
        );
    }
}
