//! What the Apple engines learn from a compiled model, in portable Rust so Linux tests it.
//!
//! After `loadWithQoS`, `-[_ANEModel modelAttributes]` describes every procedure's live inputs
//! and outputs (`NetworkStatusList[i].LiveInputList` / `LiveOutputList`): batches, channels,
//! height, width, depth and the byte strides the hardware uses. The FFI layer converts that
//! NSDictionary into an [`AttrValue`] tree; this module turns it into [`TensorLayout`]s
//! (never guessed from the shape), sizes surfaces, and matches tensors to MIL parameters.
//! The key names come from public reverse-engineering notes; they are unverified on hardware
//! here (see docs/hardware-validation.md).

use std::time::Duration;

use ane_mil::CheckedFunction;
use ane_mil::ValueType;

use super::sys::AttrValue;
use crate::engine::{EngineKind, ProcedureInfo};
use crate::error::{Error, Result};
use crate::layout::{SurfaceDType, TensorLayout};

/// One live input or output of a compiled procedure, as the hardware lays it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LiveTensor {
    /// The MIL parameter or output name (the framework's `@output` suffix removed).
    pub(crate) name: String,
    /// Element type.
    pub(crate) dtype: SurfaceDType,
    /// `[Batches, Channels, Height, Width]`.
    pub(crate) dims: [usize; 4],
    /// `Depth` (5-D tensors; we only accept 1).
    pub(crate) depth: usize,
    /// Bytes between rows.
    pub(crate) row_stride: usize,
    /// Bytes between channels.
    pub(crate) plane_stride: usize,
    /// Bytes between batches (also the bytes one batch needs).
    pub(crate) batch_stride: usize,
    /// `Interleave` (channel interleave factor; absent = 1). Anything but 1 maps `(c, h)` to
    /// rows differently, and no working client stages such a layout, so it is refused.
    pub(crate) interleave: usize,
    /// `PlaneCount` (absent = 1); refused unless 1, for the same reason.
    pub(crate) plane_count: usize,
}

fn bad(what: String) -> Error {
    Error::Compile(format!("unexpected model attributes: {what}"))
}

fn field(d: &AttrValue, key: &str, ctx: &str) -> Result<usize> {
    let v = d
        .get(key)
        .and_then(AttrValue::as_int)
        .ok_or_else(|| bad(format!("{ctx}: no integer `{key}`")))?;
    usize::try_from(v).map_err(|_| bad(format!("{ctx}: `{key}` = {v}")))
}

/// An optional count that defaults to 1 when the daemon leaves it out.
fn count_or_one(d: &AttrValue, key: &str) -> usize {
    d.get(key)
        .and_then(AttrValue::as_int)
        .map_or(1, |v| usize::try_from(v).unwrap_or(0))
}

fn live_tensor(d: &AttrValue, ctx: &str) -> Result<LiveTensor> {
    // `Symbol` first: tmc binds by it, and `Name` may carry the producing op's name
    // (the seed's output `y` comes from an op named `yT`); apple-audit.md finding 7
    let raw_name = d
        .get("Symbol")
        .and_then(AttrValue::as_str)
        .or_else(|| d.get("Name").and_then(AttrValue::as_str))
        .ok_or_else(|| bad(format!("{ctx}: no `Symbol` or `Name` in {d:?}")))?;
    // the framework suffixes symbols (`y@output`, `y0@output`); the MIL name is before `@`
    let name = raw_name.split('@').next().unwrap_or(raw_name).to_string();
    let ctx = format!("{ctx} `{name}`");
    let ty = d.get("Type").map(|t| match t {
        AttrValue::Str(s) => s.to_ascii_lowercase(),
        other => format!("{other:?}"),
    });
    let dtype = match ty.as_deref() {
        Some(t) if t.contains("16") => SurfaceDType::F16,
        Some(t) if t.contains("32") => SurfaceDType::F32,
        // no Type key: the program's declared type decides (checked by the caller)
        None => SurfaceDType::F16,
        Some(t) => return Err(bad(format!("{ctx}: element type {t}"))),
    };
    let depth = d.get("Depth").and_then(AttrValue::as_int).unwrap_or(1);
    Ok(LiveTensor {
        name,
        dtype,
        dims: [
            field(d, "Batches", &ctx)?,
            field(d, "Channels", &ctx)?,
            field(d, "Height", &ctx)?,
            field(d, "Width", &ctx)?,
        ],
        depth: usize::try_from(depth).unwrap_or(0),
        row_stride: field(d, "RowStride", &ctx)?,
        plane_stride: field(d, "PlaneStride", &ctx)?,
        // unused when there is one batch; tmc never reads it (finding 9)
        batch_stride: match d.get("BatchStride") {
            None => 0,
            Some(_) => field(d, "BatchStride", &ctx)?,
        },
        interleave: count_or_one(d, "Interleave"),
        plane_count: count_or_one(d, "PlaneCount"),
    })
}

