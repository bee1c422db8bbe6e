//! Beside Metal: a llama.cpp run with Metal's buffer types and device, and ours listed first
//! (`-ngl 99 -dev ANE,MTL0 -ts 0,1`), puts the prompt's MUL_MATs on the ANE and leaves decode
//! and every other op on the GPU, without copying a weight. No Mac here, so `MTL0` is a test-only
//! stand-in (`tests/c/metal_standin.c`) that shows the scheduler what ggml-metal shows it (its
//! three buffer types with `is_host = false`, async and events, its offload threshold) and
//! behaves like it where a neighbour could notice (results NaN until synchronised, its own
//! buffers only, private buffers without a host address) while ggml's CPU backend does its
//! arithmetic. The model is the tiny random llama of `llama_e2e`,
//! or any llama-architecture GGUF named by `ANE_E2E_MODEL`.
#![cfg(ggml_linked)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{nmse, python, tail};

/// Tokens in the prompt: past Metal's and our threshold of 32, so the prompt reaches us.
const PROMPT: usize = 100;

/// One run of the logits dumper: its log, and its logits.
fn run(exe: &Path, model: &Path, out: &Path, env: &[(&str, &str)]) -> (String, Vec<f32>) {
    let lib_dir = support::lib_dir();
    let output = Command::new(exe)
        .arg(model)
        .arg(PROMPT.to_string())
        .arg(out)
        .current_dir(&lib_dir)
        .env("LD_LIBRARY_PATH", &lib_dir)
        .env_remove("GGML_BACKEND_PATH")
        .env_remove("GGML_ANE_ENGINE")
        .env_remove("GGML_ANE_MIN_TOKENS")
        .env_remove("GGML_ANE_KERNELS")
        .envs(env.iter().copied())
        .output()
        .expect("run the logits dumper");
    support::logits_run(output, out)
}

/// The environment of a run with our device listed before the stand-in MTL0 (`-dev ANE,MTL0
/// -ts 0,1`, as a Mac user runs it), our library from `GGML_BACKEND_PATH`, kernels cached in
/// `cache`.
fn beside_metal<'a>(
    standin: &'a Path,
    cdylib: &'a Path,
    cache: &'a Path,
) -> Vec<(&'a str, &'a str)> {
    let s = |p: &'a Path| p.to_str().expect("a UTF-8 path");
    vec![
        ("LOGITS_EXTRA_BACKEND", s(standin)),
        ("LOGITS_DEVICES", "ANE,MTL0"),
        ("LOGITS_TENSOR_SPLIT", "0,1"),
        ("GGML_BACKEND_PATH", s(cdylib)),
        ("GGML_ANE_CACHE_DIR", s(cache)),
    ]
}

/// `env` and then `more`.
fn with<'a>(
    mut env: Vec<(&'a str, &'a str)>,
    more: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    env.extend_from_slice(more);
    env
}

/// The prompt graph's splits from llama.cpp's `sched_reserve: ... splits = P / D` line.
fn prompt_splits(log: &str) -> usize {
    log.lines()
        .find_map(|l| {
            let rest = l.split("splits = ").nth(1)?;
            rest.split(['/', ',']).next()?.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no graph splits line:\n{}", tail(log)))
}

/// The model: `ANE_E2E_MODEL`, or a tiny random F16 llama made here.
fn model(dir: &Path) -> Option<PathBuf> {
    if let Some(m) = std::env::var_os("ANE_E2E_MODEL") {
        return Some(PathBuf::from(m));
    }
    let model = dir.join("tiny-f16.gguf");
    let made = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/tiny_model.py"
        ))
        .arg(&model)
        .arg("f16")
        .output()
        .ok()?;
    if !made.status.success() {
        assert!(
            std::env::var_os("GGML_ANE_REQUIRE_HOSTS").is_none(),
            "python gguf missing: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        eprintln!("SKIP: python gguf missing (scripts/test.sh installs it)");
        return None;
    }
    Some(model)
}

/// The logits program and the stand-in Metal module, compiled against the pinned ggml under
/// names of `tag` (tests run in parallel: each compiles its own); with the model (None, with a
/// SKIP line, when the host has no libllama).
fn tools(dir: &Path, tag: &str) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let lib_dir = support::lib_dir();
    if !lib_dir.join("libllama.so").exists() && !lib_dir.join("libllama.dylib").exists() {
        assert!(
            std::env::var_os("GGML_ANE_REQUIRE_HOSTS").is_none(),
            "libllama missing in {}",
            lib_dir.display()
        );
        eprintln!("SKIP: libllama missing (scripts/test.sh builds it)");
        return None;
    }
    let model = model(dir)?;
    let exe = support::compile_logits(tag);
    let standin = support::compile_standin_metal(&format!("libstandin-metal-{tag}.so"));
    Some((exe, standin, model))
}

