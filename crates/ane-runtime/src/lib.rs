//! Executing MIL programs: engines, kernels, surfaces.
//!
//! Design choices:
//! - [`Engine`] is object-safe and chosen at run time ([`EngineChoice`]: `auto`, `reference`,
//!   `apple`, `coreml`); one virtual call is nothing next to an ANE evaluation.
//! - The [reference engine](engine::reference) runs the same MIL programs and weight files on
//!   the CPU with the ANE's fp16 storage semantics. It is what tests run here, and the
//!   executor of last resort everywhere.
//! - Layouts are explicit ([`TensorLayout`]): rows padded to 64 bytes, plane and batch strides
//!   stated, so staging code cannot assume dense packing.
//! - Configuration is explicit: every setting is a field of a config struct
//!   ([`EngineConfig`], [`kernels::KernelCache`]'s builder, [`disk_cache::DiskCache::new`]) with
//!   documented defaults. This crate reads no environment variable; `ggml-ane` and the `ane`
//!   command read `GGML_ANE_*` into one [`settings::RuntimeSettings`] and build those from it.
//! - Engine methods are safe; `unsafe` lives only in the bindings modules (`sys`, one per
//!   Apple engine, one for the power readout and one shared), enforced by
//!   `#![deny(unsafe_code)]` here.
//! - Engines report only the unforeseeable (compile refused, budget spent, eval failed);
//!   shape validation against [`Limits`] belongs to the caller. Every evaluation checks its
//!   surfaces against the kernel's layouts before an engine sees them.
//!
//! # Life cycle
//!
//! Pick an engine, compile a MIL program with its weights, make surfaces with the layouts the
//! kernel reports, evaluate, read the output:
//!
//! ```
//! use ane_mil::{BlobWriter, WeightFiles};
//! use ane_runtime::{create, EngineChoice, EngineConfig, EngineKind, Surface};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // y = x · Wᵀ for a 2×3 weight, as a 1×1 convolution over 32 tokens (every input at least
//! // 32 wide: narrower ones return garbage on the ANE, and the rulebook refuses them)
//! let program = ane_mil::parse(
//!     r#"program(1.3)
//! {
//!     func main<ios18>(tensor<fp16, [1, 3, 1, 32]> x) {
//!         string pt = const()[name = string("pt"), val = string("valid")];
//!         tensor<int32, [2]> st = const()[name = string("st"), val = tensor<int32, [2]>([1, 1])];
//!         tensor<int32, [4]> pd = const()[name = string("pd"), val = tensor<int32, [4]>([0, 0, 0, 0])];
//!         tensor<int32, [2]> dl = const()[name = string("dl"), val = tensor<int32, [2]>([1, 1])];
//!         int32 gr = const()[name = string("gr"), val = int32(1)];
//!         tensor<fp16, [2, 3, 1, 1]> w = const()[name = string("w"), val = tensor<fp16, [2, 3, 1, 1]>(BLOBFILE(path = string("@model_path/weights/w.bin"), offset = uint64(64)))];
//!         tensor<fp16, [1, 2, 1, 32]> y = conv(dilations = dl, groups = gr, pad = pd, pad_type = pt, strides = st, weight = w, x = x)[name = string("y")];
//!     } -> (y);
//! }"#,
//! )?;
//! let mut blob = BlobWriter::new();
//! blob.add_fp16(&[1.0, 0.0, 0.0, 0.5, 0.5, 0.5].map(half::f16::from_f32));
//! let mut weights = WeightFiles::new();
//! weights.insert("@model_path/weights/w.bin", blob.finish())?;
//!
//! let engine = create(EngineChoice::Only(EngineKind::Reference), &EngineConfig::default())?;
//! let kernel = engine.compile(&program, &weights)?;
//! let procedure = &kernel.procedures()[0];
//! let mut x = Surface::new(procedure.inputs[0].clone());
//! // channel c holds feature c of every token: t + 1, 10·(t + 1), 2
//! let t: Vec<f32> = (1..=32).map(|t| t as f32).collect();
//! let x_values: Vec<f32> = [t.clone(), t.iter().map(|v| 10.0 * v).collect(), vec![2.0; 32]].concat();
//! x.write_f32(&x_values)?;
//! let mut y = Surface::new(procedure.outputs[0].clone());
//! kernel.eval(0, &[&x], &mut [&mut y])?;
//! // row 0 of W picks feature 0; row 1 is half the sum of the three features
//! let y_values = y.read_f32();
//! assert_eq!(y_values[..4], [1.0, 2.0, 3.0, 4.0]);
//! assert_eq!(y_values[32..36], [6.5, 12.0, 17.5, 23.0]);
//! # Ok(())
//! # }
//! ```

#![deny(unsafe_code)]

pub mod chips;
pub mod disk_cache;
pub mod engine;
pub mod error;
pub mod fused;
pub mod kernels;
pub mod layout;
pub mod matmul;
pub mod power;
pub mod settings;
pub mod staging;
pub mod surface;
#[allow(
    unsafe_code,
    reason = "the crate's shared bindings: gemm, fp16 conversion, NSError"
)]
mod sys;
pub mod weights;

pub use engine::{
    create, Accumulator, CompileCounter, Engine, EngineChoice, EngineConfig, EngineInfo,
    EngineKind, Kernel, Limits, ProcedureInfo,
};
pub use error::{Error, Result};
pub use layout::{SurfaceDType, TensorLayout};
pub use surface::{Lender, LentMemory, Surface};