/// The live inputs and outputs of procedure `index`, in the hardware's order.
pub(crate) fn live_tensors(
    attrs: &AttrValue,
    index: usize,
) -> Result<(Vec<LiveTensor>, Vec<LiveTensor>)> {
    let list = attrs
        .get("NetworkStatusList")
        .and_then(AttrValue::as_array)
        .ok_or_else(|| bad("no NetworkStatusList array".into()))?;
    let status = list
        .get(index)
        .ok_or_else(|| bad(format!("{} procedures, wanted #{index}", list.len())))?;
    let side = |key: &str| -> Result<Vec<LiveTensor>> {
        status
            .get(key)
            .and_then(AttrValue::as_array)
            .ok_or_else(|| bad(format!("procedure #{index}: no {key}")))?
            .iter()
            .map(|t| live_tensor(t, key))
            .collect()
    };
    Ok((side("LiveInputList")?, side("LiveOutputList")?))
}

/// The layout callers stage into, from the hardware's description of a MIL value.
///
/// Accepted when the hardware keeps the MIL tensor's row-major element order with its last
/// dimension as the width (then flat rows `(b, c, h)` are the tensor's rows), the strides
/// hold the rows, and rows are `row_alignment`-aligned. Anything else is refused with the
/// numbers, so the kernel is never run on a layout we would stage wrongly.
pub(crate) fn layout_from_live(
    live: &LiveTensor,
    declared: &ValueType,
    row_alignment: usize,
) -> Result<TensorLayout> {
    let shape = declared.shape().to_vec();
    let refuse = |why: &str| Error::Unsupported {
        engine: EngineKind::Apple,
        reason: format!("`{}` {declared}: hardware layout {live:?} {why}", live.name),
    };
    let dtype =
        SurfaceDType::from_mil(declared.dtype()).ok_or_else(|| refuse("is not fp16/fp32"))?;
    if dtype != live.dtype {
        return Err(refuse("has another element type"));
    }
    if live.depth != 1 {
        return Err(refuse("has depth > 1"));
    }
    if live.interleave != 1 || live.plane_count != 1 {
        return Err(refuse(
            "is interleaved or multi-plane (no working client stages that)",
        ));
    }
    // the daemon's numbers are multiplied; garbage must become an error, not a wrap
    let product = |xs: &[usize]| xs.iter().try_fold(1usize, |a, &x| a.checked_mul(x));
    let overflow = || refuse("has sizes whose product overflows");
    let numel: usize = shape.iter().product();
    let [b, c, h, w] = live.dims;
    if product(&live.dims).ok_or_else(overflow)? != numel || shape.last().copied().unwrap_or(1) != w
    {
        return Err(refuse("does not keep the tensor's rows"));
    }
    let elem = dtype.size();
    let plane_rows = product(&[h, live.row_stride]).ok_or_else(overflow)?;
    // a single-plane tensor may report 0 for the unused stride
    let plane_stride = live.plane_stride.max(plane_rows);
    let one_batch = product(&[c, plane_stride]).ok_or_else(overflow)?;
    // with one batch the batch stride is unused: the daemon may report anything there
    let batch_stride = if b == 1 { one_batch } else { live.batch_stride };
    if live.row_stride < w * elem
        || !live.row_stride.is_multiple_of(row_alignment)
        || (c > 1 || h > 1) && live.plane_stride < plane_rows
        || batch_stride < one_batch
    {
        return Err(refuse("has strides that overlap or misalign rows"));
    }
    Ok(TensorLayout {
        name: live.name.clone(),
        dtype,
        shape,
        dims: live.dims,
        row_stride: live.row_stride,
        plane_stride,
        batch_stride,
    })
}