#[test]
fn prefill_matmuls_reach_the_ane_beside_a_metal_device() {
    let dir = support::scratch_dir("metal");
    let Some((exe, standin, model)) = tools(&dir, "metal") else {
        return;
    };
    let (_, cpu) = run(&exe, &model, &dir.join("cpu.f32"), &[]);
    let cache = dir.join("cache");
    let cdylib = support::cdylib();
    let beside = |out: &str, extra: &[(&str, &str)]| {
        let mut env = beside_metal(&standin, &cdylib, &cache);
        env.extend([("GGML_ANE_STATS", "2"), ("GGML_SCHED_DEBUG", "2")]);
        env.extend_from_slice(extra);
        run(&exe, &model, &dir.join(out), &env)
    };
    let (log, logits) = beside("metal.f32", &[]);
    // only the matmuls fused blocks hold: the attention output stays on MTL0
    let (blocks_log, blocks_logits) = beside("blocks.f32", &[("GGML_ANE_MATMULS", "blocks")]);
    // as llama-cli asks: logits of the prompt's last token only (the last layer then keeps one
    // row: llama.cpp's inp_out_ids), then the decode step
    let (last_log, last_logits) = beside("last.f32", &[("LOGITS_LAST_ONLY", "1")]);
    let _ = std::fs::remove_dir_all(&dir);
    let n_vocab = cpu.len() / (PROMPT + 1);
    assert_eq!(last_logits.len(), 2 * n_vocab, "{}", tail(&last_log));
    let last_err = nmse(&cpu[(PROMPT - 1) * n_vocab..], &last_logits);
    assert!(
        last_err <= 1e-5 || std::env::var_os("ANE_E2E_MODEL").is_some() && last_err <= 2e-3,
        "last-token logits: NMSE {last_err:e}"
    );
    assert!(last_log.contains("nodes on engine"), "{}", tail(&last_log));
    eprintln!("beside MTL0, last token's logits only: NMSE {last_err:.1e}");

    // mmap stays on (our device says mmap_support): the weights sit in Metal's mapped buffers,
    // not copied into plain MTL0 buffers
    assert!(log.contains("load_mode = mmap"), "{}", tail(&log));
    assert!(
        log.contains("MTL0_Mapped model buffer size"),
        "{}",
        tail(&log)
    );
    assert!(
        !log.contains("MTL0 model buffer size"),
        "a weight was copied\n{}",
        tail(&log)
    );
    // every MUL_MAT of the prompt ran on our engine, none on the CPU; decode (one token) was
    // declined, so it stayed on MTL0
    let layers = log
        .lines()
        .filter(|l| l.contains("assigned to device MTL0"))
        .count();
    assert!(layers > 0, "{}", tail(&log));
    // summed over our backend instances (llama.cpp creates one per listed device and again as
    // an ACCEL device; each prints its table)
    let total = |label: &str| -> u64 {
        log.lines()
            .filter_map(|l| l.trim().strip_prefix(label))
            .map(|v| v.trim().parse::<u64>().unwrap_or(0))
            .sum()
    };
    let on_engine = total("nodes on engine");
    assert_eq!(total("nodes on CPU"), 0, "{}", tail(&log));
    let matmuls_per_prompt = 7 * (layers as u64 - 1) + 1; // (q, k, v, o, gate, up, down) per layer, the head
    if std::env::var_os("ANE_E2E_MODEL").is_none() {
        assert_eq!(on_engine, matmuls_per_prompt, "{}", tail(&log));
    } else {
        assert!(on_engine > 0, "{}", tail(&log));
    }
    // the scheduler's own account: MUL_MATs on ANE (the prompt) and on MTL0 (decode)
    let placed = |backend: &str| {
        log.lines()
            .filter(|l| l.contains("(   MUL_MAT):") || l.contains("( MUL_MAT):"))
            .filter(|l| {
                l.split('[')
                    .nth(1)
                    .is_some_and(|b| b.trim_start().starts_with(backend))
            })
            .count()
    };
    assert!(placed("ANE") > 0 && placed("MTL0") > 0, "{}", tail(&log));
    let err = nmse(&cpu, &logits);
    // fused blocks beside Metal: llama.cpp pins each `norm` to the layer's device (MTL0) under
    // full offload, so each chain starts at its norm-weight MUL; a layer is three dispatches
    let (dispatches, fused) = (total("engine dispatches"), total("fused blocks"));
    let splits = prompt_splits(&log);
    if std::env::var_os("ANE_E2E_MODEL").is_none() {
        let layers = layers as u64 - 1;
        assert_eq!(fused, 2 * layers, "{}", tail(&log));
        assert_eq!(dispatches, 3 * layers + 1, "{}", tail(&log));
        // ten splits per layer when the device took MUL_MAT alone (43 for these 4 layers)
        assert!(splits <= 7 * layers as usize, "{splits} splits");
        // blocks only: Q/K/V and the FFN, two dispatches and four splits a layer (43 before
        // the walker: halved)
        let blocks_total = |label: &str| -> u64 {
            blocks_log
                .lines()
                .filter_map(|l| l.trim().strip_prefix(label))
                .map(|v| v.trim().parse::<u64>().unwrap_or(0))
                .sum()
        };
        assert_eq!(blocks_total("fused blocks"), 2 * layers);
        assert_eq!(blocks_total("engine dispatches"), 2 * layers + 1);
        let blocks_splits = prompt_splits(&blocks_log);
        assert!(
            blocks_splits <= 43 / 2,
            "{blocks_splits} splits with GGML_ANE_MATMULS=blocks"
        );
        let blocks_err = nmse(&cpu, &blocks_logits);
        assert!(blocks_err <= 1e-5, "NMSE {blocks_err:e}");
        eprintln!(
            "beside MTL0, GGML_ANE_MATMULS=blocks: {} dispatches, {blocks_splits} graph splits, NMSE {blocks_err:.1e}",
            blocks_total("engine dispatches")
        );
    }
    eprintln!("beside MTL0: {dispatches} dispatches, {fused} fused blocks, {splits} graph splits (prompt)");
    eprintln!(
        "beside MTL0: {on_engine} prompt matmuls on the engine; MUL_MATs placed ANE {} / MTL0 {}; NMSE vs the CPU {err:.1e}",
        placed("ANE"),
        placed("MTL0")
    );
    let max = if std::env::var_os("ANE_E2E_MODEL").is_some() {
        2e-3
    } else {
        1e-5
    };
    assert!(err <= max, "NMSE {err:e}");
}

