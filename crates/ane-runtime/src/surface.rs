//! Surfaces: strided buffers that kernels read inputs from and write outputs to.
//!
//! A surface's memory is either the host's (64-byte-aligned, [`Surface::new`]) or lent by an
//! engine ([`Kernel::lend`](crate::engine::Kernel::lend)): on the ANE an IOSurface the
//! hardware reads and writes in place, so staging writes straight into it and no copy is made
//! at evaluation (apple-audit.md finding 20). Both have the same layout rules.

use half::f16;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::layout::{SurfaceDType, TensorLayout};
use crate::sys::fp16::{f16_to_f32, f32_to_f16};

/// 64 bytes, 64-aligned: the unit of surface storage (keeps rows aligned without `unsafe`).
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
pub(crate) struct Block([u8; 64]);

/// Zeroed, 64-byte-aligned host memory of at least `bytes` bytes.
pub(crate) fn zeroed_blocks(bytes: usize) -> Vec<Block> {
    vec![Block([0; 64]); bytes.div_ceil(64)]
}

/// A strided buffer for one tensor.
pub struct Surface {
    layout: TensorLayout,
    memory: Memory,
}

enum Memory {
    Host(Vec<Block>),
    Lent(Box<dyn LentMemory>),
}

/// Which engine lent a surface's memory, and how much it holds (an engine's kernels take a
/// surface in place only when its memory has the size they would lend).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lender {
    /// The engine.
    pub kind: crate::engine::EngineKind,
    /// Bytes the memory holds (at least the layout's).
    pub capacity: usize,
}

/// Memory an engine lends for a kernel's input or output: its own buffer, which its kernels
/// read and write in place.
pub trait LentMemory: Send + Sync {
    /// Every byte, `capacity` of them.
    fn bytes(&self) -> &[u8];
    /// Every byte, for writing.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Who lent it.
    fn lender(&self) -> Lender;
    /// The engine's own type, for the engine to find its buffer again.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Host memory an engine lends aligned to `ALIGN` bytes (Core ML wants page-aligned
/// backings: apple-audit.md finding 22), marked as that engine's.
pub(crate) struct AlignedMemory<const ALIGN: usize> {
    blocks: Vec<Block>,
    offset: usize,
    lender: Lender,
}

impl<const ALIGN: usize> AlignedMemory<ALIGN> {
    /// Zeroed memory of `lender.capacity` bytes starting at a multiple of `ALIGN`.
    pub(crate) fn new(lender: Lender) -> Self {
        let blocks = zeroed_blocks(lender.capacity + ALIGN);
        // the first multiple of ALIGN inside the allocation (blocks are 64-aligned)
        let at = blocks.as_ptr() as usize;
        let offset = at.next_multiple_of(ALIGN) - at;
        AlignedMemory {
            blocks,
            offset,
            lender,
        }
    }
}

impl<const ALIGN: usize> LentMemory for AlignedMemory<ALIGN> {
    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.blocks)[self.offset..][..self.lender.capacity]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.blocks)[self.offset..][..self.lender.capacity]
    }

    fn lender(&self) -> Lender {
        self.lender
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A lent surface clones into host memory: the copy is the caller's, not the engine's.
impl Clone for Surface {
    fn clone(&self) -> Self {
        match &self.memory {
            Memory::Host(blocks) => Surface {
                layout: self.layout.clone(),
                memory: Memory::Host(blocks.clone()),
            },
            Memory::Lent(_) => {
                let mut s = Surface::new(self.layout.clone());
                s.as_bytes_mut().copy_from_slice(self.as_bytes());
                s
            }
        }
    }
}

impl std::fmt::Debug for Surface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Surface")
            .field("layout", &self.layout)
            .field("lender", &self.lender())
            .finish_non_exhaustive()
    }
}

impl Surface {
    /// A zeroed surface for `layout`.
    pub fn new(layout: TensorLayout) -> Self {
        let blocks = zeroed_blocks(layout.byte_len());
        Surface {
            layout,
            memory: Memory::Host(blocks),
        }
    }

    /// A surface for `layout` in memory an engine lends.
    ///
    /// # Errors
    /// [`Error::Staging`] when the memory holds fewer bytes than the layout needs.
    pub fn lent(layout: TensorLayout, memory: Box<dyn LentMemory>) -> Result<Self> {
        let have = memory.bytes().len();
        if have < layout.byte_len() {
            return Err(Error::Staging(format!(
                "`{}` needs {} bytes; the lent memory holds {have}",
                layout.name,
                layout.byte_len()
            )));
        }
        Ok(Surface {
            layout,
            memory: Memory::Lent(memory),
        })
    }

    /// Who lent the memory; `None` for host memory.
    pub fn lender(&self) -> Option<Lender> {
        self.lent_memory().map(|m| m.lender())
    }

    /// The lent memory, for the engine that lent it.
    pub fn lent_memory(&self) -> Option<&dyn LentMemory> {
        match &self.memory {
            Memory::Lent(m) => Some(m.as_ref()),
            Memory::Host(_) => None,
        }
    }

    /// The layout.
    pub fn layout(&self) -> &TensorLayout {
        &self.layout
    }

    /// All bytes, padding included.
    pub fn as_bytes(&self) -> &[u8] {
        let n = self.layout.byte_len();
        match &self.memory {
            Memory::Host(blocks) => &bytemuck::cast_slice(blocks)[..n],
            Memory::Lent(m) => &m.bytes()[..n],
        }
    }

    /// All bytes, padding included.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        let n = self.layout.byte_len();
        match &mut self.memory {
            Memory::Host(blocks) => &mut bytemuck::cast_slice_mut(blocks)[..n],
            Memory::Lent(m) => &mut m.bytes_mut()[..n],
        }
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
