//! Executing MIL programs: engines, kernels, surfaces.
//!
//! Design choices:
//! - [`Engine`](engine::Engine) is object-safe and chosen at run time
//!   (`GGML_ANE_ENGINE=auto|reference|apple|coreml`); one virtual call is nothing next to an
//!   ANE evaluation.
//! - The [reference engine](engine::reference) runs the same MIL programs and weight files on
//!   the CPU with the ANE's fp16 storage semantics. It is what tests run here, and the
//!   executor of last resort everywhere.
//! - Layouts are explicit ([`TensorLayout`]): rows padded to 64 bytes, plane and batch strides
//!   stated, so staging code cannot assume dense packing.
//! - Engine methods are safe; `unsafe` lives only in [`ffi`] modules.
//! - Engines report only the unforeseeable (compile refused, budget spent, eval failed);
//!   shape validation against [`Limits`](engine::Limits) belongs to the caller.

pub mod disk_cache;
pub mod engine;
pub mod error;
mod ffi;
pub mod layout;
pub mod matmul;
pub mod surface;
pub mod weights;

pub use engine::{Engine, EngineChoice, EngineInfo, EngineKind, Kernel, Limits, ProcedureInfo};
pub use error::{Error, Result};
pub use layout::{SurfaceDType, TensorLayout};
pub use surface::Surface;
