//! Shared helpers: deterministic data, program builders, an f64 reference, a runner.
#![allow(
    dead_code,
    unreachable_pub,
    unused_imports,
    unused_macros,
    reason = "shared by several test crates, each using a part"
)]

use ane_mil::builder::FunctionBuilder;
use ane_mil::ir::{Arg, BlobRef, Literal, Program};
use ane_mil::{BlobWriter, DType, ValueType, WeightFiles};
use ane_runtime::engine::reference::{Faults, ReferenceConfig, ReferenceEngine};
use ane_runtime::{CompileCounter, Engine, EngineChoice, EngineConfig, EngineKind, Surface};
use half::f16;

pub use ane_testutil::*;

/// A matmul result `[B3][B2][N][M]` collected in memory.
pub type Out = ane_runtime::matmul::DenseSink;

/// One `m × k` weight matrix times `n` tokens, no batches.
pub fn single_matmul(m: usize, k: usize, n: usize) -> ane_runtime::matmul::MatmulShape {
    ane_runtime::matmul::MatmulShape::new(m, k, n)
}

/// An output for a matmul of `shape`, NaN-filled so unwritten rows show.
pub fn out_for(shape: ane_runtime::matmul::MatmulShape) -> Out {
    Out::for_shape(shape)
}

pub const WEIGHT_PATH: &str = "@model_path/weights/weight.bin";

/// A reference engine with a compile counter of its own (unlimited), so tests neither share
/// nor spend the process's budget.
pub fn engine() -> ReferenceEngine {
    reference_engine(16384, Faults::default(), None)
}

/// A reference engine with this dimension limit, these injected faults and its own budget.
pub fn reference_engine(max_dim: usize, faults: Faults, budget: Option<u32>) -> ReferenceEngine {
    ReferenceEngine::with_config(
        ReferenceConfig::default()
            .with_max_dim(max_dim)
            .with_faults(faults)
            .with_counter(CompileCounter::new(budget)),
    )
}

/// The engine `kind` with default settings, or `None` (with a visible SKIP line) when this
/// machine does not have it — unless `ANE_REQUIRE_ENGINE` names it (`apple`, `coreml`, or
/// a comma-separated list): on the Mac that is to prove something, a missing engine fails
/// the test instead of passing it by skipping. The reference engine gets a counter of its own.
pub fn engine_of(kind: EngineKind, test: &str) -> Option<Box<dyn Engine>> {
    if kind == EngineKind::Reference {
        return Some(Box::new(engine()));
    }
    match ane_runtime::create(EngineChoice::Only(kind), &EngineConfig::default()) {
        Ok(engine) => Some(Box::new(Shared(engine))),
        Err(e) => {
            assert!(
                !required_engines().contains(&kind),
                "{test}: the {kind} engine is required (ANE_REQUIRE_ENGINE) but unavailable: {e}"
            );
            eprintln!("SKIP: {test} on the {kind} engine: {e}");
            None
        }
    }
}

/// The engines `ANE_REQUIRE_ENGINE` names (`apple`, `coreml`, comma-separated); a name it
/// does not know fails loudly rather than requiring nothing.
pub fn required_engines() -> Vec<EngineKind> {
    let Ok(list) = std::env::var("ANE_REQUIRE_ENGINE") else {
        return Vec::new();
    };
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| match name {
            "apple" | "ane" => EngineKind::Apple,
            "coreml" => EngineKind::CoreMl,
            other => panic!("ANE_REQUIRE_ENGINE={list}: `{other}` is not apple or coreml"),
        })
        .collect()
}

/// An `Arc`'d engine as a `Box<dyn Engine>`.
struct Shared(std::sync::Arc<dyn Engine>);

impl Engine for Shared {
    fn info(&self) -> ane_runtime::EngineInfo {
        self.0.info()
    }
    fn limits(&self) -> ane_runtime::Limits {
        self.0.limits()
    }
    fn compile(
        &self,
        program: &Program,
        weights: &WeightFiles,
    ) -> ane_runtime::Result<Box<dyn ane_runtime::Kernel>> {
        self.0.compile(program, weights)
    }
    fn build_id(&self) -> String {
        self.0.build_id()
    }
}

/// A reference engine with the ANE rulebook off: for tests of op semantics in forms the ANE
/// is not shown to run (rank-2 operands, several inputs) — what the reference engine computes,
/// not what the hardware accepts.
pub fn unruled_engine() -> ReferenceEngine {
    ReferenceEngine::with_config(
        ReferenceConfig::default()
            .with_counter(CompileCounter::new(None))
            .with_rules(None),
    )
}

/// Stamps out one `#[test]` for `fn $name(engine: &dyn Engine)` on [`unruled_engine`] only.
macro_rules! semantics_test {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn reference() {
                super::$name(&$crate::support::unruled_engine());
            }
        }
    )*};
}
pub(crate) use semantics_test;

