//! The crate's only `unsafe`: calls into raw-pointer APIs (gemm, the CPU's fp16 conversion
//! instructions; on macOS the Objective-C frameworks), each wrapped in a safe function that
//! checks what it can first.

#[cfg(target_os = "macos")]
pub(crate) mod apple;
pub(crate) mod fp16;
pub(crate) mod gemm;
