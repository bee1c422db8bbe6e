//! How many kernels stay loaded at once. The ANE holds about 55 loaded models in one process
//! (jafreck/ironmill docs/design/ane/ane-constraints.md, model-size dependent), so the kernel
//! cache keeps at most a set number loaded: past it the least recently used kernel is dropped
//! (which unloads it) and loaded again when needed. Whether a reload spends compile budget is
//! unknown until a Mac says (`ane doctor`); until then a reload is a compile, budget and all.

use std::collections::HashSet;
use std::sync::Mutex;

use super::key::KernelKey;

/// Default cap on loaded kernels: under the ~55 reported.
pub const DEFAULT_MAX_LOADED: usize = 48;

/// Loaded kernels by last use, and those dropped to make room.
#[derive(Debug)]
pub(crate) struct Residency {
    cap: Option<usize>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Least recently used first.
    order: Vec<KernelKey>,
    evicted: HashSet<KernelKey>,
    peak: usize,
}

impl Default for Residency {
    fn default() -> Self {
        Residency::new(Some(DEFAULT_MAX_LOADED))
    }
}

impl Residency {
    pub(crate) fn new(cap: Option<usize>) -> Self {
        Residency {
            cap,
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) fn cap(&self) -> Option<usize> {
        self.cap
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `key` was loaded once and dropped to make room (loading it again is a reload).
    pub(crate) fn was_evicted(&self, key: &KernelKey) -> bool {
        self.state().evicted.contains(key)
    }

    /// Marks `key` used now (loading it if new); returns the kernels to drop to stay within
    /// the cap, least recently used first (never `key` itself).
    pub(crate) fn touch(&self, key: KernelKey) -> Vec<KernelKey> {
        let mut s = self.state();
        if let Some(i) = s.order.iter().position(|k| *k == key) {
            s.order.remove(i);
        }
        s.evicted.remove(&key);
        s.order.push(key);
        let mut victims = Vec::new();
        while self.cap.is_some_and(|cap| s.order.len() > cap.max(1)) {
            let victim = s.order.remove(0);
            s.evicted.insert(victim);
            victims.push(victim);
        }
        s.peak = s.peak.max(s.order.len());
        victims
    }

    /// Forgets `key` (its kernel failed or was replaced), without counting it evicted.
    pub(crate) fn forget(&self, key: &KernelKey) {
        let mut s = self.state();
        s.order.retain(|k| k != key);
    }

    /// Kernels loaded now.
    pub(crate) fn loaded(&self) -> usize {
        self.state().order.len()
    }

    /// Baked kernels loaded now.
    pub(crate) fn baked_loaded(&self) -> usize {
        self.state().order.iter().filter(|k| k.is_baked()).count()
    }

    /// The most kernels ever loaded at once.
    pub(crate) fn peak(&self) -> usize {
        self.state().peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_kernel_makes_room() {
        let r = Residency::new(Some(2));
        let s = |n| KernelKey::Streamed((n, n, n), false);
        assert!(r.touch(s(1)).is_empty());
        assert!(r.touch(s(2)).is_empty());
        assert!(r.touch(s(1)).is_empty(), "a hit moves it to the back");
        assert_eq!(r.touch(s(3)), [s(2)]);
        assert!(r.was_evicted(&s(2)) && !r.was_evicted(&s(1)));
        assert_eq!(r.touch(s(2)), [s(1)], "reloaded, and the next goes");
        assert!(!r.was_evicted(&s(2)));
        assert_eq!((r.loaded(), r.peak()), (2, 2));
        r.forget(&s(2));
        assert_eq!(r.loaded(), 1);
        let unlimited = Residency::new(None);
        for n in 0..100 {
            assert!(unlimited.touch(s(n)).is_empty());
        }
        assert_eq!(unlimited.peak(), 100);
    }
}
