//! One map from key to value with at most one maker per key: the first caller for a key
//! makes the value outside the lock while later callers for that key wait for its result
//! (never making it a second time), and callers for other keys go on unblocked. A value is
//! kept with the fingerprint it was made for; another fingerprint replaces it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// A key's state.
enum Slot<V> {
    /// Being made by one caller.
    InFlight,
    /// Made for the weights with this fingerprint.
    Ready { fingerprint: u64, value: V },
}

/// Values by key, made once each.
pub(crate) struct Slots<K, V> {
    map: Mutex<HashMap<K, Slot<V>>>,
    /// Signalled whenever an in-flight key settles (made, or given up).
    settled: Condvar,
    /// Callers waiting for another's result now (for tests to see a waiter arrive).
    waiting: AtomicUsize,
}

impl<K, V> Default for Slots<K, V> {
    fn default() -> Self {
        Slots {
            map: Mutex::new(HashMap::new()),
            settled: Condvar::new(),
            waiting: AtomicUsize::new(0),
        }
    }
}

impl<K: Copy + Eq + Hash, V: Clone> Slots<K, V> {
    fn map(&self) -> MutexGuard<'_, HashMap<K, Slot<V>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value of `key` for `fingerprint`, and whether this call made it. Made by `make`
    /// outside the lock when there is none (or only one for another fingerprint: then
    /// `on_stale` runs first, under the lock); while another caller makes it, waits for that.
    /// An `Err` from `make` is not kept (the next caller makes it again) and is returned.
    pub(crate) fn get_or_make<E>(
        &self,
        key: K,
        fingerprint: u64,
        on_stale: impl FnOnce(),
        make: impl FnOnce() -> Result<V, E>,
    ) -> Result<(V, bool), E> {
        let mut map = self.map();
        loop {
            match map.get(&key) {
                Some(Slot::Ready {
                    fingerprint: f,
                    value,
                }) if *f == fingerprint => return Ok((value.clone(), false)),
                Some(Slot::InFlight) => {
                    self.waiting.fetch_add(1, Ordering::SeqCst);
                    map = self.settled.wait(map).unwrap_or_else(|e| e.into_inner());
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                }
                // made for weights that changed since: its value is stale
                Some(Slot::Ready { .. }) => {
                    map.remove(&key);
                    on_stale();
                    break;
                }
                None => break,
            }
        }
        map.insert(key, Slot::InFlight);
        drop(map);
        let mut in_flight = InFlight {
            slots: self,
            key,
            settled: false,
        };
        let made = make();
        in_flight.settle(made.as_ref().ok().map(|v| (fingerprint, v.clone())));
        made.map(|v| (v, true))
    }

    /// Whether `key` holds a value made for `fingerprint`.
    pub(crate) fn has(&self, key: &K, fingerprint: u64) -> bool {
        matches!(self.map().get(key), Some(Slot::Ready { fingerprint: f, .. }) if *f == fingerprint)
    }

    /// Drops the value of `key` (an in-flight key is left to its maker).
    pub(crate) fn remove_ready(&self, key: &K) {
        let mut map = self.map();
        if matches!(map.get(key), Some(Slot::Ready { .. })) {
            map.remove(key);
        }
    }

    /// Keys held or in flight.
    pub(crate) fn len(&self) -> usize {
        self.map().len()
    }

    /// Callers waiting for another caller's result now.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

/// A key being made: settles it when done, or (if the maker panicked) frees it for the next
/// caller, so waiters never wait forever.
struct InFlight<'a, K: Copy + Eq + Hash, V> {
    slots: &'a Slots<K, V>,
    key: K,
    settled: bool,
}

impl<K: Copy + Eq + Hash, V> InFlight<'_, K, V> {
    /// Keeps the value (`None`: nothing to keep) and wakes the waiters.
    fn settle(&mut self, value: Option<(u64, V)>) {
        let mut map = self.slots.map.lock().unwrap_or_else(|e| e.into_inner());
        match value {
            Some((fingerprint, value)) => {
                map.insert(self.key, Slot::Ready { fingerprint, value });
            }
            None => {
                map.remove(&self.key);
            }
        }
        drop(map);
        self.settled = true;
        self.slots.settled.notify_all();
    }
}

impl<K: Copy + Eq + Hash, V> Drop for InFlight<'_, K, V> {
    fn drop(&mut self) {
        if !self.settled {
            self.settle(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_kept_by_fingerprint_and_errors_are_not() {
        let slots: Slots<u8, u32> = Slots::default();
        let made = |v| move || Ok::<u32, ()>(v);
        assert_eq!(slots.get_or_make(1, 7, || {}, made(10)), Ok((10, true)));
        assert_eq!(slots.get_or_make(1, 7, || {}, made(11)), Ok((10, false)));
        assert!(slots.has(&1, 7) && !slots.has(&1, 8));
        // other weights at the same key: the stale value goes, a new one is made
        let mut stale = false;
        assert_eq!(
            slots.get_or_make(1, 8, || stale = true, made(12)),
            Ok((12, true))
        );
        assert!(stale);
        // an error is returned, not kept
        assert_eq!(
            slots.get_or_make(2, 0, || {}, || Err::<u32, _>("spent")),
            Err("spent")
        );
        assert_eq!(slots.len(), 1);
        assert_eq!(slots.get_or_make(2, 0, || {}, made(13)), Ok((13, true)));
        slots.remove_ready(&2);
        assert!(!slots.has(&2, 0));
    }

    #[test]
    fn a_panicking_maker_frees_its_key() {
        let slots: Slots<u8, u32> = Slots::default();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            slots.get_or_make(
                1,
                0,
                || {},
                || -> Result<u32, ()> { panic!("maker failed") },
            )
        }));
        assert!(panicked.is_err());
        assert_eq!(slots.len(), 0, "the in-flight mark is gone");
        assert_eq!(
            slots.get_or_make(1, 0, || {}, || Ok::<_, ()>(5)),
            Ok((5, true))
        );
    }
}
