//! `ane cache list|clear`: the on-disk kernel cache.

use std::process::ExitCode;

use anyhow::Context;

use crate::settings::CacheArgs;

#[derive(clap::Subcommand)]
pub(crate) enum CacheCommand {
    /// List cached kernels, most recently used first.
    List(CacheArgs),
    /// Delete every cached kernel.
    Clear(CacheArgs),
}

pub(crate) fn run(cmd: CacheCommand) -> anyhow::Result<ExitCode> {
    let (CacheCommand::List(args) | CacheCommand::Clear(args)) = &cmd;
    let disk = args
        .disk()
        .context("the kernel cache is off (GGML_ANE_CACHE_DIR=off, or no home folder)")?;
    match cmd {
        CacheCommand::List(_) => {
            let entries = disk.list()?;
            let total: u64 = entries.iter().map(|e| e.bytes).sum();
            println!(
                "{}: {} kernels, {} bytes",
                disk.dir().display(),
                entries.len(),
                total
            );
            for e in entries {
                let age = e.last_used.elapsed().map_or(0, |d| d.as_secs());
                println!("  {}  {:>10} bytes  used {age} s ago", e.key, e.bytes);
            }
        }
        CacheCommand::Clear(_) => println!(
            "removed {} kernels from {}",
            disk.clear()?,
            disk.dir().display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}
