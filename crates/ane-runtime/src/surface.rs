//! Surfaces: strided buffers that kernels read inputs from and write outputs to.
//!
//! On the ANE these are IOSurfaces shared with the hardware; here (and for the reference
//! engine everywhere) they are 64-byte-aligned host memory with the same layout rules.

use half::f16;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::layout::{SurfaceDType, TensorLayout};
use crate::sys::fp16::{f16_to_f32, f32_to_f16};

/// 64 bytes, 64-aligned: the unit of surface storage (keeps rows aligned without `unsafe`).
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Block([u8; 64]);

/// A strided buffer for one tensor.
#[derive(Clone)]
pub struct Surface {
    layout: TensorLayout,
    blocks: Vec<Block>,
}

impl std::fmt::Debug for Surface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Surface")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Surface {
    /// A zeroed surface for `layout`.
    pub fn new(layout: TensorLayout) -> Self {
        let blocks = vec![Block([0; 64]); layout.byte_len().div_ceil(64)];
        Surface { layout, blocks }
    }

    /// The layout.
    pub fn layout(&self) -> &TensorLayout {
        &self.layout
    }

    /// All bytes, padding included.
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.blocks)[..self.layout.byte_len()]
    }

    /// All bytes, padding included.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        let n = self.layout.byte_len();
        &mut bytemuck::cast_slice_mut(&mut self.blocks)[..n]
    }

    /// Writes a dense row-major tensor of the layout's shape, rounding to the surface's type.
    pub fn write_f32(&mut self, values: &[f32]) -> Result<()> {
        self.check_len(values.len())?;
        let layout = self.layout.clone();
        let w = layout.dims[3];
        if w == 0 {
            return Ok(());
        }
        let write_row = |row: &mut [u8], src: &[f32]| match layout.dtype {
            SurfaceDType::F16 => {
                let dst: &mut [f16] = bytemuck::cast_slice_mut(&mut row[..w * 2]);
                f32_to_f16(dst, src);
            }
            SurfaceDType::F32 => {
                let dst: &mut [f32] = bytemuck::cast_slice_mut(&mut row[..w * 4]);
                dst.copy_from_slice(src);
            }
        };
        if layout.is_row_contiguous() {
            self.as_bytes_mut()
                .par_chunks_mut(layout.row_stride)
                .zip(values.par_chunks(w))
                .for_each(|(row, src)| write_row(row, src));
        } else {
            for (r, src) in values.chunks(w).enumerate() {
                let off = layout.flat_row_offset(r);
                write_row(&mut self.as_bytes_mut()[off..], src);
            }
        }
        Ok(())
    }

    /// Reads the tensor as dense row-major f32, skipping row padding.
    pub fn read_f32(&self) -> Vec<f32> {
        let layout = &self.layout;
        let w = layout.dims[3];
        let mut out = vec![0f32; layout.num_elements()];
        if w == 0 {
            return out;
        }
        let read_row = |dst: &mut [f32], row: &[u8]| match layout.dtype {
            SurfaceDType::F16 => {
                let src: &[f16] = bytemuck::cast_slice(&row[..w * 2]);
                f16_to_f32(dst, src);
            }
            SurfaceDType::F32 => dst.copy_from_slice(bytemuck::cast_slice(&row[..w * 4])),
        };
        if layout.is_row_contiguous() {
            out.par_chunks_mut(w)
                .zip(self.as_bytes().par_chunks(layout.row_stride))
                .for_each(|(dst, row)| read_row(dst, row));
        } else {
            for (r, dst) in out.chunks_mut(w).enumerate() {
                read_row(dst, &self.as_bytes()[layout.flat_row_offset(r)..]);
            }
        }
        out
    }

    /// Row `r` (flat `b, c, h` order) as fp16 values, without padding.
    pub fn row_f16(&self, r: usize) -> Result<&[f16]> {
        self.expect_dtype(SurfaceDType::F16)?;
        let off = self.layout.flat_row_offset(r);
        let w = self.layout.dims[3];
        Ok(bytemuck::cast_slice(&self.as_bytes()[off..off + 2 * w]))
    }

    /// Row `r` as mutable fp16 values, without padding.
    pub fn row_f16_mut(&mut self, r: usize) -> Result<&mut [f16]> {
        self.expect_dtype(SurfaceDType::F16)?;
        let off = self.layout.flat_row_offset(r);
        let w = self.layout.dims[3];
        Ok(bytemuck::cast_slice_mut(
            &mut self.as_bytes_mut()[off..off + 2 * w],
        ))
    }

    fn expect_dtype(&self, d: SurfaceDType) -> Result<()> {
        if self.layout.dtype != d {
            return Err(Error::Staging(format!(
                "`{}` holds {:?}, not {d:?}",
                self.layout.name, self.layout.dtype
            )));
        }
        Ok(())
    }

    fn check_len(&self, n: usize) -> Result<()> {
        if n != self.layout.num_elements() {
            return Err(Error::Staging(format!(
                "`{}` has shape {:?} ({} values), got {n} values",
                self.layout.name,
                self.layout.shape,
                self.layout.num_elements()
            )));
        }
        Ok(())
    }
}
