//! `ane cache list|clear`: the on-disk kernel cache.

use std::process::ExitCode;

use ane_runtime::disk_cache::DiskCache;
use anyhow::Context;

#[derive(clap::Subcommand)]
pub(crate) enum CacheCommand {
    /// List cached kernels, most recently used first.
    List,
    /// Delete every cached kernel.
    Clear,
}

pub(crate) fn run(cmd: CacheCommand) -> anyhow::Result<ExitCode> {
    let disk = DiskCache::from_env()
        .context("the kernel cache is off (GGML_ANE_CACHE_DIR=off, or no home folder)")?;
    match cmd {
        CacheCommand::List => {
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
        CacheCommand::Clear => println!(
            "removed {} kernels from {}",
            disk.clear()?,
            disk.dir().display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}
