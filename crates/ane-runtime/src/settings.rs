//! One path from a program's settings to the runtime's parts. `ggml-ane` (from `GGML_ANE_*`)
//! and the `ane` command (from its arguments, which fall back to the same variables) each
//! fill in a [`RuntimeSettings`] — plain values, nothing read here — and take the engines'
//! settings, the disk cache and the kernel cache from it, so the two cannot drift apart.

use std::path::PathBuf;
use std::sync::Arc;

use ane_mil::rules::RuleOptions;

use crate::disk_cache::{DiskCache, DEFAULT_CAP_BYTES};
use crate::engine::apple::AppleConfig;
use crate::engine::coreml::CoreMlConfig;
use crate::engine::reference::{Faults, ReferenceConfig};
use crate::engine::{Accumulator, CompileCounter, Engine, EngineChoice, EngineConfig, EngineKind};
use crate::kernels::policy::KernelPolicy;
use crate::kernels::{KernelCache, DEFAULT_MAX_LOADED};
use crate::staging::DEFAULT_STAGED_WEIGHTS_BYTES;

/// Where compiled kernels are kept on disk (`GGML_ANE_CACHE_DIR`, `ane --cache-dir`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CacheDir {
    /// The platform's cache folder ([`DiskCache::platform_dir`]): the value unset or empty.
    #[default]
    PlatformDefault,
    /// No disk cache: `off` or `none`.
    Off,
    /// This folder.
    At(PathBuf),
}

impl CacheDir {
    /// The setting a `GGML_ANE_CACHE_DIR` value (`None`: unset) names; surrounding blanks are
    /// ignored.
    pub fn parse(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            Some("off" | "none") => CacheDir::Off,
            Some(d) if !d.is_empty() => CacheDir::At(PathBuf::from(d)),
            _ => CacheDir::PlatformDefault,
        }
    }
}

/// Everything the runtime is set up from, as plain values. [`Default`] is what an unset
/// environment means.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RuntimeSettings {
    /// Which engine (`GGML_ANE_ENGINE`).
    pub engine: EngineChoice,
    /// Compiles allowed per process (`GGML_ANE_COMPILE_BUDGET`); `None`: each engine's own.
    pub compile_budget: Option<u32>,
    /// Failures the reference engine injects (`GGML_ANE_REFERENCE_FAULTS`).
    pub reference_faults: Faults,
    /// How the reference engine sums products: f32, or the accumulator of the chip the
    /// backend stands in for (`GGML_ANE_CHIP=M6`: Q15.16).
    pub reference_accumulator: Accumulator,
    /// Whether engines refuse what the ANE rulebook refuses (on by default; `ane --rules off`
    /// turns it off for experiments).
    pub enforce_rules: bool,
    /// Which kernel kinds to use (`GGML_ANE_KERNELS`): two-input kernels pass the rulebook
    /// only when asked for.
    pub kernels: KernelPolicy,
    /// The disk cache's folder (`GGML_ANE_CACHE_DIR`).
    pub cache_dir: CacheDir,
    /// The disk cache's size cap in MiB (`GGML_ANE_CACHE_MAX_MB`); `None`: 4096.
    pub cache_max_mb: Option<u64>,
    /// `HOME`, for the platform's cache folder.
    pub home: Option<PathBuf>,
    /// `XDG_CACHE_HOME`, for the platform's cache folder.
    pub xdg_cache_home: Option<PathBuf>,
    /// Bytes of streamed weight tiles kept staged across calls (`GGML_ANE_SURFACE_CACHE_MB`).
    pub staged_weights_bytes: usize,
    /// Kernels kept loaded at once (`GGML_ANE_MAX_LOADED`); `None`: no cap.
    pub max_loaded: Option<usize>,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            engine: EngineChoice::Auto,
            compile_budget: None,
            reference_faults: Faults::default(),
            reference_accumulator: Accumulator::F32,
            enforce_rules: true,
            kernels: KernelPolicy::Auto,
            cache_dir: CacheDir::PlatformDefault,
            cache_max_mb: None,
            home: None,
            xdg_cache_home: None,
            staged_weights_bytes: DEFAULT_STAGED_WEIGHTS_BYTES,
            max_loaded: Some(DEFAULT_MAX_LOADED),
        }
    }
}

impl RuntimeSettings {
    /// Every engine's settings: the rulebook (two inputs allowed under the two-input policy),
    /// one compile budget for the engine in use (reference or apple), the reference engine's
    /// faults, Core ML's compiled models beside the kernel cache.
    pub fn engine_config(&self) -> EngineConfig {
        let rules = self.enforce_rules.then(|| {
            let mut rules = RuleOptions::default();
            rules.allow_two_inputs = self.kernels == KernelPolicy::TwoInput;
            rules
        });
        let mut reference = ReferenceConfig::default()
            .with_faults(self.reference_faults)
            .with_rules(rules)
            .with_accumulator(self.reference_accumulator);
        let mut apple = AppleConfig {
            rules,
            ..AppleConfig::default()
        };
        if let Some(budget) = self.compile_budget {
            let counter = CompileCounter::process(EngineKind::Reference, Some(budget));
            reference = reference.with_counter(counter);
            apple.compile_budget = budget;
        }
        let mut config = EngineConfig {
            reference,
            apple,
            ..EngineConfig::default()
        };
        if let Some(dir) = self.cache_folder() {
            config.coreml = CoreMlConfig::with_models_dir(dir.join("coreml"));
        }
        config
    }

