//! A real model end to end: a tiny llama-architecture GGUF (random weights, made here with the
//! `gguf` Python package) run by libllama from the pinned source, once on the CPU alone and once
//! with our library loaded through `GGML_BACKEND_PATH`. The logits must agree and the stats must
//! show the matmuls ran on our engine, with baked, streamed and two-input kernels giving the
//! same bits, and fused FFN and Q/K/V blocks taking a layer to three engine dispatches.
#![cfg(ggml_linked)]

mod support;

use support::{python, stat, tail};

use std::path::{Path, PathBuf};
use std::process::Command;

/// Tokens in the prompt: not a bucket size, so the padded tail of a kernel is exercised.
const PROMPT: usize = 100;

struct Run {
    logits: Vec<f32>,
    log: String,
}

#[test]
fn tiny_llama_f16_matches_the_cpu() {
    check_model("f16", 1e-5);
}

#[test]
fn tiny_llama_q8_0_matches_the_cpu() {
    // the CPU quantizes activations to q8_0 for this type; the engine keeps them in fp16
    check_model("q8_0", 2e-3);
}

/// A parallel-block model (Command-R: attention and the FFN read one normed input): the Q/K/V
/// block fuses in the attention split, and the FFN, in a later split, reads the normed input
/// the fused block computed inside its program — which must therefore also be written back.
#[test]
fn tiny_command_r_matches_the_cpu_with_fusion() {
    let Some(tools) = Tools::find("command-r") else {
        return;
    };
    let dir = support::scratch_dir("e2e-command-r");
    let model = support::tiny_model(&dir, "command-r", "f16");
    let cpu = tools.run(&model, &dir.join("cpu.f32"), None, &[]);
    let runs = [
        ("fused", vec![("GGML_ANE_STATS", "2")]),
        (
            "fused-streamed",
            vec![("GGML_ANE_STATS", "2"), ("GGML_ANE_KERNELS", "streamed")],
        ),
        ("unfused", vec![("GGML_ANE_FUSE", "0")]),
    ];
    let mut rows = Vec::new();
    for (what, env) in runs {
        let cache = dir.join(format!("cache-{}", what.replace(' ', "-")));
        let run = tools.run(&model, &dir.join(format!("{what}.f32")), Some(&cache), &env);
        rows.push((what, golden::figures(&run.log)));
        let (err, spread) = nmse(&cpu.logits, &run.logits);
        eprintln!(
            "command-r {what}: logits NMSE {err:.2e} (logit std {spread:.2}), {} fused blocks, {} nodes on engine",
            stat(&run.log, "fused blocks"),
            stat(&run.log, "nodes on engine")
        );
        assert!(spread > 0.5, "logits too flat to compare: std {spread}");
        assert!(err <= 1e-5, "{what}: NMSE {err:e}\n{}", tail(&run.log));
        assert_eq!(stat(&run.log, "nodes on CPU"), 0, "{}", tail(&run.log));
        if what != "unfused" {
            // every fused block (Q/K/V: the FFN reads the normed input in another split)
            // writes back its normed input for the FFN's split: the LayerNorm's scale, and the
            // NORM it reads where that is in the split too (the ANE device takes NORM)
            let blocks = stat(&run.log, "fused blocks");
            assert!(blocks > 0, "{}", tail(&run.log));
            let written = stat(&run.log, "also written back");
            assert!(
                written.is_multiple_of(blocks) && (1..=2).contains(&(written / blocks)),
                "{written} written back for {blocks} blocks"
            );
        }
    }
    golden::check(&host_version(&cpu.log), "command-r-f16", &rows);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A GPT-2 (LayerNorms with biases, one Q/K/V matrix, GELU FFNs with biases): whisper's block
/// shapes in llama.cpp's graph. On the ANE-FULL device (whole graphs) each layer's
/// LayerNorm → GELU FFN is one fused program, for the prompt and for the decode step; the
/// logits agree with the CPU's fused or not.
#[test]
fn tiny_gpt2_fuses_its_gelu_ffns_on_the_full_device() {
    let Some(tools) = Tools::find("gpt2") else {
        return;
    };
    let dir = support::scratch_dir("e2e-gpt2");
    let model = support::tiny_model(&dir, "gpt2", "f16");
    let cpu = tools.run(&model, &dir.join("cpu.f32"), None, &[]);
    let full = [("GGML_ANE_FULL", "1"), ("GGML_ANE_STATS", "2")];
    let fused = tools.run(&model, &dir.join("fused.f32"), Some(&dir.join("c1")), &full);
    let mut env = full.to_vec();
    env.push(("GGML_ANE_FUSE", "0"));
    let unfused = tools.run(
        &model,
        &dir.join("unfused.f32"),
        Some(&dir.join("c2")),
        &env,
    );
    for (what, run) in [("fused", &fused), ("unfused", &unfused)] {
        let (err, spread) = nmse(&cpu.logits, &run.logits);
        eprintln!(
            "gpt2 {what}: logits NMSE {err:.2e} (logit std {spread:.2}), {} fused blocks, {} dispatches, {} nodes on engine",
            stat(&run.log, "fused blocks"),
            stat(&run.log, "engine dispatches"),
            stat(&run.log, "nodes on engine")
        );
        assert!(run.log.contains("ANE-FULL"), "{}", tail(&run.log));
        assert!(spread > 0.5, "logits too flat to compare: std {spread}");
        assert!(err <= 1e-5, "{what}: NMSE {err:e}\n{}", tail(&run.log));
        assert_eq!(stat(&run.log, "nodes on CPU"), 0, "{}", tail(&run.log));
    }
    // 4 layers, prompt and decode step: 8 GELU FFNs. The prompt's all fuse (fc1 and fc2 in
    // one dispatch); a decode step's bucket is another baked kernel per layer, which `auto`
    // bakes only while the budget keeps room, and the GELU FFN has no streamed form: the rest
    // run node by node, counted
    let blocks = stat(&fused.log, "fused blocks");
    assert_eq!(
        blocks + stat(&fused.log, "not fused: unsupported"),
        8,
        "{}",
        tail(&fused.log)
    );
    assert_eq!(
        stat(&unfused.log, "engine dispatches") - stat(&fused.log, "engine dispatches"),
        blocks
    );
    let prompt_row = by_node_table(&fused.log)
        .into_iter()
        .find(|r| r[0] == "ffn_up+ffn_down" && r[1] == format!("1376x512x{PROMPT}"));
    assert_eq!(
        prompt_row.map(|r| r[r.len() - 1].clone()),
        Some("4".to_string()),
        "{}",
        tail(&fused.log)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A mixture of experts (Mixtral's form: 8 experts, 2 used per token): llama.cpp computes the
/// experts' matmuls as MUL_MAT_ID, which run on our engine expert by expert (the by-node rows
/// say how many experts' batches); the logits are the CPU's. Decode steps (one token) stay on
/// the CPU by default; here `GGML_ANE_MIN_TOKENS=1` brings them too, and an expert with too
/// few tokens for the engine goes to ggml's CPU backend.
#[test]
fn tiny_mixture_of_experts_runs_its_experts_on_the_engine() {
    let Some(tools) = Tools::find("moe") else {
        return;
    };
    let dir = support::scratch_dir("e2e-moe");
    let model = dir.join("tiny-moe-f16.gguf");
    support::write_tiny_model(
        &model,
        "f16",
        &["--experts", "8", "--experts-used", "2", "--ffn", "512"],
    );
    let cpu = tools.run(&model, &dir.join("cpu.f32"), None, &[]);
    let expert_rows = |log: &str| -> Vec<Vec<String>> {
        by_node_table(log)
            .into_iter()
            .filter(|r| r[0].contains("_exps") || r[0].starts_with("ffn_moe"))
            .collect()
    };
    // the prompt's rows (100 tokens, 2 experts each) and how many nodes or chains they count
    let prompt = |rows: &[Vec<String>]| -> (Vec<String>, u64) {
        let p: Vec<&Vec<String>> = rows
            .iter()
            .filter(|r| r[1].ends_with(&format!("x{PROMPT}x2")))
            .collect();
        let count = p
            .iter()
            .map(|r| r[r.len() - 1].parse::<u64>().unwrap_or(0))
            .sum();
        (p.iter().map(|r| r.join(" ")).collect(), count)
    };
    // node by node: each expert matmul a MUL_MAT_ID, every expert's group on the engine
    let unfused_env = [("GGML_ANE_STATS", "2"), ("GGML_ANE_FUSE", "0")];
    let unfused = tools.run(
        &model,
        &dir.join("unfused.f32"),
        Some(&dir.join("cache")),
        &unfused_env,
    );
    let (err, spread) = nmse(&cpu.logits, &unfused.logits);
    let rows = expert_rows(&unfused.log);
    eprintln!(
        "tiny MoE node by node: logits NMSE {err:.2e} (logit std {spread:.2}), {} engine dispatches; expert rows: {rows:?}",
        stat(&unfused.log, "engine dispatches")
    );
    assert!(spread > 0.5, "logits too flat to compare: std {spread}");
    assert!(err <= 1e-5, "NMSE {err:e}\n{}", tail(&unfused.log));
    let (prompt_rows, nodes) = prompt(&rows);
    assert!(
        prompt_rows.len() >= 3
            && prompt_rows
                .iter()
                .all(|r| r.contains("engine (8 of 8 experts)")),
        "{rows:?}\n{}",
        tail(&unfused.log)
    );
    // the prompt's three expert matmuls of each of 4 layers
    assert_eq!(nodes, 3 * 4, "{rows:?}");
    // fused: each layer's gate, up, SWIGLU and down one chain, one program per expert
    let fused = tools.run(
        &model,
        &dir.join("fused.f32"),
        Some(&dir.join("cache")),
        &[("GGML_ANE_STATS", "2")],
    );
    let (err, _) = nmse(&cpu.logits, &fused.logits);
    let rows = expert_rows(&fused.log);
    let dispatches = |log: &str| stat(log, "engine dispatches");
    eprintln!(
        "tiny MoE fused: logits NMSE {err:.2e}, {} engine dispatches (node by node {}), {} fused blocks; expert rows: {rows:?}",
        dispatches(&fused.log),
        dispatches(&unfused.log),
        stat(&fused.log, "fused blocks")
    );
    assert!(err <= 1e-5, "NMSE {err:e}\n{}", tail(&fused.log));
    let (prompt_rows, chains) = prompt(&rows);
    assert!(
        !prompt_rows.is_empty()
            && prompt_rows
                .iter()
                .all(|r| r.starts_with("ffn_moe_gate+ffn_moe_up+ffn_moe_down")
                    && r.contains("engine (fused expert ffn")
                    && r.contains("8 of 8 experts)")),
        "{rows:?}\n{}",
        tail(&fused.log)
    );
    assert_eq!(chains, 4, "{rows:?}");
    // 8 experts × 3 matmuls become 8 programs in each prompt layer
    assert!(
        dispatches(&fused.log) + 4 * 16 <= dispatches(&unfused.log),
        "{}\n{}",
        tail(&fused.log),
        tail(&unfused.log)
    );
    // 32 experts, 2 a token: 200 pairs of a 100-token prompt leave some experts' groups
    // thinner than a dispatch; the chain computes those on the CPU and is still whole
    let many = dir.join("tiny-moe32-f16.gguf");
    support::write_tiny_model(
        &many,
        "f16",
        &["--experts", "32", "--experts-used", "2", "--ffn", "512"],
    );
    let cpu = tools.run(&many, &dir.join("cpu32.f32"), None, &[]);
    let mixed = tools.run(
        &many,
        &dir.join("fused32.f32"),
        Some(&dir.join("cache32")),
        &[("GGML_ANE_STATS", "2"), ("GGML_ANE_MIN_TOKENS", "32")],
    );
    let (err, _) = nmse(&cpu.logits, &mixed.logits);
    let rows = expert_rows(&mixed.log);
    eprintln!("tiny MoE, 32 experts: logits NMSE {err:.2e}; expert rows: {rows:?}");
    // 32 router scores leave near-ties that fp16 rounding before the router can flip (node by
    // node this model gives 1.6e-5, fused 1.1e-4): the bound catches a wrong or missing
    // expert (an expert's rows left out: NMSE past 1e-2), not routing luck
    assert!(err <= 1e-3, "NMSE {err:e}\n{}", tail(&mixed.log));
    let (prompt_rows, chains) = prompt(&rows);
    let part = |r: &String| -> Option<(u32, u32)> {
        let (_, after) = r.rsplit_once(", ")?;
        let (n, rest) = after.split_once(" of ")?;
        Some((
            n.trim().parse().ok()?,
            rest.split_whitespace().next()?.parse().ok()?,
        ))
    };
    assert_eq!(chains, 4, "{rows:?}");
    assert!(
        prompt_rows
            .iter()
            .all(|r| r.contains("fused expert ffn")
                && part(r).is_some_and(|(on, of)| 0 < on && on < of)),
        "some experts on the engine and some not: {rows:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The chip decides (`GGML_ANE_MODE`, the chip table; `GGML_ANE_CHIP` stands in for a Mac):
/// under `auto` an M5 Max's GPU prefills faster, so nothing comes to us and one warning says
/// why and names `energy`; `energy` takes the work there, an M2 Pro takes it by default, `off`
/// takes none. The logits are the CPU's every time.
#[test]
fn the_chip_table_decides_whether_the_ane_takes_work() {
    let Some(tools) = Tools::find("routing") else {
        return;
    };
    let dir = support::scratch_dir("e2e-routing");
    let model = support::tiny_model(&dir, "llama", "f16");
    let cpu = tools.run(&model, &dir.join("cpu.f32"), None, &[]);
    for (what, env, takes) in [
        ("M5 Max, auto", vec![("GGML_ANE_CHIP", "M5 Max")], false),
        (
            "M5 Max, energy",
            vec![("GGML_ANE_CHIP", "m5-max"), ("GGML_ANE_MODE", "energy")],
            true,
        ),
        ("M2 Pro, auto", vec![("GGML_ANE_CHIP", "M2 Pro")], true),
        // the reference engine then sums products in Q15.16, as an M6's ANE is reported to
        ("M6, auto", vec![("GGML_ANE_CHIP", "M6")], true),
        ("off", vec![("GGML_ANE_MODE", "off")], false),
    ] {
        let cache = dir.join(format!("cache-{}", what.replace([' ', ','], "")));
        // a decision to take work is said at info level, one to stay out at warn
        let mut env = env;
        env.push(("GGML_ANE_LOG", "info"));
        let run = tools.run(&model, &dir.join("out.f32"), Some(&cache), &env);
        let on_engine = stat(&run.log, "nodes on engine");
        eprintln!("{what}: {on_engine} nodes on the engine");
        assert_eq!(on_engine > 0, takes, "{what}\n{}", tail(&run.log));
        let (err, _) = nmse(&cpu.logits, &run.logits);
        eprintln!("{what}: logits NMSE {err:.2e}");
        assert!(err <= 1e-5, "{what}: NMSE {err:e}");
        let said = run
            .log
            .lines()
            .find(|l| l.starts_with("ggml-ane: taking"))
            .unwrap_or_else(|| panic!("{what}: no routing line\n{}", tail(&run.log)));
        if what == "M5 Max, auto" {
            assert!(
                said.contains("taking no work: M5 Max")
                    && said.contains("Neural Accelerators")
                    && said.contains("GGML_ANE_MODE=energy"),
                "{said}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Any llama-architecture GGUF named by `ANE_E2E_MODEL` (a model a user already has): its
/// logits with our library equal the CPU-only run's, and its matmuls ran on our engine.
#[test]
fn a_given_model_matches_the_cpu() {
    let Some(model) = std::env::var_os("ANE_E2E_MODEL").map(PathBuf::from) else {
        eprintln!("SKIP: ANE_E2E_MODEL not set (a GGUF of your own to run end to end)");
        return;
    };
    let Some(tools) = Tools::find("given") else {
        return;
    };
    let dir = support::scratch_dir("e2e-given");
    let cpu = tools.run(&model, &dir.join("cpu.f32"), None, &[]);
    let ane = tools.run(&model, &dir.join("ane.f32"), Some(&dir.join("cache")), &[]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(stat(&ane.log, "nodes on engine") > 0, "{}", tail(&ane.log));
    let (err, _) = nmse(&cpu.logits, &ane.logits);
    eprintln!("{}: NMSE {err:.1e} vs the CPU", model.display());
    // quantized weights: the CPU quantizes activations too, the engine keeps them in fp16
    assert!(err <= 2e-3, "NMSE {err:e}");
}

mod golden {
    //! The exact counts of each run (nodes on the engine, dispatches, fused blocks, nodes
    //! fused, graph splits) per ggml host, in `tests/golden/e2e.txt`: they follow llama.cpp's
    //! graphs and change with an upgrade, so they live in one table per host instead of
    //! asserts. A host without rows there runs on the invariants alone (a SKIP line says so);
    //! `ANE_BLESS=1` writes its rows.
    use super::{graph_splits, stat};

    const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/e2e.txt");
    const LABELS: [&str; 4] = [
        "nodes on engine",
        "engine dispatches",
        "fused blocks",
        "nodes fused",
    ];

    /// A run's figures: the stats counters in `LABELS`, then the graph splits (`-` when
    /// llama.cpp did not say).
    pub(super) fn figures(log: &str) -> Vec<String> {
        let mut f: Vec<String> = LABELS.iter().map(|l| stat(log, l).to_string()).collect();
        f.push(graph_splits(log).map_or("-".into(), |n| n.to_string()));
        f
    }

    /// Compares `rows` (run name, figures) of `model` in ggml `host` with the table.
    pub(super) fn check(host: &str, model: &str, rows: &[(&str, Vec<String>)]) {
        // the tests of this file run in parallel: one reads and writes the table at a time
        static TABLE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        let text = std::fs::read_to_string(PATH).unwrap_or_default();
        let ours = |l: &&str| l.split_whitespace().take(2).eq([host, model]);
        let got: Vec<String> = rows
            .iter()
            .map(|(run, f)| format!("{host} {model} {run} {}", f.join(" ")))
            .collect();
        if std::env::var_os("ANE_BLESS").is_some() {
            let mut lines: Vec<String> = text
                .lines()
                .filter(|l| !ours(l))
                .map(String::from)
                .collect();
            lines.extend(got);
            std::fs::write(PATH, lines.join("\n") + "\n").unwrap();
            return;
        }
        let want: Vec<&str> = text.lines().filter(ours).collect();
        if want.is_empty() {
            eprintln!(
                "SKIP: no golden rows for {model} in ggml {host} (ANE_BLESS=1 writes them); invariants only:\n{}",
                got.join("\n")
            );
            return;
        }
        assert_eq!(want, got, "{PATH}: {model} in ggml {host}");
    }
}

/// Layers of the tiny model (tests/py/tiny_model.py).
const LAYERS: u64 = 4;

fn check_model(kind: &str, max_nmse: f64) {
    let Some(tools) = Tools::find(kind) else {
        return;
    };
    let dir = support::scratch_dir(&format!("e2e-{kind}"));
    let model = support::tiny_llama(&dir, kind);

    let cpu = tools.run(&model, &dir.join("cpu.f32"), None, &[]);
    // the default: fused FFN and Q/K/V blocks (no cap on loaded kernels: every weight baked)
    let fused = tools.run(
        &model,
        &dir.join("fused.f32"),
        Some(&dir.join("cache-fused")),
        &[("GGML_ANE_STATS", "2"), ("GGML_ANE_MAX_LOADED", "0")],
    );
    // the same without fusion: one kernel per MUL_MAT
    let unfused_env = [
        ("GGML_ANE_STATS", "2"),
        ("GGML_ANE_MAX_LOADED", "0"),
        ("GGML_ANE_FUSE", "0"),
    ];
    let ane = tools.run(
        &model,
        &dir.join("ane.f32"),
        Some(&dir.join("cache")),
        &unfused_env,
    );
    // the default cap of 48 loaded kernels: `auto` bakes only while 32 stay for streamed ones
    let capped = tools.run(
        &model,
        &dir.join("capped.f32"),
        Some(&dir.join("cache-capped")),
        &[("GGML_ANE_FUSE", "0")],
    );
    let streamed = tools.run(
        &model,
        &dir.join("streamed.f32"),
        Some(&dir.join("cache-streamed")),
        &[("GGML_ANE_KERNELS", "streamed"), ("GGML_ANE_FUSE", "0")],
    );
    // streamed kernels with fusion: the fused blocks' weights streamed in their input
    let streamed_fused = tools.run(
        &model,
        &dir.join("streamed-fused.f32"),
        Some(&dir.join("cache-streamed-fused")),
        &[("GGML_ANE_KERNELS", "streamed"), ("GGML_ANE_STATS", "2")],
    );
    // every engine result non-finite: each chain is declined (counted) and runs node by node,
    // its MUL_MATs then on the CPU too
    let overflowing = tools.run(
        &model,
        &dir.join("overflowing.f32"),
        Some(&dir.join("cache-overflowing")),
        &[("GGML_ANE_REFERENCE_FAULTS", "inf")],
    );
    // streamed kernels in the two-input form (the opt-in)
    let two_input = tools.run(
        &model,
        &dir.join("two-input.f32"),
        Some(&dir.join("cache-two-input")),
        &[
            ("GGML_ANE_KERNELS", "two-input"),
            ("GGML_ANE_STATS", "2"),
            ("GGML_ANE_FUSE", "0"),
        ],
    );
    // the ANE-FULL device (offered by default; with no GPU here llama.cpp gives it every
    // layer): the whole graph is one split, the walker computing the rest on ggml's CPU
    let full = tools.run(
        &model,
        &dir.join("full.f32"),
        Some(&dir.join("cache-full")),
        &[("GGML_ANE_FULL", "1"), ("GGML_ANE_STATS", "2")],
    );
    // decode (one token) left to the CPU: the prompt alone reaches us
    let prompt_only = tools.run(
        &model,
        &dir.join("prompt-only.f32"),
        Some(&dir.join("cache-prompt")),
        &[("GGML_ANE_MIN_TOKENS", "2"), ("GGML_ANE_LOG", "debug")],
    );
    let _ = std::fs::remove_dir_all(&dir);

    assert!(
        !cpu.log.contains("ggml-ane stats"),
        "the CPU-only run loaded our library"
    );
    // without fusion: every kind of node, at both token counts, on the engine with baked
    // weights, once per layer; 7 dispatches per layer
    let by_node = by_node_table(&ane.log);
    for op in [
        "Qcur", "Kcur", "Vcur", "attn_out", "ffn_gate", "ffn_up", "ffn_out",
    ] {
        for n in [PROMPT, 1] {
            let line = by_node
                .iter()
                .find(|l| l[0] == op && l[1].ends_with(&format!("x{n}")))
                .unwrap_or_else(|| panic!("no {op} line for {n} tokens:\n{}", tail(&ane.log)));
            assert_eq!(line[2], kind, "{line:?}");
            assert_eq!(line[3..5], ["engine", "(baked)"], "{line:?}");
            assert_eq!(line[5], "4", "{line:?}");
        }
    }
    let on_engine = stat(&ane.log, "nodes on engine");
    // one dispatch per MUL_MAT, none on the CPU
    assert_eq!(stat(&ane.log, "engine dispatches"), on_engine);
    assert_eq!(stat(&ane.log, "fused blocks"), 0);
    assert_eq!(stat(&ane.log, "nodes on CPU"), 0, "{}", tail(&ane.log));
    // llama.cpp keeps weights in a buffer marked as model weights: under `auto` they are
    // baked into kernels (the budget allows all 58 here); streamed kernels give the same bits
    let baked = stat(&ane.log, "with baked weights");
    assert_eq!(baked, on_engine, "{}", tail(&ane.log));
    assert_eq!(stat(&capped.log, "nodes on engine"), on_engine);
    let capped_baked = stat(&capped.log, "with baked weights");
    assert!(
        capped_baked > 0 && capped_baked <= 16,
        "{capped_baked} baked under the cap\n{}",
        tail(&capped.log)
    );
    assert_same_bits(
        &ane.logits,
        &capped.logits,
        "capped and uncapped runs disagree",
    );
    assert_eq!(stat(&streamed.log, "with baked weights"), 0);
    assert_eq!(stat(&streamed.log, "nodes on engine"), on_engine);
    assert_eq!(stat(&streamed.log, "fused blocks"), 0);
    assert_same_bits(
        &ane.logits,
        &streamed.logits,
        "baked and streamed kernels disagree",
    );
    let two_input_rows = by_node_table(&two_input.log);
    assert_eq!(
        two_input_rows.len(),
        by_node.len(),
        "{}",
        tail(&two_input.log)
    );
    assert!(
        two_input_rows
            .iter()
            .all(|l| l[3..5] == ["engine", "(two-input)"]),
        "{two_input_rows:?}"
    );
    // all three forms end in the same conv: the same bits
    assert_same_bits(
        &ane.logits,
        &two_input.logits,
        "baked and two-input kernels disagree",
    );

    // staging writes into surfaces the engine lent, so no evaluation copies (on the ANE:
    // IOSurfaces, apple-audit.md finding 20) in any form, fused or not
    for run in [&ane, &streamed, &two_input, &fused] {
        assert!(
            run.log.contains("bytes copied at eval"),
            "{}",
            tail(&run.log)
        );
        assert_eq!(
            stat(&run.log, "bytes copied at eval"),
            0,
            "{}",
            tail(&run.log)
        );
    }

    // with fusion: per layer one Q/K/V program, the attention output, one FFN program
    let by_node = by_node_table(&fused.log);
    for (op, place) in [
        ("Qcur+Vcur+Kcur", ["engine", "(fused", "qkv)"]),
        ("ffn_gate+ffn_up+ffn_out", ["engine", "(fused", "ffn)"]),
    ] {
        for n in [PROMPT, 1] {
            let line = by_node
                .iter()
                .find(|l| l[0] == op && l[1].ends_with(&format!("x{n}")))
                .unwrap_or_else(|| panic!("no {op} line for {n} tokens:\n{}", tail(&fused.log)));
            assert_eq!(line[2], kind, "{line:?}");
            assert_eq!(line[3..6], place, "{line:?}");
            assert_eq!(line[6], LAYERS.to_string(), "{line:?}");
        }
    }
    let per_graph = 3 * LAYERS + 1;
    assert!(
        stat(&fused.log, "engine dispatches") <= 2 * per_graph,
        "at most 3 dispatches per layer (and the output head), prompt and decode step:\n{}",
        tail(&fused.log)
    );
    // a fused chain took every member: Q/K/V norm, scale, 3 MUL_MATs; FFN norm, scale,
    // gate, up, SWIGLU, down, ADD
    let blocks = |op: &str| -> u64 {
        by_node
            .iter()
            .filter(|l| l[0] == op)
            .map(|l| l[6].parse::<u64>().unwrap())
            .sum()
    };
    let (qkv, ffn) = (blocks("Qcur+Vcur+Kcur"), blocks("ffn_gate+ffn_up+ffn_out"));
    assert_eq!(stat(&fused.log, "fused blocks"), qkv + ffn);
    assert_eq!(stat(&fused.log, "nodes fused"), 5 * qkv + 7 * ffn);
    // the same MUL_MATs on the engine as without fusion
    assert_eq!(stat(&fused.log, "nodes on engine"), on_engine);
    // ggml's use counts show every reader of a block's intermediates is in its split
    assert_eq!(stat(&fused.log, "also written back"), 0);
    assert_eq!(stat(&fused.log, "nodes on CPU"), 0, "{}", tail(&fused.log));
    // llama.cpp's graph splits: one CPU-only graph; fusion never adds any
    let splits = splits_of(&fused.log);
    assert_eq!(splits_of(&cpu.log), 1);
    assert!(splits <= splits_of(&ane.log));

    // streamed fused blocks: the same blocks and dispatches, no weight baked
    for label in ["fused blocks", "engine dispatches"] {
        assert_eq!(stat(&streamed_fused.log, label), stat(&fused.log, label));
    }
    assert_eq!(stat(&streamed_fused.log, "with baked weights"), 0);
    assert!(
        by_node_table(&streamed_fused.log)
            .iter()
            .any(|l| l[0] == "ffn_gate+ffn_up+ffn_out"
                && l[3..7] == ["engine", "(fused", "ffn,", "streamed)"]),
        "{}",
        tail(&streamed_fused.log)
    );
    // declined chains: counted by reason, computed node by node
    assert_eq!(stat(&overflowing.log, "fused blocks"), 0);
    assert_eq!(
        stat(&overflowing.log, "not fused: fp16 overflow"),
        stat(&fused.log, "fused blocks"),
        "{}",
        tail(&overflowing.log)
    );
    assert_eq!(stat(&overflowing.log, "nodes on engine"), 0);

    // ANE-FULL: the same blocks fused, every other node on ggml's CPU backend
    assert!(full.log.contains("ANE-FULL"), "{}", tail(&full.log));
    for label in ["fused blocks", "engine dispatches"] {
        assert_eq!(stat(&full.log, label), stat(&fused.log, label));
    }
    assert!(stat(&full.log, "other nodes (ggml CPU)") > 0);

    let prompt_dispatches = stat(&prompt_only.log, "engine dispatches");
    assert!(
        prompt_dispatches < stat(&fused.log, "engine dispatches"),
        "the prompt alone reached us"
    );
    // GGML_ANE_LOG=debug: one line per MUL_MAT or fused block, with its nodes' names
    let logged: Vec<&str> = prompt_only
        .log
        .lines()
        .filter(|l| l.starts_with("ggml-ane: MUL_MAT ") || l.starts_with("ggml-ane: FUSED "))
        .collect();
    assert_eq!(
        logged.len() as u64,
        prompt_dispatches,
        "{}",
        tail(&prompt_only.log)
    );
    assert!(
        logged.iter().any(|l| l.starts_with(&format!(
            "ggml-ane: FUSED ffn_gate+ffn_up+ffn_out 2752x512x{PROMPT} {kind} -> engine (fused ffn)"
        ))),
        "{logged:?}"
    );
    let row = cpu.logits.len() / (PROMPT + 1);
    assert_eq!(
        prompt_only.logits[..PROMPT * row],
        fused.logits[..PROMPT * row],
        "the prompt ran the same way"
    );

    assert_eq!(cpu.logits.len(), ane.logits.len());
    let n_vocab = cpu.logits.len() / (PROMPT + 1);
    for (what, run) in [
        ("unfused", &ane),
        ("fused", &fused),
        ("streamed fused", &streamed_fused),
        ("declined", &overflowing),
        ("ANE-FULL", &full),
    ] {
        let (nmse, spread) = nmse(&cpu.logits, &run.logits);
        let agree = argmax_agreement(&cpu.logits, &run.logits, n_vocab);
        eprintln!(
            "{kind} {what}: logits NMSE {nmse:.2e} (logit std {spread:.2}), top-1 agreement {agree}/{} rows, {} dispatches, {} graph splits",
            PROMPT + 1,
            stat(&run.log, "engine dispatches"),
            splits_of(&run.log),
        );
        assert!(spread > 0.5, "logits too flat to compare: std {spread}");
        assert!(nmse <= max_nmse, "{what}: NMSE {nmse:e} > {max_nmse:e}");
        assert!(
            agree * 10 >= (PROMPT + 1) * 9,
            "{what}: top-1 token differs in {} of {} rows",
            PROMPT + 1 - agree,
            PROMPT + 1
        );
    }
    // the exact counts of this host, against its golden table
    let rows = [
        ("unfused", &ane),
        ("fused", &fused),
        ("streamed-fused", &streamed_fused),
        ("declined", &overflowing),
        ("ane-full", &full),
        ("prompt-only", &prompt_only),
    ]
    .map(|(what, run)| (what, golden::figures(&run.log)));
    golden::check(&host_version(&cpu.log), &format!("llama-{kind}"), &rows);
}

/// The host's ggml version, as `logits` prints it (`ggml 0.25.3`), as major.minor.
fn host_version(log: &str) -> String {
    let v = log
        .lines()
        .find_map(|l| l.strip_prefix("ggml "))
        .unwrap_or_else(|| panic!("no ggml version line:\n{}", tail(log)));
    v.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// llama.cpp's `sched_reserve: graph: nodes = N, splits = S` figure.
fn graph_splits(log: &str) -> Option<usize> {
    log.lines().find_map(|l| {
        let rest = l.split("splits = ").nth(1)?;
        rest.split(',').next()?.trim().parse().ok()
    })
}

/// [`graph_splits`], which the run must have printed.
fn splits_of(log: &str) -> usize {
    graph_splits(log).unwrap_or_else(|| panic!("no graph splits line:\n{}", tail(log)))
}

/// The compiled logits dumper and where libllama lives.
struct Tools {
    lib_dir: PathBuf,
    exe: PathBuf,
}

impl Tools {
    /// None (with a SKIP line) when the host build has no libllama, unless hosts are required.
    /// (`tag` names this test's own copy: tests run in parallel, and one must not run the
    /// program while another writes it.)
    fn find(tag: &str) -> Option<Tools> {
        let lib_dir = support::lib_dir();
        let llama = lib_dir.join(if cfg!(target_os = "macos") {
            "libllama.dylib"
        } else {
            "libllama.so"
        });
        let has_gguf = Command::new(python())
            .args(["-c", "import gguf"])
            .status()
            .is_ok_and(|s| s.success());
        if !llama.exists() || !has_gguf {
            assert!(
                std::env::var_os("GGML_ANE_REQUIRE_HOSTS").is_none(),
                "libllama ({}) or python gguf missing",
                llama.display()
            );
            eprintln!("SKIP: libllama or python gguf missing (scripts/test.sh provides both)");
            return None;
        }
        let exe = support::compile_logits(tag);
        Some(Tools { lib_dir, exe })
    }

    /// One run; `cache` set means with our library loaded (and that kernel cache).
    fn run(&self, model: &Path, out: &Path, cache: Option<&Path>, env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(&self.exe);
        cmd.arg(model)
            .arg(PROMPT.to_string())
            .arg(out)
            // ggml_backend_load_all looks for the CPU backend next to the program and here
            .current_dir(&self.lib_dir)
            .env("LD_LIBRARY_PATH", &self.lib_dir)
            .env_remove("GGML_BACKEND_PATH")
            .env_remove("GGML_ANE_ENGINE")
            .env_remove("GGML_ANE_REFERENCE_FAULTS")
            .env_remove("GGML_ANE_COMPILE_BUDGET")
            .env_remove("GGML_ANE_KERNELS");
        if let Some(cache) = cache {
            cmd.env("GGML_BACKEND_PATH", support::cdylib())
                .env("GGML_ANE_STATS", "1")
                // decode steps too, unless a run says otherwise (the default keeps them off)
                .env("GGML_ANE_MIN_TOKENS", "1")
                // the ANE (ACCEL) device beside the CPU, unless a run says otherwise: with no
                // GPU here llama.cpp would give every layer to the ANE-FULL (IGPU) device
                .env("GGML_ANE_FULL", "0")
                .env("GGML_ANE_CACHE_DIR", cache);
        }
        cmd.envs(env.iter().copied());
        let res = cmd.output().expect("run the logits program");
        let (log, logits) = support::logits_run(res, out);
        Run { logits, log }
    }
}

/// Two runs' logits are the same bits.
fn assert_same_bits(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    assert!(
        a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "{what}"
    );
}

/// The rows of the `by node:` table (`GGML_ANE_STATS=2`), split on whitespace.
fn by_node_table(log: &str) -> Vec<Vec<String>> {
    log.lines()
        .skip_while(|l| l.trim() != "by node:")
        .skip(2)
        .take_while(|l| l.starts_with("    "))
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

/// Normalised mean squared error of `got` against `want`, and the standard deviation of `want`.
fn nmse(want: &[f32], got: &[f32]) -> (f64, f64) {
    let n = want.len() as f64;
    let mean = want.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = want.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let err = want
        .iter()
        .zip(got)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum::<f64>()
        / n;
    (err / var, var.sqrt())
}

fn argmax_agreement(want: &[f32], got: &[f32], n_vocab: usize) -> usize {
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
    };
    want.chunks(n_vocab)
        .zip(got.chunks(n_vocab))
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count()
}
