//! The settings every subcommand shares, as clap arguments that fall back to the same
//! `GGML_ANE_*` variables the ggml backend reads (the library crates read none).

use std::path::PathBuf;
use std::sync::Arc;

use ane_mil::rules::RuleOptions;
use ane_runtime::disk_cache::{DiskCache, DEFAULT_CAP_BYTES};
use ane_runtime::engine::apple::AppleConfig;
use ane_runtime::engine::coreml::CoreMlConfig;
use ane_runtime::engine::reference::{Faults, ReferenceConfig};
use ane_runtime::matmul::KernelPolicy;
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
    /// The ANE rulebook: `on` refuses programs in forms the hardware is reported to reject
    /// (the reference and apple engines); `off` runs anything, for experiments.
    #[arg(long, value_enum, default_value_t = Rules::On)]
    rules: Rules,
    #[command(flatten)]
    cache: CacheArgs,
}

/// Whether engines enforce the ANE rulebook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Rules {
    /// Refuse what the rulebook refuses.
    On,
    /// Run anything.
    Off,
}

impl EngineArgs {
    /// Every engine's settings (two-input kernels allowed through the rulebook when the
    /// kernel policy asks for them).
    pub(crate) fn config(&self, kernels: KernelPolicy) -> EngineConfig {
        let mut config = EngineConfig::default();
        let rules = (self.rules == Rules::On).then(|| {
            let mut rules = RuleOptions::default();
            rules.allow_two_inputs = kernels == KernelPolicy::TwoInput;
            rules
        });
        let mut reference = ReferenceConfig::default().with_rules(rules);
        if let Some(budget) = self.compile_budget {
            reference = reference
                .with_counter(CompileCounter::process(EngineKind::Reference, Some(budget)));
        }
        if let Some(faults) = self.reference_faults {
            reference = reference.with_faults(faults);
        }
        config.reference = reference;
        let mut apple = AppleConfig::default();
        apple.rules = rules;
        if let Some(budget) = self.compile_budget {
            apple.compile_budget = budget;
        }
        config.apple = apple;
        if let Some(dir) = self.cache.dir() {
            config.coreml = CoreMlConfig::with_models_dir(dir.join("coreml"));
        }
        config
    }

    /// The engine these arguments name, for kernels of this policy.
    pub(crate) fn create(&self, kernels: KernelPolicy) -> ane_runtime::Result<Arc<dyn Engine>> {
        ane_runtime::create(self.engine, &self.config(kernels))
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
