//! Every `GGML_ANE_*` variable the backend reads, parsed once into a [`Config`]. Nothing else
//! in the workspace's libraries reads the environment: `ane-runtime` takes the values this
//! module produces as plain settings. The README's variable table lists exactly
//! [`VARIABLES`] (a unit test compares them).

use std::path::PathBuf;
use std::sync::OnceLock;

use ane_runtime::chips::Mode;
use ane_runtime::engine::reference::Faults;
use ane_runtime::kernels::policy::KernelPolicy;
use ane_runtime::kernels::DEFAULT_MAX_LOADED;
use ane_runtime::settings::{CacheDir, RuntimeSettings};
use ane_runtime::staging::DEFAULT_STAGED_WEIGHTS_BYTES;
use ane_runtime::{EngineChoice, EngineConfig};

/// The variables, in the README's order.
pub(crate) const VARIABLES: &[&str] = &[
    "GGML_ANE_ENGINE",
    "GGML_ANE_STATS",
    "GGML_ANE_LOG",
    "GGML_ANE_MIN_BATCH",
    "GGML_ANE_MIN_TOKENS",
    "GGML_ANE_CACHE_DIR",
    "GGML_ANE_CACHE_MAX_MB",
    "GGML_ANE_KERNELS",
    "GGML_ANE_COMPILE_BUDGET",
    "GGML_ANE_REFERENCE_FAULTS",
    "GGML_ANE_SURFACE_CACHE_MB",
    "GGML_ANE_MAX_LOADED",
    "GGML_ANE_DISABLE",
    "GGML_ANE_ANY_GGML",
    "GGML_ANE_PROBE",
    "GGML_ANE_FUSE",
    "GGML_ANE_MATMULS",
    "GGML_ANE_FULL",
    "GGML_ANE_STATS_INTERVAL",
    "GGML_ANE_MODE",
    "GGML_ANE_CHIP",
    "GGML_ANE_MEASURE",
];

/// Offload MUL_MAT only from this many tokens (N) up, unless `GGML_ANE_MIN_BATCH` says
/// otherwise. With ~0.1–0.3 ms per ANE dispatch and ~5 TFLOPS per kernel, a matmul needs
/// ≳1 GFLOP to be worth it: 4096×4096 at N = 64 is 2.1 GFLOP (docs/ane-notes.md#offload-threshold).
pub(crate) const DEFAULT_MIN_BATCH: usize = 64;

/// MUL_MATs with fewer tokens are declined unless `GGML_ANE_MIN_TOKENS` says otherwise: 32,
/// Metal's own offload threshold (`GGML_OP_OFFLOAD_MIN_BATCH`), so decode stays where it was.
pub(crate) const DEFAULT_MIN_TOKENS: usize = 32;

/// How much the log says: ggml's levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// The backend's settings.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// What the runtime is built from, as the `ane` command fills it too: `GGML_ANE_ENGINE`,
    /// `_COMPILE_BUDGET`, `_REFERENCE_FAULTS`, `_KERNELS`, `_CACHE_DIR`, `_CACHE_MAX_MB`,
    /// `_SURFACE_CACHE_MB`, `_MAX_LOADED` (0: no cap).
    pub(crate) runtime: RuntimeSettings,
    /// Every engine's settings, built once from `runtime`.
    pub(crate) engines: EngineConfig,
    /// `GGML_ANE_DISABLE=1`: register no device.
    pub(crate) disable: bool,
    /// `GGML_ANE_ANY_GGML=1`: offer the device in a ggml the version table does not cover.
    pub(crate) any_ggml: bool,
    /// `GGML_ANE_PROBE=1`: self-probe the reference engine too (apple and coreml always are).
    pub(crate) probe: bool,
    /// `GGML_ANE_FUSE=0` turns fused programs off (on by default).
    pub(crate) fuse: bool,
    /// `GGML_ANE_MATMULS=blocks`: only the MUL_MATs fused blocks hold (reading a norm's scale
    /// or a GLU); `all` (default) every MUL_MAT.
    pub(crate) blocks_only: bool,
    /// `GGML_ANE_FULL=0` hides the ANE-FULL device (offered by default).
    pub(crate) full_device: bool,
    /// `GGML_ANE_STATS_INTERVAL=N`: print the stats table after every N graphs.
    pub(crate) stats_interval: Option<u64>,
    /// `GGML_ANE_MIN_BATCH`: `offload_op` pulls MUL_MATs over from this many tokens.
    pub(crate) min_batch: usize,
    /// `GGML_ANE_MIN_TOKENS`: MUL_MATs with fewer tokens are declined (`supports_op`).
    pub(crate) min_tokens: usize,
    /// `GGML_ANE_STATS`: 0 off, 1 the table at backend free, 2 also node by node.
    pub(crate) stats_level: u8,
    /// `GGML_ANE_LOG`: lines below this level are not logged.
    pub(crate) log_level: LogLevel,
    /// `GGML_ANE_MODE`: auto (default), speed, energy, always, off (`ane_runtime::chips`).
    pub(crate) mode: Mode,
    /// `GGML_ANE_CHIP`: the chip table's row to route by instead of this Mac's own.
    pub(crate) chip: Option<String>,
    /// `GGML_ANE_MEASURE=0`: route by the chip table alone, never by timing shapes against the
    /// host's GPU (`crate::measured`).
    pub(crate) measure: bool,
}

