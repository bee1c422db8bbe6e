//! The settings every subcommand shares, as clap arguments that fall back to the same
//! `GGML_ANE_*` variables the ggml backend reads (the library crates read none).

use std::path::PathBuf;
use std::sync::Arc;

use ane_runtime::disk_cache::{DiskCache, DEFAULT_CAP_BYTES};
use ane_runtime::engine::apple::AppleConfig;
use ane_runtime::engine::coreml::CoreMlConfig;
use ane_runtime::engine::reference::{Faults, ReferenceConfig};
use ane_runtime::{CompileCounter, Engine, EngineChoice, EngineConfig, EngineKind};

/// Which engine, and its budget.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct EngineArgs {
    /// Engine: auto, reference, apple or coreml.
    #[arg(long, env = "GGML_ANE_ENGINE", default_value = "auto")]
    pub(crate) engine: EngineChoice,
    /// Compiles allowed per process (reference engine: 119, apple engine: 100).
    #[arg(long, env = "GGML_ANE_COMPILE_BUDGET")]
    compile_budget: Option<u32>,
    /// Failures the reference engine injects: a list of compile, eval, inf (for testing).
    #[arg(long, env = "GGML_ANE_REFERENCE_FAULTS", value_parser = Faults::parse, hide = true)]
    reference_faults: Option<Faults>,
    #[command(flatten)]
    cache: CacheArgs,
}

impl EngineArgs {
    /// Every engine's settings.
    pub(crate) fn config(&self) -> EngineConfig {
        let mut config = EngineConfig::default();
        let mut reference = ReferenceConfig::default();
        if let Some(budget) = self.compile_budget {
            reference = reference
                .with_counter(CompileCounter::process(EngineKind::Reference, Some(budget)));
        }
        if let Some(faults) = self.reference_faults {
            reference = reference.with_faults(faults);
        }
        config.reference = reference;
        let mut apple = AppleConfig::default();
        if let Some(budget) = self.compile_budget {
            apple.compile_budget = budget;
        }
        config.apple = apple;
        if let Some(dir) = self.cache.dir() {
            config.coreml = CoreMlConfig::with_models_dir(dir.join("coreml"));
        }
        config
    }

    /// The engine these arguments name.
    pub(crate) fn create(&self) -> ane_runtime::Result<Arc<dyn Engine>> {
        ane_runtime::create(self.engine, &self.config())
    }
}

/// The on-disk kernel cache.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct CacheArgs {
    /// Kernel cache folder, or `off` (default: ~/.cache/ggml-ane, ~/Library/Caches/ggml-ane).
    #[arg(long, env = "GGML_ANE_CACHE_DIR")]
    cache_dir: Option<String>,
    /// Size cap of the kernel cache in MiB (least recently used evicted first; default 4096).
    #[arg(long, env = "GGML_ANE_CACHE_MAX_MB")]
    cache_max_mb: Option<u64>,
}

impl CacheArgs {
    /// The folder, or `None` when the cache is off (or there is no home folder).
    pub(crate) fn dir(&self) -> Option<PathBuf> {
        match self.cache_dir.as_deref().map(str::trim) {
            Some("off" | "none") => None,
            Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
            _ => {
                let home = std::env::var_os("HOME").map(PathBuf::from);
                let xdg = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from);
                DiskCache::platform_dir(home.as_deref(), xdg.as_deref())
            }
        }
    }

    /// The cache, or `None` when it is off.
    pub(crate) fn disk(&self) -> Option<DiskCache> {
        let cap = self.cache_max_mb.map_or(DEFAULT_CAP_BYTES, |mb| mb << 20);
        self.dir().map(|d| DiskCache::new(d, cap))
    }
}
