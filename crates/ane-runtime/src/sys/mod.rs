//! Bindings shared across the crate: calls into raw-pointer APIs (gemm, the CPU's fp16
//! conversion instructions) and, on macOS, the Objective-C error helpers both Apple engines
//! use. Each is wrapped in a safe function that checks what it can first. The engines' own
//! bindings live in their folders (`engine/apple/sys`, `engine/coreml/sys.rs`).

pub(crate) mod fp16;
pub(crate) mod gemm;
#[cfg(target_os = "macos")]
pub(crate) mod objc;
#[cfg(target_os = "macos")]
pub(crate) mod qos;
pub(crate) mod transpose;
