//! Safe views of ggml tensors: metadata snapshots, and row readers/writers over their data.

use std::ffi::{c_char, c_void, CStr};

use half::{bf16, f16};

use super::{
    ggml_backend_buffer_get_usage, ggml_get_type_traits, ggml_op, ggml_tensor, ggml_to_float_t,
    ggml_type, GGML_BACKEND_BUFFER_USAGE_WEIGHTS, GGML_MAX_NAME, GGML_MAX_SRC,
    GGML_TENSOR_FLAG_INPUT,
};
use ane_runtime::matmul::{MatrixSink, MatrixSource, WeightId};

/// What we need to know about a tensor, copied out of ggml's struct.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TensorDesc {
    pub(crate) ty: ggml_type,
    pub(crate) op: ggml_op,
    pub(crate) ne: [i64; 4],
    pub(crate) nb: [usize; 4],
    pub(crate) data: *mut c_void,
    /// Bytes per block and elements per block of the type.
    pub(crate) type_size: usize,
    pub(crate) blck_size: i64,
    pub(crate) to_float: ggml_to_float_t,
    /// ggml's name for the type (`f16`, `q8_0`, ...).
    pub(crate) type_name: &'static str,
    /// The ggml buffer holding the data (NULL for views not yet allocated).
    buffer: *mut c_void,
    /// A leaf of the graph (computed by no node), not a view, not a graph input.
    leaf: bool,
}

/// A node and its first two sources.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeDesc {
    pub(crate) node: TensorDesc,
    pub(crate) src: [Option<TensorDesc>; 2],
    /// ggml's op parameters (RMS_NORM: eps as f32 bits; GLU: op, swapped).
    pub(crate) op_params: [i32; 16],
    name: [c_char; GGML_MAX_NAME],
}

