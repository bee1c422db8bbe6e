//! `ane plan --chip`: a prediction of a model's prefill on one Apple chip — time and energy per
//! token on the ANE path (every streamed kernel call `ane plan` counts) and on the GPU, calls
//! per layer, and what the routing policy does there — from the chip table
//! (`ane_runtime::chips`) and a few constants, each with its source. Nothing here was measured
//! by this project: `ane doctor` on a Mac is where the prediction meets a measurement.
//!
//! The model, per call of a `bm × bk` weight tile on a bucket of `b` tokens:
//! `max(2·bm·bk·b / TF(bk), bytes / bandwidth) + call cost`, where `TF(k)` is the chip's
//! single-GEMM roofline (measured at K = 4096) scaled by the K law, and `bytes` the fp16 input
//! (weights streamed in with the activations) and output. The GPU: the prompt's flops at the
//! chip's GPU throughput, where a source gives one. Energy: flops over TFLOPS per watt, where a
//! source gives it, plus the CPU's energy per ANE call.

use ane_runtime::chips::{self, Chip, Mode};
use ane_runtime::matmul::{min_bucket, streamed_tile_sizes, token_chunks};

use super::matmul_kernels::ModelDims;

/// The K the single-GEMM rooflines were measured at (ANEForge ROOFLINES: GEMM-4096).
const ROOFLINE_K: f64 = 4096.0;

/// Throughput by the summed dimension K with K·N fixed, fp16 TFLOPS (trisanths table 3a): it
/// peaks at K = 2048 and falls both ways, so cutting K below 2048 gains nothing.
const K_LAW: [(f64, f64); 5] = [
    (1024.0, 5.09),
    (2048.0, 7.64),
    (4096.0, 5.72),
    (8192.0, 3.26),
    (16384.0, 1.73),
];
const K_LAW_SOURCE: &str = "trisanths/ane-llm-prefill results/reduction_law.md @45f9692 table 3a \
                            (M2 Pro): 5.09, 7.64, 5.72, 3.26, 1.73 TFLOPS at K = 1024 … 16384";

/// What the K law makes of a roofline measured at [`ROOFLINE_K`] for a tile summing `k`.
fn k_factor(k: usize) -> f64 {
    k_law_tflops(k as f64) / k_law_tflops(ROOFLINE_K)
}

/// [`K_LAW`] at `k`: log-log interpolation between the measured points, held at the ends.
fn k_law_tflops(k: f64) -> f64 {
    let (first, last) = (K_LAW[0], K_LAW[K_LAW.len() - 1]);
    let k = k.clamp(first.0, last.0);
    K_LAW.windows(2).find(|w| k <= w[1].0).map_or(last.1, |w| {
        let t = (k.ln() - w[0].0.ln()) / (w[1].0.ln() - w[0].0.ln());
        (w[0].1.ln() + t * (w[1].1.ln() - w[0].1.ln())).exp()
    })
}

/// Host time per synchronous ANE call, seconds, and its source.
fn call_seconds(chip: &Chip) -> (f64, &'static str) {
    match chip.name {
        "M6" => (
            0.26e-3,
            "751K/Apple-Neural-Engine-Microarchitecture-Study-M6 final_report/en.md @0b52dda: \
             0.16-0.36 ms",
        ),
        _ => (
            0.15e-3,
            "trisanths results/roofline_aneforge.md L102-115 @45f9692 (M2 Pro): 105-130 us, \
             budget 150 us",
        ),
    }
}

/// CPU energy per synchronous ANE call, joules (the M6 study's ~1.6 mJ; no other source).
const CALL_JOULES: f64 = 1.6e-3;

