//! Malformed text and ill-typed programs give errors that say what and where.

use ane_mil::check::{CheckErrorKind, Location};
use ane_mil::{check_program, parse, parse_with_spans, BlobWriter, WeightFiles};
use ane_testutil::fixtures::seed_matmul_text;
use half::f16;

fn parse_err(text: &str) -> ane_mil::ParseError {
    parse(text).expect_err("should not parse")
}

/// Shapes come from outside: an element count that overflows is an error naming the shape,
/// in debug builds (where the multiplication panicked) and release builds (where it wrapped
/// to 0 and an empty value list was accepted).
#[test]
fn shapes_whose_size_overflows_are_errors() {
    let text = "program(1.3) { func f<ios18>() { tensor<fp16, [4294967296, 4294967296, 2]> c = const()[val = tensor<fp16, [4294967296, 4294967296, 2]>([])]; } -> (c); }";
    let e = parse_err(text);
    assert!(e.message.contains("[4294967296, 4294967296, 2]"), "{e}");
    assert!(e.message.contains("overflows"), "{e}");
    // the largest dimension there is, as an input's type
    let e = parse_err(
        "program(1.3) { func main<ios18>(tensor<fp32, [18446744073709551615, 2]> x) { } -> (x); }",
    );
    assert!(e.message.contains("overflows"), "{e}");
    // a huge shape whose bytes still fit parses; its element count is exact
    let p =
        parse("program(1.3) { func main<ios18>(tensor<fp16, [1, 1099511627776]> x) { } -> (x); }")
            .expect("2 TiB fits in a 64-bit address space");
    assert_eq!(p.functions[0].params[0].ty.num_elements(), 1 << 40);
}

#[test]
fn syntax_errors_name_line_and_column() {
    let text = seed_matmul_text(64, 64, 64).replace("x=x_raw)", "x=x_raw");
    let e = parse_err(&text);
    assert_eq!((e.line, e.column), (6, 73), "{e}");
    assert!(e.message.contains("expected `,` or `)`"), "{e}");
    let rendered = e.render("seed.mil", &text);
    assert!(rendered.contains("--> seed.mil:6:73"), "{rendered}");
    assert!(rendered.contains('^'), "{rendered}");

    let e = parse_err("program(1.3)\n{\n    func main(tensor<fp16, [1]> x) {\n");
    assert_eq!((e.line, e.column), (3, 14));
    assert!(e.notes.iter().any(|n| n.contains("main<ios18>")));

    let e = parse_err("program(1.3) {\n func main<ios18>(tensor<fp17, [1]> x) { } -> (x);\n}");
    assert_eq!((e.line, e.column), (2, 26));
    assert!(e.message.contains("unknown element type `fp17`"));

    let e = parse_err(
        "program(1.3) { func f<ios18>() { string s = const()[val = string(\"abc)]; } -> (s); }",
    );
    assert!(e.message.contains("unterminated string"), "{e}");

    let e = parse_err("program(1.3) { func f<ios18>() { tensor<int32, [2, 2]> c = const()[val = tensor<int32, [2, 2]>([1, 2, 3])]; } -> (c); }");
    assert!(e.notes[0].contains("4 values"), "{e:?}");

    // `-inf` is one word; `- inf` was a debug-assertion panic (found by the mutation proptest)
    let e = parse_err(
        "program(1.3) { func f<ios18>() { fp16 c = const()[val = fp16(- inf)]; } -> (c); }",
    );
    assert!(e.message.contains("`-` must touch"), "{e}");
    assert!(parse(
        "program(1.3) { func f<ios18>() { fp16 c = const()[val = fp16(-inf)]; } -> (c); }"
    )
    .is_ok());

    let e = parse_err(
        "program(1.3) { func f<ios18>() { int8 c = const()[val = int8(300)]; } -> (c); }",
    );
    assert!(e.message.contains("300 is out of range for int8"), "{e}");

    let e = parse_err("program(1.3) {}\ntrailing");
    assert_eq!((e.line, e.column), (2, 1));
}

fn check_err(text: &str, weights: Option<&WeightFiles>) -> (CheckErrorKind, Location) {
    let p = parse(text).unwrap();
    let e = check_program(&p, weights).expect_err("should not check");
    (*e.kind, e.at)
}

