//! Engines compile MIL programs into kernels; kernels evaluate procedures on surfaces.
//!
//! Life cycle: pick an engine ([`create`], [`EngineKind::from_env`]) → read its [`Limits`] →
//! [`Engine::compile`] a program with its weight files (one compile, however many functions
//! it has; each function becomes a procedure) → allocate [`Surface`]s with the layouts the
//! kernel reports → [`Kernel::eval`] as often as needed. Kernels are `Send + Sync`: several
//! threads may evaluate one kernel at once, each with its own surfaces.

#[cfg(target_os = "macos")]
pub mod apple;
#[cfg(target_os = "macos")]
pub mod coreml;
pub mod live_layout;
pub mod model_dir;
pub mod reference;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use ane_mil::{Program, WeightFiles};

use crate::error::{Error, Result};
use crate::layout::TensorLayout;
use crate::surface::Surface;

/// The compile budget the `apple` engine keeps per process: below the ~119 compiles after
/// which the hardware's compiler fails silently (ane-tech.md §4.1).
pub const ANE_COMPILE_BUDGET: u32 = 100;

/// Which engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// The CPU reference engine (every platform).
    Reference,
    /// The private `_ANEInMemoryModel` path (macOS).
    Apple,
    /// Public Core ML (macOS).
    CoreMl,
}

impl EngineKind {
    /// Lower-case name as used in `GGML_ANE_ENGINE`.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Reference => "reference",
            EngineKind::Apple => "apple",
            EngineKind::CoreMl => "coreml",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An engine choice: one engine, or `auto` (best available).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineChoice {
    /// Try apple, then coreml, then reference.
    Auto,
    /// Exactly this engine.
    Only(EngineKind),
}

impl FromStr for EngineChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => EngineChoice::Auto,
            "reference" | "ref" | "cpu" => EngineChoice::Only(EngineKind::Reference),
            "apple" | "ane" => EngineChoice::Only(EngineKind::Apple),
            "coreml" => EngineChoice::Only(EngineKind::CoreMl),
            other => return Err(Error::UnknownEngine(other.to_string())),
        })
    }
}

impl EngineChoice {
    /// From `GGML_ANE_ENGINE` (unset means auto).
    pub fn from_env() -> Result<Self> {
        std::env::var("GGML_ANE_ENGINE").unwrap_or_default().parse()
    }
}

/// What an engine is, for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineInfo {
    /// Which engine.
    pub kind: EngineKind,
    /// One line, e.g. "Apple Neural Engine (reference engine, CPU)".
    pub description: String,
    /// Extra facts worth printing (device, threads, ...).
    pub details: Vec<(String, String)>,
}

/// What an engine accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest size of any tensor dimension.
    pub max_dim: usize,
    /// Row strides are multiples of this many bytes.
    pub row_alignment: usize,
    /// Compiles allowed per process (`None`: unlimited).
    pub compile_budget: Option<u32>,
    /// Compiles used so far against that budget.
    pub compiles_used: u32,
}

impl Limits {
    /// Compiles left, or `None` when unlimited.
    pub fn compiles_left(&self) -> Option<u32> {
        self.compile_budget
            .map(|b| b.saturating_sub(self.compiles_used))
    }
}

/// An engine: compiles programs into kernels.
pub trait Engine: Send + Sync {
    /// What it is.
    fn info(&self) -> EngineInfo;
    /// What it accepts, and how much budget is left.
    fn limits(&self) -> Limits;
    /// Compiles every function of `program`; BLOBFILE constants resolve in `weights`.
    ///
    /// # Errors
    /// [`Error::BudgetExhausted`] once the budget is spent (before any work is done),
    /// [`Error::Unsupported`] for programs past the engine's limits, and the parse/check/blob
    /// errors of the program itself.
    fn compile(&self, program: &Program, weights: &WeightFiles) -> Result<Box<dyn Kernel>>;

    /// What identifies this engine's compiler output beyond the program (OS build, compiler
    /// version): part of the on-disk cache key.
    fn build_id(&self) -> String {
        String::new()
    }