/// The procedure's layouts in MIL parameter and output order, and for each of them its
/// index in the hardware's live list (what the request's `inputIndices` / `outputIndices`
/// name).
pub(crate) fn procedure_layouts(
    attrs: &AttrValue,
    index: usize,
    function: &CheckedFunction,
    row_alignment: usize,
) -> Result<(ProcedureInfo, Vec<usize>, Vec<usize>)> {
    let (ins, outs) = live_tensors(attrs, index)?;
    let bind = |live: &[LiveTensor], name: &str, ty: &ValueType| -> Result<(TensorLayout, usize)> {
        let (i, t) = live
            .iter()
            .enumerate()
            .find(|(_, t)| t.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = live.iter().map(|t| t.name.as_str()).collect();
                bad(format!(
                    "`{}`: no live tensor `{name}` (has {known:?})",
                    function.name
                ))
            })?;
        Ok((layout_from_live(t, ty, row_alignment)?, i))
    };
    let mut inputs = Vec::new();
    let mut input_index = Vec::new();
    for p in &function.inputs {
        let (l, i) = bind(&ins, &p.name, &p.ty)?;
        inputs.push(l);
        input_index.push(i);
    }
    let mut outputs = Vec::new();
    let mut output_index = Vec::new();
    for p in &function.outputs {
        let (l, i) = bind(&outs, &p.name, &p.ty)?;
        outputs.push(l);
        output_index.push(i);
    }
    let info = ProcedureInfo {
        name: function.name.clone(),
        inputs,
        outputs,
    };
    Ok((info, input_index, output_index))
}

/// Bytes to allocate for a surface holding `bytes`: page-rounded (16 KiB) and at least
/// 48 KiB, the smallest evaluation surface reported to work.
pub(crate) fn surface_alloc_size(bytes: usize) -> usize {
    const PAGE: usize = 16 * 1024;
    const MIN: usize = 48 * 1024;
    bytes.max(MIN).div_ceil(PAGE) * PAGE
}

/// One allocation size for every surface of a group (a procedure's inputs, or its outputs):
/// the largest [`surface_alloc_size`] among them. Requests whose input surfaces differ in
/// size are reported to fail at eval (status 0x1d; docs/ane-notes.md#multi-input-requests), so all inputs
/// are padded to the same size, and likewise all outputs.
pub(crate) fn uniform_alloc_size(layouts: &[TensorLayout]) -> usize {
    layouts
        .iter()
        .map(|l| surface_alloc_size(l.byte_len()))
        .max()
        .unwrap_or_else(|| surface_alloc_size(0))
}

/// Runs `f` up to `attempts` times, sleeping `backoff`, then twice that, ... between tries.
/// Loads can fail transiently while the daemon reclaims slots.
pub(crate) fn retry<T, E>(
    attempts: u32,
    backoff: Duration,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let mut wait = backoff;
    let mut tries = 1;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if tries >= attempts.max(1) => return Err(e),
            Err(_) => {
                std::thread::sleep(wait);
                wait *= 2;
                tries += 1;
            }
        }
    }
}

#[cfg(test)]
#[path = "layouts_tests.rs"]
mod tests;
