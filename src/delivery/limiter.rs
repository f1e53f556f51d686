//! Per-endpoint concurrency cap, so one slow affiliate cannot hold every worker slot.
//!
//! Contract
//! - Input: an endpoint key.
//! - Output: a [`KeyedPermit`] once fewer than `per_key` attempts to that key are in flight
//!   ([`KeyedLimiter::acquire`] waits; [`KeyedLimiter::try_acquire`] returns `None` so a worker
//!   can re-schedule instead of parking a slot).
//! - Errors: none (the semaphores are never closed).
//! - Side effects: an in-memory map entry per busy key, removed when its last permit drops,
//!   so the map does not grow with every endpoint ever seen.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A map of semaphores, one per key, created on demand.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    per_key: usize,
    slots: Arc<Mutex<HashMap<K, Arc<Semaphore>>>>,
}

impl<K: Eq + Hash + Clone> KeyedLimiter<K> {
    /// At most `per_key` concurrent permits per key (0 is treated as 1).
    pub fn new(per_key: usize) -> Self {
        Self {
            per_key: per_key.max(1),
            slots: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn semaphore(&self, key: &K) -> Arc<Semaphore> {
        // The lock only guards map access (no await inside), so a poisoned lock still holds
        // a consistent map; keep going rather than panic.
        let mut map = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(key.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_key)))
            .clone()
    }

    /// Waits for a slot for `key`.
    pub async fn acquire(&self, key: K) -> KeyedPermit<K> {
        let sem = self.semaphore(&key);
        let permit = sem.clone().acquire_owned().await.ok();
        self.permit(key, sem, permit)
    }

    /// A slot for `key` if one is free now.
    pub fn try_acquire(&self, key: K) -> Option<KeyedPermit<K>> {
        let sem = self.semaphore(&key);
        match sem.clone().try_acquire_owned() {
            Ok(p) => Some(self.permit(key, sem, Some(p))),
            Err(_) => {
                // Drop our reference through the same clean-up path as a permit.
                drop(self.permit(key, sem, None));
                None
            }
        }
    }

    fn permit(
        &self,
        key: K,
        sem: Arc<Semaphore>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> KeyedPermit<K> {
        KeyedPermit {
            key: Some(key),
            sem: Some(sem),
            permit,
            slots: Arc::clone(&self.slots),
        }
    }

    /// Number of keys with permits held or awaited (for metrics and tests).
    pub fn active_keys(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Holds one slot of one key; dropping it frees the slot.
#[derive(Debug)]
pub struct KeyedPermit<K: Eq + Hash> {
    key: Option<K>,
    sem: Option<Arc<Semaphore>>,
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<Mutex<HashMap<K, Arc<Semaphore>>>>,
}

impl<K: Eq + Hash> Drop for KeyedPermit<K> {
    fn drop(&mut self) {
        // Release the slot first (the permit holds its own Arc to the semaphore).
        drop(self.permit.take());
        let (Some(key), Some(sem)) = (self.key.take(), self.sem.take()) else {
            return;
        };
        let mut map = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        // Two references left = the map's and ours: nobody holds or awaits this key.
        if Arc::strong_count(&sem) == 2 {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_endpoint_does_not_block_another_endpoint() {
        let l = KeyedLimiter::new(2);
        let a1 = l.acquire("slow").await;
        let a2 = l.acquire("slow").await;
        assert!(
            l.try_acquire("slow").is_none(),
            "third slot for the same key is refused"
        );
        let b = l.try_acquire("fast");
        assert!(b.is_some(), "another key still has slots");
        drop(a1);
        assert!(
            l.try_acquire("slow").is_some(),
            "a freed slot can be taken again"
        );
        drop((a2, b));
    }

    #[tokio::test]
    async fn idle_keys_are_forgotten() {
        let l = KeyedLimiter::new(1);
        {
            let _p = l.acquire("a").await;
            let _q = l.acquire("b").await;
            assert_eq!(l.active_keys(), 2);
        }
        assert_eq!(l.active_keys(), 0);
        assert!(l.try_acquire("a").is_some());
        assert_eq!(l.active_keys(), 0);
    }

    #[tokio::test]
    async fn a_waiter_gets_the_slot_when_it_is_released() {
        let l = Arc::new(KeyedLimiter::new(1));
        let held = l.acquire("k".to_owned()).await;
        let l2 = Arc::clone(&l);
        let waiter = tokio::spawn(async move {
            let _p = l2.acquire("k".to_owned()).await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert_eq!(l.active_keys(), 1, "the waiter keeps the entry alive");
        drop(held);
        waiter.await.expect("test value");
        assert_eq!(l.active_keys(), 0);
    }
}
