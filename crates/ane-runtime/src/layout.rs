//! How a tensor sits in a surface: 4-D channel-first with strides in bytes.

use std::fmt;

use crate::error::{Error, Result};

/// Element type of a surface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SurfaceDType {
    /// fp16 (what the ANE computes in; the fast path).
    F16,
    /// fp32 (the program casts it to fp16 inside).
    F32,
}

impl SurfaceDType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            SurfaceDType::F16 => 2,
            SurfaceDType::F32 => 4,
        }
    }

    /// The surface type for a MIL parameter type.
    pub fn from_mil(d: ane_mil::DType) -> Option<Self> {
        match d {
            ane_mil::DType::Fp16 => Some(SurfaceDType::F16),
            ane_mil::DType::Fp32 => Some(SurfaceDType::F32),
            _ => None,
        }
    }
}

/// The layout of one input or output: `[B, C, H, W]`; element `(b, c, h, w)` is at byte
/// `b·batch_stride + c·plane_stride + h·row_stride + w·elem`.
///
/// Rows are padded: `row_stride` is a multiple of the engine's row alignment (64 bytes on the
/// ANE), so a width that is not a multiple of 32 fp16 values leaves padding at each row's end.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorLayout {
    /// The parameter or output name.
    pub name: String,
    /// Element type.
    pub dtype: SurfaceDType,
    /// The tensor's shape in the program (rank 1 to 4).
    pub shape: Vec<usize>,
    /// `shape` padded to rank 4 at the front: `[B, C, H, W]`.
    pub dims: [usize; 4],
    /// Bytes between rows (consecutive `h`).
    pub row_stride: usize,
    /// Bytes between channels (consecutive `c`).
    pub plane_stride: usize,
    /// Bytes between batches (consecutive `b`).
    pub batch_stride: usize,
}

impl TensorLayout {
    /// The dense layout with rows rounded up to `row_alignment` bytes (the "aligned" layout:
    /// every row starts on an alignment boundary, planes and batches follow without gaps).
    pub fn aligned(
        name: &str,
        dtype: SurfaceDType,
        shape: &[usize],
        row_alignment: usize,
    ) -> Result<Self> {
        if shape.is_empty() || shape.len() > 4 {
            return Err(Error::Staging(format!(
                "`{name}`: surfaces hold tensors of rank 1 to 4, not {shape:?}"
            )));
        }
        let mut dims = [1usize; 4];
        dims[4 - shape.len()..].copy_from_slice(shape);
        let [_, c, h, w] = dims;
        let row_stride = (w * dtype.size()).div_ceil(row_alignment) * row_alignment;
        let plane_stride = h * row_stride;
        Ok(TensorLayout {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            dims,
            row_stride,
            plane_stride,
            batch_stride: c * plane_stride,
        })
    }

    /// Bytes the surface must hold.
    pub fn byte_len(&self) -> usize {
        self.dims[0] * self.batch_stride
    }

    /// Number of elements.
    pub fn num_elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// Byte offset of the first element of row `(b, c, h)`.
    pub fn row_offset(&self, b: usize, c: usize, h: usize) -> usize {
        b * self.batch_stride + c * self.plane_stride + h * self.row_stride
    }

    /// Number of rows (`B·C·H`).
    pub fn rows(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[2]
    }

    /// True when rows follow each other at `row_stride` with no gaps between planes or batches.
    pub fn is_row_contiguous(&self) -> bool {
        self.plane_stride == self.dims[2] * self.row_stride
            && self.batch_stride == self.dims[1] * self.plane_stride
    }

    /// Element strides at the tensor's own rank, outermost first (what Core ML's
    /// `MLMultiArray` takes to read and write the surface in place, padding skipped).
    pub fn element_strides(&self) -> Vec<usize> {
        let e = self.dtype.size();
        let all = [
            self.batch_stride / e,
            self.plane_stride / e,
            self.row_stride / e,
            1,
        ];
        all[4 - self.shape.len()..].to_vec()
    }

    /// Byte offset of flat row `r` (rows counted in `b, c, h` order).
    pub fn flat_row_offset(&self, r: usize) -> usize {
        let [_, c, h, _] = self.dims;
        self.row_offset(r / (c * h), (r / h) % c, r % h)
    }
}

impl fmt::Display for TensorLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} {:?} (row {} B, plane {} B, batch {} B)",
            self.name,
            self.dtype,
            self.shape,
            self.row_stride,
            self.plane_stride,
            self.batch_stride
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_up_to_the_alignment() {
        let l = TensorLayout::aligned("x", SurfaceDType::F16, &[1, 3, 1, 17], 64).unwrap();
        assert_eq!(
            (l.dims, l.row_stride, l.plane_stride, l.batch_stride),
            ([1, 3, 1, 17], 64, 64, 192)
        );
        let l = TensorLayout::aligned("x", SurfaceDType::F16, &[33], 64).unwrap();
        assert_eq!(
            (l.dims, l.row_stride, l.byte_len()),
            ([1, 1, 1, 33], 128, 128)
        );
        let l = TensorLayout::aligned("x", SurfaceDType::F32, &[2, 5, 16], 64).unwrap();
        assert_eq!(
            (l.row_stride, l.plane_stride, l.batch_stride, l.byte_len()),
            (64, 320, 640, 640)
        );
        assert_eq!(l.flat_row_offset(7), 7 * 64);
        assert!(l.is_row_contiguous());
        assert!(TensorLayout::aligned("x", SurfaceDType::F16, &[1, 1, 1, 1, 1], 64).is_err());
    }

    #[test]
    fn core_ml_sees_our_padded_rows_through_element_strides() {
        // 40 fp16 = 80 bytes per row, padded to 128 bytes = a stride of 64 elements
        let l = TensorLayout::aligned("y", SurfaceDType::F16, &[64, 40], 64).unwrap();
        assert_eq!(
            (l.shape.clone(), l.element_strides()),
            (vec![64, 40], vec![64, 1])
        );
        let l = TensorLayout::aligned("x", SurfaceDType::F32, &[2, 3, 5, 7], 64).unwrap();
        // rows of 7 fp32 = 28 bytes -> 64 bytes = 16 elements; planes 5 rows; batches 3 planes
        assert_eq!(
            (l.shape.clone(), l.element_strides()),
            (vec![2, 3, 5, 7], vec![240, 80, 16, 1])
        );
    }
}
