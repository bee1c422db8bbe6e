//! Where the pinned ggml build is (set by scripts/test.sh, see scripts/build-ggml.sh).
#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test crates, each using a part"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `GGML_LIB_DIR`: the folder with libggml-base, libggml, libggml-cpu and test-backend-ops.
pub fn lib_dir() -> PathBuf {
    PathBuf::from(std::env::var("GGML_LIB_DIR").expect("GGML_LIB_DIR is set when ggml_linked is"))
}

/// The backend-API-v3 test hosts (`GGML_V3_LIB_DIR`: ggml 0.26; `GGML_V3_NEWEST_LIB_DIR`:
/// 0.28) that are built, by variable name; a SKIP line for each that is not (a failure when
/// `GGML_ANE_REQUIRE_HOSTS` says they must be).
pub fn v3_hosts() -> Vec<(&'static str, PathBuf)> {
    let mut hosts = Vec::new();
    for var in ["GGML_V3_LIB_DIR", "GGML_V3_NEWEST_LIB_DIR"] {
        match std::env::var_os(var) {
            Some(dir) => hosts.push((var, PathBuf::from(dir))),
            None => {
                assert!(
                    std::env::var_os("GGML_ANE_REQUIRE_HOSTS").is_none(),
                    "{var} is not set"
                );
                eprintln!("SKIP: {var} not set (scripts/build-ggml-v3.sh builds it)");
            }
        }
    }
    hosts
}

/// The whisper.cpp test hosts that are built (`GGML_WHISPER_1_8_3_DIR`: ggml 0.9.5, from
/// whisper-rs-sys 0.15.0; `GGML_WHISPER_1_8_5_DIR`: ggml 0.13.1, from pywhispercpp 1.5.1 —
/// each a `bin/` folder with libwhisper, ggml and `whisper-run`), by whisper.cpp version; a
/// SKIP line for each that is not (a failure when `GGML_ANE_REQUIRE_HOSTS` says they must be).
pub fn whisper_hosts() -> Vec<(&'static str, PathBuf)> {
    let mut hosts = Vec::new();
    for (version, var) in [
        ("1.8.3", "GGML_WHISPER_1_8_3_DIR"),
        ("1.8.5", "GGML_WHISPER_1_8_5_DIR"),
    ] {
        match std::env::var_os(var) {
            Some(dir) => hosts.push((version, PathBuf::from(dir))),
            None => {
                assert!(
                    std::env::var_os("GGML_ANE_REQUIRE_HOSTS").is_none(),
                    "{var} is not set"
                );
                eprintln!("SKIP: {var} not set (scripts/build-whisper.sh {version} builds it)");
            }
        }
    }
    hosts
}

/// The pinned ggml source folder (`include/`, `src/`).
pub fn src_dir() -> PathBuf {
    std::env::var("GGML_SRC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| lib_dir().join("../../src/ggml"))
}

/// The cdylib cargo built next to this test binary (target/<profile>/libggml_ane.so).
pub fn cdylib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let name = if cfg!(target_os = "macos") {
        "libggml_ane.dylib"
    } else {
        "libggml_ane.so"
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built (cargo builds the cdylib with the tests)",
        p.display()
    );
    p
}

/// The Python the tests run (`PYTHON`, as scripts/test.sh sets it; else `python3`).
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A finished logits-dumper run (`tests/c/logits.c`): asserts it succeeded, and returns its
/// log (stdout then stderr) and the little-endian f32 logits it wrote to `out`.
pub fn logits_run(output: std::process::Output, out: &Path) -> (String, Vec<f32>) {
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "logits failed:\n{}", tail(&log));
    let bytes = std::fs::read(out).unwrap();
    let logits = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (log, logits)
}

/// The last 40 lines, for assertion messages.
pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A counter from the GGML_ANE_STATS table (`  nodes on engine   58`).
pub fn stat(text: &str, label: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(label)
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or_else(|| panic!("no `{label}` line in the stats:\n{}", tail(text)))
}

