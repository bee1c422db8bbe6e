//! The `apple` engine: the private `_ANEInMemoryModel` path (macOS on Apple silicon).
//!
//! Compile = descriptor from the printed MIL text and the weight files, the framework's
//! folder prepared (`model_dir`), `compileWithQoS` unless the daemon already has the
//! program (`compiledModelExists`), `loadWithQoS` with a bounded retry, then the layouts read
//! from `modelAttributes` (`layouts`), IOSurfaces sized from them and one request per
//! procedure built once. Every model load takes one unit of the process budget
//! ([`AppleConfig::compile_budget`], default 100, under the ~119 wall).
//!
//! The folder: `engine.rs` (the engine and its kernels, macOS only), `layouts.rs` (what the
//! compiled model says about its inputs and outputs, as plain Rust tested everywhere),
//! `model_dir.rs` (the folder the framework reads weights from, shared between processes),
//! `sys/` (the objc2 bindings: every `unsafe` block of this engine).
//!
//! Written to the documented call sequence; not yet run on hardware (docs/hardware-validation.md).

// The pure parts build and are tested on every platform; only the macOS engine uses them.
#[cfg(target_os = "macos")]
mod engine;
#[cfg_attr(
    not(target_os = "macos"),
    allow(dead_code, reason = "used by the macOS engine")
)]
pub(crate) mod layouts;
#[cfg_attr(
    not(target_os = "macos"),
    allow(dead_code, reason = "used by the macOS engine")
)]
pub(crate) mod model_dir;
#[allow(
    unsafe_code,
    reason = "the objc2 bindings to the private framework and IOSurface"
)]
#[cfg_attr(
    not(target_os = "macos"),
    allow(dead_code, reason = "used by the macOS engine")
)]
mod sys;

#[cfg(target_os = "macos")]
pub use engine::AppleEngine;

use super::limits::APPLE_COMPILE_BUDGET;

/// Settings of the apple engine.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppleConfig {
    /// Model loads allowed per process (default [`APPLE_COMPILE_BUDGET`]: under the ~119
    /// compiles after which the hardware's compiler fails silently).
    pub compile_budget: u32,
    /// The ANE rulebook's options: a program it refuses is not sent to the compiler (no budget
    /// spent on a form the hardware is reported to reject). `None` sends anything.
    pub rules: Option<ane_mil::rules::RuleOptions>,
}

impl Default for AppleConfig {
    fn default() -> Self {
        AppleConfig {
            compile_budget: APPLE_COMPILE_BUDGET,
            rules: Some(ane_mil::rules::RuleOptions::default()),
        }
    }
}
