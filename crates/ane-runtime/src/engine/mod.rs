//! Engines compile MIL programs into kernels; kernels evaluate procedures on surfaces.
//!
//! Life cycle: pick an engine ([`create`] with an [`EngineChoice`] and an [`EngineConfig`]) →
//! read its [`Limits`] → [`Engine::compile`] a program with its weight files (one compile,
//! however many functions it has; each function becomes a procedure) → allocate
//! [`Surface`]s with the layouts the kernel reports → [`eval`](trait.Kernel.html#method.eval)
//! as often as needed. Kernels are `Send + Sync`: several threads may evaluate one kernel at
//! once, each with its own surfaces.
//!
//! One folder per engine: [`reference`](mod@reference) (every platform), [`apple`] and [`coreml`] (their
//! engines exist on macOS only; their settings and pure parts build everywhere). Shared
//! hardware facts are in [`limits`].

pub mod apple;
mod budget;
pub mod coreml;
pub mod limits;
pub mod reference;
mod select;

use ane_mil::{Program, WeightFiles};

use crate::error::{Error, Result};
use crate::layout::TensorLayout;
use crate::surface::Surface;

pub use budget::CompileCounter;
pub use select::{create, create_explained, EngineChoice, EngineConfig, EngineKind};

/// What an engine is, for people.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineInfo {
    /// Which engine.
    pub kind: EngineKind,
    /// One line, e.g. "Apple Neural Engine (reference engine, CPU)".
    pub description: String,
    /// Extra facts worth printing (device, threads, ...).
    pub details: Vec<(String, String)>,
}

/// How an engine sums a matmul's products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Accumulator {
    /// In f32: the reference engine's default, and what the precision prediction assumes for
    /// every chip no source says otherwise of.
    #[default]
    F32,
    /// In Q15.16 fixed point: each fp16 product rounded to a multiple of 2^-16, sums within
    /// ±32768 — the M6's (751K/Apple-Neural-Engine-Microarchitecture-Study-M6
    /// `final_report/en.md` @0b52dda). Small outputs lose relative precision, large partial
    /// sums saturate (how the hardware overflows no source says; the reference engine
    /// saturates, the host declines before it could happen).
    Q15_16,
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
    /// How its matmuls and convolutions accumulate.
    pub accumulator: Accumulator,
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
    /// version): part of the on-disk cache key. Required, so no engine shares cache entries
    /// across versions by forgetting it.
    fn build_id(&self) -> String;

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

/// One of a procedure's surfaces: an input or an output, by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// The `i`-th input.
    Input(usize),
    /// The `i`-th output.
    Output(usize),
}

/// A compiled program.
///
/// Callers evaluate through [`eval`](#method.eval) (an inherent method of `dyn Kernel`, so no
/// engine can override it): it checks the surfaces against the procedure's layouts, then
/// calls the engine's [`run`](Kernel::run).
///
/// Surfaces from [`lend`](Kernel::lend) are the engine's own memory: evaluated with them, the
/// engine reads and writes in place. Any other surface is copied into the engine's memory
/// and back, and `eval` says how many bytes that was.
pub trait Kernel: Send + Sync {
    /// Procedures, in function order.
    fn procedures(&self) -> &[ProcedureInfo];

    /// The engine's part of an evaluation: reads `inputs`, writes `outputs` (rows' padding is
    /// left as is). Called by `eval` only, with procedure `index` present and every surface
    /// already checked against its layout. Returns the bytes copied between the surfaces and
    /// the engine's own memory (0 when every surface was lent for its port).
    ///
    /// # Errors
    /// [`Error::Eval`] when the engine fails.
    fn run(&self, index: usize, inputs: &[&Surface], outputs: &mut [&mut Surface])
        -> Result<usize>;

    /// A surface for `port` of procedure `index` in the engine's own memory, which the kernel
    /// reads or writes in place. Engines without memory of their own lend host memory.
    ///
    /// # Errors
    /// [`Error::NoProcedure`] for a procedure or port that does not exist; an engine's error
    /// when it cannot allocate (callers may fall back to [`Surface::new`]).
    fn lend(&self, index: usize, port: Port) -> Result<Surface> {
        Ok(Surface::new(
            port_layout(self.procedures(), index, port)?.clone(),
        ))
    }

