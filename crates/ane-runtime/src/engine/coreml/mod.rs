//! The `coreml` engine: public Core ML (macOS). Each function of a program becomes a Core ML
//! package ([`ane_mil::coreml`]), compiled once with `MLModel.compileModel` and kept as
//! `<models_dir>/<hash>.mlmodelc`, loaded with `.cpuAndNeuralEngine`. Predictions read and
//! write our surfaces through multi-arrays over their memory (no copy where Core ML honours
//! `outputBackings`). Core ML decides placement; ops it cannot put on the ANE run on the CPU
//! inside Core ML, still correctly.
//!
//! The folder: `engine.rs` (the engine and its kernels, macOS only) and `sys.rs` (the objc2
//! bindings to Core ML: every `unsafe` block of this engine).
//!
//! Written to Apple's documented API; not yet run on hardware (docs/hardware-validation.md).

use std::path::PathBuf;

#[cfg(target_os = "macos")]
mod engine;
#[cfg(target_os = "macos")]
#[allow(unsafe_code, reason = "the objc2 bindings to Core ML")]
mod sys;

#[cfg(target_os = "macos")]
pub use engine::CoreMlEngine;

/// Settings of the coreml engine.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoreMlConfig {
    /// Where compiled models are kept (created on first use). Default: `ggml-ane/coreml` in
    /// the system's temporary folder; `ggml-ane` puts it under the kernel cache folder.
    pub models_dir: PathBuf,
}

impl Default for CoreMlConfig {
    fn default() -> Self {
        CoreMlConfig {
            models_dir: std::env::temp_dir().join("ggml-ane").join("coreml"),
        }
    }
}

impl CoreMlConfig {
    /// Compiled models under `dir`.
    pub fn with_models_dir(dir: impl Into<PathBuf>) -> Self {
        CoreMlConfig {
            models_dir: dir.into(),
        }
    }
}
