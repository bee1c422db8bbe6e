//! `parse(print(p)) == p` over generated programs, and no input makes the parser or the
//! blob reader panic.

use ane_mil::ir::{
    Arg, BlobRef, Function, Literal, Param, Program, Statement, TensorData, TensorLiteral,
};
use ane_mil::types::{DType, ValueType};
use ane_mil::{parse, print_program, BlobFile};
use half::f16;
use proptest::prelude::*;

fn ident() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,7}".prop_filter("not a keyword", |s| {
        !matches!(s.as_str(), "inf" | "nan" | "true" | "false")
    })
}

fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..4, 0..4)
}

fn value_type() -> impl Strategy<Value = ValueType> {
    prop_oneof![
        (prop::sample::select(DType::ALL.to_vec()), shape())
            .prop_map(|(d, s)| ValueType::Tensor { dtype: d, shape: s }),
        prop::sample::select(DType::ALL.to_vec()).prop_map(ValueType::Scalar),
    ]
}

fn data(dtype: DType, n: usize) -> BoxedStrategy<TensorData> {
    let finite32 = any::<f32>().prop_filter("finite or inf", |x| !x.is_nan());
    match dtype {
        DType::Fp16 => prop::collection::vec(any::<u16>(), n)
            .prop_map(|v| {
                TensorData::Fp16(
                    v.into_iter()
                        .map(f16::from_bits)
                        .map(|x| if x.is_nan() { f16::ONE } else { x })
                        .collect(),
                )
            })
            .boxed(),
        DType::Fp32 => prop::collection::vec(finite32, n)
            .prop_map(TensorData::Fp32)
            .boxed(),
        DType::Int8 => prop::collection::vec(any::<i8>(), n)
            .prop_map(TensorData::Int8)
            .boxed(),
        DType::UInt8 => prop::collection::vec(any::<u8>(), n)
            .prop_map(TensorData::UInt8)
            .boxed(),
        DType::Int32 => prop::collection::vec(any::<i32>(), n)
            .prop_map(TensorData::Int32)
            .boxed(),
        DType::UInt64 => prop::collection::vec(any::<u64>(), n)
            .prop_map(TensorData::UInt64)
            .boxed(),
        DType::Bool | DType::String => prop::collection::vec(any::<bool>(), n)
            .prop_map(TensorData::Bool)
            .boxed(),
    }
}

fn literal() -> impl Strategy<Value = Literal> {
    let numeric = prop::sample::select(
        DType::ALL
            .iter()
            .copied()
            .filter(|d| *d != DType::String)
            .collect::<Vec<_>>(),
    );
    prop_oneof![
        (numeric.clone(), shape()).prop_flat_map(|(d, s)| {
            let n = s.iter().product();
            data(d, n).prop_map(move |data| {
                Literal::Tensor(TensorLiteral {
                    shape: Some(s.clone()),
                    data,
                })
            })
        }),
        numeric.prop_flat_map(
            |d| data(d, 1).prop_map(|data| Literal::Tensor(TensorLiteral::scalar(data)))
        ),
        ".{0,12}".prop_map(Literal::String),
        (
            prop::sample::select(vec![DType::Fp16, DType::Int8, DType::Fp32]),
            shape(),
            ".{0,10}",
            any::<u64>()
        )
            .prop_map(|(dtype, shape, path, offset)| Literal::Blob(BlobRef {
                dtype,
                shape,
                path,
                offset
            })),
        prop::collection::vec((".{0,6}", ".{0,6}"), 0..3).prop_map(Literal::Dict),
    ]
}

fn arg() -> impl Strategy<Value = Arg> {
    prop_oneof![
        ident().prop_map(Arg::Var),
        literal()
            .prop_filter("dicts are attribute-only", |l| !matches!(
                l,
                Literal::Dict(_)
            ))
            .prop_map(Arg::Literal),
        prop::collection::vec(ident(), 1..4).prop_map(Arg::Tuple),
    ]
}

