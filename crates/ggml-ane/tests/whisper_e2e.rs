//! whisper.cpp as a second real client (issue #20): the whisper.cpp releases the registries
//! ship — 1.8.3 from whisper-rs-sys 0.15.0 (ggml 0.9.5, the older `ggml_backend` layout, no
//! COMPUTE flag) and 1.8.5 from pywhispercpp 1.5.1 (ggml 0.13.1) — load the library as
//! whisper-cli loads backends, with no override, and a tiny random whisper model
//! (`tests/py/tiny_whisper.py`: 1500 audio positions) encodes a fixed synthetic audio and decodes
//! greedily. The encoder's MUL_MATs run on the engine; the logits stay within ggml's MUL_MAT
//! tolerance of a CPU-only run and the tokens are the same, with `use_gpu` off and on (no GPU
//! here: whisper then keeps the ACCEL devices it always takes), and with the decoder's matmuls
//! on the engine too (`GGML_ANE_MIN_TOKENS=1`). A version the table does not know is refused in
//! the same host, or tried with `GGML_ANE_ANY_GGML=1` in the layout its exports show — never a
//! crash.
#![cfg(ggml_linked)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{nmse, python, stat, tail};

/// test-backend-ops' bound for MUL_MAT, the one the issue sets for whole-model logits.
const MAX_NMSE: f64 = 5e-4;

/// Decoder steps per run.
const STEPS: &str = "6";

/// One harness run: its log (stdout then stderr), the tokens it chose, its logits.
fn run(bin: &Path, model: &Path, out: &Path, env: &[(&str, &str)]) -> (String, String, Vec<f32>) {
    let output = Command::new(bin.join("whisper-run"))
        .arg(model)
        .arg(out)
        .arg(STEPS)
        .current_dir(bin)
        .env("LD_LIBRARY_PATH", bin)
        .env_remove("GGML_BACKEND_PATH")
        .env_remove("GGML_ANE_ANY_GGML")
        .env_remove("GGML_ANE_MIN_TOKENS")
        .env_remove("LD_PRELOAD")
        .envs(env.iter().copied())
        .output()
        .expect("run whisper-run");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "whisper-run failed:\n{}",
        tail(&log)
    );
    let tokens = log
        .lines()
        .find_map(|l| l.strip_prefix("tokens:"))
        .unwrap_or_else(|| panic!("no tokens line:\n{}", tail(&log)))
        .trim()
        .to_string();
    let bytes = std::fs::read(out).unwrap();
    let logits = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (log, tokens, logits)
}

/// The tiny model, made once per test.
fn model(dir: &Path) -> PathBuf {
    let model = dir.join("tiny-whisper.bin");
    let made = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/tiny_whisper.py"
        ))
        .arg(&model)
        .output()
        .expect("run tiny_whisper.py");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    model
}

