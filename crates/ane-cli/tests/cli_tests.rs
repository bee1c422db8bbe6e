//! The `ane` binary end to end: files in, files out, exit codes and messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ane_mil::BlobWriter;
use ane_testutil::fixtures::seed_matmul_text;
use ane_testutil::{assert_matmul_close, transpose, Rng};
use half::f16;

/// Runs `ane` with the kernel cache off, so results do not depend on earlier runs.
fn ane(args: &[&str]) -> Output {
    ane_with_cache(Path::new("off"), args)
}

fn ane_with_cache(dir: &Path, args: &[&str]) -> Output {
    ane_in(dir, args, &[])
}

/// `ane` with these variables set (the cache off).
fn ane_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    ane_in(Path::new("off"), args, env)
}

fn ane_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ane"))
        .args(args)
        .env_remove("GGML_ANE_ENGINE")
        .env_remove("GGML_ANE_KERNELS")
        .env_remove("GGML_ANE_REFERENCE_FAULTS")
        .env("GGML_ANE_CACHE_DIR", dir)
        .envs(env.iter().copied())
        .output()
        .expect("run ane")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write_npy<T: npyz::AutoSerialize>(
    path: &Path,
    shape: &[u64],
    values: impl IntoIterator<Item = T>,
) {
    use npyz::WriterBuilder;
    let f = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::<T>::new()
        .default_dtype()
        .shape(shape)
        .writer(f)
        .begin_nd()
        .unwrap();
    w.extend(values).unwrap();
    w.finish().unwrap();
}

fn read_npy(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let f = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = f.shape().to_vec();
    if f.dtype().descr().contains("f8") {
        (
            shape,
            f.into_vec::<f64>()
                .unwrap()
                .into_iter()
                .map(|v| v as f32)
                .collect(),
        )
    } else {
        (shape, f.into_vec::<f32>().unwrap())
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The seed's exact program through `ane mil run` for several shapes, widths not multiples of 32
/// among them, against an f64 matmul of the fp16-rounded operands (tolerance: see
/// `ane_testutil::fp16_dot_tolerance`).
#[test]
fn mil_run_executes_the_seed_program_for_several_shapes() {
    let mut rng = Rng::new(5);
    for (m, k, n) in [(64, 64, 64), (48, 80, 50), (33, 37, 7), (130, 257, 3)] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("model.mil"), seed_matmul_text(m, k, n)).unwrap();
        let w = rng.f16_values(m * k);
        let x = rng.f16_values(n * k);
        let mut bw = BlobWriter::new();
        bw.add_fp16(&w.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>());
        std::fs::create_dir(d.join("weights")).unwrap();
        std::fs::write(d.join("weights/weight.bin"), bw.finish()).unwrap();
        write_npy(
            &d.join("x.npy"),
            &[1, n as u64, 1, k as u64],
            x.iter().map(|&v| f16::from_f32(v)),
        );
        let s = |p: &str| d.join(p).to_string_lossy().into_owned();
        let input = format!("x_raw={}", s("x.npy"));
        let out = ane(&[
            "mil",
            "run",
            &s("model.mil"),
            "--weights",
            &s(""),
            "--input",
            &input,
            "--out",
            &s("out"),
        ]);
        assert!(out.status.success(), "({m},{k},{n}): {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("main on reference"),
            "{}",
            text(&out.stdout)
        );
        let (shape, y) = read_npy(&d.join("out/y.npy"));
        assert_eq!(shape, [1, n as u64, 1, m as u64]);
        assert_matmul_close(
            &y,
            &x,
            &transpose(&w, m, k),
            n,
            k,
            m,
            &format!("ane mil run ({m},{k},{n})"),
        );
    }
}

