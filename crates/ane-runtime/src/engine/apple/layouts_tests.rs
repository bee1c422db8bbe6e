//! Hardware layouts from `modelAttributes`-shaped trees: binding by name, refusing layouts we
//! would stage wrongly, surface sizes, retries. The trees follow the key names documented in
//! public reverse-engineering notes; a Mac confirms them (docs/hardware-validation.md).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{
    layout_from_live, live_tensors, procedure_layouts, retry, surface_alloc_size,
    uniform_alloc_size, LiveTensor,
};
use crate::engine::apple::sys::AttrValue;
use crate::matmul::two_input_matmul_program;
use crate::{Error, SurfaceDType, TensorLayout};
use ane_mil::check_program;

fn dict(entries: &[(&str, AttrValue)]) -> AttrValue {
    AttrValue::Dict(
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn tensor(name: &str, c: i64, h: i64, w: i64, row: i64) -> AttrValue {
    dict(&[
        ("Name", AttrValue::Str(name.into())),
        ("Type", AttrValue::Str("Float16".into())),
        ("Batches", AttrValue::Int(1)),
        ("Channels", AttrValue::Int(c)),
        ("Height", AttrValue::Int(h)),
        ("Width", AttrValue::Int(w)),
        ("Depth", AttrValue::Int(1)),
        ("RowStride", AttrValue::Int(row)),
        ("PlaneStride", AttrValue::Int(row * h)),
        ("BatchStride", AttrValue::Int(row * h * c)),
    ])
}

/// A one-procedure `modelAttributes` tree with these live inputs and outputs.
fn attrs(inputs: Vec<AttrValue>, outputs: Vec<AttrValue>) -> AttrValue {
    dict(&[(
        "NetworkStatusList",
        AttrValue::Array(vec![dict(&[
            ("LiveInputList", AttrValue::Array(inputs)),
            ("LiveOutputList", AttrValue::Array(outputs)),
        ])]),
    )])
}

/// The two-input kernel `y [1, 40, 1, 64] = conv(a [1, 96, 1, 64], b [1, 96, 1, 40])` as the
/// hardware might report it, with the inputs listed in the opposite order to the MIL
/// parameters.
fn matmul_attrs() -> AttrValue {
    attrs(
        vec![tensor("b", 96, 1, 40, 128), tensor("a", 96, 1, 64, 128)],
        vec![tensor("y@output", 40, 1, 64, 128)],
    )
}

#[test]
fn layouts_bind_by_name_and_keep_the_hardware_strides() {
    let program = two_input_matmul_program(40, 96, 64);
    let checked = check_program(&program, None).unwrap();
    let (info, in_idx, out_idx) = procedure_layouts(&matmul_attrs(), 0, &checked[0], 64).unwrap();
    assert_eq!(in_idx, [1, 0], "a is the hardware's second input");
    assert_eq!(out_idx, [0]);
    assert_eq!(info.inputs[0].name, "a");
    assert_eq!(info.inputs[0].dims, [1, 96, 1, 64]);
    assert_eq!(info.inputs[0].shape, [1, 96, 1, 64]);
    assert_eq!(info.inputs[0].row_stride, 128);
    assert_eq!(
        info.inputs[1].row_stride, 128,
        "40 fp16 = 80 bytes, padded to 128"
    );
    assert_eq!(info.outputs[0].name, "y");
    assert_eq!(info.outputs[0].row_stride, 128);
    assert_eq!(info.outputs[0].byte_len(), 40 * 128);
}

#[test]
fn layouts_that_would_be_staged_wrongly_are_refused() {
    let program = two_input_matmul_program(40, 96, 64);
    let checked = check_program(&program, None).unwrap();
    let f = &checked[0];
    // a [1, 96, 1, 64] reported as 64 channels of width 96: the rows are not the tensor's rows
    let transposed = attrs(
        vec![tensor("a", 64, 1, 96, 192), tensor("b", 96, 1, 40, 128)],
        vec![tensor("y", 40, 1, 64, 128)],
    );
    let err = procedure_layouts(&transposed, 0, f, 64).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("rows"), "{err}");

    let ty = ane_mil::ValueType::tensor(ane_mil::DType::Fp16, [1, 96, 1, 64]);
    let live = |row_stride| LiveTensor {
        name: "a".into(),
        dtype: SurfaceDType::F16,
        dims: [1, 96, 1, 64],
        depth: 1,
        row_stride,
        plane_stride: row_stride,
        batch_stride: 96 * row_stride,
        interleave: 1,
        plane_count: 1,
    };
    assert!(layout_from_live(&live(128), &ty, 64).is_ok());
    assert!(
        layout_from_live(&live(96), &ty, 64).is_err(),
        "rows shorter than the data"
    );
    assert!(
        layout_from_live(&live(136), &ty, 64).is_err(),
        "rows not 64-byte aligned"
    );
    let fp32 = ane_mil::ValueType::tensor(ane_mil::DType::Fp32, [1, 96, 1, 64]);
    assert!(
        layout_from_live(&live(128), &fp32, 64).is_err(),
        "element type differs"
    );

    // a missing tensor and a missing procedure name what is there
    let err = procedure_layouts(&matmul_attrs(), 1, f, 64).unwrap_err();
    assert!(err.to_string().contains("1 procedures"), "{err}");
    assert!(live_tensors(&dict(&[]), 0).is_err());
}

/// `tensor` with some keys replaced or added.
fn tensor_with(base: AttrValue, extra: &[(&str, AttrValue)]) -> AttrValue {
    let AttrValue::Dict(mut d) = base else {
        unreachable!("tensor() builds a dictionary")
    };
    for (k, v) in extra {
        d.insert(k.to_string(), v.clone());
    }
    AttrValue::Dict(d)
}

#[test]
fn symbols_win_over_names_and_lose_their_suffix() {
    let program = two_input_matmul_program(40, 96, 64);
    let checked = check_program(&program, None).unwrap();
    // `Name` carries the producing op (the seed's `yT`), `Symbol` the MIL value
    let y = tensor_with(
        tensor("yT", 40, 1, 64, 128),
        &[("Symbol", AttrValue::Str("y@output".into()))],
    );
    let a = tensor_with(
        tensor("x_op", 96, 1, 64, 128),
        &[("Symbol", AttrValue::Str("a".into()))],
    );
    let tree = attrs(vec![tensor("b", 96, 1, 40, 128), a], vec![y]);
    let (info, in_idx, _) = procedure_layouts(&tree, 0, &checked[0], 64).unwrap();
    assert_eq!(in_idx, [1, 0]);
    assert_eq!(info.outputs[0].name, "y");
    // with neither key the error shows the whole entry
    let AttrValue::Dict(mut bare) = tensor("a", 96, 1, 64, 128) else {
        unreachable!()
    };
    bare.remove("Name");
    let err = live_tensors(&attrs(vec![AttrValue::Dict(bare)], vec![]), 0).unwrap_err();
    assert!(err.to_string().contains("RowStride"), "{err}");
}

#[test]
fn interleaved_or_multi_plane_layouts_are_refused() {
    let program = two_input_matmul_program(40, 96, 64);
    let checked = check_program(&program, None).unwrap();
    for (key, value) in [("Interleave", 2), ("PlaneCount", 2)] {
        let a = tensor_with(tensor("a", 96, 1, 64, 128), &[(key, AttrValue::Int(value))]);
        let tree = attrs(
            vec![a, tensor("b", 96, 1, 40, 128)],
            vec![tensor("y", 40, 1, 64, 128)],
        );
        let err = procedure_layouts(&tree, 0, &checked[0], 64).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{key}: {err}");
        // the same key at 1 is the plain layout
        let a = tensor_with(tensor("a", 96, 1, 64, 128), &[(key, AttrValue::Int(1))]);
        let tree = attrs(
            vec![a, tensor("b", 96, 1, 40, 128)],
            vec![tensor("y", 40, 1, 64, 128)],
        );
        assert!(
            procedure_layouts(&tree, 0, &checked[0], 64).is_ok(),
            "{key}"
        );
    }
}

#[test]
fn one_batch_ignores_the_batch_stride_and_garbage_sizes_are_errors() {
    let ty = ane_mil::ValueType::tensor(ane_mil::DType::Fp16, [1, 96, 1, 64]);
    let live = LiveTensor {
        name: "a".into(),
        dtype: SurfaceDType::F16,
        dims: [1, 96, 1, 64],
        depth: 1,
        row_stride: 128,
        plane_stride: 128,
        batch_stride: 0,
        interleave: 1,
        plane_count: 1,
    };
    let l = layout_from_live(&live, &ty, 64).unwrap();
    assert_eq!(l.batch_stride, 96 * 128, "sized from channels and planes");
    assert_eq!(l.byte_len(), 96 * 128);
    // two batches need a real stride
    let ty2 = ane_mil::ValueType::tensor(ane_mil::DType::Fp16, [2, 96, 1, 64]);
    let two = LiveTensor {
        dims: [2, 96, 1, 64],
        ..live.clone()
    };
    assert!(layout_from_live(&two, &ty2, 64).is_err());
    let huge = LiveTensor {
        dims: [usize::MAX / 2, 96, 1, 64],
        ..live
    };
    let err = layout_from_live(&huge, &ty, 64).unwrap_err();
    assert!(err.to_string().contains("overflow"), "{err}");
}

#[test]
fn surfaces_are_page_rounded_and_at_least_48_kib() {
    assert_eq!(surface_alloc_size(1), 48 * 1024);
    assert_eq!(surface_alloc_size(48 * 1024), 48 * 1024);
    assert_eq!(surface_alloc_size(48 * 1024 + 1), 64 * 1024);
    assert_eq!(surface_alloc_size(1 << 20), 1 << 20);
    // a group shares the size of its largest member
    let l = |rows: usize, cols: usize| {
        TensorLayout::aligned("t", SurfaceDType::F16, &[rows, cols], 64).unwrap()
    };
    assert_eq!(uniform_alloc_size(&[l(64, 64), l(512, 1024)]), 1 << 20);
    assert_eq!(uniform_alloc_size(&[l(1, 1)]), 48 * 1024);
    assert_eq!(uniform_alloc_size(&[]), 48 * 1024);
}

#[test]
fn retry_stops_at_success_or_after_the_last_attempt() {
    let mut calls = 0;
    let r: Result<u32, String> = retry(3, Duration::from_millis(1), || {
        calls += 1;
        if calls < 2 {
            Err(format!("busy {calls}"))
        } else {
            Ok(calls)
        }
    });
    assert_eq!(r, Ok(2));
    let mut calls = 0;
    let r: Result<(), String> = retry(3, Duration::from_millis(1), || {
        calls += 1;
        Err(format!("busy {calls}"))
    });
    assert_eq!(r, Err("busy 3".to_string()));
}
