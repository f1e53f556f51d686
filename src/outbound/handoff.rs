//! First attempts handed from the writer to the delivery worker in memory.
//!
//! Contract
//! - Input: the writer reserves a place ([`Handoff::reserve`]) for each new delivery before
//!   it commits the batch that queues the delivery's first-attempt job, and sends the job
//!   through it once that commit succeeded (and the delivery's conversion landed).
//! - Output: the worker receives [`DeliveryJob`]s to attempt at once, without waiting for
//!   apalis to poll, lock and acknowledge them.
//! - Errors: none. A full queue (the worker is behind) or no worker in this process means no
//!   reservation: the job is then queued to run now, the ordinary way.
//!
//! Durability does not depend on this queue. A handed-off delivery's apalis job is still
//! written in the conversion's transaction, only due [`Handoff::grace_secs`] later; the
//! worker marks it done in the transaction that records the attempt. If the process dies
//! first, or recording fails, apalis runs the job when it comes due, and the attempt's slot,
//! its lease (PostgreSQL) and the attempt log keep a second copy from sending twice. (An
//! attempt that ends without a record — put back while its endpoint was busy, or its
//! delivery no longer pending — leaves its job pending too; when it comes due it finds that
//! and does nothing.) If apalis fetches the job while the handed-off copy is still in
//! flight, its copy is put back to look again, so a failed record is never orphaned.

use std::time::Duration;

use tokio::sync::mpsc;

use super::DeliveryJob;

/// Places in the queue per `outbound.concurrency` slot. While postbacks arrive faster than
/// the worker sends (a burst), first attempts wait here instead of spilling to apalis' slower
/// poll, lock and acknowledge path: with 2 per slot, 256 postbacks in flight moved 6.5k
/// deliveries/s end to end, with 16 per slot 7.3-7.4k. A place costs a [`DeliveryJob`]
/// (two short strings); at 256 slots the queue holds 4 096, a fraction of a second's work,
/// far inside the grace period.
pub const QUEUE_PER_SLOT: usize = 16;

/// The sending side, held by the writer.
#[derive(Clone)]
pub struct Handoff {
    tx: mpsc::Sender<DeliveryJob>,
    grace_secs: i64,
}

/// A place in the queue for one first attempt, taken before the commit.
pub type Reservation = mpsc::OwnedPermit<DeliveryJob>;

impl Handoff {
    /// A queue of `capacity` first attempts whose apalis jobs wait `grace` (whole seconds,
    /// rounded up) before apalis runs them as the fallback.
    pub fn channel(capacity: usize, grace: Duration) -> (Handoff, mpsc::Receiver<DeliveryJob>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let grace_secs = i64::try_from(grace.as_millis().div_ceil(1000)).unwrap_or(i64::MAX / 4);
        (Handoff { tx, grace_secs }, rx)
    }

    /// A place for one first attempt, if the worker has room for it now.
    pub fn reserve(&self) -> Option<Reservation> {
        self.tx.clone().try_reserve_owned().ok()
    }

    /// How long after its conversion a handed-off delivery's apalis job comes due.
    pub fn grace_secs(&self) -> i64 {
        self.grace_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_reserves_nothing_and_a_dropped_reservation_frees_its_place() {
        let (handoff, mut rx) = Handoff::channel(2, Duration::from_millis(1500));
        assert_eq!(handoff.grace_secs(), 2, "rounded up");
        let a = handoff.reserve().expect("first place");
        let b = handoff.reserve().expect("second place");
        assert!(handoff.reserve().is_none(), "the queue is full");
        drop(b);
        let c = handoff.reserve().expect("the dropped place is free again");
        a.send(DeliveryJob::first("d1", 1));
        drop(c);
        assert_eq!(rx.recv().await, Some(DeliveryJob::first("d1", 1)));
        assert!(
            rx.try_recv().is_err(),
            "a dropped reservation sends nothing"
        );
    }
}