impl NodeDesc {
    /// The node's name (llama.cpp: `ffn_up-3` for layer 3's), lossily decoded.
    pub(crate) fn name(&self) -> String {
        let bytes: Vec<u8> = self
            .name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn describe(t: &ggml_tensor) -> TensorDesc {
    // SAFETY: ggml_get_type_traits returns a pointer into a static table for every valid
    // type, or NULL for out-of-range values, which we check.
    let traits = unsafe { ggml_get_type_traits(t.type_).as_ref() };
    TensorDesc {
        ty: t.type_,
        op: t.op,
        ne: t.ne,
        nb: t.nb,
        data: t.data,
        type_size: traits.map_or(0, |tr| tr.type_size),
        blck_size: traits.map_or(0, |tr| tr.blck_size),
        to_float: traits.and_then(|tr| tr.to_float),
        type_name: traits.map_or("?", |tr| {
            if tr.type_name.is_null() {
                return "?";
            }
            // SAFETY: the traits table is static and its names are NUL-terminated literals.
            unsafe { CStr::from_ptr(tr.type_name) }
                .to_str()
                .unwrap_or("?")
        }),
        buffer: t.buffer,
        leaf: t.op == ggml_op::NONE
            && t.view_src.is_null()
            && t.flags & GGML_TENSOR_FLAG_INPUT == 0,
    }
}

impl TensorDesc {
    /// Whether its data may be read here: not allocated yet (the scheduler then places it by
    /// `supports_buft`), or in a buffer type the backend recognises.
    pub(crate) fn readable(&self) -> bool {
        self.buffer.is_null()
            // SAFETY: the buffer pointer was read from a live tensor during the call that is
            // asking (supports_op or graph_compute), so the buffer is live.
            || unsafe { crate::sys::readable_buft(crate::sys::ggml_backend_buffer_get_type(self.buffer)) }
    }

    /// Model weights: in a buffer ggml marks as holding them (never written while graphs
    /// run), or — where buffer usage does not travel, as on ggml's rpc-server — a leaf of the
    /// graph that is neither a view nor a graph input. Either way the sampled fingerprint is
    /// checked on every call. Asked only of a MUL_MAT's weights when it runs.
    pub(crate) fn is_model_weight(&self) -> bool {
        self.leaf || self.in_weights_buffer()
    }

    /// In a buffer ggml marks as holding model weights.
    fn in_weights_buffer(&self) -> bool {
        !self.buffer.is_null()
            // SAFETY: the buffer pointer was read from a live tensor during the graph
            // computation that is asking, so the buffer is live.
            && unsafe { ggml_backend_buffer_get_usage(self.buffer) }
                == GGML_BACKEND_BUFFER_USAGE_WEIGHTS
    }
}

/// Whether `t` and every one of its sources may be read and written here
/// ([`TensorDesc::readable`]).
///
/// # Safety
/// `t` is a live tensor whose sources are NULL or live.
pub(crate) unsafe fn all_readable(t: *const ggml_tensor) -> bool {
    // SAFETY: the caller promises `t` is live.
    let t = unsafe { &*t };
    describe(t).readable()
        && t.src.iter().all(|&s| {
            // SAFETY: sources of a live tensor are NULL or live.
            unsafe { s.as_ref() }.is_none_or(|s| describe(s).readable())
        })
}

/// Copies the metadata of `t` and its first two sources.
///
/// # Safety
/// `t` is NULL or points to a live `ggml_tensor` whose `src` pointers are NULL or live.
pub(crate) unsafe fn describe_node(t: *const ggml_tensor) -> Option<NodeDesc> {
    // SAFETY: the caller promises `t` is NULL or live.
    let t = unsafe { t.as_ref() }?;
    let mut src = [None, None];
    for (i, s) in src.iter_mut().enumerate().take(GGML_MAX_SRC.min(2)) {
        // SAFETY: ggml keeps unused source slots NULL and used ones live.
        *s = unsafe { t.src[i].as_ref() }.map(describe);
    }
    Some(NodeDesc {
        node: describe(t),
        src,
        op_params: t.op_params,
        name: t.name,
    })
}

/// Rows of a tensor in host memory, read as f32: row `r` of batch `(b2, b3)` starts at
/// `data + r·nb[1] + b2·nb[2] + b3·nb[3]`, elements `nb[0]` apart (blocks for quantized types).
pub(crate) struct TensorRows {
    desc: TensorDesc,
}

// SAFETY: the tensor data is host memory that ggml keeps alive and unchanged while the graph
// that reads it is being computed; TensorRows only reads it.
unsafe impl Sync for TensorRows {}

impl TensorRows {
    /// # Safety
    /// `desc.data` must stay valid for reads of every row the job touches while this lives.
    pub(crate) unsafe fn new(desc: TensorDesc) -> Self {
        TensorRows { desc }
    }
}

/// Rows sampled for a weight fingerprint, and bytes hashed at each end of a sampled row.
const FINGERPRINT_ROWS: usize = 64;
const FINGERPRINT_BYTES: usize = 32;

impl TensorRows {
    /// The weights' identity for baked kernels: which tensor (address, shape, strides, type)
    /// and a fingerprint of its contents (both ends of up to 64 rows spread over the matrix),
    /// re-read on every call so weights reloaded at the same address get new kernels. A
    /// change confined to bytes the sample skips is not seen: only tensors in buffers ggml
    /// marks as model weights get an identity at all, and `GGML_ANE_KERNELS=streamed` turns
    /// baking off for anyone who edits those in place.
    pub(crate) fn weight_id(&self) -> WeightId {
        use std::hash::{Hash, Hasher};
        let d = &self.desc;
        let mut key = std::collections::hash_map::DefaultHasher::new();
        (d.data as usize, d.ne, d.nb, d.ty.0).hash(&mut key);
        let rows = d.ne[1].max(0) as usize;
        let row_bytes = if d.blck_size > 0 {
            (d.ne[0] / d.blck_size) as usize * d.type_size
        } else {
            0
        };
        let take = FINGERPRINT_BYTES.min(row_bytes);
        let mut fp = std::collections::hash_map::DefaultHasher::new();
        let step = rows.div_ceil(FINGERPRINT_ROWS).max(1);
        for r in (0..rows).step_by(step).chain(rows.checked_sub(1)) {
            // SAFETY: row r < ne[1] of batch (0, 0) lies inside the tensor's data, which
            // outlives `self`; we read `take <= row_bytes` bytes at each end of it.
            let (head, tail) = unsafe {
                let p = (d.data as *const u8).add(r * d.nb[1]);
                (
                    std::slice::from_raw_parts(p, take),
                    std::slice::from_raw_parts(p.add(row_bytes - take), take),
                )
            };
            head.hash(&mut fp);
            tail.hash(&mut fp);
        }
        WeightId {
            key: key.finish(),
            fingerprint: fp.finish(),
        }
    }
}

impl TensorRows {
    /// Row `row` of batch `(b2, b3)` in place, when the tensor is of type `ty` (whose element
    /// is a `T`) with contiguous, `T`-aligned rows.
    fn contiguous_row<T>(
        &self,
        ty: ggml_type,
        (b2, b3): (usize, usize),
        row: usize,
    ) -> Option<&[T]> {
        let d = &self.desc;
        if d.ty != ty || d.nb[0] != std::mem::size_of::<T>() {
            return None;
        }
        let off = row * d.nb[1] + b2 * d.nb[2] + b3 * d.nb[3];
        // SAFETY: as in read_row, the row lies inside the tensor's data, which outlives
        // `self`; it holds ne[0] contiguous elements of type `ty`, which `T` represents
        // (f32 or fp16, any bit pattern valid), and we check its alignment.
        unsafe {
            let p = (d.data as *const u8).add(off).cast::<T>();
            p.is_aligned()
                .then(|| std::slice::from_raw_parts(p, d.ne[0] as usize))
        }
    }
}

impl MatrixSource for TensorRows {
    fn row_f32(&self, b2: usize, b3: usize, row: usize) -> Option<&[f32]> {
        self.contiguous_row(ggml_type::F32, (b2, b3), row)
    }

    fn row_f16(&self, b2: usize, b3: usize, row: usize) -> Option<&[f16]> {
        self.contiguous_row(ggml_type::F16, (b2, b3), row)
    }

    fn read_row(&self, b2: usize, b3: usize, row: usize, out: &mut [f32]) {
        let d = &self.desc;
        let base = d.data as *const u8;
        let off = row * d.nb[1] + b2 * d.nb[2] + b3 * d.nb[3];
        let k = out.len();
        // SAFETY: the planner only builds jobs whose rows, batches and K lie inside the tensor's
        // ne, so every address below is inside the tensor's data as ggml laid it out;
        // unaligned reads because views may start anywhere.
        unsafe {
            let row_ptr = base.add(off);
            match d.ty {
                ggml_type::F32 => {
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = row_ptr.add(i * d.nb[0]).cast::<f32>().read_unaligned();
                    }
                }
                ggml_type::F16 => {
                    for (i, o) in out.iter_mut().enumerate() {
                        *o =
                            f16::from_bits(row_ptr.add(i * d.nb[0]).cast::<u16>().read_unaligned())
                                .to_f32();
                    }
                }
                ggml_type::BF16 => {
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = bf16::from_bits(
                            row_ptr.add(i * d.nb[0]).cast::<u16>().read_unaligned(),
                        )
                        .to_f32();
                    }
                }
                _ => {
                    let f = d
                        .to_float
                        .expect("supports_op admits only types with to_float");
                    f(row_ptr.cast::<c_void>(), out.as_mut_ptr(), k as i64);
                }
            }
        }
    }
}

