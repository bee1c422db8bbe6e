//! Host matrices into fp16 surfaces and results back out: what the matmul path and fused
//! blocks both do around every evaluation.
//! - `convert`: the conversions made on every call (rows into a surface's rows or
//!   columns, result tiles into f32 rows);
//! - `kept_weights`: weight surfaces kept staged across calls, so a repeated prefill stages
//!   only its activations;
//! - `surface_pool`: the other surfaces, reused; all of them lent by the engine, so staging
//!   writes into the engine's own memory.

pub(crate) mod convert;
pub(crate) mod kept_weights;
pub(crate) mod surface_pool;

pub use convert::{
    accumulate_columns, convert_weight_rows, recycle, stage_columns, stage_rows, WrittenSums,
};
pub use kept_weights::DEFAULT_STAGED_WEIGHTS_BYTES;
