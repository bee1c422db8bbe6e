//! A safe f32 GEMM over strided views, on top of the `gemm` crate's raw-pointer kernel.

/// A read-only strided matrix view into a slice.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatRef<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) offset: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// Elements between consecutive rows.
    pub(crate) row_stride: usize,
    /// Elements between consecutive columns.
    pub(crate) col_stride: usize,
}

impl MatRef<'_> {
    /// Index of the last element the view can touch, if the view is non-empty.
    fn last_index(&self) -> Option<usize> {
        if self.rows == 0 || self.cols == 0 {
            return None;
        }
        Some(self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride)
    }
}

/// `dst = lhs · rhs` with `dst` dense row-major `m × n`; f32 accumulation.
///
/// # Panics
/// If the shapes disagree or a view reaches past its slice (a caller bug, checked before
/// any memory is touched).
pub(crate) fn gemm_f32(dst: &mut [f32], lhs: MatRef<'_>, rhs: MatRef<'_>, threads: usize) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "inner dimensions differ");
    assert_eq!(dst.len(), m * n, "destination is not m x n");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst.fill(0.0);
        return;
    }
    for v in [&lhs, &rhs] {
        let last = v.last_index().expect("non-empty view");
        assert!(last < v.data.len(), "matrix view reaches past its slice");
    }
    let parallelism = if threads > 1 && m * n * k >= 64 * 64 * 64 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every pointer is derived from a live slice; the asserts above prove that the
    // largest index each view can address ((rows-1)·row_stride + (cols-1)·col_stride +
    // offset) is inside its slice, and `dst` is exactly m·n dense elements (row stride n,
    // column stride 1). `dst` is a unique borrow, so it does not alias `lhs` or `rhs`.
    // `read_dst = false` means the uninitialised-looking previous contents are ignored.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