    /// Serialises a kernel compiled from `program`, so a later process can [`import`](Self::import)
    /// it instead of compiling; `None` if this engine cannot.
    fn export(&self, _program: &Program, _kernel: &dyn Kernel) -> Option<Vec<u8>> {
        None
    }

    /// Loads an exported kernel. Does not spend the compile budget.
    fn import(&self, _artifact: &[u8], _weights: &WeightFiles) -> Result<Box<dyn Kernel>> {
        Err(Error::Compile(format!(
            "the {} engine cannot import kernels",
            self.info().kind
        )))
    }
}

/// Compiles `program`, or loads it from `disk` when an earlier run stored it; stores what it
/// compiles. Returns the kernel and whether it came from the disk cache.
pub fn compile_cached(
    engine: &dyn Engine,
    disk: Option<&crate::disk_cache::DiskCache>,
    program: &Program,
    weights: &WeightFiles,
) -> Result<(Box<dyn Kernel>, bool)> {
    let Some(disk) = disk else {
        return Ok((engine.compile(program, weights)?, false));
    };
    let key =
        crate::disk_cache::DiskCache::key(engine.info().kind, &engine.build_id(), program, weights);
    if let Some(artifact) = disk.load(&key) {
        // a damaged or foreign entry is recompiled, not trusted
        if let Ok(kernel) = engine.import(&artifact, weights) {
            return Ok((kernel, true));
        }
    }
    let kernel = engine.compile(program, weights)?;
    if let Some(artifact) = engine.export(program, kernel.as_ref()) {
        // a cache that cannot be written costs time, never correctness
        let _ = disk.store(&key, &artifact);
    }
    Ok((kernel, false))
}

/// A procedure of a compiled kernel: its inputs and outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcedureInfo {
    /// The function's name.
    pub name: String,
    /// Input layouts, in parameter order.
    pub inputs: Vec<TensorLayout>,
    /// Output layouts, in output order.
    pub outputs: Vec<TensorLayout>,
}

/// A compiled program.
pub trait Kernel: Send + Sync {
    /// Procedures, in function order.
    fn procedures(&self) -> &[ProcedureInfo];

    /// Runs procedure `index`: reads `inputs`, writes `outputs` (rows' padding is left as is).
    ///
    /// # Errors
    /// [`Error::LayoutMismatch`] when a surface does not have the procedure's layout, or
    /// [`Error::Eval`] when the engine fails.
    fn eval(&self, index: usize, inputs: &[&Surface], outputs: &mut [&mut Surface]) -> Result<()>;

    /// The index of the procedure called `name`.
    fn procedure_index(&self, name: &str) -> Result<usize> {
        self.procedures()
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| Error::NoProcedure(name.to_string()))
    }
}

/// Procedure `index` of a kernel, with the surfaces checked against its layouts: the start
/// of every [`Kernel::eval`].
pub fn checked_procedure<'p>(
    procedures: &'p [ProcedureInfo],
    index: usize,
    inputs: &[&Surface],
    outputs: &[&mut Surface],
) -> Result<&'p ProcedureInfo> {
    let proc_ = procedures
        .get(index)
        .ok_or_else(|| Error::NoProcedure(index.to_string()))?;
    check_surfaces(proc_, inputs, outputs)?;
    Ok(proc_)
}

/// Checks surfaces against the layouts a procedure expects.
pub fn check_surfaces(
    proc_: &ProcedureInfo,
    inputs: &[&Surface],
    outputs: &[&mut Surface],
) -> Result<()> {
    let count = |what: &str, want: usize, got: usize| Error::LayoutMismatch {
        what: format!("{} of `{}`", what, proc_.name),
        expected: format!("{want} surfaces"),
        got: format!("{got}"),
    };
    if inputs.len() != proc_.inputs.len() {
        return Err(count("inputs", proc_.inputs.len(), inputs.len()));
    }
    if outputs.len() != proc_.outputs.len() {
        return Err(count("outputs", proc_.outputs.len(), outputs.len()));
    }
    let pairs = proc_
        .inputs
        .iter()
        .zip(inputs.iter().map(|s| s.layout()))
        .chain(proc_.outputs.iter().zip(outputs.iter().map(|s| s.layout())));
    for (want, got) in pairs {
        let same = want.dtype == got.dtype
            && want.dims == got.dims
            && want.row_stride == got.row_stride
            && want.plane_stride == got.plane_stride
            && want.batch_stride == got.batch_stride;
        if !same {
            return Err(Error::LayoutMismatch {
                what: format!("surface for `{}`", want.name),
                expected: want.to_string(),
                got: got.to_string(),
            });
        }
    }
    Ok(())
}

