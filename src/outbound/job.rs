//! The durable queue's job: which delivery, which attempt.
//!
//! Contract
//! - Input: a delivery id (row in postgate's `deliveries` table) and an attempt number.
//! - Output: [`DeliveryJob`], a plain serde type stored as JSON by apalis, and its
//!   idempotency key.
//! - Errors / side effects: none.
//!
//! One job per attempt (see APALIS_NOTES.md §3): the delay lives in the job's `run_at`, and
//! the key `"{delivery_id}:{attempt_no}"` makes a re-push after a crash a no-op.

use serde::{Deserialize, Serialize};

/// One attempt of one delivery. Everything else (URL, values, state) is read from the
/// `deliveries` row when the job runs, so config fixes apply to pending retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryJob {
    pub delivery_id: i64,
    /// 1-based; 1 is the first attempt.
    pub attempt_no: u32,
}

impl DeliveryJob {
    /// The first attempt of a delivery.
    pub fn first(delivery_id: i64) -> Self {
        Self {
            delivery_id,
            attempt_no: 1,
        }
    }

    /// The job for the attempt after this one.
    pub fn next(&self) -> Self {
        Self {
            delivery_id: self.delivery_id,
            attempt_no: self.attempt_no.saturating_add(1),
        }
    }

    /// apalis idempotency key: unique per (delivery, attempt).
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.delivery_id, self.attempt_no)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_attempt_has_its_own_idempotency_key_and_a_stable_json_shape() {
        let j = DeliveryJob::first(42);
        assert_eq!(j.idempotency_key(), "42:1");
        assert_eq!(j.next().idempotency_key(), "42:2");
        assert_eq!(
            serde_json::to_string(&j).unwrap(),
            r#"{"delivery_id":42,"attempt_no":1}"#
        );
        assert!(
            serde_json::from_str::<DeliveryJob>(r#"{"delivery_id":1,"attempt_no":1,"x":0}"#)
                .is_err()
        );
    }
}