    /// The disk cache's folder: `None` when it is off, or when the platform default needs a
    /// home folder there is none of.
    pub fn cache_folder(&self) -> Option<PathBuf> {
        match &self.cache_dir {
            CacheDir::Off => None,
            CacheDir::At(dir) => Some(dir.clone()),
            CacheDir::PlatformDefault => {
                DiskCache::platform_dir(self.home.as_deref(), self.xdg_cache_home.as_deref())
            }
        }
    }

    /// The disk cache, `None` when it is off.
    pub fn disk_cache(&self) -> Option<DiskCache> {
        // saturating: callers refuse values that overflow; a hand-built one caps at u64::MAX
        let cap = self
            .cache_max_mb
            .map_or(DEFAULT_CAP_BYTES, |mb| mb.saturating_mul(1 << 20));
        self.cache_folder().map(|dir| DiskCache::new(dir, cap))
    }

    /// The kernel cache: on the disk cache, choosing kernels by [`kernels`](Self::kernels),
    /// with the staged-weights and loaded-kernel caps.
    pub fn kernel_cache(&self) -> KernelCache {
        KernelCache::with_disk(self.disk_cache())
            .with_policy(self.kernels)
            .with_staged_weights_cap(self.staged_weights_bytes)
            .with_max_loaded(self.max_loaded)
    }

    /// The engine [`engine`](Self::engine) names, with [`engine_config`](Self::engine_config).
    ///
    /// # Errors
    /// The engine cannot be created here (see [`crate::create`]).
    pub fn create_engine(&self) -> crate::Result<Arc<dyn Engine>> {
        crate::create(self.engine, &self.engine_config())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn cache_dir_values_name_a_folder_the_default_or_none() {
        assert_eq!(CacheDir::parse(None), CacheDir::PlatformDefault);
        assert_eq!(CacheDir::parse(Some("  ")), CacheDir::PlatformDefault);
        assert_eq!(CacheDir::parse(Some(" off")), CacheDir::Off);
        assert_eq!(CacheDir::parse(Some("none")), CacheDir::Off);
        assert_eq!(
            CacheDir::parse(Some(" /tmp/k ")),
            CacheDir::At(PathBuf::from("/tmp/k"))
        );
        let mut s = RuntimeSettings::default();
        assert_eq!(s.cache_folder(), None, "no home: no default folder");
        s.home = Some(PathBuf::from("/home/u"));
        let default = s.cache_folder().unwrap();
        assert!(default.starts_with("/home/u") && default.ends_with("ggml-ane"));
        s.cache_dir = CacheDir::Off;
        assert!(s.disk_cache().is_none());
        assert_eq!(
            s.engine_config().coreml.models_dir,
            CoreMlConfig::default().models_dir
        );
    }

    #[test]
    fn the_settings_reach_every_engine_and_the_caches() {
        let s = RuntimeSettings {
            compile_budget: Some(3),
            reference_faults: Faults::parse("eval").unwrap(),
            kernels: KernelPolicy::TwoInput,
            cache_dir: CacheDir::At(PathBuf::from("/tmp/k")),
            cache_max_mb: Some(2),
            staged_weights_bytes: 0,
            max_loaded: None,
            ..RuntimeSettings::default()
        };
        let c = s.engine_config();
        assert!(c.reference.rules.unwrap().allow_two_inputs);
        assert!(c.apple.rules.unwrap().allow_two_inputs);
        assert_eq!(
            (c.reference.counter.budget(), c.apple.compile_budget),
            (Some(3), 3)
        );
        assert_eq!(c.reference.faults, Faults::parse("eval").unwrap());
        assert_eq!(c.coreml.models_dir, PathBuf::from("/tmp/k/coreml"));
        assert_eq!(s.disk_cache().unwrap().dir(), Path::new("/tmp/k"));
        let cache = s.kernel_cache();
        assert_eq!(
            (cache.policy(), cache.max_loaded()),
            (KernelPolicy::TwoInput, None)
        );
        let off = RuntimeSettings {
            enforce_rules: false,
            ..RuntimeSettings::default()
        };
        let c = off.engine_config();
        assert!(c.reference.rules.is_none() && c.apple.rules.is_none());
        assert_eq!(off.kernel_cache().max_loaded(), Some(DEFAULT_MAX_LOADED));
    }
}