/// The process's configuration, read from the environment on first use.
pub(crate) fn get() -> &'static Result<Config, String> {
    static CONFIG: OnceLock<Result<Config, String>> = OnceLock::new();
    CONFIG.get_or_init(|| {
        Config::from_lookup(
            |name| std::env::var(name).ok(),
            |name| std::env::var_os(name),
        )
    })
}

/// The log threshold, which must work even when the rest of the configuration is invalid (to
/// report that).
pub(crate) fn log_level() -> LogLevel {
    match get() {
        Ok(c) => c.log_level,
        Err(_) => LogLevel::Warn,
    }
}

impl Config {
    /// Parses the variables through `var` (a `GGML_ANE_*` name → its value); `os_var` reads
    /// `HOME` and `XDG_CACHE_HOME` for the default cache folder. An unparsable value is an
    /// error naming the variable, never silently a default.
    pub(crate) fn from_lookup(
        var: impl Fn(&str) -> Option<String>,
        os_var: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Config, String> {
        let var = |name: &str| {
            debug_assert!(VARIABLES.contains(&name), "{name} is not in VARIABLES");
            var(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let number = |name: &str| -> Result<Option<u64>, String> {
            var(name)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format!("{name}={v}: not a number"))
                })
                .transpose()
        };
        let named = |name: &str, e: ane_runtime::Error| format!("{name}: {e}");

        let engine = match var("GGML_ANE_ENGINE") {
            Some(v) => v.parse().map_err(|e| named("GGML_ANE_ENGINE", e))?,
            None => EngineChoice::Auto,
        };
        let kernels = match var("GGML_ANE_KERNELS") {
            Some(v) => v.parse().map_err(|e| named("GGML_ANE_KERNELS", e))?,
            None => KernelPolicy::Auto,
        };
        let faults = match var("GGML_ANE_REFERENCE_FAULTS") {
            Some(v) => Faults::parse(&v).map_err(|e| named("GGML_ANE_REFERENCE_FAULTS", e))?,
            None => Faults::default(),
        };
        let budget = number("GGML_ANE_COMPILE_BUDGET")?
            .map(|b| {
                u32::try_from(b).map_err(|_| format!("GGML_ANE_COMPILE_BUDGET={b}: too large"))
            })
            .transpose()?;
        // MiB to bytes, refusing what does not fit (a shift would wrap silently)
        let mib = |name: &str| -> Result<Option<u64>, String> {
            number(name)?
                .map(|mb| {
                    mb.checked_mul(1 << 20)
                        .filter(|&b| usize::try_from(b).is_ok())
                        .ok_or_else(|| format!("{name}={mb}: too large (MiB)"))
                })
                .transpose()
        };
        let cache_max_mb = mib("GGML_ANE_CACHE_MAX_MB")?.map(|bytes| bytes >> 20);
        let staged_weights_bytes =
            mib("GGML_ANE_SURFACE_CACHE_MB")?.map_or(DEFAULT_STAGED_WEIGHTS_BYTES, |b| b as usize);
        let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        let max_loaded = match number("GGML_ANE_MAX_LOADED")? {
            None => Some(DEFAULT_MAX_LOADED),
            Some(0) => None,
            Some(n) => Some(to_usize(n)),
        };
        let min_batch = number("GGML_ANE_MIN_BATCH")?.map_or(DEFAULT_MIN_BATCH, to_usize);
        // Metal's own offload threshold: decode steps stay on the backend they were on
        let min_tokens = number("GGML_ANE_MIN_TOKENS")?
            .map_or(DEFAULT_MIN_TOKENS, to_usize)
            .max(1);
        let flag = |name: &str| -> Result<bool, String> {
            match var(name).as_deref() {
                None | Some("0") => Ok(false),
                Some("1") => Ok(true),
                Some(other) => Err(format!("{name}={other}: expected 0 or 1")),
            }
        };
        let (disable, any_ggml) = (flag("GGML_ANE_DISABLE")?, flag("GGML_ANE_ANY_GGML")?);
        let probe = flag("GGML_ANE_PROBE")?;
        let fuse = var("GGML_ANE_FUSE").is_none() || flag("GGML_ANE_FUSE")?;
        let measure = var("GGML_ANE_MEASURE").is_none() || flag("GGML_ANE_MEASURE")?;
        let full_device = var("GGML_ANE_FULL").is_none() || flag("GGML_ANE_FULL")?;
        let stats_interval = number("GGML_ANE_STATS_INTERVAL")?.filter(|&n| n > 0);
        let blocks_only = match var("GGML_ANE_MATMULS").as_deref() {
            None | Some("all") => false,
            Some("blocks") => true,
            Some(other) => {
                return Err(format!(
                    "GGML_ANE_MATMULS={other}: expected `all` or `blocks`"
                ))
            }
        };
        let stats_level = stats_level(var("GGML_ANE_STATS").as_deref());
        let log_level = match var("GGML_ANE_LOG")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("warn" | "warning") => LogLevel::Warn,
            Some("error") => LogLevel::Error,
            Some("info") => LogLevel::Info,
            Some("debug") => LogLevel::Debug,
            Some(other) => {
                return Err(format!(
                    "GGML_ANE_LOG={other}: expected error, warn, info or debug"
                ))
            }
        };
        let mode = match var("GGML_ANE_MODE") {
            Some(v) => v.parse().map_err(|e| format!("GGML_ANE_MODE={v}: {e}"))?,
            None => Mode::Auto,
        };
        let chip = var("GGML_ANE_CHIP");
        let mut runtime = RuntimeSettings::default();
        if let Some(name) = &chip {
            let row = ane_runtime::chips::chip(name).ok_or_else(|| {
                format!(
                    "GGML_ANE_CHIP={name}: no such chip in the table ({})",
                    ane_runtime::chips::names()
                )
            })?;
            // the reference engine stands in for that chip's accumulator too (an M6's Q15.16)
            runtime.reference_accumulator = row.accumulator;
        }
        runtime.engine = engine;
        runtime.compile_budget = budget;
        runtime.reference_faults = faults;
        runtime.kernels = kernels;
        runtime.cache_dir = CacheDir::parse(var("GGML_ANE_CACHE_DIR").as_deref());
        runtime.cache_max_mb = cache_max_mb;
        runtime.home = os_var("HOME").map(PathBuf::from);
        runtime.xdg_cache_home = os_var("XDG_CACHE_HOME").map(PathBuf::from);
        runtime.staged_weights_bytes = staged_weights_bytes;
        runtime.max_loaded = max_loaded;
        Ok(Config {
            engines: runtime.engine_config(),
            runtime,
            disable,
            any_ggml,
            probe,
            fuse,
            blocks_only,
            full_device,
            stats_interval,
            min_batch,
            min_tokens,
            stats_level,
            log_level,
            mode,
            chip,
            measure,
        })
    }
}