/// A fresh folder for this test process under the temp dir.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ggml-ane-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Compiles `tests/c/<source>` with the pinned ggml headers into `<scratch>/<name>`; `extra`
/// adds include folders, libraries and the like.
pub fn compile_c(source: &str, name: &str, extra: &[String]) -> PathBuf {
    let exe = scratch_dir(name).join(name);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(cc)
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/c")
                .join(source),
        )
        .arg(format!("-I{}", src_dir().join("include").display()))
        .args(extra)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run the C compiler");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// The pinned host's llama-server (None, with a SKIP line, when the host has none; a failure
/// when `GGML_ANE_REQUIRE_HOSTS` says it must be there).
pub fn llama_server() -> Option<PathBuf> {
    let lib_dir = lib_dir();
    let server = lib_dir.join("llama-server");
    if server.exists() {
        return Some(server);
    }
    assert!(
        std::env::var_os("GGML_ANE_REQUIRE_HOSTS").is_none(),
        "llama-server missing in {}",
        lib_dir.display()
    );
    eprintln!("SKIP: llama-server missing (scripts/build-ggml.sh builds it)");
    None
}

/// The stand-in Metal backend (`tests/c/metal_standin.c`) compiled against the pinned ggml as
/// the shared library `<scratch>/<name>` (tests run in parallel: each names its own).
pub fn compile_standin_metal(name: &str) -> PathBuf {
    let (lib_dir, src) = (lib_dir(), src_dir());
    compile_c(
        "metal_standin.c",
        name,
        &[
            "-shared".into(),
            "-fPIC".into(),
            format!("-I{}", src.join("src").display()),
            format!("-L{}", lib_dir.display()),
            format!("-Wl,-rpath,{}", lib_dir.display()),
            "-lggml".into(),
            "-lggml-base".into(),
        ],
    )
}

/// Makes the tiny random llama (`kind`: `f16` or `q8_0`) as `<dir>/tiny-<kind>.gguf`.
pub fn tiny_llama(dir: &Path, kind: &str) -> PathBuf {
    tiny_model(dir, "llama", kind)
}

/// Makes a tiny random model of architecture `arch` (`llama`, `command-r`: see
/// `tests/py/tiny_model.py`) as `<dir>/tiny-<kind>.gguf` (llama) or `tiny-<arch>-<kind>.gguf`.
pub fn tiny_model(dir: &Path, arch: &str, kind: &str) -> PathBuf {
    let model = if arch == "llama" {
        dir.join(format!("tiny-{kind}.gguf"))
    } else {
        dir.join(format!("tiny-{arch}-{kind}.gguf"))
    };
    write_tiny_model(&model, kind, &["--arch", arch]);
    model
}

/// Makes the tiny random F16 llama with llama.cpp's test vocabulary (`--tokenizer test`: ids
/// print as their hex), which llama-server can serve, as `<dir>/tiny-f16-test-vocab.gguf`.
pub fn tiny_llama_test_vocab(dir: &Path) -> PathBuf {
    let model = dir.join("tiny-f16-test-vocab.gguf");
    write_tiny_model(&model, "f16", &["--tokenizer", "test"]);
    model
}

/// Writes a tiny random model to `model` with `tests/py/tiny_model.py` (`kind` `f16` or
/// `q8_0`; `args` its options: `--arch`, `--heads`, ...).
pub fn write_tiny_model(model: &Path, kind: &str, args: &[&str]) {
    let made = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/tiny_model.py"
        ))
        .arg(model)
        .arg(kind)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// Mean squared error of `got` over the mean square of `want`.
pub fn nmse(want: &[f32], got: &[f32]) -> f64 {
    let (mut err, mut norm) = (0.0, 0.0);
    for (&w, &g) in want.iter().zip(got) {
        err += (f64::from(w) - f64::from(g)).powi(2);
        norm += f64::from(w).powi(2);
    }
    err / norm
}

/// `tests/c/logits.c` compiled against the pinned libllama as `logits-<tag>` (tests run in
/// parallel: each runs its own copy, never one another test is writing).
pub fn compile_logits(tag: &str) -> PathBuf {
    let lib_dir = lib_dir();
    compile_c(
        "logits.c",
        &format!("logits-{tag}"),
        &[
            format!("-I{}", src_dir().join("../include").display()),
            format!("-L{}", lib_dir.display()),
            format!("-Wl,-rpath,{}", lib_dir.display()),
            "-lllama".into(),
            "-lggml".into(),
            "-lggml-base".into(),
        ],
    )
}