#[test]
fn whisper_releases_run_their_encoder_on_the_engine() {
    let hosts = support::whisper_hosts();
    if hosts.is_empty() {
        return;
    }
    let dir = support::scratch_dir("whisper");
    let model = model(&dir);
    let cdylib = support::cdylib();
    let lib = cdylib.to_str().unwrap();
    for (version, bin) in hosts {
        let (_, cpu_tokens, cpu) = run(&bin, &model, &dir.join("cpu.f32"), &[]);
        for (label, extra) in [
            ("use_gpu off", vec![]),
            ("use_gpu on", vec![("WHISPER_USE_GPU", "1")]),
            ("decoder too", vec![("GGML_ANE_MIN_TOKENS", "1")]),
        ] {
            let mut env = vec![("GGML_BACKEND_PATH", lib), ("GGML_ANE_STATS", "2")];
            env.extend(extra);
            let (log, tokens, logits) = run(&bin, &model, &dir.join("ane.f32"), &env);
            assert!(
                !log.contains("staying out"),
                "{version}: refused\n{}",
                tail(&log)
            );
            let on_engine = stat(&log, "nodes on engine");
            // the encoder: 2 layers of q, k, v, out, fc1, fc2 and attention's two products, and
            // the conv stem's two
            assert!(
                on_engine >= 16,
                "{version} {label}: {on_engine} nodes\n{}",
                tail(&log)
            );
            // nothing handed to us falls back, but for products too small to trust to one
            // fp16 dot product (single decoder tokens' attention: "too few outputs")
            let on_cpu = stat(&log, "nodes on CPU");
            if on_cpu > 0 {
                assert_eq!(on_cpu, stat(&log, "too few outputs"), "{version} {label}");
            }
            assert!(
                label == "decoder too" || on_cpu == 0,
                "{version} {label}: {on_cpu}"
            );
            let err = nmse(&cpu, &logits);
            let (dispatches, fused) = (stat(&log, "engine dispatches"), stat(&log, "fused blocks"));
            eprintln!(
                "whisper.cpp {version}, {label}: {on_engine} nodes on the engine, {dispatches} dispatches, {fused} fused blocks, logits NMSE {err:.1e}, tokens {tokens}"
            );
            if label == "use_gpu on" {
                // whisper takes ANE-FULL as its GPU here (no GPU): whole graphs, so each encoder
                // layer's LayerNorm -> Q, K, V is one program and its LayerNorm -> GELU FFN
                // another (2 layers: 10 -> 7 dispatches a layer); beside the CPU (use_gpu off)
                // whisper's graph order puts Q, K and V in separate splits
                assert_eq!(fused, 4, "{version}\n{}", tail(&log));
                assert_eq!(
                    stat(&log, "nodes fused"),
                    2 * (6 + 9),
                    "{version}\n{}",
                    tail(&log)
                );
            }
            assert!(err <= MAX_NMSE, "{version} {label}: NMSE {err:e}");
            assert_eq!(tokens, cpu_tokens, "{version} {label}");
            if label == "decoder too" {
                // the decoder's projections of its 4-token prompt and single tokens join them
                assert!(
                    on_engine > 22,
                    "{version}: {on_engine} nodes\n{}",
                    tail(&log)
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A version outside the table, faked in the 0.9.5 host (whose `ggml_backend` differs from the
/// pinned one): refused with its version named, or — with `GGML_ANE_ANY_GGML=1` — run in the
/// layout the host's exports show. Before #20 the override handed this host a vtable of the
/// pinned layout and whisper.cpp aborted (`GGML_ASSERT(device)`).
#[cfg(target_os = "linux")]
#[test]
fn an_unknown_version_in_an_older_layout_is_refused_or_spoken_right() {
    let Some((_, bin)) = support::whisper_hosts()
        .into_iter()
        .find(|(v, _)| *v == "1.8.3")
    else {
        return;
    };
    let dir = support::scratch_dir("whisper-unknown");
    let model = model(&dir);
    let fake = support::compile_c(
        "fake_version.c",
        "libfake-0.11.0.so",
        &[
            "-shared".into(),
            "-fPIC".into(),
            "-DFAKE_VERSION=\"0.11.0\"".into(),
        ],
    );
    let (_, cpu_tokens, cpu) = run(&bin, &model, &dir.join("cpu.f32"), &[]);
    let cdylib = support::cdylib();
    let base = [
        ("GGML_BACKEND_PATH", cdylib.to_str().unwrap()),
        ("LD_PRELOAD", fake.to_str().unwrap()),
        ("GGML_ANE_STATS", "1"),
    ];
    let (log, tokens, logits) = run(&bin, &model, &dir.join("refused.f32"), &base);
    assert!(
        log.contains("ggml-ane: ggml 0.11.0 is not one of the versions this build is tested with"),
        "{}",
        tail(&log)
    );
    assert!(log.contains("no ANE device"), "{}", tail(&log));
    assert_eq!(
        (tokens.as_str(), nmse(&cpu, &logits)),
        (cpu_tokens.as_str(), 0.0)
    );

    let mut env = base.to_vec();
    env.push(("GGML_ANE_ANY_GGML", "1"));
    let (log, tokens, logits) = run(&bin, &model, &dir.join("tried.f32"), &env);
    assert!(log.contains("trying anyway"), "{}", tail(&log));
    assert!(stat(&log, "nodes on engine") > 0, "{}", tail(&log));
    let err = nmse(&cpu, &logits);
    assert!(err <= MAX_NMSE, "NMSE {err:e}");
    assert_eq!(tokens, cpu_tokens);
    eprintln!("ggml 0.9.5 posing as 0.11.0 with GGML_ANE_ANY_GGML: NMSE {err:.1e}");
    let _ = std::fs::remove_dir_all(&dir);
}
