//! The apple engine's bindings: the private AppleNeuralEngine.framework classes and
//! IOSurfaces (macOS only), and the plain tree their attribute dictionaries are read into.
//!
//! Every `unsafe` block of the apple engine lives here, behind safe functions that check what
//! can be checked (classes and selectors present, sizes, nil results) and turn every failure
//! into an `Err(String)`. Nothing here imports from the engine above it. Nothing here has run
//! on hardware in this repository's CI; docs/hardware-validation.md lists what a Mac must
//! confirm.

#[cfg(target_os = "macos")]
pub(crate) mod ane;
mod attr_value;
#[cfg(target_os = "macos")]
mod attrs;
#[cfg(target_os = "macos")]
pub(crate) mod iosurface;

pub(crate) use attr_value::AttrValue;