/// Counts compiles against a budget; shared by every engine that uses the same counter.
#[derive(Clone, Debug)]
pub struct CompileCounter {
    used: Arc<AtomicU32>,
    budget: Option<u32>,
}

impl CompileCounter {
    /// A fresh counter (tests use one each, so they do not share the process's budget).
    pub fn new(budget: Option<u32>) -> Self {
        CompileCounter {
            used: Arc::new(AtomicU32::new(0)),
            budget,
        }
    }

    /// The process-wide counter for `kind`, created with `budget` on first use.
    pub fn process(kind: EngineKind, budget: Option<u32>) -> Self {
        static COUNTERS: OnceLock<[Arc<AtomicU32>; 3]> = OnceLock::new();
        let all = COUNTERS.get_or_init(Default::default);
        let i = kind as usize;
        CompileCounter {
            used: all[i].clone(),
            budget,
        }
    }

    /// Takes one compile from the budget, or fails without taking it.
    pub fn take(&self) -> Result<()> {
        let Some(budget) = self.budget else {
            self.used.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < budget).then_some(u + 1)
            })
            .map(|_| ())
            .map_err(|used| Error::BudgetExhausted { used, budget })
    }

    /// Compiles taken.
    pub fn used(&self) -> u32 {
        self.used.load(Ordering::Acquire)
    }

    /// The budget.
    pub fn budget(&self) -> Option<u32> {
        self.budget
    }
}

/// Creates the engine `choice` names. `Auto` takes the first available of apple, coreml and
/// reference.
pub fn create(choice: EngineChoice) -> Result<Arc<dyn Engine>> {
    create_explained(choice).map(|(engine, _)| engine)
}

/// [`create`], and for `Auto` why each engine before the one picked was passed over (one
/// line each; empty when the first was available or the choice was explicit).
pub fn create_explained(choice: EngineChoice) -> Result<(Arc<dyn Engine>, Vec<String>)> {
    match choice {
        EngineChoice::Only(kind) => Ok((create_kind(kind)?, Vec::new())),
        EngineChoice::Auto => {
            let mut passed_over = Vec::new();
            for kind in [EngineKind::Apple, EngineKind::CoreMl] {
                match create_kind(kind) {
                    Ok(engine) => return Ok((engine, passed_over)),
                    Err(e) => passed_over.push(e.to_string()),
                }
            }
            Ok((create_kind(EngineKind::Reference)?, passed_over))
        }
    }
}

fn create_kind(kind: EngineKind) -> Result<Arc<dyn Engine>> {
    match kind {
        EngineKind::Reference => Ok(Arc::new(reference::ReferenceEngine::new())),
        #[cfg(target_os = "macos")]
        EngineKind::Apple => Ok(Arc::new(apple::AppleEngine::new()?)),
        #[cfg(target_os = "macos")]
        EngineKind::CoreMl => Ok(Arc::new(coreml::CoreMlEngine::new()?)),
        #[cfg(not(target_os = "macos"))]
        other => Err(unavailable(other)),
    }
}

/// Why an Apple engine cannot be created on this platform.
pub fn unavailable(kind: EngineKind) -> Error {
    Error::EngineUnavailable {
        kind,
        reason: format!(
            "needs macOS on Apple silicon (this is {} {})",
            std::env::consts::OS,
            std::env::consts::ARCH
        ),
    }
}