/// The rows of an F32 destination tensor.
pub(crate) struct TensorRowsMut {
    desc: TensorDesc,
}

// SAFETY: each (b2, b3, n) row is written by exactly one caller (the matmul job writes every
// output row once), so concurrent writes never touch the same bytes.
unsafe impl Sync for TensorRowsMut {}

impl TensorRowsMut {
    /// # Safety
    /// `desc` is an F32 tensor whose data stays valid for writes while this lives, and
    /// nothing else reads or writes it meanwhile.
    pub(crate) unsafe fn new(desc: TensorDesc) -> Self {
        TensorRowsMut { desc }
    }
}

impl MatrixSink for TensorRowsMut {
    fn write_row(&self, b2: usize, b3: usize, n: usize, values: &[f32]) {
        let d = &self.desc;
        let off = n * d.nb[1] + b2 * d.nb[2] + b3 * d.nb[3];
        // SAFETY: (n, b2, b3) and every column are inside dst's ne (the job's shape comes from
        // it), so the addresses are inside dst's data; unaligned writes for views.
        unsafe {
            let row_ptr = d.data.cast::<u8>().add(off);
            for (i, v) in values.iter().enumerate() {
                row_ptr.add(i * d.nb[0]).cast::<f32>().write_unaligned(*v);
            }
        }
    }
}