/// Runs `test` on the engine `kind` when this machine has it (a SKIP line otherwise; the
/// reference engine is always there).
pub fn run_on(kind: EngineKind, name: &str, test: fn(&dyn Engine)) {
    match engine_of(kind, name) {
        Some(engine) => test(engine.as_ref()),
        None => assert!(kind != EngineKind::Reference, "no reference engine"),
    }
}

/// A real engine seen through a smaller `max_dim` (so a small job tiles as a large one does)
/// and with a compile budget of its own: what the reference engine's config gives a test,
/// for the apple and coreml engines. Everything else is the engine's own.
struct Narrowed {
    inner: std::sync::Arc<dyn Engine>,
    max_dim: usize,
    counter: CompileCounter,
}

impl Engine for Narrowed {
    fn info(&self) -> ane_runtime::EngineInfo {
        self.inner.info()
    }
    fn limits(&self) -> ane_runtime::Limits {
        let inner = self.inner.limits();
        ane_runtime::Limits {
            max_dim: inner.max_dim.min(self.max_dim),
            compile_budget: self.counter.budget(),
            compiles_used: self.counter.used(),
            ..inner
        }
    }
    fn compile(
        &self,
        program: &Program,
        weights: &WeightFiles,
    ) -> ane_runtime::Result<Box<dyn ane_runtime::Kernel>> {
        self.counter.take()?;
        self.inner.compile(program, weights)
    }
    fn build_id(&self) -> String {
        self.inner.build_id()
    }
    fn export(&self, program: &Program, kernel: &dyn ane_runtime::Kernel) -> Option<Vec<u8>> {
        self.inner.export(program, kernel)
    }
    fn import(
        &self,
        artifact: &[u8],
        weights: &WeightFiles,
    ) -> ane_runtime::Result<Box<dyn ane_runtime::Kernel>> {
        self.inner.import(artifact, weights)
    }
}

/// How a per-engine test ([`engine_test!`]`(made: ...)`) gets its engines: the engine `kind`
/// with a `max_dim` and a compile budget of the test's choosing. Fault injection stays with
/// the reference engine's own tests: a real engine fails only when it fails.
pub struct EngineMaker {
    kind: EngineKind,
    real: Option<std::sync::Arc<dyn Engine>>,
}

impl EngineMaker {
    /// The engine under test.
    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// An engine of this kind with at most `max_dim` per dimension and `budget` compiles.
    pub fn make(&self, max_dim: usize, budget: Option<u32>) -> Box<dyn Engine> {
        match &self.real {
            None => Box::new(reference_engine(max_dim, Faults::default(), budget)),
            Some(e) => Box::new(Narrowed {
                inner: e.clone(),
                max_dim,
                counter: CompileCounter::new(budget),
            }),
        }
    }

    /// [`make`](Self::make) with the engine's own width and no budget of its own.
    pub fn engine(&self) -> Box<dyn Engine> {
        self.make(16384, None)
    }
}

/// Runs `test` with a maker of the engine `kind` when this machine has it (a SKIP line
/// otherwise, or a failure when `ANE_REQUIRE_ENGINE` names it).
pub fn run_made_on(kind: EngineKind, name: &str, test: fn(&EngineMaker)) {
    let real = if kind == EngineKind::Reference {
        None
    } else {
        match ane_runtime::create(EngineChoice::Only(kind), &EngineConfig::default()) {
            Ok(engine) => Some(engine),
            Err(e) => {
                assert!(
                    !required_engines().contains(&kind),
                    "{name}: the {kind} engine is required (ANE_REQUIRE_ENGINE) but unavailable: {e}"
                );
                eprintln!("SKIP: {name} on the {kind} engine: {e}");
                return;
            }
        }
    };
    test(&EngineMaker { kind, real });
}

/// Stamps out one `#[test]` per engine for `fn $name(engine: &dyn Engine)` — or, after
/// `made:`, for `fn $name(make: &EngineMaker)` (tests that choose the width or budget): the
/// reference engine everywhere, the apple and coreml engines on macOS (a SKIP line where the
/// machine lacks them, a failure where `ANE_REQUIRE_ENGINE` names them). So `cargo test` on a
/// Mac runs the same suite on the ANE.
macro_rules! engine_test {
    (made: $($name:ident),* $(,)?) => {$(
        mod $name {
            use ane_runtime::EngineKind;

            #[test]
            fn reference() {
                $crate::support::run_made_on(EngineKind::Reference, stringify!($name), super::$name);
            }

            #[cfg(target_os = "macos")]
            #[test]
            fn apple() {
                $crate::support::run_made_on(EngineKind::Apple, stringify!($name), super::$name);
            }

            #[cfg(target_os = "macos")]
            #[test]
            fn coreml() {
                $crate::support::run_made_on(EngineKind::CoreMl, stringify!($name), super::$name);
            }
        }
    )*};
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use ane_runtime::EngineKind;

            #[test]
            fn reference() {
                $crate::support::run_on(EngineKind::Reference, stringify!($name), super::$name);
            }

            #[cfg(target_os = "macos")]
            #[test]
            fn apple() {
                $crate::support::run_on(EngineKind::Apple, stringify!($name), super::$name);
            }

            #[cfg(target_os = "macos")]
            #[test]
            fn coreml() {
                $crate::support::run_on(EngineKind::CoreMl, stringify!($name), super::$name);
            }
        }
    )*};
}
pub(crate) use engine_test;