/// The ANE's weight-read bandwidth, bytes per second, and its source.
fn bandwidth(chip: &Chip) -> (f64, &'static str) {
    match chip.name {
        "M6" => (
            150e9,
            "~150 GB/s: 751K M6 study final_report/en.md @0b52dda",
        ),
        "M4" => (67e9, "~67 GB/s: 751K M6 study final_report/en.md @0b52dda"),
        _ => (
            67e9,
            "67 GB/s assumed: the M4's (751K M6 study @0b52dda); no source for this chip",
        ),
    }
}

/// The GPU's fp16 matmul throughput on prefill-like work, TFLOPS, and its source.
fn gpu_tflops(chip: &Chip) -> Option<(f64, &'static str)> {
    match chip.name {
        "M2 Pro" => chip.gpu_tflops.map(|t| {
            (
                f64::from(t),
                "trisanths README.md @45f9692: 8 chained 4096² linears, GPU 4.94 TFLOPS",
            )
        }),
        // 3,177 tok/s at 1 K tokens × 2 × 4.0 G parameters (Qwen3-4B, fp16)
        "M5 Pro" => Some((
            25.4,
            "derived: cadamcat/llms-on-apple-neural-engine @0225236, Qwen3-4B GPU prefill 3,177 \
             tok/s at 1K x 2 x 4.0 G parameters",
        )),
        _ => None,
    }
}

/// TFLOPS per watt of the ANE and of the GPU, where a source gives them.
fn tflops_per_watt(chip: &Chip) -> (Option<f64>, Option<f64>, &'static str) {
    match chip.name {
        "M2 Pro" => (
            Some(12.16 / 8.70),
            Some(4.94 / 21.76),
            "trisanths results/power.md @45f9692: ANE 12.16 TFLOPS at 8.70 W, GPU 4.94 at 21.76 W",
        ),
        "M6" => (
            Some(2.65),
            None,
            "751K M6 study @0b52dda §14: 2.5-2.8 TFLOPS/W at the top clock",
        ),
        _ => (None, None, "no source for this chip"),
    }
}

/// One prompt length's prediction.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LengthCost {
    pub(crate) tokens: usize,
    /// Engine calls per layer (node by node; routed experts spread evenly).
    pub(crate) calls_per_layer: usize,
    /// Seconds per prompt token on the ANE path (`None`: no roofline for this chip).
    pub(crate) ane_s: Option<f64>,
    /// Seconds per prompt token on the GPU (`None`: no GPU figure).
    pub(crate) gpu_s: Option<f64>,
    /// Joules per prompt token, ANE path (ANE and the CPU's call cost) and GPU.
    pub(crate) ane_j: Option<f64>,
    pub(crate) gpu_j: Option<f64>,
}

/// The prediction for a chip: per length, and the routing decision.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ChipPlan {
    pub(crate) chip: &'static Chip,
    pub(crate) mode: Mode,
    pub(crate) take: bool,
    pub(crate) reason: String,
    pub(crate) lengths: Vec<LengthCost>,
    /// Where the prediction and the table's speed verdict disagree, why, in words.
    pub(crate) disagreement: Option<String>,
    /// Each constant the prediction used, with its source.
    pub(crate) sources: Vec<(&'static str, String)>,
}

