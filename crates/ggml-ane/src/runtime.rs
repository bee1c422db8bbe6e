//! The process's engine: created on first use from the settings, the first engine that can
//! be created and passes its self-probe, with its kernel cache.

use std::ffi::CString;
use std::sync::{Arc, OnceLock};

use ane_runtime::fused::probe::{probe_fused, FusedProbe};
use ane_runtime::fused::FusedForm;
use ane_runtime::matmul::probe::{forms_for, probe, usable_policy, ProbeResult};
use ane_runtime::matmul::KernelCache;
use ane_runtime::matmul::KernelPolicy;
use ane_runtime::{Engine, EngineChoice, EngineKind};

use crate::abi::{log, GGML_LOG_LEVEL_INFO, GGML_LOG_LEVEL_WARN};
use crate::settings::{self, Config};

/// Process-wide state: the engine, its compiled kernels, and the settings.
pub(crate) struct Runtime {
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) cache: KernelCache,
    pub(crate) description: CString,
    /// What the self-probe found (empty when the engine was not probed).
    pub(crate) probe: Vec<ProbeResult>,
    /// What the fused forms' self-probe found (empty when not probed).
    pub(crate) fused_probe: Vec<FusedProbe>,
    pub(crate) config: &'static Config,
}

static RT: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// Whether a backend tried to make the runtime and no engine was usable (its self-probe
/// failed everywhere): the devices then take no ops.
pub(crate) fn runtime_failed() -> bool {
    matches!(RT.get(), Some(Err(_)))
}

/// The runtime, if a backend already made it (asking never makes it).
pub(crate) fn runtime_if_made() -> Option<&'static Runtime> {
    RT.get().and_then(|r| r.as_ref().ok())
}

/// The engine the settings pick, created without its self-probe — no compile, no budget
/// spent: what registration (`ggml_backend_score`), the device list and the features need.
/// A process that loads the library and never computes with it (`llama-cli --list-devices`,
/// a whisper.cpp run on other devices) compiles nothing.
pub(crate) struct EngineAtHand {
    pub(crate) kind: EngineKind,
    pub(crate) description: CString,
    pub(crate) limits: ane_runtime::Limits,
}

