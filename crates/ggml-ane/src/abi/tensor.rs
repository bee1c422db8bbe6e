//! ggml tensors read into plain descriptions, and row readers/writers over their data that
//! check every index against the tensor's shape.

use std::ffi::{c_char, c_void, CStr};
use std::marker::PhantomData;

use half::{bf16, f16};

use super::{
    ggml_backend_buffer_get_type, ggml_backend_buffer_get_usage, ggml_get_glu_op,
    ggml_get_type_traits, ggml_get_unary_op, ggml_glu_op_name, ggml_op_name, ggml_tensor,
    ggml_to_float_t, ggml_type, ggml_unary_op_name, readable_buft, GGML_BACKEND_BUFFER_USAGE_ANY,
    GGML_BACKEND_BUFFER_USAGE_WEIGHTS, GGML_MAX_NAME, GGML_MAX_SRC, GGML_TENSOR_FLAG_INPUT,
};
use crate::compute::walker::OpKind;
use ane_runtime::matmul::{MatrixSink, MatrixSource, WeightId};

/// What we need to know about a tensor, copied out of ggml's struct: plain data.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TensorDesc {
    pub(crate) ty: ggml_type,
    pub(crate) ne: [i64; 4],
    pub(crate) nb: [usize; 4],
    /// The data's address: an identity, never dereferenced outside this module.
    pub(crate) addr: usize,
    /// Bytes per block and elements per block of the type.
    pub(crate) type_size: usize,
    pub(crate) blck_size: i64,
    /// ggml converts rows of its type to f32.
    pub(crate) has_to_float: bool,
    to_float: ggml_to_float_t,
    /// ggml's name for the type (`f16`, `q8_0`, ...).
    pub(crate) type_name: &'static str,
    /// Its data may be read and written here: not allocated yet (the scheduler then places it
    /// by `supports_buft`), or in a buffer type the backend recognises.
    pub(crate) readable: bool,
    /// In a buffer ggml marks as holding model weights (never written while graphs run).
    pub(crate) in_weights_buffer: bool,
    /// In a buffer whose use nobody said (`ANY`): ggml's rpc-server (usage does not travel),
    /// test hosts.
    pub(crate) usage_unknown: bool,
    /// A leaf of the graph (computed by no node), not a view, not a graph input.
    pub(crate) leaf: bool,
}

impl TensorDesc {
    /// Model weights: in a buffer ggml marks as holding them, or — only where buffer usage is
    /// unknown, as on ggml's rpc-server — a leaf of the graph that is neither a view nor a
    /// graph input. The first get a sampled fingerprint on every call, the second one of every
    /// byte ([`TensorRows::weight_id`]): nothing promises such a leaf does not change.
    pub(crate) fn is_model_weight(&self) -> bool {
        self.in_weights_buffer || (self.leaf && self.usage_unknown)
    }

    /// Rows of whole elements (blocks for quantised types), packed: `nb[0]` is one block.
    pub(crate) fn contiguous_rows(&self) -> bool {
        self.nb[0] == self.type_size
    }
}

/// A node and its first two sources.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeDesc {
    pub(crate) node: TensorDesc,
    /// The first three sources (MUL_MAT_ID's third: the expert ids).
    pub(crate) src: [Option<TensorDesc>; 3],
    /// ggml's op parameters (RMS_NORM: eps as f32 bits; GLU: op, swapped).
    pub(crate) op_params: [i32; 16],
    name: [c_char; GGML_MAX_NAME],
    /// The first source's name (a MUL_MAT's weights: `encoder.blocks.3.attn.query.weight`).
    src0_name: [c_char; GGML_MAX_NAME],
}