/// A model whose attention Metal cannot run: head size 16 is not in ggml-metal's flash
/// attention list, and the stand-in refuses what Metal refuses. llama.cpp's automatic flash
/// attention then turns itself off beside MTL0, as beside real Metal (with the old stand-in,
/// which took every op, it stayed on: a graph no Mac builds); the prompt's matmuls still reach
/// the ANE and the logits still equal a CPU-only run.
#[test]
fn attention_metal_refuses_leaves_our_results_right() {
    let dir = support::scratch_dir("metal-head16");
    let Some((exe, standin, _)) = tools(&dir, "metal-head16") else {
        return;
    };
    let model = dir.join("tiny-head16.gguf");
    support::write_tiny_model(&model, "f16", &["--heads", "32", "--kv-heads", "16"]);
    let (_, cpu) = run(&exe, &model, &dir.join("cpu.f32"), &[]);
    let cdylib = support::cdylib();
    let cache = dir.join("cache");
    let (log, logits) = run(
        &exe,
        &model,
        &dir.join("metal.f32"),
        &with(
            beside_metal(&standin, &cdylib, &cache),
            &[("GGML_ANE_STATS", "1")],
        ),
    );
    let _ = std::fs::remove_dir_all(&dir);
    for l in log
        .lines()
        .filter(|l| l.contains("lash") || l.contains("nodes on engine"))
    {
        eprintln!("{l}");
    }
    assert!(
        log.contains("Flash Attention not supported, set to disabled"),
        "MTL0 took a flash attention real Metal refuses\n{}",
        tail(&log)
    );
    let on_engine: u64 = log
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nodes on engine"))
        .map(|v| v.trim().parse::<u64>().unwrap_or(0))
        .sum();
    assert!(on_engine > 0, "{}", tail(&log));
    let err = nmse(&cpu, &logits);
    eprintln!(
        "head size 16 beside MTL0: {on_engine} nodes on the engine, NMSE vs the CPU {err:.1e}"
    );
    assert!(err <= 1e-5, "NMSE {err:e}\n{}", tail(&log));
}

