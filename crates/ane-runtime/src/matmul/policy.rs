//! Which kernel kind serves a weight: streamed (weights staged as a kernel input, one kernel
//! per tile shape for every weight of that shape) or baked (the weight tile compiled in as a
//! constant, one kernel per weight tile and token bucket: nothing but activations crosses per
//! call, and no per-call weight conversion on the CPU).

use std::str::FromStr;

use crate::engine::Limits;
use crate::error::Error;

/// Which kind of kernel computed a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelKind {
    /// Weights compiled into the kernels.
    Baked,
    /// Weights staged as a kernel input.
    Streamed,
    /// Weights staged beside the activations in the one input surface (ane-tech.md §3.3).
    Packed,
}

impl KernelKind {
    /// `baked`, `streamed` or `packed`.
    pub fn label(self) -> &'static str {
        match self {
            KernelKind::Baked => "baked",
            KernelKind::Streamed => "streamed",
            KernelKind::Packed => "packed",
        }
    }
}

/// `GGML_ANE_KERNELS`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelPolicy {
    /// Bake immutable weights while the compile budget keeps [`STREAMED_RESERVE`] compiles
    /// for streamed kernels; stream the rest.
    #[default]
    Auto,
    /// Bake every immutable weight; past the budget the node falls back to the CPU.
    Baked,
    /// Never bake.
    Streamed,
    /// Never bake, and build streamed kernels in the packed single-input form from the start
    /// (otherwise only after two-input kernels give up): to compare the two on hardware.
    Packed,
}

impl FromStr for KernelPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(KernelPolicy::Auto),
            "baked" => Ok(KernelPolicy::Baked),
            "streamed" => Ok(KernelPolicy::Streamed),
            "packed" => Ok(KernelPolicy::Packed),
            other => Err(Error::Staging(format!(
                "GGML_ANE_KERNELS={other}: expected auto, baked, streamed or packed"
            ))),
        }
    }
}

impl KernelPolicy {
    /// From `GGML_ANE_KERNELS` (unset means auto).
    pub fn from_env() -> Result<Self, Error> {
        std::env::var("GGML_ANE_KERNELS")
            .unwrap_or_default()
            .parse()
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            KernelPolicy::Auto => "auto",
            KernelPolicy::Baked => "baked",
            KernelPolicy::Streamed => "streamed",
            KernelPolicy::Packed => "packed",
        }
    }

    /// Whether weights may be baked at all under this policy.
    pub fn may_bake(self) -> bool {
        matches!(self, KernelPolicy::Auto | KernelPolicy::Baked)
    }
}

/// Compiles `auto` leaves for streamed kernels: a 7B prefill over eight prompt lengths needs
/// 24 (`ane plan`).
pub const STREAMED_RESERVE: u32 = 32;

/// The identity of weights the caller promises not to change in place (ggml: tensors in a
/// buffer used for model weights), so a kernel can bake them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WeightId {
    /// Which tensor (address, shape, type): the baked-kernel cache key.
    pub key: u64,
    /// A sample of the contents, checked on every call: a tensor reloaded at the same
    /// address gets new kernels instead of the old weights' results.
    pub fingerprint: u64,
}

/// Whether to bake the weights of a job that has a [`WeightId`] and one weight matrix (not
/// broadcast); `missing()` counts the baked kernels it would still have to compile, asked
/// only when the budget matters.
pub fn should_bake(policy: KernelPolicy, limits: &Limits, missing: impl FnOnce() -> u32) -> bool {
    match policy {
        KernelPolicy::Streamed | KernelPolicy::Packed => false,
        KernelPolicy::Baked => true,
        KernelPolicy::Auto => limits.compiles_left().is_none_or(|left| {
            let missing = missing();
            missing == 0 || left >= missing + STREAMED_RESERVE
        }),
    }
}
