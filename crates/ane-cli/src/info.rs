//! `ane info`.

use std::process::ExitCode;

use ane_runtime::engine::{self, EngineChoice};

#[derive(clap::Args)]
pub(crate) struct InfoArgs {
    /// Engine to describe: auto, reference, apple or coreml (default: $GGML_ANE_ENGINE or auto).
    #[arg(long)]
    engine: Option<String>,
}

pub(crate) fn run(args: InfoArgs) -> anyhow::Result<ExitCode> {
    let choice = match args.engine {
        Some(e) => e.parse()?,
        None => EngineChoice::from_env()?,
    };
    println!("engines:");
    for kind in [
        engine::EngineKind::Apple,
        engine::EngineKind::CoreMl,
        engine::EngineKind::Reference,
    ] {
        let status = match engine::create(EngineChoice::Only(kind)) {
            Ok(_) => "available".to_string(),
            Err(e) => e.to_string(),
        };
        println!("  {:<10} {status}", kind.as_str());
    }
    let e = engine::create(choice)?;
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
    let kernels = ane_runtime::matmul::KernelPolicy::from_env()?;
    println!("  kernels         {} (GGML_ANE_KERNELS)", kernels.as_str());
    println!(
        "  ops             {}",
        ane_mil::ops::supported_ops().collect::<Vec<_>>().join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