pub(crate) fn engine_at_hand() -> Result<&'static EngineAtHand, String> {
    static AT_HAND: OnceLock<Result<EngineAtHand, String>> = OnceLock::new();
    AT_HAND
        .get_or_init(|| {
            let config = settings::get().as_ref().map_err(Clone::clone)?;
            let engine = ane_runtime::create(config.runtime.engine, &config.engines)
                .map_err(|e| e.to_string())?;
            let info = engine.info();
            Ok(EngineAtHand {
                kind: info.kind,
                description: CString::new(info.description).unwrap_or_default(),
                limits: engine.limits(),
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The runtime, created on first use from the configuration (`GGML_ANE_ENGINE`: auto by
/// default): the first engine that can be created and passes its self-probe. Made by the
/// first backend (`init_backend`), never by loading or listing.
pub(crate) fn runtime() -> Result<&'static Runtime, String> {
    RT.get_or_init(|| {
        let config = settings::get().as_ref().map_err(Clone::clone)?;
        let chosen = choose_engine(config)?;
        let info = chosen.engine.info();
        // one line: which engine, and why auto passed over the ones before it
        let why = if chosen.passed_over.is_empty() {
            String::new()
        } else {
            format!(" ({})", chosen.passed_over.join("; "))
        };
        log(
            GGML_LOG_LEVEL_INFO,
            &format!("ggml-ane: using the {} engine{why}", info.kind),
        );
        // the fused forms, probed on the same engines as the matmul forms
        let fused_probe = if config.fuse && !chosen.probe.is_empty() {
            let mut forms = vec![FusedForm::Streamed];
            if chosen.policy.may_bake() {
                forms.insert(0, FusedForm::Baked);
            }
            let found = probe_fused(chosen.engine.as_ref(), &forms);
            for r in &found {
                let level = if r.passed() {
                    GGML_LOG_LEVEL_INFO
                } else {
                    GGML_LOG_LEVEL_WARN
                };
                log(
                    level,
                    &format!("ggml-ane: {} engine self-probe: {r}", info.kind),
                );
            }
            found
        } else {
            Vec::new()
        };
        let passed = |form: FusedForm| {
            fused_probe
                .iter()
                .find(|r| r.form == form)
                .is_none_or(FusedProbe::passed)
        };
        Ok(Runtime {
            engine: chosen.engine,
            cache: config
                .runtime
                .kernel_cache()
                .with_policy(chosen.policy)
                .with_fused_forms(passed(FusedForm::Baked), passed(FusedForm::Streamed)),
            description: CString::new(info.description).unwrap_or_default(),
            probe: chosen.probe,
            fused_probe,
            config,
        })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// An engine, the kernel policy it can serve, and what its probe found.
struct Chosen {
    engine: Arc<dyn Engine>,
    passed_over: Vec<String>,
    policy: KernelPolicy,
    probe: Vec<ProbeResult>,
}

/// The engine `GGML_ANE_ENGINE` names, or under `auto` the first of apple, coreml, reference
/// that can be created and whose self-probe leaves a kernel form to use. The apple and coreml
/// engines are always probed; the reference engine with `GGML_ANE_PROBE=1`.
fn choose_engine(config: &Config) -> Result<Chosen, String> {
    let kinds = match config.runtime.engine {
        EngineChoice::Only(kind) => vec![kind],
        EngineChoice::Auto => vec![EngineKind::Apple, EngineKind::CoreMl, EngineKind::Reference],
    };
    let mut passed_over = Vec::new();
    for kind in kinds {
        let engine = match ane_runtime::create(EngineChoice::Only(kind), &config.engines) {
            Ok(engine) => engine,
            Err(e) => {
                passed_over.push(e.to_string());
                continue;
            }
        };
        if kind == EngineKind::Reference && !config.probe {
            return Ok(Chosen {
                engine,
                passed_over,
                policy: config.runtime.kernels,
                probe: Vec::new(),
            });
        }
        let found = probe(engine.as_ref(), &forms_for(config.runtime.kernels));
        let compiles: u64 = found.iter().map(|r| r.compiles).sum();
        for r in &found {
            let level = if r.passed() {
                GGML_LOG_LEVEL_INFO
            } else {
                GGML_LOG_LEVEL_WARN
            };
            log(level, &format!("ggml-ane: {kind} engine self-probe: {r}"));
        }
        match usable_policy(config.runtime.kernels, &found) {
            Ok(policy) => {
                if policy != config.runtime.kernels {
                    log(
                        GGML_LOG_LEVEL_WARN,
                        &format!(
                            "ggml-ane: kernels {} instead of {} (self-probe; {compiles} compiles)",
                            policy, config.runtime.kernels
                        ),
                    );
                }
                return Ok(Chosen {
                    engine,
                    passed_over,
                    policy,
                    probe: found,
                });
            }
            Err(why) => passed_over.push(format!("the {kind} engine: {why}")),
        }
    }
    Err(passed_over.join("; "))
}

/// `ggml_backend_get_features`: the engine and its limits; the self-probe's findings once a
/// backend made the runtime (before that, the engine at hand: nothing is compiled to answer).
pub(crate) fn features() -> Vec<(String, String)> {
    let config = match settings::get() {
        Ok(c) => c,
        Err(e) => return vec![("ENGINE".to_string(), format!("unavailable: {e}"))],
    };
    let (kind, limits, kernels) = match (runtime_if_made(), engine_at_hand()) {
        (Some(rt), _) => (rt.engine.info().kind, rt.engine.limits(), rt.cache.policy()),
        (None, Ok(e)) => (e.kind, e.limits, config.runtime.kernels),
        (None, Err(e)) => return vec![("ENGINE".to_string(), format!("unavailable: {e}"))],
    };
    let mut f = vec![
        ("ENGINE".to_string(), kind.to_string()),
        ("MAX_DIM".to_string(), limits.max_dim.to_string()),
        ("MIN_BATCH".to_string(), config.min_batch.to_string()),
        ("MIN_TOKENS".to_string(), config.min_tokens.to_string()),
        ("KERNELS".to_string(), kernels.as_str().to_string()),
    ];
    if let Some(b) = limits.compile_budget {
        f.push(("COMPILE_BUDGET".to_string(), b.to_string()));
    }
    // which ggml this library is bound to, and how many the process holds (one, or trouble)
    if let Some(base) = crate::abi::host::bound_ggml_base() {
        f.push(("GGML_BASE".to_string(), base));
    }
    f.push((
        "GGML_BASE_COPIES".to_string(),
        crate::abi::host::loaded_ggml_bases().len().to_string(),
    ));
    if let Some(rt) = runtime_if_made().filter(|rt| !rt.probe.is_empty()) {
        let found: Vec<String> = rt
            .probe
            .iter()
            .map(ToString::to_string)
            .chain(rt.fused_probe.iter().map(ToString::to_string))
            .collect();
        f.push(("SELF_PROBE".to_string(), found.join("; ")));
    }
    f
}
