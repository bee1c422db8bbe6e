//! The reference engine: runs MIL programs on the CPU with the ANE's storage semantics.
//!
//! - "compile" = type-check, resolve BLOBFILE constants, dequantize int8 weights, plan steps;
//!   it counts against a per-process budget (default 119, like the hardware) and refuses
//!   tensors with a dimension past `max_dim` (16384), so code above can be tested against
//!   both walls;
//! - "eval" = read inputs from strided surfaces, run the steps, write outputs back into the
//!   surfaces' rows (padding untouched). Every float tensor is stored as fp16 (round to
//!   nearest even, overflow to ±inf); conv and matmul accumulate in f32 (multi-threaded GEMM).

mod elementwise;
mod linalg;
mod plan;
mod tensor;

use std::sync::Arc;

use crate::sys::fp16::{f16_to_f32, f32_to_f16};
use half::f16;

use ane_mil::rules::RuleOptions;
use ane_mil::{check_program, DType, Program, WeightFiles};

use self::plan::{plan_function, ProcPlan, StepOp};
use self::tensor::{Data, Tensor};
use crate::engine::limits::{HARDWARE_COMPILE_WALL, MAX_DIM, ROW_ALIGNMENT};
use crate::engine::{
    in_place, lent_capacity, port_layout, Accumulator, CompileCounter, Engine, EngineInfo,
    EngineKind, Kernel, Limits, Port, ProcedureInfo,
};
use crate::error::{Error, Result};
use crate::layout::SurfaceDType;
use crate::surface::{AlignedMemory, Lender, Surface};

/// Failures the reference engine can be told to produce, so callers' fallbacks can be tested.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Faults {
    /// Every compile fails.
    pub compile: bool,
    /// Every evaluation fails.
    pub eval: bool,
    /// Every evaluation writes +inf into the first element of each output.
    pub inf: bool,
    /// Programs with BLOBFILE weights (the baked kernel form) fail to compile.
    pub baked: bool,
    /// Single-input programs without BLOBFILE weights (the streamed form) fail at evaluation.
    pub streamed: bool,
    /// Two-input programs (the two-input form) fail at evaluation.
    pub two_input: bool,
    /// Every evaluation takes [`SLOW_EVAL`] longer: an engine slower than its neighbour, for
    /// tests of routing by measurement.
    pub slow: bool,
}

/// How much longer each evaluation takes under the `slow` fault.
pub const SLOW_EVAL: std::time::Duration = std::time::Duration::from_millis(20);

impl Faults {
    /// Parses a comma-separated list of `compile`, `eval`, `inf`, `baked`, `streamed`,
    /// `two-input`, `slow` (what `ggml-ane` reads from `GGML_ANE_REFERENCE_FAULTS`); anything else is an
    /// error naming it.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a word that is not one of the three.
    pub fn parse(list: &str) -> Result<Self> {
        let mut faults = Faults::default();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "compile" => faults.compile = true,
                "eval" => faults.eval = true,
                "inf" => faults.inf = true,
                "baked" => faults.baked = true,
                "streamed" => faults.streamed = true,
                "two-input" => faults.two_input = true,
                "slow" => faults.slow = true,
                other => {
                    return Err(Error::InvalidSetting(format!(
                        "reference fault `{other}`: expected compile, eval, inf, baked, streamed, two-input or slow"
                    )))
                }
            }
        }
        Ok(faults)
    }
}

/// Settings of a reference engine. The defaults model the hardware: dimensions up to
/// [`MAX_DIM`], 64-byte rows, and the process-wide counter with a budget of
/// [`HARDWARE_COMPILE_WALL`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReferenceConfig {
    /// Injected failures (none by default).
    pub faults: Faults,
    /// Largest dimension of any tensor in a program.
    pub max_dim: usize,
    /// Row stride alignment in bytes.
    pub row_alignment: usize,
    /// The compile counter and budget (the process-wide one by default).
    pub counter: CompileCounter,
    /// Whether compiling enforces the ANE rulebook (default: yes, so a program refused here is
    /// one the hardware is reported to reject); `None` runs anything, for experiments.
    pub rules: Option<RuleOptions>,
    /// How matmuls and convolutions sum their products (f32 by default; Q15.16 emulates an
    /// M6).
    pub accumulator: Accumulator,
}

