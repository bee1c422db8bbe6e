//! `ane plan`: compile accounting for a model's prefill, ours against the seed's. This file
//! holds the command (arguments, report); `matmul_kernels` counts the kernels of node-by-node
//! matmuls, `fused_kernels` those of fused blocks (`--fused`).

pub(crate) mod chip_cost;
mod fused_kernels;
pub(crate) mod matmul_kernels;

use std::process::ExitCode;

use ane_runtime::disk_cache::compile_cached;
use ane_runtime::engine::limits::APPLE_COMPILE_BUDGET;
use ane_runtime::engine::reference::{ReferenceConfig, ReferenceEngine};
use ane_runtime::matmul::DEFAULT_MAX_LOADED;
use ane_runtime::{CompileCounter, Engine};
use anyhow::{bail, Context};

use crate::settings::CacheArgs;
use fused_kernels::plan_fused;
use matmul_kernels::{plan_auto, plan_prefill, ExpertDims, ModelDims};

#[derive(clap::Args)]
pub(crate) struct PlanArgs {
    /// A known model shape: llama-7b, or qwen3-30b-a3b (mixture of experts).
    #[arg(long, default_value = "llama-7b")]
    model: String,
    /// Other dimensions instead: DIM,FFN,LAYERS,VOCAB (with --experts, FFN is the shared
    /// expert's, 0 for none).
    #[arg(long, value_name = "DIM,FFN,LAYERS,VOCAB")]
    dims: Option<String>,
    /// With --dims, routed experts: COUNT experts of FFN hidden features, USED per token.
    #[arg(long, value_name = "COUNT,USED,FFN", requires = "dims")]
    experts: Option<String>,
    /// Prompt lengths, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "17,64,100,128,333,512,1000,2048"
    )]
    prompt_lengths: Vec<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Compile everything, ignoring the on-disk kernel cache (GGML_ANE_CACHE_DIR).
    #[arg(long)]
    no_cache: bool,
    /// Also write every kernel the plan compiles as `DIR/<kernel>/model.mil`, byte for byte what
    /// the engine compiles (for `ane mil check --target ane`, coremltools or a Mac).
    #[arg(long, value_name = "DIR")]
    emit: Option<std::path::PathBuf>,
    /// Also plan the fused FFN and Q/K/V programs: which blocks fuse within the apple
    /// engine's budget and loaded-kernel cap, and the dispatches per layer.
    #[arg(long)]
    fused: bool,
    /// Also predict the prefill on a chip of the table (M1, M1-Max, M2-Pro, M3-Ultra, M4, M5,
    /// M5-Pro, M5-Max, M6): time and energy per token on the ANE and the GPU, calls per layer,
    /// and whether the routing policy takes the work there.
    #[arg(long, value_name = "CHIP")]
    chip: Option<String>,
    /// The routing policy of the prediction (GGML_ANE_MODE): auto, speed, energy, always, off.
    #[arg(long, default_value = "auto", requires = "chip")]
    mode: ane_runtime::chips::Mode,
    #[command(flatten)]
    cache: CacheArgs,
}