/// A ggml name field, lossily decoded.
fn name_text(name: &[c_char; GGML_MAX_NAME]) -> String {
    let bytes: Vec<u8> = name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl NodeDesc {
    /// The node's name (llama.cpp: `ffn_up-3` for layer 3's), lossily decoded.
    pub(crate) fn name(&self) -> String {
        name_text(&self.name)
    }

    /// The first source's name ("" when it has none).
    pub(crate) fn src0_name(&self) -> String {
        name_text(&self.src0_name)
    }
}

/// Buffer types already judged by [`readable_buft`] while reading one graph or op: the
/// answer is a function of the type, and asking ggml allocates its names each time.
#[derive(Default)]
pub(crate) struct BuftMemo(Vec<(usize, bool)>);

impl BuftMemo {
    /// # Safety
    /// `buft` is NULL or a live ggml buffer type.
    unsafe fn readable(&mut self, buft: super::ggml_backend_buffer_type_t) -> bool {
        let key = buft as usize;
        if let Some(&(_, r)) = self.0.iter().find(|(k, _)| *k == key) {
            return r;
        }
        // SAFETY: as the caller promises.
        let r = unsafe { readable_buft(buft) };
        self.0.push((key, r));
        r
    }
}

pub(super) fn describe(t: &ggml_tensor, memo: &mut BuftMemo) -> TensorDesc {
    // SAFETY: ggml_get_type_traits returns a pointer into a static table for every valid
    // type, or NULL for out-of-range values, which we check.
    let traits = unsafe { ggml_get_type_traits(t.type_).as_ref() };
    let to_float = traits.and_then(|tr| tr.to_float);
    // SAFETY: the tensor is live (the caller's promise), so its buffer is NULL or live.
    let (readable, usage) = unsafe {
        if t.buffer.is_null() {
            (true, None)
        } else {
            (
                memo.readable(ggml_backend_buffer_get_type(t.buffer)),
                Some(ggml_backend_buffer_get_usage(t.buffer)),
            )
        }
    };
    TensorDesc {
        ty: t.type_,
        ne: t.ne,
        nb: t.nb,
        addr: t.data as usize,
        type_size: traits.map_or(0, |tr| tr.type_size),
        blck_size: traits.map_or(0, |tr| tr.blck_size),
        has_to_float: to_float.is_some(),
        to_float,
        type_name: traits.map_or("?", |tr| {
            if tr.type_name.is_null() {
                return "?";
            }
            // SAFETY: the traits table is static and its names are NUL-terminated literals.
            unsafe { CStr::from_ptr(tr.type_name) }
                .to_str()
                .unwrap_or("?")
        }),
        readable,
        in_weights_buffer: usage == Some(GGML_BACKEND_BUFFER_USAGE_WEIGHTS),
        usage_unknown: usage == Some(GGML_BACKEND_BUFFER_USAGE_ANY),
        leaf: op_is_none(t) && t.view_src.is_null() && t.flags & GGML_TENSOR_FLAG_INPUT == 0,
    }
}

/// Whether `t` and every one of its sources may be read and written here.
///
/// # Safety
/// `t` is a live tensor whose sources are NULL or live.
pub(crate) unsafe fn all_readable(t: *const ggml_tensor) -> bool {
    // SAFETY: the caller promises `t` is live.
    let t = unsafe { &*t };
    let memo = &mut BuftMemo::default();
    describe(t, memo).readable
        && t.src.iter().all(|&s| {
            // SAFETY: sources of a live tensor are NULL or live.
            unsafe { s.as_ref() }.is_none_or(|s| describe(s, memo).readable)
        })
}

/// Copies the metadata of `t` and its first three sources.
///
/// # Safety
/// `t` is NULL or points to a live `ggml_tensor` whose `src` pointers are NULL or live.
pub(crate) unsafe fn describe_node(t: *const ggml_tensor, memo: &mut BuftMemo) -> Option<NodeDesc> {
    // SAFETY: the caller promises `t` is NULL or live.
    let t = unsafe { t.as_ref() }?;
    let mut src = [None, None, None];
    for (i, s) in src.iter_mut().enumerate().take(GGML_MAX_SRC.min(3)) {
        // SAFETY: ggml keeps unused source slots NULL and used ones live.
        *s = unsafe { t.src[i].as_ref() }.map(|s| describe(s, memo));
    }
    // SAFETY: as above.
    let src0_name = unsafe { t.src[0].as_ref() }.map_or([0; GGML_MAX_NAME], |s| s.name);
    Some(NodeDesc {
        node: describe(t, memo),
        src,
        op_params: t.op_params,
        name: t.name,
        src0_name,
    })
}

/// ggml's name for `t`'s op (`MUL_MAT`), "" if it has none.
pub(crate) fn op_name_of(t: &ggml_tensor) -> String {
    // SAFETY: `t.op` comes from a live tensor, so it indexes ggml's own table.
    let p = unsafe { ggml_op_name(t.op) };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: ggml's name table holds static NUL-terminated literals.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Whether `t` is computed by no op (a leaf or input), by ggml's name for its op.
fn op_is_none(t: &ggml_tensor) -> bool {
    op_name_of(t) == "NONE"
}

/// What kind of op `t` is, by ggml's names for it: enum values past MUL_MAT move between
/// ggml versions, names do not (full-layer-device.md §4).
pub(crate) fn op_kind(t: &ggml_tensor) -> OpKind {
    let name = |p: *const c_char| {
        if p.is_null() {
            ""
        } else {
            // SAFETY: ggml's name tables hold static NUL-terminated literals.
            unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("")
        }
    };
    // SAFETY: `t.op` comes from a live tensor, so it indexes ggml's own table.
    match name(unsafe { ggml_op_name(t.op) }) {
        "NONE" | "RESHAPE" | "VIEW" | "PERMUTE" | "TRANSPOSE" => OpKind::View,
        "MUL_MAT" => OpKind::MulMat,
        "MUL_MAT_ID" => OpKind::MulMatId,
        "RMS_NORM" => OpKind::RmsNorm,
        "NORM" => OpKind::Norm,
        "MUL" => OpKind::Mul,
        "ADD" => OpKind::Add,
        "SCALE" => OpKind::Scale,
        "ROPE" => OpKind::Rope,
        // SAFETY: a live UNARY tensor; the getter reads its op params and the name function
        // indexes ggml's table with the value it returns.
        "UNARY" => match name(unsafe { ggml_unary_op_name(ggml_get_unary_op(t)) }) {
            "SILU" => OpKind::Silu,
            "GELU" => OpKind::Gelu,
            _ => OpKind::Other,
        },
        // SAFETY: as above, for a GLU tensor.
        "GLU" => match name(unsafe { ggml_glu_op_name(ggml_get_glu_op(t)) }) {
            "SWIGLU" => OpKind::SwiGlu,
            "GEGLU" => OpKind::GeGlu,
            _ => OpKind::Other,
        },
        _ => OpKind::Other,
    }
}

/// Whether a MUL_MAT reads what a fused block's matmuls read: a norm's scale (`MUL` of an
/// `RMS_NORM`: Q, K, V, gate, up, the output head), a LayerNorm's (`ADD` of a `MUL` of a
/// `NORM`: whisper's and GPT-2's Q, K, V, fc1) or a GLU or GELU (down).
///
/// # Safety
/// `t` is NULL or a live tensor whose sources are live.
pub(crate) unsafe fn reads_block_input(t: *const ggml_tensor) -> bool {
    // SAFETY: NULL or live, by the caller; sources of live tensors are NULL or live.
    let input = unsafe { t.as_ref().and_then(|t| t.src[1].as_ref()) };
    let Some(input) = input else {
        return false;
    };
    // SAFETY: sources of live tensors are NULL or live.
    let first_src = |t: &ggml_tensor| unsafe { t.src[0].as_ref() };
    match op_kind(input) {
        OpKind::SwiGlu | OpKind::GeGlu | OpKind::Gelu => true,
        OpKind::Mul => {
            first_src(input).is_some_and(|n| matches!(op_kind(n), OpKind::RmsNorm | OpKind::Norm))
        }
        OpKind::Add => first_src(input)
            .filter(|m| op_kind(m) == OpKind::Mul)
            .and_then(first_src)
            .is_some_and(|n| op_kind(n) == OpKind::Norm),
        _ => false,
    }
}

/// How many tokens a tensor carries: rows (`ne[1]`; `ne[2]` for ROPE, whose rows are heads, and
/// for a MUL_MAT_ID and the ops on its result, whose rows are experts),
/// never more than its first source carries, so a decode step's `[head_dim, heads, 1]`
/// reshape of a one-token projection counts one token, not `heads`. Views count what they
/// view. Follows at most 8 sources back.
///
/// # Safety
/// `t` is NULL or a live tensor whose sources are live.
pub(crate) unsafe fn token_count(t: *const ggml_tensor) -> i64 {
    let mut t = t;
    let mut tokens = i64::MAX;
    for _ in 0..8 {
        // SAFETY: NULL or live, by the caller (sources of live tensors are live).
        let Some(r) = (unsafe { t.as_ref() }) else {
            break;
        };
        let src0 = r.src[0];
        match op_kind(r) {
            OpKind::View if !src0.is_null() => {}
            OpKind::Rope => tokens = tokens.min(r.ne[2]),
            // a MUL_MAT's first source is its weights
            OpKind::MulMat => return tokens.min(r.ne[1]),
            // a MUL_MAT_ID's tokens are ne[2] (ne[1] its experts per token), as Metal counts
            // them; the ops on its way share that layout, so their ne[1] is no token count
            OpKind::MulMatId => return r.ne[2],
            _ => tokens = tokens.min(r.ne[1]),
        }
        t = src0;
    }
    if tokens == i64::MAX {
        0
    } else {
        tokens
    }
}

/// Where row `row` of batch `(b2, b3)` starts, after checking the indices and a length of
/// `len` elements against the tensor's shape: a job whose tiling is off panics here (caught
/// at the C boundary and reported as a failed computation) instead of touching memory
/// outside the tensor.
fn row_offset(d: &TensorDesc, (b2, b3): (usize, usize), row: usize, len: usize) -> usize {
    let inside = |i: usize, n: i64| i64::try_from(i).is_ok_and(|i| i < n);
    assert!(
        inside(row, d.ne[1]) && inside(b2, d.ne[2]) && inside(b3, d.ne[3]),
        "row ({row}, {b2}, {b3}) outside a tensor of shape {:?}",
        d.ne
    );
    assert!(
        i64::try_from(len).is_ok_and(|l| l <= d.ne[0]),
        "a row of {len} elements in a tensor of shape {:?}",
        d.ne
    );
    row * d.nb[1] + b2 * d.nb[2] + b3 * d.nb[3]
}

/// Rows of a tensor of the graph being computed, read as f32: row `r` of batch `(b2, b3)`
/// starts at `data + r·nb[1] + b2·nb[2] + b3·nb[3]`, elements `nb[0]` apart (blocks for
/// quantised types). Made only by [`super::split::Split`], which keeps the graph borrowed.
pub(crate) struct TensorRows<'g> {
    desc: TensorDesc,
    data: *const u8,
    _graph: PhantomData<&'g ()>,
}

// SAFETY: the tensor data is host memory that ggml keeps alive and unchanged while the graph
// that reads it is being computed; TensorRows only reads it.
unsafe impl Sync for TensorRows<'_> {}

impl<'g> TensorRows<'g> {
    /// # Safety
    /// `data` is `desc`'s data, valid for reads of every row inside `desc.ne` for `'g`.
    pub(super) unsafe fn new(desc: TensorDesc, data: *const c_void) -> Self {
        TensorRows {
            desc,
            data: data.cast(),
            _graph: PhantomData,
        }
    }

    pub(crate) fn desc(&self) -> &TensorDesc {
        &self.desc
    }
}

/// Rows sampled for a weight fingerprint, and bytes hashed at each end of a sampled row.
const FINGERPRINT_ROWS: usize = 64;
const FINGERPRINT_BYTES: usize = 32;

impl TensorRows<'_> {
    /// The weights' identity for baked kernels and kept staged tiles: which tensor (address,
    /// shape, strides, type) and a fingerprint of its contents, re-read on every call so
    /// weights changed at the same address get new kernels. In a buffer ggml marks as model
    /// weights (which it promises not to write while graphs run) the fingerprint samples both
    /// ends of up to 64 rows per batch; anywhere else (a graph leaf where usage is unknown) it
    /// covers every byte — one read of the weights per call, at hashing speed (xxh3: several
    /// GB/s per core). `None` unless the rows are packed (the fingerprint reads rows as bytes).
    pub(crate) fn weight_id(&self) -> Option<WeightId> {
        use std::hash::{Hash, Hasher};
        let d = &self.desc;
        if !d.contiguous_rows() || d.blck_size <= 0 {
            return None;
        }
        let mut key = std::collections::hash_map::DefaultHasher::new();
        (d.addr, d.ne, d.nb, d.ty.0).hash(&mut key);
        let count = |n: i64| n.max(0) as usize;
        let rows = count(d.ne[1]);
        let row_bytes = count(d.ne[0] / d.blck_size) * d.type_size;
        let (step, take) = if d.in_weights_buffer {
            (
                rows.div_ceil(FINGERPRINT_ROWS).max(1),
                FINGERPRINT_BYTES.min(row_bytes),
            )
        } else {
            (1, row_bytes)
        };
        let mut fp = xxhash_rust::xxh3::Xxh3::new();
        for (b2, b3) in
            (0..count(d.ne[3])).flat_map(|b3| (0..count(d.ne[2])).map(move |b2| (b2, b3)))
        {
            for r in (0..rows).step_by(step).chain(rows.checked_sub(1)) {
                let off = row_offset(d, (b2, b3), r, d.ne[0] as usize);
                // SAFETY: row r of batch (b2, b3) was checked to lie inside the tensor, whose
                // data is valid for 'g; its packed bytes are `row_bytes` long and we read
                // `take` at each end.
                let (head, tail) = unsafe {
                    let p = self.data.add(off);
                    (
                        std::slice::from_raw_parts(p, take),
                        std::slice::from_raw_parts(p.add(row_bytes - take), take),
                    )
                };
                fp.update(head);
                if take < row_bytes {
                    fp.update(tail);
                }
            }
        }
        Some(WeightId {
            key: key.finish(),
            fingerprint: fp.digest(),
        })
    }

    /// Row `row` of batch `(b2, b3)` of an I32 tensor with contiguous, aligned rows (MUL_MAT_ID's
    /// expert ids); `None` for any other.
    pub(crate) fn i32_row(&self, b2: usize, b3: usize, row: usize) -> Option<&[i32]> {
        self.contiguous_row(ggml_type::I32, (b2, b3), row)
    }

    /// Row `row` of batch `(b2, b3)` in place, when the tensor is of type `ty` (whose element
    /// is a `T`) with contiguous, `T`-aligned rows.
    fn contiguous_row<T>(&self, ty: ggml_type, batch: (usize, usize), row: usize) -> Option<&[T]> {
        let d = &self.desc;
        if d.ty != ty || d.nb[0] != std::mem::size_of::<T>() {
            return None;
        }
        let off = row_offset(d, batch, row, d.ne[0] as usize);
        // SAFETY: the row was checked to lie inside the tensor, whose data is valid for 'g;
        // it holds ne[0] contiguous elements of type `ty`, which `T` represents (f32, fp16 or
        // i32: any bit pattern valid), and we check its alignment.
        unsafe {
            let p = self.data.add(off).cast::<T>();
            p.is_aligned()
                .then(|| std::slice::from_raw_parts(p, d.ne[0] as usize))
        }
    }
}

