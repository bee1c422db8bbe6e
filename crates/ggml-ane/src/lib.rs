//! libggml-ane: a ggml backend that runs MUL_MAT, and the blocks around it, on the Apple
//! Neural Engine.
//!
//! Built as a `cdylib` that stock ggml loads with `GGML_BACKEND_PATH=…/libggml_ane.so`
//! (`.dylib` on macOS). It owns no memory: it uses ggml's CPU buffer type and computes on host
//! tensors. Each MUL_MAT is tiled into engine kernels (`ane_runtime::matmul`), fused blocks
//! become one program; whatever the engine cannot do — compile or eval failure, a spent
//! compile budget, an fp16 overflow — is computed on the CPU and counted, so no node is ever
//! left uncomputed.
//!
//! Rooms, by what they hold:
//! - `abi/`: the ggml ABI — mirrored structs, raw calls, the vtables ggml calls and the
//!   exported entry points; the only `unsafe` (`#![deny(unsafe_code)]` here enforces it).
//! - `devices.rs`: the two devices (`ANE`, `ANE-FULL`) as one table, and what each accepts.
//! - `compute/`: `graph_compute` over a split read once into plain data — the walker, the fused
//!   pattern registry, the steps (fused blocks, single MUL_MATs, ggml's CPU backend).
//! - `runtime.rs`: the process's engine and kernel cache.
//! - `settings.rs`: every `GGML_ANE_*` variable, read in one place (the README's table lists
//!   them; a test keeps the two equal).
//! - `hosts.rs` (which ggml versions), `buffers.rs` (which buffers), `stats/` (what ran where).
//!
//! The walker, patterns, settings, hosts, buffers and placement tables use no ggml symbol:
//! `cargo test` runs their tests without ggml.

#![deny(unsafe_code)]

#[allow(
    unsafe_code,
    reason = "the ggml ABI: C structs, vtables, exported entry points"
)]
pub mod abi;
mod buffers;
mod compute;
mod devices;
mod hosts;
mod measured;
mod routing;
mod runtime;
mod settings;
mod stats;

pub use abi::backend::{ggml_backend_ane_init, ggml_backend_is_ane};
pub use abi::registry::{ggml_backend_ane_reg, ggml_backend_init, ggml_backend_score};