/// `GGML_ANE_STATS`: unset, empty or 0 → 0; 2 (or more) → 2; anything else → 1.
fn stats_level(v: Option<&str>) -> u8 {
    match v.map(str::trim) {
        None | Some("" | "0") => 0,
        Some(v) => match v.parse::<u8>() {
            Ok(n) if n >= 2 => 2,
            _ => 1,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use ane_runtime::EngineKind;

    fn config(vars: &[(&str, &str)]) -> Result<Config, String> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|n| vars.get(n).cloned(), |_| None)
    }

    #[test]
    fn stats_levels_from_the_environment_value() {
        for (v, want) in [
            (None, 0),
            (Some(""), 0),
            (Some("0"), 0),
            (Some("1"), 1),
            (Some("yes"), 1),
            (Some(" 2 "), 2),
            (Some("9"), 2),
        ] {
            assert_eq!(stats_level(v), want, "{v:?}");
        }
    }

    #[test]
    fn the_readme_table_lists_exactly_the_variables_read() {
        // every variable the parser asks for
        let asked = RefCell::new(BTreeSet::new());
        let _ = Config::from_lookup(
            |n| {
                asked.borrow_mut().insert(n.to_string());
                None
            },
            |_| None,
        );
        let declared: BTreeSet<String> = VARIABLES.iter().map(|s| s.to_string()).collect();
        assert_eq!(asked.into_inner(), declared);
        // the first column of the README's table
        let readme = include_str!("../../../README.md");
        let documented: BTreeSet<String> = readme
            .lines()
            .filter_map(|l| l.strip_prefix("| `GGML_ANE_"))
            .map(|rest| {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                format!("GGML_ANE_{name}")
            })
            .collect();
        assert_eq!(documented, declared);
    }

    #[test]
    fn defaults_and_values_parse() {
        let c = config(&[]).unwrap();
        assert_eq!(c.runtime.engine, EngineChoice::Auto);
        assert_eq!(c.runtime.kernels, KernelPolicy::Auto);
        assert_eq!((c.min_batch, c.min_tokens, c.stats_level), (64, 32, 0));
        assert!(!c.disable && !c.any_ggml);
        assert_eq!(c.log_level, LogLevel::Warn);
        assert!(
            c.runtime.disk_cache().is_none(),
            "no home folder in this lookup: no cache"
        );
        let c = config(&[
            ("GGML_ANE_ENGINE", "reference"),
            ("GGML_ANE_KERNELS", "two-input"),
            ("GGML_ANE_MIN_TOKENS", "32"),
            ("GGML_ANE_CACHE_DIR", "/tmp/k"),
            ("GGML_ANE_CACHE_MAX_MB", "2"),
            ("GGML_ANE_COMPILE_BUDGET", "3"),
            ("GGML_ANE_REFERENCE_FAULTS", "eval, inf"),
            ("GGML_ANE_LOG", "DEBUG"),
        ])
        .unwrap();
        assert_eq!(c.runtime.engine, EngineChoice::Only(EngineKind::Reference));
        assert_eq!(
            (c.runtime.kernels, c.min_tokens),
            (KernelPolicy::TwoInput, 32)
        );
        assert!(
            c.engines.reference.rules.unwrap().allow_two_inputs,
            "the two-input opt-in lets the rulebook pass two inputs"
        );
        assert_eq!(
            c.runtime.disk_cache().unwrap().dir(),
            std::path::Path::new("/tmp/k")
        );
        assert_eq!(c.runtime.cache_max_mb, Some(2));
        assert_eq!(c.engines.reference.counter.budget(), Some(3));
        assert_eq!(c.engines.apple.compile_budget, 3);
        assert_eq!(
            c.engines.reference.faults,
            Faults::parse("inf,eval").unwrap()
        );
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(
            c.engines.coreml.models_dir,
            PathBuf::from("/tmp/k/coreml"),
            "Core ML's compiled models live beside the kernels"
        );
    }

    #[test]
    fn bad_values_are_errors_naming_the_variable() {
        for (name, value) in [
            ("GGML_ANE_ENGINE", "gpu"),
            ("GGML_ANE_KERNELS", "fast"),
            ("GGML_ANE_MIN_BATCH", "many"),
            ("GGML_ANE_COMPILE_BUDGET", "-1"),
            ("GGML_ANE_REFERENCE_FAULTS", "crash"),
            ("GGML_ANE_LOG", "loud"),
            ("GGML_ANE_DISABLE", "yes"),
            ("GGML_ANE_MATMULS", "some"),
            // 2^44 MiB is 2^64 bytes: `mb << 20` wrapped to 0
            ("GGML_ANE_CACHE_MAX_MB", "17592186044416"),
            ("GGML_ANE_SURFACE_CACHE_MB", "18446744073709551615"),
            ("GGML_ANE_MODE", "fast"),
            ("GGML_ANE_CHIP", "M9 Ultra"),
        ] {
            let err = config(&[(name, value)]).unwrap_err();
            assert!(err.contains(name), "{name}={value}: {err}");
        }
    }
}