impl MatrixSource for TensorRows<'_> {
    fn row_f32(&self, b2: usize, b3: usize, row: usize) -> Option<&[f32]> {
        self.contiguous_row(ggml_type::F32, (b2, b3), row)
    }

    fn row_f16(&self, b2: usize, b3: usize, row: usize) -> Option<&[f16]> {
        self.contiguous_row(ggml_type::F16, (b2, b3), row)
    }

    fn read_row(&self, b2: usize, b3: usize, row: usize, out: &mut [f32]) {
        let d = &self.desc;
        let k = out.len();
        let off = row_offset(d, (b2, b3), row, k);
        // SAFETY: the row and its first k elements were checked to lie inside the tensor,
        // whose data is valid for 'g; unaligned reads because views may start anywhere.
        unsafe {
            let row_ptr = self.data.add(off);
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
                    // quantised: whole blocks of a packed row only
                    let f = d
                        .to_float
                        .expect("supports_op admits only types with to_float");
                    assert!(
                        d.contiguous_rows() && d.blck_size > 0 && k as i64 % d.blck_size == 0,
                        "a quantised row of {k} elements in blocks of {}",
                        d.blck_size
                    );
                    f(row_ptr.cast::<c_void>(), out.as_mut_ptr(), k as i64);
                }
            }
        }
    }
}

