//! libggml-ane: a ggml backend that runs MUL_MAT on the Apple Neural Engine.
//!
//! Built as a `cdylib` that stock ggml loads with `GGML_BACKEND_PATH=…/libggml-ane.so`
//! (`.dylib` on macOS). Like ggml's BLAS backend it owns no memory: it uses ggml's CPU buffer
//! type and computes on host tensors. Each MUL_MAT is tiled into engine kernels
//! (`ane_runtime::matmul`); whatever the engine cannot do — compile or eval failure, a spent
//! compile budget, an fp16 overflow — is computed on the CPU and counted, so no node is ever
//! left uncomputed.
//!
//! Environment: `GGML_ANE_ENGINE` (auto|reference|apple|coreml), `GGML_ANE_MIN_BATCH`
//! (offload threshold, default 64 tokens), `GGML_ANE_STATS=1` (table at backend free; `2` adds
//! what ran where, node by node), `GGML_ANE_LOG` (error|warn|info|debug: debug logs every
//! MUL_MAT), `GGML_ANE_COMPILE_BUDGET`.

mod backend;
mod placement;
pub mod sys;

pub use sys::vtables::{
    ggml_backend_ane_init, ggml_backend_ane_reg, ggml_backend_init, ggml_backend_is_ane,
    ggml_backend_score,
};