/// The bundled example: weights written by coremltools, expectation computed by numpy.
#[test]
fn bundled_example_matches_numpy_and_a_wrong_expectation_fails() {
    let ex = repo_root().join("examples/seed-matmul");
    let s = |p: &str| ex.join(p).to_string_lossy().into_owned();
    let out_dir = tempfile::tempdir().unwrap();
    let out_s = out_dir.path().to_string_lossy().into_owned();
    let input = format!("x_raw={}", s("x_raw.npy"));
    let expect = format!("y={}", s("expected_y.npy"));
    let run = |expect: &str| {
        ane(&[
            "mil",
            "run",
            &s("model.mil"),
            "--weights",
            &s(""),
            "--input",
            &input,
            "--out",
            &out_s,
            "--expect",
            expect,
        ])
    };
    let ok = run(&expect);
    assert!(
        ok.status.success(),
        "{}{}",
        text(&ok.stdout),
        text(&ok.stderr)
    );
    assert!(text(&ok.stdout).contains(": ok"), "{}", text(&ok.stdout));

    // the same expectation with one value changed must be reported as a mismatch
    let (shape, mut want) = read_npy(&ex.join("expected_y.npy"));
    want.iter_mut().for_each(|v| *v = -*v);
    let bad = out_dir.path().join("bad.npy");
    write_npy(&bad, &shape, want.iter().copied());
    let out = run(&format!("y={}", bad.display()));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("MISMATCH"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn mil_check_prints_signatures_or_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.mil");
    std::fs::write(&good, seed_matmul_text(16, 8, 4)).unwrap();
    let out = ane(&["mil", "check", good.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout),
        "main<ios18>(x_raw: tensor<fp16, [1, 4, 1, 8]>) -> (y: tensor<fp16, [1, 4, 1, 16]>)\n  \
         products sum (K): y_raw 8\n"
    );

    let bad = dir.path().join("bad.mil");
    std::fs::write(
        &bad,
        seed_matmul_text(16, 8, 4).replace("pad_type=pt,", "pad_type=pt,,"),
    )
    .unwrap();
    let out = ane(&["mil", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("--> {}:13:", bad.display())), "{err}");
    assert!(
        err.contains("expected an argument name, found `,`"),
        "{err}"
    );

    let typo = dir.path().join("typo.mil");
    std::fs::write(
        &typo,
        seed_matmul_text(16, 8, 4).replace("[16,8,1,1]> W", "[16,9,1,1]> W"),
    )
    .unwrap();
    let out = ane(&["mil", "check", typo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(":12:9"), "{err}");
    assert!(
        err.contains("declared tensor<fp16, [16, 9, 1, 1]>"),
        "{err}"
    );
}

#[test]
fn mil_run_explains_missing_inputs_and_weights() {
    let ex = repo_root().join("examples/seed-matmul");
    let model = ex.join("model.mil").to_string_lossy().into_owned();
    let out = ane(&["mil", "run", &model, "--out", "/tmp/unused"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("pass --weights DIR"),
        "{}",
        text(&out.stderr)
    );

    let out = ane(&[
        "mil",
        "run",
        &model,
        "--weights",
        ex.to_str().unwrap(),
        "--out",
        "/tmp/unused",
    ]);
    assert!(
        text(&out.stderr).contains("missing --input x_raw=FILE.npy (shape [1, 50, 1, 80])"),
        "{}",
        text(&out.stderr)
    );

    let out = ane(&[
        "mil",
        "run",
        &model,
        "--weights",
        "/nonexistent",
        "--out",
        "/tmp/unused",
    ]);
    assert!(
        text(&out.stderr).contains("/nonexistent/weights/weight.bin"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn info_names_the_engine_and_its_limits() {
    let out = ane(&["info"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(s.contains("auto picks: reference"), "{s}");
    assert!(s.contains("max dimension   16384"), "{s}");
    assert!(s.contains("compile budget  119 per process"), "{s}");
    assert!(s.contains("kernels         auto"), "{s}");
    #[cfg(not(target_os = "macos"))]
    assert!(
        s.contains("apple      the apple engine is unavailable: needs macOS"),
        "{s}"
    );
    let out = ane(&["info", "--engine", "warp"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown engine `warp`"));
    // a cache cap whose bytes overflow (2^44 MiB: `mb << 20` wrapped to 0) is refused, named
    let out = ane_with_env(
        &["cache", "list"],
        &[("GGML_ANE_CACHE_MAX_MB", "17592186044416")],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("17592186044416") && err.contains("cache-max-mb"),
        "{err}"
    );
}

/// An MoE plan: within the budget, the expert batches and calls per layer in the JSON; the
/// same dimensions by hand give the same plan; bad expert counts and `--fused` are refused
/// with the reason.
#[test]
fn plan_reports_an_moe_prefill() {
    let out = ane(&["plan", "--model", "qwen3-30b-a3b", "--json", "--no-cache"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json = text(&out.stdout);
    let compiles: u32 = json
        .split("\"compiles\": ")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .and_then(|t| t.parse().ok())
        .expect("a compile count");
    assert!(compiles <= 100, "{json}");
    assert!(
        json.contains("\"experts\": {\"count\": 128, \"used\": 8, \"ffn\": 768}"),
        "{json}"
    );
    assert!(
        json.contains("{\"tokens\": 512, \"matmuls\": 18625, \"kernels\": 15, \"new_compiles\": 0, \"seed_compiles\": 192, \"seed_refused\": 18433, \"dispatches_per_layer\": 389, \"tokens_per_expert\": 32, \"experts_on_engine\": 128}"),
        "{json}"
    );
    // fused: one expert FFN program per expert, 131 dispatches a layer instead of 389 (the
    // attention output's K = 4096 in two tiles either way)
    let out = ane(&["plan", "--model", "qwen3-30b-a3b", "--fused", "--no-cache"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("512: 131 (unfused 389)"),
        "{}",
        text(&out.stdout)
    );
    // Qwen3-30B-A3B's attention is grouped (q 4096, kv 512), which --dims cannot say: the same
    // experts by hand differ only in the attention's shapes
    let out = ane(&[
        "plan",
        "--dims",
        "2048,0,48,151936",
        "--experts",
        "128,8,768",
        "--no-cache",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("128 experts of 768 (8 used per token)"));
    for (args, says) in [
        (
            &["plan", "--dims", "2048,0,48,151936", "--experts", "8,9,768"][..],
            "USED <= COUNT",
        ),
        (&["plan", "--experts", "8,2,768"][..], "--dims"),
    ] {
        let out = ane(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

/// `ane plan --chip`: an M5 Max declines a 7B for speed and says why in words, with the
/// `energy` recipe; an M4 takes it with a time per token; the JSON carries the same; an
/// unknown chip is refused with the table's names.
#[test]
fn plan_predicts_per_chip_and_says_when_auto_declines() {
    let run = |chip: &str, extra: &[&str]| {
        let mut args = vec!["plan", "--model", "llama-7b", "--no-cache", "--chip", chip];
        args.extend(extra);
        let out = ane(&args);
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, out, err) = run("M5-Max", &[]);
    assert_eq!(code, Some(0), "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("M5 Max"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("declines")
            && line.contains("prefills faster than the ANE")
            && line.contains("GGML_ANE_MODE=energy"),
        "{line}"
    );
    let (_, out, _) = run("M5-Max", &["--mode", "energy"]);
    assert!(
        out.contains("GGML_ANE_MODE=energy: takes the work"),
        "{out}"
    );
    let (code, out, err) = run("M4", &["--prompt-lengths", "512"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("M4 (1 ANE), GGML_ANE_MODE=auto: takes the work"),
        "{out}"
    );
    let row = out
        .lines()
        .skip_while(|l| !l.contains("ANE ms/token"))
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    // Q, K, V, O, gate and up in two K tiles of 2048, down in six
    assert_eq!(cols[..2], ["512", "18"], "{row}");
    assert!(cols[2].parse::<f64>().is_ok_and(|ms| ms > 0.0), "{row}");
    let (_, json, _) = run("M2-Pro", &["--json", "--prompt-lengths", "512"]);
    assert!(
        json.contains("\"chip\": {\"chip\": \"M2 Pro\", \"mode\": \"auto\", \"takes\": true"),
        "{json}"
    );
    let (code, _, err) = run("M9", &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("M5 Max") && err.contains("M9"), "{err}");
    // `ane doctor` prints the same prediction for the chip it routes by, beside what the
    // backend measured there (its verdicts in the kernel cache; another chip's are not read)
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("routing-verdicts.tsv"),
        "M2 Pro|15.1|apple|MTL0\t4096\t4096\t512\t3100.0\t5200.0\n\
         M4|15.1|apple|MTL0\t4096\t4096\t512\t9000.0\t5200.0\n",
    )
    .unwrap();
    let cache = dir.path().to_str().unwrap();
    let out = ane(&["doctor", "--chip", "M2-Pro", "--cache-dir", cache]);
    let doctor = text(&out.stdout);
    assert!(
        doctor.contains("predicted: llama-7b, 512 tokens: ANE path ")
            && doctor.contains("(18 calls a layer), GPU "),
        "{doctor}"
    );
    assert!(
        doctor.contains("measured: 1 shapes timed, the engine faster on 1: 4096x4096x512 engine 3.10 ms / GPU 5.20 ms"),
        "{doctor}"
    );
}

#[test]
fn plan_reports_compiles_for_a_7b_prefill() {
    let out = ane(&[
        "plan",
        "--model",
        "llama-7b",
        "--prompt-lengths",
        "17,64,100,128,333,512,1000,2048",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json = text(&out.stdout);
    let compiles: u32 = json
        .split("\"compiles\": ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(compiles <= 36, "{json}");
    assert!(json.contains("\"seed_compiles\": 1792"), "{json}");
    // the auto policy's accounting within the apple engine's budget
    let auto = json.split("\"auto\": ").nth(1).expect("an auto object");
    assert!(
        auto.starts_with("{\"budget\": 100, \"compiles\": "),
        "{auto}"
    );
    assert!(auto.contains("\"streamed_kernels\": 36"), "{auto}");
    let out = ane(&[
        "plan",
        "--dims",
        "512,1376,4,2048",
        "--prompt-lengths",
        "7,300",
    ]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("compiles: 8 (seed: 58)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn bench_times_shapes_against_the_cpu() {
    let out = ane(&[
        "bench", "--shape", "64,48,32", "--shape", "100,70,9", "--reps", "1", "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json = text(&out.stdout);
    assert!(json.starts_with("{\"engine\": \"reference\""), "{json}");
    assert_eq!(json.matches("\"engine_gflops\"").count(), 2, "{json}");
    assert!(json.contains("\"m\": 100, \"k\": 70, \"n\": 9"), "{json}");
    // auto bakes the bench's (immutable) weights while the budget allows; streamed never does
    assert_eq!(json.matches("\"kernel\": \"baked\"").count(), 2, "{json}");
    for kind in ["streamed", "two-input"] {
        let out = ane(&[
            "bench",
            "--shape",
            "64,48,32",
            "--reps",
            "1",
            "--json",
            "--kernels",
            kind,
        ]);
        let json = text(&out.stdout);
        assert!(json.contains(&format!("\"kernel\": \"{kind}\"")), "{json}");
    }
    let bad = ane(&["bench", "--shape", "64,48,32", "--kernels", "fast"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("auto, baked, streamed or two-input"),
        "{}",
        text(&bad.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("bench.svg");
    let out = ane(&[
        "bench",
        "--shape",
        "64,48,32",
        "--reps",
        "1",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let drawing = std::fs::read_to_string(&svg).unwrap();
    assert!(
        drawing.starts_with("<svg") && drawing.contains("64x48x32"),
        "{}",
        &drawing[..200.min(drawing.len())]
    );
    let bad = ane(&["bench", "--shape", "1,2"]);
    assert_eq!(bad.status.code(), Some(1));
}

/// `--power` off a Mac: every row says why there are no figures, and the timings still come.
#[cfg(not(target_os = "macos"))]
#[test]
fn bench_power_says_it_is_not_available_here() {
    let out = ane(&[
        "bench", "--shape", "64,48,32", "--shape", "32,32,8", "--reps", "1", "--json", "--power",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json = text(&out.stdout);
    assert_eq!(
        json.matches("\"power\": {\"error\": \"power: not available on this OS\"}")
            .count(),
        2,
        "{json}"
    );
    assert_eq!(json.matches("\"engine_gflops\"").count(), 2, "{json}");
    let out = ane(&["bench", "--shape", "64,48,32", "--reps", "1", "--power"]);
    assert!(
        text(&out.stdout).contains("power 64x48x32: power: not available on this OS"),
        "{}",
        text(&out.stdout)
    );
}

/// A second process finds every kernel the first compiled: zero compiles on a warm cache.
#[test]
fn a_warm_kernel_cache_compiles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "plan",
        "--model",
        "llama-7b",
        "--prompt-lengths",
        "17,64,100,128,333,512,1000,2048",
        "--json",
    ];
    let cold = text(&ane_with_cache(dir.path(), &args).stdout);
    assert!(
        cold.contains("\"compiles\": 36, \"disk_hits\": 0"),
        "{cold}"
    );
    let warm = text(&ane_with_cache(dir.path(), &args).stdout);
    assert!(
        warm.contains("\"compiles\": 0, \"disk_hits\": 36"),
        "{warm}"
    );
    let list = text(&ane_with_cache(dir.path(), &["cache", "list"]).stdout);
    assert!(list.contains(": 36 kernels"), "{list}");
    let clear = text(&ane_with_cache(dir.path(), &["cache", "clear"]).stdout);
    assert!(clear.starts_with("removed 36 kernels"), "{clear}");
    let again = text(&ane_with_cache(dir.path(), &args).stdout);
    assert!(again.contains("\"compiles\": 36"), "{again}");
}

#[test]
fn mil_package_writes_the_bundled_example_as_an_mlpackage() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seed.mlpackage");
    let example = repo_root().join("examples/seed-matmul");
    let r = ane(&[
        "mil",
        "package",
        example.join("model.mil").to_str().unwrap(),
        "--weights",
        example.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(text(&r.stdout).contains("3 files"), "{}", text(&r.stdout));
    // the weight file is carried over byte for byte; the model decodes to our ML Program
    assert_eq!(
        std::fs::read(out.join("Data/com.apple.CoreML/weights/weight.bin")).unwrap(),
        std::fs::read(example.join("weights/weight.bin")).unwrap()
    );
    let program =
        ane_mil::parse(&std::fs::read_to_string(example.join("model.mil")).unwrap()).unwrap();
    let want = ane_mil::coreml::model_proto(&program, None).unwrap();
    let bytes = std::fs::read(out.join("Data/com.apple.CoreML/model.mlmodel")).unwrap();
    assert_eq!(prost::Message::encode_to_vec(&want), bytes);
    assert!(std::fs::read_to_string(out.join("Manifest.json"))
        .unwrap()
        .contains("rootModelIdentifier"));

    // without the weights folder: a clear error, no package
    let r = ane(&[
        "mil",
        "package",
        example.join("model.mil").to_str().unwrap(),
        "--out",
        dir.path().join("x.mlpackage").to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert!(text(&r.stderr).contains("--weights"), "{}", text(&r.stderr));
}

/// `ane mil check --target ane` prints every broken rule with its line and source and exits 1
/// on a refusal; the bundled seed program passes.
#[test]
fn mil_check_target_ane_names_the_rules_a_program_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.mil");
    std::fs::write(
        &bad,
        "program(1.3)\n{\n    func main<ios18>(tensor<fp16, [64, 32]> a, tensor<fp16, [1, 1024, 1, 32]> x) {\n\
         \x20       tensor<int32, [4]> b = const()[name = string(\"b\"), val = tensor<int32, [4]>([0, 0, 0, 0])];\n\
         \x20       tensor<int32, [4]> s = const()[name = string(\"s\"), val = tensor<int32, [4]>([1, 1024, 1, 1])];\n\
         \x20       tensor<fp16, [1, 1024, 1, 1]> y = slice_by_size(x = x, begin = b, size = s)[name = string(\"y\")];\n\
         \x20   } -> (y);\n}\n",
    )
    .unwrap();
    let out = ane(&["mil", "check", "--target", "ane", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    for rule in [
        "[single-input]",
        "[io-rank4]",
        "[wide-channels-narrow-spatial]",
    ] {
        assert!(err.contains(rule), "{rule}:\n{err}");
    }
    assert!(err.contains("bad.mil:3:"), "line and column:\n{err}");
    assert!(err.contains("source: jafreck/ironmill"), "{err}");
    assert!(err.contains("ane rules: 3 refused"), "{err}");
    // without --target ane it is only type-checked
    let out = ane(&["mil", "check", bad.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let seed = repo_root().join("examples/seed-matmul");
    let out = ane(&[
        "mil",
        "check",
        "--target",
        "ane",
        seed.join("model.mil").to_str().unwrap(),
        "--weights",
        seed.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("ane rules: 0 refused, 0 warnings"));
}

/// `ane plan --emit` writes every kernel of a 7B's and a 0.5B's plan as MIL text: every one
/// passes `ane mil check --target ane`, and its conv sums at most 2048 input channels (K cut
/// into host-summed tiles, prefill-bench's `DOWN_K_TILE`).
#[test]
fn every_emitted_plan_kernel_passes_the_rulebook() {
    for (model, count) in [
        (["--model", "llama-7b"], 36),
        // qwen2-0.5B-shaped: dim 896, ffn 4864 (its down projection in three K tiles)
        (["--dims", "896,4864,24,151936"], 36),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let emit = dir.path().join("kernels");
        let mut args = vec![
            "plan",
            "--no-cache",
            "--prompt-lengths",
            "17,64,100,128,333,512,1000,2048",
            "--emit",
            emit.to_str().unwrap(),
        ];
        args.extend_from_slice(&model);
        let out = ane(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mut kernels: Vec<PathBuf> = std::fs::read_dir(&emit)
            .unwrap()
            .map(|e| e.unwrap().path().join("model.mil"))
            .collect();
        kernels.sort();
        assert_eq!(kernels.len(), count, "{model:?}: {kernels:?}");
        for (k, sums) in kernels.iter().zip(assert_pass_the_rulebook(&kernels)) {
            assert!(
                sums.len() == 1 && sums[0] <= 2048,
                "{}: {sums:?}",
                k.display()
            );
        }
    }
}

/// `ane mil check --target ane` passes every program, refusing nothing; returns what each
/// program's products sum (its K per conv or matmul, as `ane mil check` prints them).
fn assert_pass_the_rulebook(programs: &[PathBuf]) -> Vec<Vec<usize>> {
    programs
        .iter()
        .map(|k| {
            let out = ane(&["mil", "check", "--target", "ane", k.to_str().unwrap()]);
            let err = text(&out.stderr);
            assert!(out.status.success(), "{}: {err}", k.display());
            assert!(
                err.contains("ane rules: 0 refused"),
                "{}: {err}",
                k.display()
            );
            text(&out.stdout)
                .lines()
                .find_map(|l| l.trim().strip_prefix("products sum (K): "))
                .unwrap_or_else(|| panic!("{}: no sums", k.display()))
                .split(", ")
                .map(|p| p.rsplit(' ').next().unwrap().parse().unwrap())
                .collect()
        })
        .collect()
}

/// `ane doctor` on Linux: every probe the reference engine can answer passes, the rest are
/// skipped with the reason, and the JSON lists them all; a kernel form made to fail makes it
/// fail, naming the form.
#[test]
fn doctor_reports_every_probe_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("doctor.json");
    let md = dir.path().join("doctor.md");
    let out = ane(&[
        "doctor",
        "--json",
        json.to_str().unwrap(),
        "--markdown",
        md.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("verdict: no ANE here"), "{shown}");
    // the JSON, read by Python's parser: name → (status, reason, figures)
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let read = std::process::Command::new(python)
        .arg("-c")
        .arg(
            "import json,sys; d=json.load(open(sys.argv[1])); \
             print(d['summary']['fail']); \
             [print(p['name'] + '|' + p['status'] + '|' + p['reason'] + '|' + p['figures'].get('nmse', '')) for p in d['probes']]",
        )
        .arg(&json)
        .output()
        .unwrap();
    assert!(read.status.success(), "{}", text(&read.stderr));
    let lines = text(&read.stdout);
    let mut it = lines.lines();
    assert_eq!(it.next(), Some("0"), "{lines}");
    let probes: Vec<Vec<&str>> = it.map(|l| l.split('|').collect()).collect();
    let find = |name: &str| {
        probes
            .iter()
            .find(|p| p[0] == name)
            .unwrap_or_else(|| panic!("no probe {name}: {lines}"))
    };
    for form in ["form baked", "form streamed", "form two-input"] {
        let p = find(form);
        assert_eq!(p[1], "pass", "{p:?}");
        let nmse: f64 = p[3].parse().unwrap();
        assert!(nmse < 1e-6, "{p:?}");
    }
    assert_eq!(find("engine reference")[1], "pass");
    assert_eq!(find("rulebook")[1], "pass");
    let power = find("power");
    assert_eq!(power[1], "skipped");
    assert!(power[2].contains("not available on this OS"), "{power:?}");
    #[cfg(not(target_os = "macos"))]
    assert!(find("engine apple")[2].contains("needs macOS"));
    assert!(std::fs::read_to_string(&md).unwrap().contains("verdict:"));

    let failing = ane_with_env(&["doctor"], &[("GGML_ANE_REFERENCE_FAULTS", "baked")]);
    assert_eq!(failing.status.code(), Some(1));
    let shown = text(&failing.stdout);
    assert!(shown.contains("form baked             fail"), "{shown}");
    assert!(shown.contains("1 probe(s) failed"), "{shown}");
    // the limit probes are not run off an ANE unless asked
    assert!(lines.contains("loaded kernels|skipped|"), "{lines}");
}

/// `--limits on` measures the limits on any engine by bisection: on the reference engine with
/// its rulebook, the smallest wide width is the rule's 32; the loaded-kernels probe stops
/// where the compile budget does and says so; a small baked-weight ceiling is reached.
#[test]
fn doctor_limits_find_the_edges_the_engine_has() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("doctor.json");
    let out = ane(&[
        "doctor",
        "--limits",
        "on",
        "--max-baked-rows",
        "256",
        "--max-loaded",
        "64",
        "--compile-budget",
        "40",
        "--cache-dir",
        "off",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let read = std::process::Command::new(python)
        .arg("-c")
        .arg(
            "import json,sys; d={p['name']: p for p in json.load(open(sys.argv[1]))['probes']}; \
             print(d['smallest wide width']['figures']['smallest_width']); \
             print(d['largest baked weight']['figures']['largest_mib']); \
             print(d['loaded kernels']['figures']['loaded']); \
             print(d['loaded kernels']['figures']['refused']); \
             print(d['daemon cache']['status'], sorted(d['daemon cache']['figures']))",
        )
        .arg(&json)
        .output()
        .unwrap();
    assert!(read.status.success(), "{}", text(&read.stderr));
    let got = text(&read.stdout);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines[0], "32", "{got}");
    assert_eq!(lines[1], "1.00", "256 rows of 2048 fp16: {got}");
    let loaded: usize = lines[2].parse().unwrap();
    assert!(loaded > 0 && loaded < 40, "{got}");
    assert!(lines[3].contains("compile budget"), "{got}");
    assert_eq!(
        lines[4], "pass ['first_compile_ms', 'second_compile_ms']",
        "{got}"
    );
}

/// `ane plan --fused` for a 7B prefill at eight prompt lengths: every Q/K/V and FFN block
/// streams its weights (too large to bake), the whole plan fits the apple engine's budget,
/// a layer is 9 dispatches instead of 18, a warm cache compiles none of the fused programs,
/// and every emitted fused program passes the rulebook.
#[test]
fn plan_fused_fits_a_7b_in_the_budget_and_a_warm_cache_compiles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let emit = dir.path().join("kernels");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "plan",
            "--fused",
            "--json",
            "--cache-dir",
            cache.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = ane(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let field = |json: &str, key: &str| -> u64 {
        json.split(&format!("\"{key}\": "))
            .nth(1)
            .unwrap_or_else(|| panic!("no {key}: {json}"))
            .split([',', '}'])
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let cold = run(&["--emit", emit.to_str().unwrap()]);
    let fused = cold.split("\"fused\": ").nth(1).unwrap();
    assert!(field(fused, "compiles") <= 100, "{fused}");
    assert_eq!(field(fused, "streamed_blocks"), 2 * 32 * 8, "{fused}");
    assert_eq!(field(fused, "streamed_fused_kernels"), 12, "{fused}");
    assert!(
        fused.contains("\"dispatches_per_layer\": [[17, 9]"),
        "{fused}"
    );
    assert_eq!(field(fused, "streamed_compiled"), 12, "{fused}");
    let warm = run(&[]);
    let fused = warm.split("\"fused\": ").nth(1).unwrap();
    assert_eq!(field(fused, "streamed_compiled"), 0, "{fused}");
    assert_eq!(field(fused, "streamed_from_disk"), 12, "{fused}");
    let programs: Vec<PathBuf> = std::fs::read_dir(&emit)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("fused_")
        })
        .map(|p| p.join("model.mil"))
        .collect();
    assert_eq!(programs.len(), 12);
    // the FFN's gate and up take the model's 4096 whole (within prefill-bench's 5120-wide
    // gate/up), its down a hidden tile within 2048; Q/K/V take 4096 each
    for (p, sums) in programs.iter().zip(assert_pass_the_rulebook(&programs)) {
        let ffn = p.to_string_lossy().contains("fused_ffn");
        let ok = match sums.as_slice() {
            [4096, 4096, down] if ffn => *down <= 2048,
            [4096, 4096, 4096] => !ffn,
            _ => false,
        };
        assert!(ok, "{}: {sums:?}", p.display());
    }
}

/// `ane bench --block ffn`: the fused FFN and the same work as single MUL_MATs on one engine,
/// in one run: one dispatch against three, the same result.
#[test]
fn bench_block_ffn_times_fused_against_single_matmuls() {
    for (kernels, form, fused_dispatches) in [("auto", "baked", 1), ("streamed", "streamed", 1)] {
        let out = ane(&[
            "bench",
            "--block",
            "ffn",
            "--dims",
            "256,688",
            "--tokens",
            "64",
            "--reps",
            "2",
            "--kernels",
            kernels,
            "--json",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let json = text(&out.stdout);
        assert!(json.contains(&format!("\"form\": \"{form}\"")), "{json}");
        let dispatches = |path: &str| -> u64 {
            json.split(&format!("\"{path}\": "))
                .nth(1)
                .and_then(|r| r.split("\"dispatches\": ").nth(1))
                .and_then(|r| r.split([',', '}']).next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{json}"))
        };
        assert_eq!(dispatches("fused"), fused_dispatches, "{json}");
        assert_eq!(dispatches("singles"), 3, "{json}");
        let nmse: f64 = json
            .split("\"nmse\": ")
            .nth(1)
            .and_then(|r| r.trim_end_matches(['}', '\n']).parse().ok())
            .unwrap_or_else(|| panic!("{json}"));
        assert!(nmse < 1e-4, "{json}");
    }
    let out = ane(&["bench", "--block", "ffn", "--dims", "256"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("CHANNELS,HIDDEN"),
        "{}",
        text(&out.stderr)
    );
}