impl Default for ReferenceConfig {
    fn default() -> Self {
        ReferenceConfig {
            faults: Faults::default(),
            max_dim: MAX_DIM,
            row_alignment: ROW_ALIGNMENT,
            counter: CompileCounter::process(EngineKind::Reference, Some(HARDWARE_COMPILE_WALL)),
            rules: Some(RuleOptions::default()),
            accumulator: Accumulator::F32,
        }
    }
}

impl ReferenceConfig {
    /// The defaults with this dimension limit.
    pub fn with_max_dim(mut self, max_dim: usize) -> Self {
        self.max_dim = max_dim;
        self
    }

    /// The defaults with this accumulator.
    pub fn with_accumulator(mut self, accumulator: Accumulator) -> Self {
        self.accumulator = accumulator;
        self
    }

    /// The defaults with these injected faults.
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Enforcing the rulebook with these options, or (`None`) running anything.
    pub fn with_rules(mut self, rules: Option<RuleOptions>) -> Self {
        self.rules = rules;
        self
    }

    /// Counting compiles on `counter` (a fresh [`CompileCounter::new`] keeps a test's budget
    /// its own; [`CompileCounter::process`] shares the process's).
    pub fn with_counter(mut self, counter: CompileCounter) -> Self {
        self.counter = counter;
        self
    }
}

/// The CPU reference engine.
#[derive(Clone, Debug, Default)]
pub struct ReferenceEngine {
    config: ReferenceConfig,
}

impl ReferenceEngine {
    /// An engine with the defaults and the process-wide compile counter.
    pub fn new() -> Self {
        ReferenceEngine::default()
    }

    /// An engine with explicit settings.
    pub fn with_config(config: ReferenceConfig) -> Self {
        ReferenceEngine { config }
    }

