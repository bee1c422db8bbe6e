//! Errors of engines and kernels.
//!
//! Engines report only what the caller could not have foreseen (the program was refused, the
//! budget is spent, an evaluation failed); shapes are the planner's job to validate first.

use crate::engine::EngineKind;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while compiling or running a program.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // === compile ===
    /// The MIL text did not parse.
    #[error("MIL parse error at {0}")]
    Parse(#[from] ane_mil::ParseError),
    /// The program is ill-typed or references weights that do not resolve.
    #[error("{0}")]
    Check(#[from] ane_mil::CheckError),
    /// A weight file is malformed.
    #[error("weight file: {0}")]
    Blob(#[from] ane_mil::BlobError),
    /// The engine cannot run this program (shape past its limits, unsupported op or rank).
    #[error("unsupported by the {engine} engine: {reason}")]
    Unsupported {
        /// The engine.
        engine: EngineKind,
        /// Why.
        reason: String,
    },
    /// The per-process compile budget is spent; nothing more can be compiled in this process.
    #[error("compile budget exhausted: {used} of {budget} compiles used in this process")]
    BudgetExhausted {
        /// Compiles so far.
        used: u32,
        /// The budget.
        budget: u32,
    },
    /// The engine's compiler refused the program.
    #[error("compile failed: {0}")]
    Compile(String),
    /// The program breaks a rule of the ANE rulebook (`ane_mil::rules`): a form the hardware
    /// is reported to reject.
    #[error("refused by the ANE rulebook: {violation}")]
    RuleBroken {
        /// The rule's id (`io-rank4`, `single-input`, ...).
        rule: &'static str,
        /// The rule, where it is broken and its source.
        violation: String,
    },

    // === eval ===
    /// No procedure with that index or name.
    #[error("no procedure {0} in this kernel")]
    NoProcedure(String),
    /// The surfaces passed to eval do not match the kernel's layouts.
    #[error("{what}: expected {expected}, got {got}")]
    LayoutMismatch {
        /// Which surface.
        what: String,
        /// The kernel's layout.
        expected: String,
        /// The surface's layout.
        got: String,
    },
    /// Evaluation failed.
    #[error("eval failed: {0}")]
    Eval(String),

    // === engines ===
    /// The engine cannot be created on this machine or build.
    #[error("the {kind} engine is unavailable: {reason}")]
    EngineUnavailable {
        /// The engine.
        kind: EngineKind,
        /// Why.
        reason: String,
    },
    /// An engine name that is not one of auto, reference, apple, coreml.
    #[error("unknown engine `{0}` (expected auto, reference, apple or coreml)")]
    UnknownEngine(String),
    /// A setting's value is not one this crate knows (an engine fault, a kernel policy).
    #[error("{0}")]
    InvalidSetting(String),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Data that cannot be staged into a surface, or a layout no surface can have.
    #[error("{0}")]
    Staging(String),
    /// A bug in this crate.
    #[error("internal error: {0}")]
    Internal(String),
}
