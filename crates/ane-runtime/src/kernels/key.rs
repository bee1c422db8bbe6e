//! What names a kernel in the cache: its kind and the key that kind is looked up by.

use crate::matmul::BakedTile;

/// One kernel: a matmul tile shape (streamed, in the two-input form or not), a weight tile
/// (baked), a fused block's weights and token bucket (baked), or a fused block's shape
/// (streamed). The same key names its loaded kernel in [`Residency`](super::residency::Residency).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum KernelKey {
    /// A streamed matmul tile `(m, k, n)`; `true` for the two-input form.
    Streamed((usize, usize, usize), bool),
    /// A baked matmul kernel: its weights' key and tile.
    Baked(u64, BakedTile),
    /// A fused block's baked kernel: its weights' key and token bucket.
    Fused(u64, usize),
    /// A fused block's streamed kernel, by its shape's key.
    FusedStreamed(u64),
}

impl KernelKey {
    /// Whether the kernel holds weights (counted apart by the bake decision).
    pub(crate) fn is_baked(&self) -> bool {
        matches!(self, KernelKey::Baked(..) | KernelKey::Fused(..))
    }
}