/// The rows of an F32 tensor of the graph being computed, to write results into. Made only
/// by [`super::split::Split`].
pub(crate) struct TensorRowsMut<'g> {
    desc: TensorDesc,
    data: *mut u8,
    _graph: PhantomData<&'g ()>,
}

// SAFETY: each (b2, b3, n) row is written by exactly one caller (a job writes every output
// row once), so concurrent writes never touch the same bytes.
unsafe impl Sync for TensorRowsMut<'_> {}

impl TensorRowsMut<'_> {
    /// # Safety
    /// `desc` is an F32 tensor whose `data` is valid for writes inside `desc.ne` for `'g`,
    /// and nothing else reads or writes it meanwhile.
    pub(super) unsafe fn new(desc: TensorDesc, data: *mut c_void) -> Self {
        TensorRowsMut {
            desc,
            data: data.cast(),
            _graph: PhantomData,
        }
    }
}

impl MatrixSink for TensorRowsMut<'_> {
    fn write_row(&self, b2: usize, b3: usize, n: usize, values: &[f32]) {
        let d = &self.desc;
        let off = row_offset(d, (b2, b3), n, values.len());
        // SAFETY: the row and its first values.len() columns were checked to lie inside the
        // tensor, whose data is valid for writes for 'g; unaligned writes for views.
        unsafe {
            let row_ptr = self.data.add(off);
            for (i, v) in values.iter().enumerate() {
                row_ptr.add(i * d.nb[0]).cast::<f32>().write_unaligned(*v);
            }
        }
    }

    fn with_rows_mut(&self, b2: usize, b3: usize, f: &mut dyn FnMut(&mut [f32], usize)) -> bool {
        let d = &self.desc;
        let (Ok(m), Ok(n)) = (usize::try_from(d.ne[0]), usize::try_from(d.ne[1])) else {
            return false;
        };
        // packed f32 values, rows a whole number of f32 apart, at least a row long
        if d.nb[0] != 4 || !d.nb[1].is_multiple_of(4) || d.nb[1] < 4 * m || m == 0 || n == 0 {
            return false;
        }
        let start = row_offset(d, (b2, b3), 0, m);
        // SAFETY: the batch's rows lie inside the tensor (row_offset checked the batch, and
        // rows 0..n of ne[0] values at nb[1] apart are the tensor's own), whose data is valid
        // for writes for 'g with nothing else reading or writing it meanwhile (`new`'s
        // contract); the runtime hands out one batch at a time, so this is the only reference
        // to these bytes while `f` runs.
        let rows = unsafe {
            let first = self.data.add(start);
            if !first.cast::<f32>().is_aligned() {
                return false;
            }
            std::slice::from_raw_parts_mut(first.cast::<f32>(), (n - 1) * (d.nb[1] / 4) + m)
        };
        f(rows, d.nb[1] / 4);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An F32 `[4, 3]` matrix's description, rows packed.
    fn desc_4x3(addr: usize) -> TensorDesc {
        TensorDesc {
            ty: ggml_type::F32,
            ne: [4, 3, 1, 1],
            nb: [4, 16, 48, 48],
            addr,
            type_size: 4,
            blck_size: 1,
            has_to_float: false,
            to_float: None,
            type_name: "f32",
            readable: true,
            in_weights_buffer: false,
            usage_unknown: false,
            leaf: false,
        }
    }

    #[test]
    fn rows_outside_the_tensor_are_refused_before_any_byte_is_touched() {
        // 12 elements and a sentinel right after them
        let mut data = vec![0f32; 13];
        data[12] = -1.0;
        let d = desc_4x3(data.as_ptr() as usize);
        let ptr = data.as_mut_ptr().cast::<c_void>();
        // SAFETY: `data` holds the 12 elements d describes and outlives the sink and source.
        let (sink, rows) = unsafe { (TensorRowsMut::new(d, ptr), TensorRows::new(d, ptr)) };
        sink.write_row(0, 0, 2, &[1.0; 4]);
        let caught = |f: &dyn Fn()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        // row 3 of 3, batch 1 of 1, 5 columns of 4: refused
        assert!(caught(&|| sink.write_row(0, 0, 3, &[9.0; 4])).is_err());
        assert!(caught(&|| sink.write_row(1, 0, 0, &[9.0; 4])).is_err());
        assert!(caught(&|| sink.write_row(0, 0, 2, &[9.0; 5])).is_err());
        let mut out = [0f32; 5];
        assert!(caught(&|| rows.read_row(0, 0, 0, &mut out.clone())).is_err());
        assert!(caught(&|| {
            rows.row_f32(0, 0, 3);
        })
        .is_err());
        // what was allowed was written; nothing else
        rows.read_row(0, 0, 2, &mut out[..4]);
        assert_eq!(out[..4], [1.0; 4]);
        assert_eq!(data[12], -1.0);
        assert!(data[..8].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn only_packed_rows_have_a_weight_identity() {
        let data = [0f32; 24];
        let mut d = desc_4x3(data.as_ptr() as usize);
        d.in_weights_buffer = true;
        let ptr = data.as_ptr().cast::<c_void>().cast_mut();
        // SAFETY: `data` holds the (strided) tensor d describes and outlives the source.
        let packed = unsafe { TensorRows::new(d, ptr) };
        assert!(packed.weight_id().is_some());
        // every other element: a strided view
        d.nb = [8, 32, 96, 96];
        // SAFETY: as above: 3 rows of 4 elements 8 bytes apart fit in 24 floats.
        let strided = unsafe { TensorRows::new(d, ptr) };
        assert!(strided.weight_id().is_none());
    }
}