#[test]
fn unknown_op_and_wrong_arity() {
    let text = seed_matmul_text(64, 64, 64).replace("conv(", "convolution(");
    let (kind, at) = check_err(&text, None);
    assert!(
        matches!(kind, CheckErrorKind::UnknownOp { ref op, .. } if op == "convolution"),
        "{kind}"
    );
    assert_eq!(at, Location::Statement(8));

    let text = seed_matmul_text(64, 64, 64).replace("weight=W,", "");
    let (kind, _) = check_err(&text, None);
    assert_eq!(kind.to_string(), "`conv` needs input `weight`");

    let text = seed_matmul_text(64, 64, 64)
        .replace("perm=perm_in, x=x_raw", "perm=perm_in, x=x_raw, axis=gr");
    let (kind, _) = check_err(&text, None);
    assert!(
        matches!(kind, CheckErrorKind::UnexpectedInput { ref input, .. } if input == "axis"),
        "{kind}"
    );
}

#[test]
fn shape_and_dtype_mismatches() {
    // declared conv result disagrees with the weight's output channels
    let text = seed_matmul_text(64, 96, 40).replace(
        "tensor<fp16, [1,64,1,40]> y_raw",
        "tensor<fp16, [1,65,1,40]> y_raw",
    );
    let (kind, at) = check_err(&text, None);
    assert!(
        matches!(kind, CheckErrorKind::TypeMismatch { .. }),
        "{kind}"
    );
    assert_eq!(kind.to_string(), "`y_raw` is declared tensor<fp16, [1, 65, 1, 40]> but `conv` produces tensor<fp16, [1, 64, 1, 40]>");
    assert_eq!(at, Location::Statement(8));

    // weight input channels disagree with x
    let text = seed_matmul_text(64, 96, 40).replace("[64,96,1,1]", "[64,95,1,1]");
    let (kind, _) = check_err(&text, None);
    assert!(
        matches!(kind, CheckErrorKind::ShapeMismatch { .. }),
        "{kind}"
    );
    assert!(
        kind.to_string().contains("expects 95 input channels"),
        "{kind}"
    );

    // fp32 weight with fp16 x
    let text = seed_matmul_text(64, 96, 40)
        .replace("tensor<fp16, [64,96,1,1]>", "tensor<fp32, [64,96,1,1]>");
    let (kind, _) = check_err(&text, None);
    assert!(
        matches!(kind, CheckErrorKind::DTypeMismatch { .. }),
        "{kind}"
    );

    // a perm that is not a permutation
    let text = seed_matmul_text(64, 96, 40).replace(
        "([0,3,2,1])];\n        tensor<fp16, [1, 96",
        "([0,3,3,1])];\n        tensor<fp16, [1, 96",
    );
    let (kind, _) = check_err(&text, None);
    assert!(kind.to_string().contains("is not a permutation"), "{kind}");

    // undefined name, and an output that does not exist
    let text = seed_matmul_text(64, 96, 40).replace("x=x_raw)", "x=x_missing)");
    assert_eq!(
        check_err(&text, None).0,
        CheckErrorKind::Undefined("x_missing".into())
    );
    let text = seed_matmul_text(64, 96, 40).replace("-> (y)", "-> (q)");
    assert_eq!(check_err(&text, None).1, Location::Outputs);
}

#[test]
fn blob_references_are_checked_against_the_weights() {
    let text = seed_matmul_text(4, 8, 2);
    let mut w = BlobWriter::new();
    w.add_fp16(&[f16::ONE; 4 * 8]);
    let mut weights = WeightFiles::new();
    weights
        .insert("@model_path/weights/weight.bin", w.finish())
        .unwrap();
    check_program(&parse(&text).unwrap(), Some(&weights)).unwrap();

    let (kind, _) = check_err(&text.replace("uint64(64)", "uint64(128)"), Some(&weights));
    assert_eq!(
        kind.to_string(),
        "no blob record at offset 128 in @model_path/weights/weight.bin (records at 64)"
    );

    let (kind, _) = check_err(
        &text
            .replace("[4,8,1,1]", "[4,9,1,1]")
            .replace("[1, 8, 1, 2]", "[1, 9, 1, 2]")
            .replace("[1, 2, 1, 8]", "[1, 2, 1, 9]"),
        Some(&weights),
    );
    assert!(
        kind.to_string()
            .contains("has 64 bytes, the declared shape needs 72"),
        "{kind}"
    );

    let (kind, _) = check_err(
        &text.replace("weights/weight.bin", "weights/other.bin"),
        Some(&weights),
    );
    assert!(kind.to_string().contains("was not supplied"), "{kind}");
}

#[test]
fn source_map_locates_each_statement() {
    let text = seed_matmul_text(64, 96, 40);
    let (_, map) = parse_with_spans(&text).unwrap();
    let conv = map.functions[0].statements[8];
    assert_eq!(conv.line_col(&text), (13, 9));
    assert!(text[conv.start as usize..conv.end as usize].ends_with("[name=string(\"y\")];"));
}
