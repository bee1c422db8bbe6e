//! Which kernel kind serves a weight: streamed (weights staged as a kernel input, one kernel
//! per tile shape for every weight of that shape) or baked (the weight tile compiled in as a
//! constant, one kernel per weight tile and token bucket: nothing but activations crosses per
//! call, and no per-call weight conversion on the CPU).

use std::fmt;
use std::str::FromStr;

use crate::engine::Limits;
use crate::error::Error;

/// Which kind of kernel computed a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum KernelKind {
    /// Weights compiled into the kernels.
    Baked,
    /// Weights staged beside the activations in the kernel's one input (the dynamic-weight
    /// conv of maderix/ane-prefill-bench; docs/ane-notes.md#packed-form).
    Streamed,
    /// Weights staged as the kernel's second input (an explicit opt-in).
    TwoInput,
}

impl KernelKind {
    /// `baked`, `streamed` or `two-input`.
    pub fn as_str(self) -> &'static str {
        match self {
            KernelKind::Baked => "baked",
            KernelKind::Streamed => "streamed",
            KernelKind::TwoInput => "two-input",
        }
    }
}

/// Which kernel kinds to use (`ggml-ane` reads it from `GGML_ANE_KERNELS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelPolicy {
    /// Bake immutable weights while the compile budget keeps [`STREAMED_RESERVE`] compiles
    /// for streamed kernels; stream the rest.
    #[default]
    Auto,
    /// Bake every immutable weight; past the budget the node falls back to the CPU.
    Baked,
    /// Never bake.
    Streamed,
    /// Never bake, and stream weights as a second input: an opt-in to measure the two-input
    /// form on hardware (reported both to work and to fail with 0x1d). A shape whose
    /// two-input kernel fails to compile uses the single-input form; once any two-input
    /// kernel gives up at evaluation, every shape does.
    TwoInput,
}

impl FromStr for KernelPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(KernelPolicy::Auto),
            "baked" => Ok(KernelPolicy::Baked),
            // `packed` named the single-input form when it was not the default yet
            "streamed" | "packed" => Ok(KernelPolicy::Streamed),
            "two-input" => Ok(KernelPolicy::TwoInput),
            other => Err(Error::InvalidSetting(format!(
                "kernel policy `{other}`: expected auto, baked, streamed or two-input"
            ))),
        }
    }
}

impl KernelPolicy {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            KernelPolicy::Auto => "auto",
            KernelPolicy::Baked => "baked",
            KernelPolicy::Streamed => "streamed",
            KernelPolicy::TwoInput => "two-input",
        }
    }

    /// Whether weights may be baked at all under this policy.
    pub fn may_bake(self) -> bool {
        matches!(self, KernelPolicy::Auto | KernelPolicy::Baked)
    }
}

impl fmt::Display for KernelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for KernelPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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

/// The loaded kernels a bake decision must leave room beside: how many baked kernels are
/// loaded, and the cap on loaded kernels (`KernelCache::with_max_loaded`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadedRoom {
    /// Baked kernels loaded now.
    pub baked_loaded: u32,
    /// The cap on loaded kernels, `None` without one.
    pub max_loaded: Option<u32>,
}

/// Whether to bake the weights of a job that has a [`WeightId`] and one weight matrix (not
/// broadcast); `missing()` counts the baked kernels it would still have to compile, asked
/// only when the budget or the loaded-kernel cap matters. Under `auto`, baking must leave
/// [`STREAMED_RESERVE`] compiles of the budget, and as many loaded kernels of the cap, to
/// streamed kernels — so the kernels a model needs stay loaded instead of being dropped and
/// compiled again.
pub fn should_bake(
    policy: KernelPolicy,
    limits: &Limits,
    room: LoadedRoom,
    missing: impl FnOnce() -> u32,
) -> bool {
    match policy {
        KernelPolicy::Streamed | KernelPolicy::TwoInput => false,
        KernelPolicy::Baked => true,
        KernelPolicy::Auto => {
            if limits.compiles_left().is_none() && room.max_loaded.is_none() {
                return true;
            }
            let missing = missing();
            let budget_ok = limits
                .compiles_left()
                .is_none_or(|left| left >= missing + STREAMED_RESERVE);
            let room_ok = room
                .max_loaded
                .is_none_or(|cap| room.baked_loaded + missing + STREAMED_RESERVE <= cap);
            missing == 0 || (budget_ok && room_ok)
        }
    }
}
