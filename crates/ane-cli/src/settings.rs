//! The settings every subcommand shares, as clap arguments that fall back to the same
//! `GGML_ANE_*` variables the ggml backend reads (the library crates read none), turned into
//! the same [`RuntimeSettings`] the backend fills in.

use std::path::PathBuf;
use std::sync::Arc;

use ane_runtime::disk_cache::DiskCache;
use ane_runtime::engine::reference::Faults;
use ane_runtime::matmul::KernelPolicy;
use ane_runtime::settings::{CacheDir, RuntimeSettings};
use ane_runtime::{Engine, EngineChoice, EngineConfig};

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
    pub(crate) cache: CacheArgs,
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
    /// The runtime's settings for kernels of this policy.
    pub(crate) fn settings(&self, kernels: KernelPolicy) -> RuntimeSettings {
        let mut s = self.cache.settings();
        s.engine = self.engine;
        s.compile_budget = self.compile_budget;
        s.reference_faults = self.reference_faults.unwrap_or_default();
        s.enforce_rules = self.rules == Rules::On;
        s.kernels = kernels;
        s
    }

    /// Every engine's settings (two-input kernels allowed through the rulebook when the
    /// kernel policy asks for them).
    pub(crate) fn config(&self, kernels: KernelPolicy) -> EngineConfig {
        self.settings(kernels).engine_config()
    }

    /// The engine these arguments name, for kernels of this policy.
    pub(crate) fn create(&self, kernels: KernelPolicy) -> ane_runtime::Result<Arc<dyn Engine>> {
        self.settings(kernels).create_engine()
    }
}

/// The largest size in MiB whose bytes fit in a u64 (`mb << 20` would wrap past it).
const MAX_MIB: u64 = u64::MAX >> 20;

/// The on-disk kernel cache.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct CacheArgs {
    /// Kernel cache folder, or `off` (default: ~/.cache/ggml-ane, ~/Library/Caches/ggml-ane).
    #[arg(long, env = "GGML_ANE_CACHE_DIR")]
    cache_dir: Option<String>,
    /// Size cap of the kernel cache in MiB (least recently used evicted first; default 4096).
    #[arg(long, env = "GGML_ANE_CACHE_MAX_MB", value_parser = clap::value_parser!(u64).range(0..=MAX_MIB))]
    cache_max_mb: Option<u64>,
}

impl CacheArgs {
    /// The runtime's default settings with this cache (`HOME` and `XDG_CACHE_HOME` read for
    /// the platform's folder).
    pub(crate) fn settings(&self) -> RuntimeSettings {
        let mut s = RuntimeSettings::default();
        s.cache_dir = CacheDir::parse(self.cache_dir.as_deref());
        s.cache_max_mb = self.cache_max_mb;
        s.home = std::env::var_os("HOME").map(PathBuf::from);
        s.xdg_cache_home = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from);
        s
    }

    /// The cache, or `None` when it is off.
    pub(crate) fn disk(&self) -> Option<DiskCache> {
        self.settings().disk_cache()
    }
}