    fn check_limits(&self, functions: &[ane_mil::CheckedFunction]) -> Result<()> {
        let max = self.config.max_dim;
        for f in functions {
            let types = f
                .inputs
                .iter()
                .map(|p| (&p.name, &p.ty))
                .chain(f.statements.iter().map(|s| (&s.name, &s.ty)));
            for (name, ty) in types {
                if let Some(d) = ty.shape().iter().find(|&&d| d > max) {
                    return Err(Error::Unsupported {
                        engine: EngineKind::Reference,
                        reason: format!("`{name}` in `{}` has a dimension of {d}, past the limit of {max} ({ty})", f.name),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Engine for ReferenceEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            kind: EngineKind::Reference,
            description:
                "Apple Neural Engine (reference engine: CPU, fp16 storage, f32 accumulation)"
                    .to_string(),
            details: vec![
                (
                    "threads".to_string(),
                    rayon::current_num_threads().to_string(),
                ),
                ("arch".to_string(), std::env::consts::ARCH.to_string()),
            ],
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_dim: self.config.max_dim,
            row_alignment: self.config.row_alignment,
            compile_budget: self.config.counter.budget(),
            compiles_used: self.config.counter.used(),
            accumulator: self.config.accumulator,
        }
    }

    fn compile(&self, program: &Program, weights: &WeightFiles) -> Result<Box<dyn Kernel>> {
        if let Some(options) = &self.config.rules {
            crate::engine::enforce_rules(program, options)?;
        }
        self.config.counter.take()?;
        let baked = program.blob_refs().next().is_some();
        if self.config.faults.compile || (self.config.faults.baked && baked) {
            return Err(Error::Compile(
                "injected compile failure (reference engine faults)".into(),
            ));
        }
        self.build(program, weights)
    }

    fn build_id(&self) -> String {
        format!(
            "reference-{}-max{}-row{}{}",
            env!("CARGO_PKG_VERSION"),
            self.config.max_dim,
            self.config.row_alignment,
            match self.config.accumulator {
                Accumulator::F32 => "",
                Accumulator::Q15_16 => "-q15.16",
            }
        )
    }

    /// The artifact is the canonical program text: the plan is rebuilt from it (and the
    /// weights) in microseconds without a compile, the way a daemon-cache hit loads on the
    /// ANE. Whether such loads spend the hardware's budget is not known yet
    /// (docs/ane-notes.md#cache-loads); the reference engine assumes they do not.
    fn export(&self, program: &Program, _kernel: &dyn Kernel) -> Option<Vec<u8>> {
        Some(ane_mil::print_program(program).into_bytes())
    }

    fn import(&self, artifact: &[u8], weights: &WeightFiles) -> Result<Box<dyn Kernel>> {
        let text = std::str::from_utf8(artifact)
            .map_err(|e| Error::Compile(format!("cached kernel is not text: {e}")))?;
        self.build(&ane_mil::parse(text)?, weights)
    }
}

impl ReferenceEngine {
    /// Check, limit-check and plan: everything "compile" does besides spending budget.
    fn build(&self, program: &Program, weights: &WeightFiles) -> Result<Box<dyn Kernel>> {
        // a refused program spends no budget (compile) and is not loaded (import)
        if let Some(options) = &self.config.rules {
            crate::engine::enforce_rules(program, options)?;
        }
        let functions = check_program(program, Some(weights))?;
        self.check_limits(&functions)?;
        let plans = functions
            .iter()
            .map(|f| plan_function(f, weights, self.config.row_alignment))
            .collect::<Result<Vec<_>>>()?;
        let procedures = plans.iter().map(|p| p.info.clone()).collect();
        Ok(Box::new(ReferenceKernel {
            plans,
            procedures,
            faults: self.config.faults,
            baked: program.blob_refs().next().is_some(),
            accumulator: self.config.accumulator,
        }))
    }
}

/// A compiled program on the reference engine.
#[derive(Debug)]
struct ReferenceKernel {
    plans: Vec<ProcPlan>,
    procedures: Vec<ProcedureInfo>,
    faults: Faults,
    /// Whether the program has BLOBFILE weights (for the per-form faults).
    baked: bool,
    accumulator: Accumulator,
}

impl Kernel for ReferenceKernel {
    fn procedures(&self) -> &[ProcedureInfo] {
        &self.procedures
    }

    fn lend(&self, index: usize, port: Port) -> Result<Surface> {
        let layout = port_layout(&self.procedures, index, port)?;
        let capacity = lent_capacity(&self.procedures[index], port);
        // host memory of the size the apple engine would lend, marked as ours
        let memory = AlignedMemory::<64>::new(Lender {
            kind: EngineKind::Reference,
            capacity,
        });
        Surface::lent(layout.clone(), Box::new(memory))
    }

    fn takes_in_place(&self, index: usize, port: Port, surface: &Surface) -> bool {
        self.procedures
            .get(index)
            .is_some_and(|p| in_place(EngineKind::Reference, p, port, surface))
    }

    fn run(
        &self,
        index: usize,
        inputs: &[&Surface],
        outputs: &mut [&mut Surface],
    ) -> Result<usize> {
        let plan = self
            .plans
            .get(index)
            .ok_or_else(|| Error::NoProcedure(index.to_string()))?;
        // the reference engine reads any memory; it counts what the apple engine would copy
        let procedure = &self.procedures[index];
        let copied: usize = inputs
            .iter()
            .enumerate()
            .map(|(i, s)| (Port::Input(i), &**s))
            .chain(
                outputs
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (Port::Output(i), &**s)),
            )
            .filter(|(port, s)| !in_place(EngineKind::Reference, procedure, *port, s))
            .map(|(_, s)| s.layout().byte_len())
            .sum();
        let form_fails = match inputs.len() {
            1 => self.faults.streamed && !self.baked,
            2 => self.faults.two_input,
            _ => false,
        };
        if self.faults.eval || form_fails {
            return Err(Error::Eval(
                "injected eval failure (reference engine faults)".into(),
            ));
        }
        if self.faults.slow {
            std::thread::sleep(SLOW_EVAL);
        }
        let mut slots: Vec<Option<Arc<Tensor>>> = vec![None; plan.n_slots];
        for (slot, t) in &plan.constants {
            slots[*slot] = Some(t.clone());
        }
        for (&slot, s) in plan.inputs.iter().zip(inputs) {
            slots[slot] = Some(Arc::new(read_surface(s)));
        }
        for step in &plan.steps {
            let arg = |i: usize| -> Result<&Tensor> {
                slots[step.args[i]]
                    .as_deref()
                    .ok_or_else(|| Error::Internal("slot read before written".into()))
            };
            let out = match &step.op {
                StepOp::Conv(g) => {
                    let bias = if step.args.len() > 2 {
                        Some(arg(2)?)
                    } else {
                        None
                    };
                    linalg::conv(arg(0)?, arg(1)?, bias, g, &step.out_shape, self.accumulator)
                }
                StepOp::Matmul { tx, ty } => {
                    let (x, y) = (arg(0)?, arg(1)?);
                    linalg::matmul(x, y, (*tx, *ty), &step.out_shape, self.accumulator)
                }
                StepOp::Binary(op) => elementwise::binary(*op, arg(0)?, arg(1)?, &step.out_shape),
                StepOp::Unary(op) => elementwise::unary(*op, arg(0)?),
                StepOp::Reduce(axes, mean) => {
                    elementwise::reduce(arg(0)?, axes, *mean, &step.out_shape)
                }
                StepOp::Transpose(perm) => arg(0)?.transpose(perm),
                StepOp::Reshape => arg(0)?.reshape(&step.out_shape),
                StepOp::Slice(axes) => arg(0)?.slice(axes, &step.out_shape),
                StepOp::Cast(d) => cast(arg(0)?, *d),
                StepOp::Concat { axis, interleave } => {
                    let vals = (0..step.args.len()).map(arg).collect::<Result<Vec<_>>>()?;
                    Tensor::concat(&vals, *axis, *interleave, &step.out_shape)
                }
            };
            slots[step.out] = Some(Arc::new(out));
            for &f in &step.frees {
                slots[f] = None;
            }
        }
        for (&slot, s) in plan.outputs.iter().zip(outputs.iter_mut()) {
            let t = slots[slot]
                .as_deref()
                .ok_or_else(|| Error::Internal("output never computed".into()))?;
            write_surface(t, s)?;
            if self.faults.inf {
                let l = s.layout().clone();
                let bytes = s.as_bytes_mut();
                match l.dtype {
                    SurfaceDType::F16 => bytes[..2].copy_from_slice(&f16::INFINITY.to_le_bytes()),
                    SurfaceDType::F32 => bytes[..4].copy_from_slice(&f32::INFINITY.to_le_bytes()),
                }
            }
        }
        Ok(copied)
    }
}

fn cast(x: &Tensor, to: DType) -> Tensor {
    let data = match (&x.data, to) {
        // float <-> float: values already carry fp16 precision
        (Data::F(v), DType::Fp16 | DType::Fp32) => Data::F(v.clone()),
        (Data::F(v), _) => Data::I(v.iter().map(|h| h.to_f32() as i32).collect()),
        (Data::I(v), DType::Fp16 | DType::Fp32) => {
            Data::F(v.iter().map(|&i| f16::from_f32(i as f32)).collect())
        }
        (d, _) => d.clone(),
    };
    Tensor::new(x.shape.clone(), data)
}

/// Reads a surface's rows into a dense fp16 tensor (fp32 surfaces are rounded to fp16).
fn read_surface(s: &Surface) -> Tensor {
    let l = s.layout();
    let w = l.dims[3];
    let mut out = vec![f16::ZERO; l.num_elements()];
    if w > 0 {
        let bytes = s.as_bytes();
        for (r, dst) in out.chunks_mut(w).enumerate() {
            let row = &bytes[l.flat_row_offset(r)..];
            match l.dtype {
                SurfaceDType::F16 => dst.copy_from_slice(bytemuck::cast_slice(&row[..2 * w])),
                SurfaceDType::F32 => f32_to_f16(dst, bytemuck::cast_slice(&row[..4 * w])),
            }
        }
    }
    Tensor::new(l.shape.clone(), Data::F(out))
}

/// Writes a dense fp16 tensor into a surface's rows, leaving row padding untouched.
fn write_surface(t: &Tensor, s: &mut Surface) -> Result<()> {
    let Some(v) = t.floats() else {
        return Err(Error::Internal("non-float output".into()));
    };
    let l = s.layout().clone();
    let w = l.dims[3];
    if w == 0 {
        return Ok(());
    }
    let bytes = s.as_bytes_mut();
    for (r, src) in v.chunks(w).enumerate() {
        let row = &mut bytes[l.flat_row_offset(r)..];
        match l.dtype {
            SurfaceDType::F16 => row[..2 * w].copy_from_slice(bytemuck::cast_slice(src)),
            SurfaceDType::F32 => f16_to_f32(bytemuck::cast_slice_mut(&mut row[..4 * w]), src),
        }
    }
    Ok(())
}
