//! Printer golden files, parser compatibility with other generators, and round trips.

mod support;

use std::path::PathBuf;

use ane_mil::{check_program, parse, print_program};

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with BLESS=1 to create it)", path.display()));
    assert_eq!(
        actual,
        expected,
        "printer output differs from {}",
        path.display()
    );
}

#[test]
fn printer_matches_golden_conv_and_matmul() {
    let p = support::conv_and_matmul_program();
    let text = print_program(&p);
    golden("conv_and_matmul.mil", &text);
    assert_eq!(parse(&text).unwrap(), p);
}

#[test]
fn seed_program_parses_checks_and_prints_canonically() {
    let text = ane_testutil::fixtures::seed_matmul_text(64, 96, 40);
    let p = parse(&text).unwrap();
    let checked = check_program(&p, None).unwrap();
    assert_eq!(
        checked[0].signature(),
        "main<ios18>(x_raw: tensor<fp16, [1, 40, 1, 96]>) -> (y: tensor<fp16, [1, 40, 1, 64]>)"
    );
    let canonical = print_program(&p);
    golden("seed_matmul_64x96x40.mil", &canonical);
    assert_eq!(parse(&canonical).unwrap(), p);
}

/// The spaced style of maderix/ANE's generators: multi-line, hex-float fp16 literals,
/// constexpr operands in the attribute block, a tuple argument, two outputs.
#[test]
fn spaced_style_with_hex_floats_and_tuples_parses() {
    let text = r#"program(1.3)
[buildInfo = dict<string, string>({})]
{
    func main<ios17>(tensor<fp16, [1, 8, 1, 32]> a, tensor<fp16, [1, 8, 1, 32]> b) {
        fp16 sc = const()[name = string("sc"), val = fp16(0x1p-3)];
        int32 ax = const()[name = string("ax"), val = int32(1)];
        bool il = const()[name = string("il"), val = bool(true)];
        tensor<fp16, [1, 16, 1, 32]> c = concat(axis = ax, interleave = il, values = (a, b))[name = string("c")];
        tensor<int32, [4]> sh = const()[name = string("sh"), val = tensor<int32, [4]>([1, 1, 16, 32])];
        tensor<fp16, [1, 1, 16, 32]> r = reshape(shape = sh, x = c)[name = string("r")];
        tensor<int32, [2, 2]> nested = const()[name = string("n"), val = tensor<int32, [2, 2]>([[0, 1], [2, 3]])];
    } -> (c, r);
}
"#;
    let p = parse(text).unwrap();
    let f = &p.functions[0];
    assert_eq!(f.opset, "ios17");
    assert_eq!(f.outputs, ["c", "r"]);
    match &f.body[0].attributes[1].1 {
        ane_mil::ir::Literal::Tensor(t) => assert_eq!(t.as_f32s().unwrap(), [0.125]),
        other => panic!("{other:?}"),
    }
    let checked = check_program(&p, None).unwrap();
    assert_eq!(checked[0].outputs[1].ty.shape(), [1, 1, 16, 32]);
    let again = parse(&print_program(&p)).unwrap();
    assert_eq!(again, p);
}

#[test]
fn comments_and_crlf_are_tolerated() {
    let text = ane_testutil::fixtures::seed_matmul_text(32, 32, 32).replace('\n', "\r\n");
    let with_comment = text.replacen("{\r\n", "{ // the functions\r\n", 1);
    assert_eq!(parse(&with_comment).unwrap(), parse(&text).unwrap());
}