/// Predicts `model`'s prefill at each length on `chip`, routed by `mode`.
pub(crate) fn plan_chip(
    model: &ModelDims,
    lengths: &[usize],
    chip: &'static Chip,
    mode: Mode,
    max_dim: usize,
) -> ChipPlan {
    let roofline = chip
        .ane_single_tflops
        .map(|(lo, hi)| f64::from(lo + hi) / 2.0 * 1e12);
    let (call_s, call_src) = call_seconds(chip);
    let (bw, bw_src) = bandwidth(chip);
    let gpu = gpu_tflops(chip);
    let (ane_tfw, gpu_tfw, power_src) = tflops_per_watt(chip);
    let layer = model.layer_weights();
    let mut rows = Vec::new();
    for &n in lengths {
        // (m, k, tokens, how many) of every matmul job of the prompt
        let mut jobs: Vec<(usize, usize, usize, usize)> = layer
            .iter()
            .filter_map(|w| {
                let (count, tokens) = model.runs(w, n);
                (count > 0).then_some((w.m, w.k, tokens, count * model.layers))
            })
            .collect();
        jobs.push((model.vocab, model.dim, n, 1));
        let (mut ane, mut calls, mut flops, mut padded) = (0f64, 0usize, 0f64, 0f64);
        for &(m, k, t, count) in &jobs {
            let (tm, tk) = streamed_tile_sizes(m, k, max_dim);
            let chunks = token_chunks(t, max_dim, min_bucket(tm, tk));
            let tiles = m.div_ceil(tm) * k.div_ceil(tk);
            let per_call: f64 = chunks
                .iter()
                .map(|&(_, _, b)| {
                    let f = 2.0 * (tm * tk * b) as f64;
                    let bytes = 2.0 * (tm * tk + tk * b + tm * b) as f64;
                    let tf = roofline.unwrap_or(f64::NAN) * k_factor(tk);
                    (f / tf).max(bytes / bw) + call_s
                })
                .sum();
            ane += per_call * (tiles * count) as f64;
            calls += chunks.len() * tiles * count;
            flops += 2.0 * (m * k * t * count) as f64;
            padded +=
                chunks.iter().map(|c| c.2).sum::<usize>() as f64 * 2.0 * (m * k * count) as f64;
        }
        let per_token = |x: f64| x / n as f64;
        rows.push(LengthCost {
            tokens: n,
            calls_per_layer: super::matmul_kernels::dispatches_per_layer(model, n, max_dim),
            ane_s: roofline.map(|_| per_token(ane)),
            gpu_s: gpu.map(|(tf, _)| per_token(flops / (tf * 1e12))),
            ane_j: ane_tfw.map(|tfw| per_token(padded / (tfw * 1e12) + calls as f64 * CALL_JOULES)),
            gpu_j: gpu_tfw.map(|tfw| per_token(flops / (tfw * 1e12))),
        });
    }
    let route = chips::route(mode, Some(chip));
    let mut sources = vec![
        (
            "ANE roofline",
            chip.ane_single_tflops.map_or("none".into(), |(lo, hi)| {
                format!("{lo}-{hi} TFLOPS per single GEMM: {}", chip.sources)
            }),
        ),
        (
            "K law",
            format!("TF x TF(K) / TF(4096), K tiles of at most 2048: {K_LAW_SOURCE}"),
        ),
        ("call cost", format!("{:.2} ms: {call_src}", call_s * 1e3)),
        (
            "call energy",
            "1.6 mJ CPU per call: 751K M6 study final_report/en.md @0b52dda".into(),
        ),
        ("ANE bandwidth", bw_src.to_string()),
        ("power", power_src.to_string()),
    ];
    sources.push((
        "GPU",
        gpu.map_or("no GPU figure for this chip".into(), |(tf, s)| {
            format!("{tf:.2} TFLOPS: {s}")
        }),
    ));
    // the longest prompt's prediction against the table's measured or inferred winner
    let disagreement = rows.last().and_then(|r| {
        let ratio = r.ane_s? / r.gpu_s?;
        (chip.speed.ane() != (ratio < 1.0)).then(|| {
            format!(
                "the prediction disagrees with the table: one matmul per call at the single-GEMM \
                 roofline makes the ANE path {ratio:.1}x the GPU's time at {} tokens, where the \
                 table's verdict ({}) comes from {}; a Mac's measurement decides (ane doctor)",
                r.tokens,
                if chip.speed.ane() { "ANE" } else { "GPU" },
                match chip.ane_fused_tflops {
                    Some(tf) => format!("chained programs at {tf} TFLOPS"),
                    None => "whole-model runs".into(),
                }
            )
        })
    });
    ChipPlan {
        chip,
        mode,
        take: route.take,
        reason: route.reason,
        lengths: rows,
        disagreement,
        sources,
    }
}

