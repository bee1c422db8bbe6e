//! `ane`: inspect engines, check and run MIL programs.

#![allow(
    missing_docs,
    reason = "a binary: its --help text is its documentation"
)]
#![forbid(unsafe_code)]

mod bench;
mod bench_block;
mod cache;
mod doctor;
mod info;
mod mil;
mod npy;
mod plan;
mod power;
mod settings;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ane",
    version,
    about = "Apple Neural Engine tools: engines, MIL programs, weight files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Engines available here, the one `auto` picks, and its limits.
    Info(info::InfoArgs),
    /// Everything a first run should establish: engines, each kernel form against f64, the
    /// rulebook, and what only hardware answers; a summary, a verdict, a report to paste.
    Doctor(doctor::DoctorArgs),
    /// Check and run MIL programs.
    #[command(subcommand)]
    Mil(mil::MilCommand),
    /// How many kernels a model's prefill compiles, for a set of prompt lengths.
    Plan(plan::PlanArgs),
    /// Time MUL_MAT shapes on the engine against the CPU in the same process.
    Bench(bench::BenchArgs),
    /// The on-disk kernel cache (GGML_ANE_CACHE_DIR).
    #[command(subcommand)]
    Cache(cache::CacheCommand),
}

fn main() -> ExitCode {
    // usage errors (an unknown engine, a bad --shape) exit 1 like every other error;
    // --help and --version exit 0
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Info(a) => info::run(a),
        Command::Doctor(a) => doctor::run(a),
        Command::Mil(c) => mil::run(c),
        Command::Plan(a) => plan::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Cache(c) => cache::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