    /// Whether `surface` is one this kernel takes in place for `port` of procedure `index`:
    /// lent by this engine with the size [`lend`](Kernel::lend) gives (a surface another
    /// kernel lent qualifies when the sizes agree). Pools reuse such surfaces.
    fn takes_in_place(&self, _index: usize, _port: Port, surface: &Surface) -> bool {
        surface.lender().is_none()
    }
}

/// The layout of `port` of procedure `index`.
///
/// # Errors
/// [`Error::NoProcedure`] when there is no such procedure or port.
pub fn port_layout(
    procedures: &[ProcedureInfo],
    index: usize,
    port: Port,
) -> Result<&TensorLayout> {
    let p = procedures
        .get(index)
        .ok_or_else(|| Error::NoProcedure(index.to_string()))?;
    let found = match port {
        Port::Input(i) => p.inputs.get(i),
        Port::Output(i) => p.outputs.get(i),
    };
    found.ok_or_else(|| Error::NoProcedure(format!("{} {port:?}", p.name)))
}

/// The memory size an engine with memory of its own lends for `port`: one size for every
/// surface of its group (a procedure's inputs, or its outputs), as the ANE requires
/// (`apple::layouts::uniform_alloc_size`). The reference engine lends the same sizes, so the
/// pipeline's use of lent surfaces is tested off a Mac.
pub(crate) fn lent_capacity(p: &ProcedureInfo, port: Port) -> usize {
    let group = match port {
        Port::Input(_) => &p.inputs,
        Port::Output(_) => &p.outputs,
    };
    apple::layouts::uniform_alloc_size(group)
}

/// Whether `surface` is taken in place by an engine of `kind` for `port` of `p`: lent by
/// such an engine with [`lent_capacity`]. The one decision both the apple and the reference
/// engine make.
pub(crate) fn in_place(kind: EngineKind, p: &ProcedureInfo, port: Port, surface: &Surface) -> bool {
    surface.lender()
        == Some(crate::surface::Lender {
            kind,
            capacity: lent_capacity(p, port),
        })
}

impl dyn Kernel + '_ {
    /// Runs procedure `index`: checks the surfaces, then the engine reads `inputs` and writes
    /// `outputs` (rows' padding is left as is). Returns the bytes the engine copied because a
    /// surface was not one it lent for that port (0 with lent surfaces).
    ///
    /// # Errors
    /// [`Error::NoProcedure`] for an index past the procedures, [`Error::LayoutMismatch`] when
    /// a surface does not have the procedure's layout, or [`Error::Eval`] when the engine fails.
    pub fn eval(
        &self,
        index: usize,
        inputs: &[&Surface],
        outputs: &mut [&mut Surface],
    ) -> Result<usize> {
        let procedure = self
            .procedures()
            .get(index)
            .ok_or_else(|| Error::NoProcedure(index.to_string()))?;
        check_surfaces(procedure, inputs, outputs)?;
        self.run(index, inputs, outputs)
    }

    /// A surface for `port` of procedure `index`: lent by the engine, or host memory when it
    /// cannot lend one (the evaluation then copies).
    ///
    /// # Errors
    /// [`Error::NoProcedure`] when there is no such procedure or port.
    pub fn surface(&self, index: usize, port: Port) -> Result<Surface> {
        let layout = port_layout(self.procedures(), index, port)?;
        Ok(self
            .lend(index, port)
            .unwrap_or_else(|_| Surface::new(layout.clone())))
    }

    /// The index of the procedure called `name`.
    ///
    /// # Errors
    /// [`Error::NoProcedure`] when there is none.
    pub fn procedure_index(&self, name: &str) -> Result<usize> {
        self.procedures()
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| Error::NoProcedure(name.to_string()))
    }
}

/// Checks surfaces against the layouts a procedure expects.
fn check_surfaces(
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

/// The first rule of the ANE rulebook `program` breaks, as an error (warnings pass).
pub(crate) fn enforce_rules(
    program: &Program,
    options: &ane_mil::rules::RuleOptions,
) -> Result<()> {
    match ane_mil::rules::first_refusal(program, options) {
        Some(v) => Err(Error::RuleBroken {
            rule: v.rule.id,
            violation: v.to_string(),
        }),
        None => Ok(()),
    }
}