/// Comma-separated positive numbers, exactly `N` of them.
fn numbers<const N: usize>(text: &str, flag: &str, what: &str) -> anyhow::Result<[usize; N]> {
    let v: Vec<usize> = text
        .split(',')
        .map(|x| x.trim().parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{flag} needs {what}"))?;
    let v: [usize; N] = v
        .try_into()
        .map_err(|_| anyhow::anyhow!("{flag} needs {what}"))?;
    Ok(v)
}

fn model(args: &PlanArgs) -> anyhow::Result<ModelDims> {
    if let Some(d) = &args.dims {
        let [dim, ffn, layers, vocab] = numbers(d, "--dims", "DIM,FFN,LAYERS,VOCAB")?;
        let mut m = ModelDims::dense(&format!("custom-{dim}"), dim, ffn, layers, vocab);
        if let Some(e) = &args.experts {
            let [count, used, ffn] = numbers(e, "--experts", "COUNT,USED,FFN")?;
            if count == 0 || used == 0 || used > count || ffn == 0 {
                bail!("--experts {e}: needs 0 < USED <= COUNT and FFN > 0");
            }
            m.experts = Some(ExpertDims { count, used, ffn });
        }
        if [dim, layers, vocab].contains(&0) || (ffn == 0 && m.experts.is_none()) {
            bail!("--dims {d}: every dimension must be positive");
        }
        return Ok(m);
    }
    match args.model.as_str() {
        "llama-7b" | "llama2-7b" => Ok(ModelDims::llama_7b()),
        "qwen3-30b-a3b" => Ok(ModelDims::qwen3_30b_a3b()),
        other => bail!("unknown model `{other}` (known: llama-7b, qwen3-30b-a3b; or pass --dims)"),
    }
}

pub(crate) fn run(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let model = model(&args)?;
    let chip = match &args.chip {
        Some(name) => Some(ane_runtime::chips::chip(name).with_context(|| {
            format!(
                "--chip {name}: no such chip in the table ({})",
                ane_runtime::chips::names()
            )
        })?),
        None => None,
    };
    // the reference engine's accounting, with its own counter so the plan is not limited by
    // (and does not spend) this process's budget
    let engine = ReferenceEngine::with_config(
        ReferenceConfig::default().with_counter(CompileCounter::new(None)),
    );
    let disk = if args.no_cache {
        None
    } else {
        args.cache.disk()
    };
    let plan = plan_prefill(
        &engine,
        disk.as_ref(),
        &model,
        &args.prompt_lengths,
        args.emit.as_deref(),
    )?;
    let auto = plan_auto(
        &model,
        &args.prompt_lengths,
        Some(APPLE_COMPILE_BUDGET),
        Some(DEFAULT_MAX_LOADED as u32),
        engine.limits().max_dim,
    );
    let fused = args.fused.then(|| {
        plan_fused(
            &model,
            &args.prompt_lengths,
            Some(APPLE_COMPILE_BUDGET),
            Some(DEFAULT_MAX_LOADED as u32),
            engine.limits().max_dim,
        )
    });
    // the streamed fused programs are compiled (or found on disk) like the streamed kernels
    let mut fused_built = (0usize, 0usize);
    if let Some(f) = &fused {
        for p in &f.streamed_programs {
            let program = p.program();
            if let Some(dir) = &args.emit {
                let kernel = dir.join(p.name());
                std::fs::create_dir_all(&kernel)
                    .with_context(|| format!("creating {}", kernel.display()))?;
                std::fs::write(kernel.join("model.mil"), ane_mil::print_program(&program))
                    .with_context(|| format!("writing into {}", kernel.display()))?;
            }
            let (_, from_disk) =
                compile_cached(&engine, disk.as_ref(), &program, &Default::default())?;
            if from_disk {
                fused_built.1 += 1;
            } else {
                fused_built.0 += 1;
            }
        }
    }
    let chip_plan = chip.map(|c| {
        chip_cost::plan_chip(
            &model,
            &args.prompt_lengths,
            c,
            args.mode,
            engine.limits().max_dim,
        )
    });
    if args.json {
        let mut json = plan.to_json_with(Some(&auto));
        if let Some(c) = &chip_plan {
            json.pop();
            json.push_str(&format!(", \"chip\": {}}}", c.to_json()));
        }
        if let Some(f) = &fused {
            json.pop();
            let mut fj = f.to_json();
            fj.pop();
            json.push_str(&format!(
                ", \"fused\": {fj}, \"streamed_compiled\": {}, \"streamed_from_disk\": {}}}}}",
                fused_built.0, fused_built.1
            ));
        }
        println!("{json}");
        return Ok(ExitCode::SUCCESS);
    }
    let m = &plan.model;
    let heads = if m.q_dim == m.dim && m.kv_dim == m.dim {
        String::new()
    } else {
        format!(", q {} / kv {}", m.q_dim, m.kv_dim)
    };
    match m.experts {
        None => println!(
            "{}: dim {}, ffn {}, {} layers, vocab {}{heads} ({} matmuls per prefill)",
            m.name,
            m.dim,
            m.ffn,
            m.layers,
            m.vocab,
            plan.lengths.first().map_or(0, |r| r.matmuls)
        ),
        Some(e) => println!(
            "{}: dim {}, {} layers, vocab {}{heads}, {} experts of {} ({} used per token){}; \
             expert batches assumed even for dispatch counts, any size for compiles",
            m.name,
            m.dim,
            m.layers,
            m.vocab,
            e.count,
            e.ffn,
            e.used,
            if m.ffn > 0 {
                format!(", shared expert {}", m.ffn)
            } else {
                String::new()
            }
        ),
    }
    println!(
        "{:>8} {:>10} {:>14} {:>16} {:>12} {:>16}",
        "tokens", "kernels", "new compiles", "seed compiles", "calls/layer", "tokens/expert"
    );
    for r in &plan.lengths {
        let refused = if r.seed_refused > 0 {
            format!(" (+{} refused)", r.seed_refused)
        } else {
            String::new()
        };
        let experts = match r.expert_batch {
            None => "-".to_string(),
            Some((t, 0)) => format!("{t} (CPU)"),
            Some((t, _)) => format!("{t}"),
        };
        println!(
            "{:>8} {:>10} {:>14} {:>16} {:>12} {:>16}{refused}",
            r.tokens, r.kernels, r.new_compiles, r.seed_compiles, r.dispatches_per_layer, experts
        );
    }
    println!(
        "compiles: {} (seed: {}), loaded from the disk cache: {}; per-process budget on the ANE ~119",
        plan.compiles, plan.seed_compiles, plan.disk_hits
    );
    println!(
        "GGML_ANE_KERNELS=auto within the apple engine's budget of {APPLE_COMPILE_BUDGET}: {} compiles \
         ({} baked kernels serving {} matmuls, {} streamed kernels serving {}); baking every \
         weight would take {}",
        auto.compiles,
        auto.baked_kernels,
        auto.baked_matmuls,
        auto.streamed_kernels,
        auto.streamed_matmuls,
        auto.all_baked_kernels
    );
    println!(
        "kernels: {} streamed (this plan); {} under auto, at most {} loaded at once (cap {}), \
         {} loads of kernels dropped earlier (each counted as a compile until a Mac shows a \
         reload is cheaper)",
        plan.compiles, auto.used_kernels, auto.peak_loaded, DEFAULT_MAX_LOADED, auto.reloads
    );
    println!(
        "surface bytes (inputs + outputs of every kernel): {:.1} MiB",
        plan.surface_bytes as f64 / (1 << 20) as f64
    );
    if let Some(f) = &fused {
        println!(
            "fused blocks within the budget of {APPLE_COMPILE_BUDGET} and the cap of {DEFAULT_MAX_LOADED}: \
             {} compiles, {} kernels loaded; {} blocks baked ({} kernels), {} streamed ({} kernels: \
             {} too large to bake at {} MiB, {} kept room for streamed kernels), {} unfused",
            f.compiles,
            f.loaded,
            f.fused_blocks,
            f.fused_kernels,
            f.streamed_blocks,
            f.streamed_fused_kernels,
            f.too_large,
            ane_runtime::fused::MAX_FUSED_WEIGHT_BYTES >> 20,
            f.no_room,
            f.unfused_blocks
        );
        println!(
            "streamed fused programs: {} compiled, {} loaded from the disk cache",
            fused_built.0, fused_built.1
        );
        let per_layer: Vec<String> = f
            .dispatches_per_layer
            .iter()
            .zip(&f.unfused_dispatches_per_layer)
            .map(|((n, d), (_, u))| format!("{n}: {d} (unfused {u})"))
            .collect();
        println!(
            "engine dispatches per layer, by prompt length: {}",
            per_layer.join(", ")
        );
    }
    match &disk {
        Some(d) => println!("kernel cache: {}", d.dir().display()),
        None => println!("kernel cache: off"),
    }
    if let Some(c) = &chip_plan {
        println!();
        c.print();
    }
    Ok(ExitCode::SUCCESS)
}