/// One line for `ane doctor`: a 7B's 512-token prefill on `chip` as predicted here, for a Mac's
/// measurement to be set beside.
pub(crate) fn doctor_line(chip: &'static Chip, mode: Mode) -> String {
    let max_dim = ane_runtime::engine::limits::MAX_DIM;
    let p = plan_chip(&ModelDims::llama_7b(), &[512], chip, mode, max_dim);
    let ms = |v: Option<f64>| v.map_or("?".into(), |v| format!("{:.2} ms", v * 1e3));
    let r = &p.lengths[0];
    format!(
        "llama-7b, 512 tokens: ANE path {} a token ({} calls a layer), GPU {} (ane plan --chip)",
        ms(r.ane_s),
        r.calls_per_layer,
        ms(r.gpu_s)
    )
}

impl ChipPlan {
    /// The report, for a terminal.
    pub(crate) fn print(&self) {
        println!(
            "{} ({} ANE{}), GGML_ANE_MODE={}: {} — {}",
            self.chip.name,
            self.chip.anes,
            if self.chip.anes > 1 { "s" } else { "" },
            self.mode,
            if self.take {
                "takes the work"
            } else {
                "declines"
            },
            self.reason
        );
        let cell =
            |v: Option<f64>, scale: f64| v.map_or("?".into(), |v| format!("{:.3}", v * scale));
        println!(
            "{:>8} {:>12} {:>14} {:>14} {:>14} {:>14}",
            "tokens", "calls/layer", "ANE ms/token", "GPU ms/token", "ANE mJ/token", "GPU mJ/token"
        );
        for r in &self.lengths {
            println!(
                "{:>8} {:>12} {:>14} {:>14} {:>14} {:>14}",
                r.tokens,
                r.calls_per_layer,
                cell(r.ane_s, 1e3),
                cell(r.gpu_s, 1e3),
                cell(r.ane_j, 1e3),
                cell(r.gpu_j, 1e3)
            );
        }
        if let Some(d) = &self.disagreement {
            println!("{d}");
        }
        println!("a prediction from cited figures, not a measurement; its constants:");
        for (what, src) in &self.sources {
            println!("  {what}: {src}");
        }
    }