pub fn var(s: &str) -> Arg {
    Arg::Var(s.to_string())
}

pub fn fp16_weights(values: &[f32]) -> (WeightFiles, u64) {
    let mut w = BlobWriter::new();
    let off = w.add_fp16(&values.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>());
    let mut files = WeightFiles::new();
    files.insert(WEIGHT_PATH, w.finish()).unwrap();
    (files, off)
}

pub fn program_of(f: FunctionBuilder) -> Program {
    let mut p = Program::new();
    p.functions.push(f.finish());
    p
}

/// y[1, M, 1, N] = conv1x1(x[1, K, 1, N], W[M, K, 1, 1]) — the baked-weight kernel shape.
pub fn conv_matmul_program(m: usize, k: usize, n: usize, offset: u64) -> Program {
    let mut f = FunctionBuilder::new("main", "ios18");
    let x = f.input("x", ValueType::tensor(DType::Fp16, [1, k, 1, n]));
    let w = f.constant(
        "W",
        Literal::Blob(BlobRef {
            dtype: DType::Fp16,
            shape: vec![m, k, 1, 1],
            path: WEIGHT_PATH.into(),
            offset,
        }),
    );
    let y = f
        .op("y", "conv", &[("weight", var(&w)), ("x", var(&x))])
        .unwrap();
    f.output(&y).unwrap();
    program_of(f)
}

/// z = matmul(a, b) with both operands as inputs.
pub fn matmul_program(a: &[usize], b: &[usize], tx: bool, ty: bool) -> Program {
    let mut f = FunctionBuilder::new("main", "ios18");
    let x = f.input("a", ValueType::tensor(DType::Fp16, a.to_vec()));
    let y = f.input("b", ValueType::tensor(DType::Fp16, b.to_vec()));
    let t1 = f.constant("tx", Literal::bool(tx));
    let t2 = f.constant("ty", Literal::bool(ty));
    let z = f
        .op(
            "z",
            "matmul",
            &[
                ("transpose_x", var(&t1)),
                ("transpose_y", var(&t2)),
                ("x", var(&x)),
                ("y", var(&y)),
            ],
        )
        .unwrap();
    f.output(&z).unwrap();
    program_of(f)
}

/// Compiles and runs procedure 0 on dense inputs; returns dense outputs.
pub fn run(engine: &dyn Engine, p: &Program, w: &WeightFiles, inputs: &[&[f32]]) -> Vec<Vec<f32>> {
    let k = engine.compile(p, w).unwrap();
    let proc_ = &k.procedures()[0];
    let ins: Vec<Surface> = proc_
        .inputs
        .iter()
        .zip(inputs)
        .map(|(l, v)| {
            let mut s = Surface::new(l.clone());
            s.write_f32(v).unwrap();
            s
        })
        .collect();
    let mut outs: Vec<Surface> = proc_
        .outputs
        .iter()
        .map(|l| Surface::new(l.clone()))
        .collect();
    let in_refs: Vec<&Surface> = ins.iter().collect();
    let mut out_refs: Vec<&mut Surface> = outs.iter_mut().collect();
    k.eval(0, &in_refs, &mut out_refs).unwrap();
    outs.iter().map(|s| s.read_f32()).collect()
}

/// What a [`WrappedEngine`] does to each kernel its engine compiles.
pub type KernelWrap =
    Box<dyn Fn(Box<dyn ane_runtime::Kernel>) -> Box<dyn ane_runtime::Kernel> + Send + Sync>;

/// A reference engine whose kernels `wrap` wraps as they are compiled: a test watches or
/// disturbs what the kernels do, the engine itself unchanged.
pub struct WrappedEngine {
    pub inner: ReferenceEngine,
    pub wrap: KernelWrap,
}

impl Engine for WrappedEngine {
    fn info(&self) -> ane_runtime::EngineInfo {
        self.inner.info()
    }
    fn limits(&self) -> ane_runtime::Limits {
        self.inner.limits()
    }
    fn compile(
        &self,
        program: &Program,
        weights: &WeightFiles,
    ) -> ane_runtime::Result<Box<dyn ane_runtime::Kernel>> {
        Ok((self.wrap)(self.inner.compile(program, weights)?))
    }
    fn build_id(&self) -> String {
        self.inner.build_id()
    }
}
