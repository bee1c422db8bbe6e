//! MIL text as other generators emit it, for compatibility tests and demos.
//!
//! These reproduce the *output format* of public ANE projects so that our parser, checker and
//! engines are tested against what exists in the wild, not only against our own printer.

/// The program arozanov/ggml-ane's `gen_matmul_mil(M, K, N)` emits, byte for byte: compact
/// spacing, input `x_raw [1, N, 1, K]` (ggml's row-major `src1`), transpose to `[1, K, 1, N]`,
/// a 1x1 conv with the `[M, K, 1, 1]` fp16 weight at BLOBFILE offset 64 of
/// `@model_path/weights/weight.bin`, transpose back to `[1, N, 1, M]`.
pub fn seed_matmul_text(m: usize, k: usize, n: usize) -> String {
    let build_info =
        "[buildInfo = dict<string, string>({{\"coremlc-component-MIL\", \"3510.2.1\"}, \
{\"coremlc-version\", \"3505.4.1\"}, {\"coremltools-component-milinternal\", \"\"}, \
{\"coremltools-version\", \"9.0\"}})]";
    let lines = [
        "program(1.3)".to_string(),
        build_info.to_string(),
        "{".to_string(),
        format!("    func main<ios18>(tensor<fp16, [1, {n}, 1, {k}]> x_raw) {{"),
        "        tensor<int32, [4]> perm_in = const()[name=string(\"pi\"), val=tensor<int32, [4]>([0,3,2,1])];".to_string(),
        format!("        tensor<fp16, [1, {k}, 1, {n}]> x = transpose(perm=perm_in, x=x_raw)[name=string(\"xT\")];"),
        "        string pt = const()[name=string(\"pt\"), val=string(\"valid\")];".to_string(),
        "        tensor<int32, [2]> st = const()[name=string(\"st\"), val=tensor<int32, [2]>([1,1])];".to_string(),
        "        tensor<int32, [4]> pd = const()[name=string(\"pd\"), val=tensor<int32, [4]>([0,0,0,0])];".to_string(),
        "        tensor<int32, [2]> dl = const()[name=string(\"dl\"), val=tensor<int32, [2]>([1,1])];".to_string(),
        "        int32 gr = const()[name=string(\"gr\"), val=int32(1)];".to_string(),
        format!(
            "        tensor<fp16, [{m},{k},1,1]> W = const()[name=string(\"W\"), val=tensor<fp16, [{m},{k},1,1]>\
(BLOBFILE(path=string(\"@model_path/weights/weight.bin\"), offset=uint64(64)))];"
        ),
        format!(
            "        tensor<fp16, [1,{m},1,{n}]> y_raw = conv(dilations=dl,groups=gr,pad=pd,pad_type=pt,\
strides=st,weight=W,x=x)[name=string(\"y\")];"
        ),
        "        tensor<int32, [4]> perm_out = const()[name=string(\"po\"), val=tensor<int32, [4]>([0,3,2,1])];".to_string(),
        format!("        tensor<fp16, [1, {n}, 1, {m}]> y = transpose(perm=perm_out, x=y_raw)[name=string(\"yT\")];"),
        "    } -> (y);".to_string(),
        "}".to_string(),
    ];
    lines.join("\n") + "\n"
}
