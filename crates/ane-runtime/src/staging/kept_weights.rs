//! Streamed weight tiles kept staged across calls (unlike [`convert`](super::convert), which
//! stages on every call): a surface whose weight columns (or whose whole
//! content, for the two-input form's weight surface) already hold a weight tile, so a repeated
//! prefill stages only its activations. Keyed by the weight's identity and fingerprint (a
//! reloaded tensor at the same address is staged again), capped in bytes, least recently used
//! evicted first. A surface is taken out while a job uses it, so two threads never share one.

use std::sync::Mutex;

use crate::kernels::policy::WeightId;
use crate::layout::TensorLayout;
use crate::surface::Surface;

/// Default cap: 512 MiB of staged weight surfaces.
pub const DEFAULT_STAGED_WEIGHTS_BYTES: usize = 512 << 20;

/// Which weight tile a surface holds, in which layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeptWeightKey {
    /// The weight (`WeightId::key`) and its contents' fingerprint.
    pub(crate) weight: (u64, u64),
    /// The weight batch, the tile's first row and column, and the surface column its
    /// first row went to (kernels of different token buckets can share an input layout).
    pub(crate) tile: ((usize, usize), usize, usize, usize),
    /// The surface's layout (the kernel's input it was staged for).
    pub(crate) layout: TensorLayout,
}

impl KeptWeightKey {
    pub(crate) fn new(
        id: WeightId,
        batch: (usize, usize),
        (m0, k0): (usize, usize),
        col0: usize,
        layout: &TensorLayout,
    ) -> Self {
        KeptWeightKey {
            weight: (id.key, id.fingerprint),
            tile: (batch, m0, k0, col0),
            layout: layout.clone(),
        }
    }
}

/// The kept surfaces, most recently used last.
#[derive(Debug)]
pub(crate) struct KeptWeights {
    cap_bytes: usize,
    entries: Mutex<Vec<(KeptWeightKey, Surface)>>,
}

impl Default for KeptWeights {
    fn default() -> Self {
        KeptWeights::new(DEFAULT_STAGED_WEIGHTS_BYTES)
    }
}

impl KeptWeights {
    pub(crate) fn new(cap_bytes: usize) -> Self {
        KeptWeights {
            cap_bytes,
            entries: Mutex::new(Vec::new()),
        }
    }

    /// The surface staged for `key`, taken out of the cache (put it back with [`keep`]).
    ///
    /// [`keep`]: Self::keep
    pub(crate) fn take(&self, key: &KeptWeightKey) -> Option<Surface> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let i = entries.iter().position(|(k, _)| k == key)?;
        Some(entries.remove(i).1)
    }

    /// Keeps `surface` as staged for `key`, evicting the least recently used past the cap.
    /// Returns it when it alone exceeds the cap (the caller recycles it).
    pub(crate) fn keep(&self, key: KeptWeightKey, surface: Surface) -> Option<Surface> {
        let bytes = surface.as_bytes().len();
        if bytes > self.cap_bytes {
            return Some(surface);
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // an older staging of the same tile (another weight version) is replaced
        entries.retain(|(k, _)| {
            !(k.weight.0 == key.weight.0 && k.tile == key.tile && k.layout == key.layout)
        });
        let mut total: usize = entries.iter().map(|(_, s)| s.as_bytes().len()).sum();
        while total + bytes > self.cap_bytes && !entries.is_empty() {
            total -= entries.remove(0).1.as_bytes().len();
        }
        entries.push((key, surface));
        None
    }

    /// Bytes kept.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().map(|(_, s)| s.as_bytes().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::SurfaceDType;

    fn key(weight: u64, fingerprint: u64, m0: usize) -> (KeptWeightKey, Surface) {
        let layout = TensorLayout::aligned("x", SurfaceDType::F16, &[1, 4, 1, 32], 64).unwrap();
        let id = WeightId {
            key: weight,
            fingerprint,
        };
        (
            KeptWeightKey::new(id, (0, 0), (m0, 0), 0, &layout),
            Surface::new(layout),
        )
    }

    #[test]
    fn surfaces_are_kept_by_weight_version_within_the_cap() {
        let one = key(1, 0, 0).1.as_bytes().len();
        let cache = KeptWeights::new(2 * one);
        let (a, sa) = key(1, 0, 0);
        assert!(cache.take(&a).is_none());
        assert!(cache.keep(a.clone(), sa).is_none());
        assert!(cache.take(&a).is_some(), "taken out while in use");
        assert!(cache.take(&a).is_none());
        let (a, sa) = key(1, 0, 0);
        cache.keep(a.clone(), sa);
        // the same tile of a reloaded weight replaces it
        let (a2, sa2) = key(1, 7, 0);
        cache.keep(a2.clone(), sa2);
        assert!(cache.take(&a).is_none());
        assert_eq!(cache.bytes(), one);
        // past the cap the least recently used goes
        let (b, sb) = key(2, 0, 0);
        let (c, sc) = key(3, 0, 0);
        cache.keep(b.clone(), sb);
        cache.keep(c.clone(), sc);
        assert_eq!(cache.bytes(), 2 * one);
        assert!(cache.take(&a2).is_none(), "evicted");
        assert!(cache.take(&b).is_some() && cache.take(&c).is_some());
        // a surface larger than the cap is handed back
        let tiny = KeptWeights::new(1);
        let (d, sd) = key(4, 0, 0);
        assert!(tiny.keep(d, sd).is_some());
    }
}
