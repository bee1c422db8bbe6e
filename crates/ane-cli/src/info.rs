//! `ane info`.

use std::process::ExitCode;

use ane_runtime::fused::probe::probe_fused;
use ane_runtime::fused::FusedForm;
use ane_runtime::matmul::probe::{forms_for, probe};
use ane_runtime::matmul::KernelPolicy;
use ane_runtime::{EngineChoice, EngineKind};

use crate::settings::EngineArgs;
use ane_runtime::chips::{self, Mode};

#[derive(clap::Args)]
pub(crate) struct InfoArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Kernel kinds: auto, baked, streamed or packed.
    #[arg(long, env = "GGML_ANE_KERNELS", default_value = "auto")]
    kernels: KernelPolicy,
    #[command(flatten)]
    routing: RoutingArgs,
}

/// The chip and the routing policy, as the backend reads them.
#[derive(clap::Args)]
pub(crate) struct RoutingArgs {
    /// Routing: auto, speed, energy, always or off.
    #[arg(long, env = "GGML_ANE_MODE", default_value = "auto")]
    pub(crate) mode: Mode,
    /// A row of the chip table to route by instead of this Mac's (`M5 Max`, `m2-pro`).
    #[arg(long, env = "GGML_ANE_CHIP")]
    pub(crate) chip: Option<String>,
}

impl RoutingArgs {
    /// The chip's row (or why there is none) and the backend's decision, as two lines.
    pub(crate) fn lines(&self) -> (String, String) {
        let row = match chips::identify(self.chip.as_deref()) {
            Ok(Some(c)) => c.to_string(),
            Ok(None) => format!(
                "not an Apple chip ({} {})",
                std::env::consts::OS,
                std::env::consts::ARCH
            ),
            Err(e) => e,
        };
        let r = chips::route_here(self.mode, self.chip.as_deref());
        let verdict = if r.take {
            "taking work"
        } else {
            "taking no work"
        };
        (row, format!("{verdict}: {}", r.reason))
    }
}

pub(crate) fn run(args: InfoArgs) -> anyhow::Result<ExitCode> {
    let choice = args.engine.engine;
    let config = args.engine.config(args.kernels);
    println!("engines:");
    for kind in [EngineKind::Apple, EngineKind::CoreMl, EngineKind::Reference] {
        let status = match ane_runtime::create(EngineChoice::Only(kind), &config) {
            Ok(_) => "available".to_string(),
            Err(e) => e.to_string(),
        };
        println!("  {:<10} {status}", kind.as_str());
    }
    let (row, route) = args.routing.lines();
    println!("chip: {row}");
    println!("routing (GGML_ANE_MODE={}): {route}", args.routing.mode);
    let e = ane_runtime::create(choice, &config)?;
    let info = e.info();
    let limits = e.limits();
    let how = match choice {
        EngineChoice::Auto => "auto picks",
        EngineChoice::Only(_) => "selected",
    };
    println!("{how}: {}", info.kind);
    println!("  description     {}", info.description);
    for (k, v) in &info.details {
        println!("  {k:<15} {v}");
    }
    println!("  max dimension   {}", limits.max_dim);
    println!("  row alignment   {} bytes", limits.row_alignment);
    match limits.compile_budget {
        Some(b) => println!(
            "  compile budget  {b} per process ({} used, {} left)",
            limits.compiles_used,
            limits.compiles_left().unwrap_or(0)
        ),
        None => println!("  compile budget  unlimited"),
    }
    println!("  kernels         {} (GGML_ANE_KERNELS)", args.kernels);
    // what the backend would find before taking work (ane doctor says more)
    for r in probe(e.as_ref(), &forms_for(args.kernels)) {
        println!("  self-probe      {r}");
    }
    let fused_forms = [FusedForm::Baked, FusedForm::Streamed];
    for r in probe_fused(e.as_ref(), &fused_forms) {
        println!("  self-probe      {r}");
    }
    println!(
        "  ops             {}",
        ane_mil::ops::supported_ops().collect::<Vec<_>>().join(", ")
    );
    println!("ggml devices of libggml_ane (GGML_BACKEND_PATH):");
    println!(
        "  ANE             ACCEL: ggml's scheduler offers it every op; it takes MUL_MATs and the \
         ops around them (RMS_NORM, MUL, ADD, SCALE, SILU, SWIGLU, GEGLU, ROPE) with at least \
         GGML_ANE_MIN_TOKENS tokens, fusing FFN and Q/K/V blocks: prefill offload beside the \
         CPU or Metal (-dev ANE,MTL0 -ts 0,1)"
    );
    println!(
        "  ANE-FULL        IGPU: takes every op ggml's CPU backend computes (the same engine \
         work, the rest on ggml's CPU); for hosts that hand a device whole graphs \
         (ggml-rpc-server -d ANE-FULL, -sm tensor); llama.cpp uses it by default only where no \
         GPU exists; GGML_ANE_FULL=0 hides it"
    );
    Ok(ExitCode::SUCCESS)
}