fn statement() -> impl Strategy<Value = Statement> {
    (
        value_type(),
        ident(),
        ident(),
        prop::collection::vec((ident(), arg()), 0..4),
        prop::collection::vec((ident(), literal()), 0..3),
    )
        .prop_map(|(ty, name, op, args, attributes)| Statement {
            ty,
            name,
            op,
            args,
            attributes,
        })
}

fn function() -> impl Strategy<Value = Function> {
    (
        ident(),
        ident(),
        prop::collection::vec((value_type(), ident()), 0..3),
        prop::collection::vec(statement(), 0..5),
        prop::collection::vec(ident(), 1..3),
    )
        .prop_map(|(name, opset, params, body, outputs)| Function {
            name,
            opset,
            params: params
                .into_iter()
                .map(|(ty, name)| Param { name, ty })
                .collect(),
            body,
            outputs,
        })
}

fn program() -> impl Strategy<Value = Program> {
    (
        "[0-9]\\.[0-9]",
        prop::collection::vec((ident(), literal()), 0..2),
        prop::collection::vec(function(), 0..3),
    )
        .prop_map(|(version, attributes, functions)| Program {
            version,
            attributes,
            functions,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_inverts_print(p in program()) {
        let text = print_program(&p);
        let back = parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(back, p);
    }

    /// Any string: an error or a program, never a panic.
    #[test]
    fn parser_never_panics_on_arbitrary_text(s in ".{0,200}") {
        let _ = parse(&s);
    }

    /// Types with dimensions anywhere up to u64::MAX, in inputs and constants with too few
    /// values: the parser and checker give an error or a program, never a panic, and what
    /// parses has an element count that fits.
    #[test]
    fn huge_dimensions_never_panic(
        dims in prop::collection::vec(prop_oneof![any::<u64>(), 0u64..70_000, Just(u64::MAX), Just(1u64 << 32)], 0..5),
        values in 0usize..3,
    ) {
        let shape = dims.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        let vals = vec!["1"; values].join(", ");
        let text = format!(
            "program(1.3) {{ func main<ios18>(tensor<fp16, [{shape}]> x) {{ tensor<fp16, [{shape}]> c = const()[val = tensor<fp16, [{shape}]>([{vals}])]; }} -> (c); }}"
        );
        if let Ok(p) = parse(&text) {
            let n = p.functions[0].params[0].ty.num_elements();
            prop_assert!(n < usize::MAX, "{text}");
            let _ = ane_mil::check_program(&p, None);
        }
    }

    /// Real programs with bytes deleted, duplicated or replaced: errors carry sane positions.
    #[test]
    fn parser_reports_positions_inside_mutated_programs(
        cut in 0usize..2000, len in 0usize..40, insert in "[\\[\\](){}<>,=; a-z0-9\"-]{0,3}"
    ) {
        let text = ane_testutil::fixtures::seed_matmul_text(64, 96, 40);
        let cut = cut.min(text.len());
        let end = (cut + len).min(text.len());
        if text.is_char_boundary(cut) && text.is_char_boundary(end) {
            let mutated = format!("{}{}{}", &text[..cut], insert, &text[end..]);
            if let Err(e) = parse(&mutated) {
                let lines = mutated.lines().count().max(1);
                prop_assert!(e.line >= 1 && e.line <= lines + 1, "{e}");
                prop_assert!(e.column >= 1);
            }
        }
    }

    /// Any bytes: a validated file or an error, never a panic.
    #[test]
    fn blob_reader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512), fix_header in any::<bool>()) {
        let mut bytes = bytes;
        if fix_header && bytes.len() >= 8 {
            bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
        }
        if let Ok(f) = BlobFile::parse(bytes) {
            for r in f.records() {
                prop_assert!(f.payload(r).len() as u64 == r.size);
            }
        }
    }
}