    /// The report as JSON.
    pub(crate) fn to_json(&self) -> String {
        let num = |v: Option<f64>| v.map_or("null".into(), |v| format!("{v:.6e}"));
        let rows: Vec<String> = self
            .lengths
            .iter()
            .map(|r| {
                format!(
                    "{{\"tokens\": {}, \"calls_per_layer\": {}, \"ane_s_per_token\": {}, \"gpu_s_per_token\": {}, \"ane_j_per_token\": {}, \"gpu_j_per_token\": {}}}",
                    r.tokens,
                    r.calls_per_layer,
                    num(r.ane_s),
                    num(r.gpu_s),
                    num(r.ane_j),
                    num(r.gpu_j)
                )
            })
            .collect();
        let sources: Vec<String> = self
            .sources
            .iter()
            .map(|(k, v)| format!("\"{k}\": \"{}\"", v.replace('"', "'")))
            .collect();
        format!(
            "{{\"chip\": \"{}\", \"mode\": \"{}\", \"takes\": {}, \"reason\": \"{}\", \"disagreement\": {}, \"lengths\": [{}], \"sources\": {{{}}}}}",
            self.chip.name,
            self.mode,
            self.take,
            self.reason.replace('"', "'"),
            self.disagreement
                .as_ref()
                .map_or("null".into(), |d| format!("\"{}\"", d.replace('"', "'"))),
            rows.join(", "),
            sources.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LENGTHS: [usize; 3] = [128, 512, 2048];

    /// The K law passes through trisanths' measured points, is held past them, and peaks at
    /// 2048: a K tile of 2048 gains 1.34× over 4096, a narrower one gains less.
    #[test]
    fn the_k_law_follows_the_measured_points() {
        for (k, tf) in K_LAW {
            assert!((k_factor(k as usize) - tf / 5.72).abs() < 1e-12, "{k}");
        }
        assert!((k_factor(2048) - 7.64 / 5.72).abs() < 1e-12);
        assert_eq!(k_factor(512), k_factor(1024));
        assert_eq!(k_factor(65536), k_factor(16384));
        assert!(k_factor(1856) < k_factor(2048) && k_factor(1856) > k_factor(4096));
        let down = k_factor(11008);
        assert!(down < 3.26 / 5.72 && down > 1.73 / 5.72, "{down}");
    }

    /// The cases the issue names: an M5 Max declines a 7B for speed and says so, an M4 takes
    /// it. An M2 Pro has GPU and power figures: one matmul per call at its single-GEMM
    /// roofline (3.4 TFLOPS) predicts the ANE path slower than the GPU (4.94) but cheaper in
    /// energy, and the report says that this disagrees with the table (whose ANE win was
    /// measured with chained programs). More calls cost more time; no roofline, no ANE figure.
    #[test]
    fn predictions_follow_the_table_and_the_constants() {
        let model = ModelDims::llama_7b();
        let chip = |n| chips::chip(n).unwrap();
        let m5 = plan_chip(&model, &LENGTHS, chip("M5 Max"), Mode::Auto, 16384);
        assert!(!m5.take && m5.reason.contains("GPU"), "{m5:?}");
        assert!(m5.lengths.iter().all(|r| r.ane_s.is_none()));
        let energy = plan_chip(&model, &LENGTHS, chip("M5 Max"), Mode::Energy, 16384);
        assert!(energy.take);
        let m4 = plan_chip(&model, &LENGTHS, chip("M4"), Mode::Auto, 16384);
        assert!(m4.take, "{m4:?}");
        assert!(m4.lengths.iter().all(|r| r.ane_s.is_some_and(|s| s > 0.0)));
        // Q, K, V, O, gate and up in two K tiles of 2048, down in six
        assert_eq!(m4.lengths[0].calls_per_layer, 18);
        let m2 = plan_chip(&model, &LENGTHS, chip("M2 Pro"), Mode::Auto, 16384);
        for r in &m2.lengths {
            let (ane, gpu) = (r.ane_s.unwrap(), r.gpu_s.unwrap());
            // the GPU at 4.94 TFLOPS: 2 × 6.6 G weights' flops per token ≈ 2.7 ms
            assert!((2.0e-3..3.5e-3).contains(&gpu), "{r:?}");
            assert!(ane > gpu && r.ane_j.unwrap() < r.gpu_j.unwrap(), "{r:?}");
        }
        assert!(m2.take);
        assert!(m2
            .disagreement
            .as_ref()
            .is_some_and(|d| d.contains("chained programs at 12.16")));
        assert!(m4.disagreement.is_none() && m5.disagreement.is_none());
        // an MoE at 128 tokens: 389 calls a layer, whose fixed cost dominates its prediction
        let moe = plan_chip(
            &ModelDims::qwen3_30b_a3b(),
            &LENGTHS,
            chip("M4"),
            Mode::Auto,
            16384,
        );
        assert_eq!(moe.lengths[0].calls_per_layer, 389);
        // the prediction carries every call's 0.15 ms: 48 layers of 389 calls over 128 tokens
        // are 21.9 ms a token before any arithmetic
        let calls_alone = 48.0 * 389.0 * 0.15e-3 / 128.0;
        let moe_s = moe.lengths[0].ane_s.unwrap();
        assert!(
            moe_s > calls_alone && moe_s < 2.0 * calls_alone,
            "{moe_s} against {calls_alone}"
        );
        assert!(moe.to_json().contains("\"calls_per_layer\": 389"));
    }
}
