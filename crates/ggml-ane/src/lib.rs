//! libggml-ane: a ggml backend that runs MUL_MAT on the Apple Neural Engine.
//!
//! Built as a `cdylib` that stock ggml loads with `GGML_BACKEND_PATH=…/libggml_ane.so`
//! (`.dylib` on macOS). Like ggml's BLAS backend it owns no memory: it uses ggml's CPU buffer
//! type and computes on host tensors. Each MUL_MAT is tiled into engine kernels
//! (`ane_runtime::matmul`); whatever the engine cannot do — compile or eval failure, a spent
//! compile budget, an fp16 overflow — is computed on the CPU and counted, so no node is ever
//! left uncomputed.
//!
//! Settings: every `GGML_ANE_*` variable is read in one place, `config.rs` (the README's
//! table lists them; a test keeps the two equal).
//!
//! Layout, ggml-metal style: `config.rs` (settings), `backend.rs` (what the backend does, in
//! safe Rust), `placement.rs` (what ran where), `sys/` (the ggml ABI and the vtables: the
//! crate's only `unsafe`, enforced by `#![deny(unsafe_code)]`).

#![deny(unsafe_code)]

mod backend;
mod config;
mod hosts;
mod placement;
#[allow(
    unsafe_code,
    reason = "the ggml ABI: C structs, vtables, exported entry points"
)]
pub mod sys;
mod walker;

pub use sys::vtables::{
    ggml_backend_ane_init, ggml_backend_ane_reg, ggml_backend_init, ggml_backend_is_ane,
    ggml_backend_score,
};