/// A mixture of experts beside Metal (issue #22): the prompt's expert matmuls (MUL_MAT_ID of
/// 100 tokens) come to the ANE, the router and the decode step stay on the stand-in Metal, and
/// the logits are the CPU's.
#[test]
fn a_mixture_of_experts_prefills_its_experts_on_the_ane_beside_metal() {
    let dir = support::scratch_dir("metal-moe");
    let Some((exe, standin, _)) = tools(&dir, "metal-moe") else {
        return;
    };
    let model = dir.join("tiny-moe.gguf");
    support::write_tiny_model(
        &model,
        "f16",
        &["--experts", "8", "--experts-used", "2", "--ffn", "512"],
    );
    let (_, cpu) = run(&exe, &model, &dir.join("cpu.f32"), &[]);
    let cdylib = support::cdylib();
    let cache = dir.join("cache");
    let (log, logits) = run(
        &exe,
        &model,
        &dir.join("metal.f32"),
        &with(
            beside_metal(&standin, &cdylib, &cache),
            &[("GGML_ANE_STATS", "2")],
        ),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let experts: Vec<&str> = log
        .lines()
        .filter(|l| l.trim_start().starts_with("ffn_moe_"))
        .collect();
    let err = nmse(&cpu, &logits);
    eprintln!("tiny MoE beside MTL0: NMSE vs the CPU {err:.1e}; {experts:?}");
    // up, gate, SWIGLU and down of 4 layers as fused expert FFNs, the prompt only (decode's
    // one token stays on MTL0): the ANE device takes the SWIGLU between them, its tokens
    // counted as the MUL_MAT_IDs' (ne[2])
    let prompt: Vec<&&str> = experts
        .iter()
        .filter(|l| {
            l.contains(&format!("x{PROMPT}x2"))
                && l.contains("engine (fused expert ffn")
                && l.contains("8 of 8 experts)")
        })
        .collect();
    let chains: u64 = prompt
        .iter()
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum();
    assert_eq!(chains, 4, "{}", tail(&log));
    assert!(
        experts.iter().all(|l| !l.contains("x1x2")),
        "a decode step came to the ANE: {experts:?}"
    );
    assert!(
        !experts.iter().any(|l| l.contains("ffn_moe_logits")),
        "{experts:?}"
    );
    assert!(err <= 1e-5, "NMSE {err:e}\n{}", tail(&log));
}

/// ANE and GPU at once (issue #14): llama.cpp's `-sm tensor` shards every layer across the
/// stand-in Metal and ANE-FULL (`-dev MTL0,ANE-FULL -ts 0.7,0.3 -fa on`, Metal first so its
/// queue runs while the ANE works); the logits equal a CPU-only run.
#[test]
fn metal_and_ane_full_split_every_layer_with_sm_tensor() {
    let dir = support::scratch_dir("sm-tensor");
    let Some((exe, standin, model)) = tools(&dir, "sm-tensor") else {
        return;
    };
    let (_, cpu) = run(&exe, &model, &dir.join("cpu.f32"), &[]);
    let cdylib = support::cdylib();
    let (log, logits) = run(
        &exe,
        &model,
        &dir.join("tensor.f32"),
        &[
            ("LOGITS_EXTRA_BACKEND", standin.to_str().unwrap()),
            ("LOGITS_DEVICES", "MTL0,ANE-FULL"),
            ("LOGITS_TENSOR_SPLIT", "0.7,0.3"),
            ("LOGITS_SPLIT_MODE", "tensor"),
            ("GGML_BACKEND_PATH", cdylib.to_str().unwrap()),
            ("GGML_ANE_CACHE_DIR", dir.join("cache").to_str().unwrap()),
            ("GGML_ANE_STATS", "1"),
            ("GGML_ANE_MIN_TOKENS", "1"),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    let err = nmse(&cpu, &logits);
    let total = |label: &str| -> u64 {
        log.lines()
            .filter_map(|l| l.trim().strip_prefix(label))
            .map(|v| v.trim().parse::<u64>().unwrap_or(0))
            .sum()
    };
    eprintln!(
        "-sm tensor MTL0,ANE-FULL 0.7/0.3: NMSE {err:.1e} vs the CPU, {} nodes on the engine, {} other nodes on ggml's CPU",
        total("nodes on engine"),
        total("other nodes (ggml CPU)")
    );
    assert!(total("nodes on engine") > 0, "{}", tail(&log));
    assert!(err <= 1e-5, "NMSE {err:e}");
}

/// Routing by measurement (#21): as an M4 (the chip table: the ANE wins) beside the stand-in
/// Metal, each prompt matmul shape is timed once on the engine and on MTL0 and goes to the
/// faster side. Slowing MTL0 (`STANDIN_METAL_US_PER_MFLOP`) sends every shape to the engine;
/// slowing the engine (the reference fault `slow`) leaves every one to MTL0; a second process
/// with the second run's verdicts on disk times nothing and follows them, though MTL0 is the
/// slow one now. The logits are the CPU's every time.
#[test]
fn measured_routing_sends_each_shape_to_the_faster_side_and_keeps_the_verdicts() {
    let dir = support::scratch_dir("metal-measured");
    let Some((exe, standin, model)) = tools(&dir, "metal-measured") else {
        return;
    };
    let (_, cpu) = run(&exe, &model, &dir.join("cpu.f32"), &[]);
    let cdylib = support::cdylib();
    let beside = |out: &str, cache: &str, extra: &[(&str, &str)]| {
        let cache = dir.join(cache);
        let mut env = beside_metal(&standin, &cdylib, &cache);
        env.extend([
            ("GGML_ANE_CHIP", "M4"),
            ("GGML_ANE_LOG", "info"),
            ("GGML_ANE_STATS", "1"),
        ]);
        env.extend_from_slice(extra);
        let (log, logits) = run(&exe, &model, &dir.join(out), &env);
        let measured: Vec<String> = log
            .lines()
            .filter(|l| l.starts_with("ggml-ane: measured "))
            .map(str::to_string)
            .collect();
        let err = nmse(&cpu, &logits);
        (log, measured, err)
    };
    let on_engine = |log: &str| support::stat(log, "nodes on engine");

    // (run, its cache, the knob, what every measurement says, whether the engine takes any)
    for (out, cache, knob, verdict, takes) in [
        (
            "slow-metal.f32",
            "cache-a",
            ("STANDIN_METAL_US_PER_MFLOP", "300"),
            "the engine takes it",
            true,
        ),
        (
            "slow-engine.f32",
            "cache-b",
            ("GGML_ANE_REFERENCE_FAULTS", "slow"),
            "left to MTL0",
            false,
        ),
    ] {
        let (log, measured, err) = beside(out, cache, &[knob]);
        eprintln!(
            "{}: {measured:#?}, {} nodes on the engine, NMSE {err:.1e}",
            knob.0,
            on_engine(&log)
        );
        assert!(!measured.is_empty(), "{}", tail(&log));
        assert!(
            measured.iter().all(|l| l.ends_with(verdict)),
            "{measured:#?}"
        );
        assert_eq!(on_engine(&log) > 0, takes, "{}", tail(&log));
        assert!(err <= 1e-5, "NMSE {err:e}");
    }

    // a second process: the verdicts from disk, no timing, though MTL0 is the slow one now
    let (log, measured, err) = beside(
        "again.f32",
        "cache-b",
        &[("STANDIN_METAL_US_PER_MFLOP", "300")],
    );
    let kept = log
        .lines()
        .find(|l| l.contains("verdicts kept from earlier runs"))
        .unwrap_or_else(|| panic!("no routing line\n{}", tail(&log)));
    eprintln!("second process: {kept}");
    assert!(measured.is_empty(), "{measured:#?}");
    assert!(!kept.contains("(0 verdicts"), "{kept}");
    assert_eq!(on_engine(&log), 0, "{}", tail(&log));
    assert!(err <= 1e-5, "NMSE {err:e}");

    // energy: joules need the OS's energy counters, which this machine has not; the table
    // decides (an M4's row takes the work) and says why, measuring nothing
    let (log, measured, err) = beside(
        "energy.f32",
        "cache-c",
        &[
            ("GGML_ANE_MODE", "energy"),
            ("GGML_ANE_REFERENCE_FAULTS", "slow"),
        ],
    );
    assert!(measured.is_empty(), "{measured:#?}");
    assert!(
        log.contains(
            "needs the energy counters (power: not available on this OS): the chip table decides"
        ),
        "{}",
        tail(&log)
    );
    assert!(on_engine(&log) > 0, "{}", tail(&log));
    assert!(err <= 1e-5, "NMSE {err:e}");
    let _ = std::fs::remove_dir_all(&dir);
}
