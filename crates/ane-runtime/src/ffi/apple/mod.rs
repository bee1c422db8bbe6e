//! The macOS side: the private AppleNeuralEngine.framework classes, IOSurfaces and Core ML.
//!
//! Every `unsafe` block of the Apple engines lives here, behind safe functions that check
//! what can be checked (classes and selectors present, sizes, nil results) and turn every
//! failure into an `Err(String)`. Nothing here has run on hardware in this repository's CI;
//! docs/hardware-validation.md lists what a Mac must confirm.

pub(crate) mod ane;
pub(crate) mod attrs;
pub(crate) mod coreml;
pub(crate) mod iosurface;

use objc2::rc::Retained;
use objc2_foundation::NSError;

/// An NSError as one line: domain, code and description.
pub(crate) fn describe_error(e: &NSError) -> String {
    format!("{} {}: {}", e.domain(), e.code(), e.localizedDescription())
}

/// Maps a `Result<_, Retained<NSError>>` from objc2 to our string errors, naming the call.
pub(crate) fn ns_result<T>(what: &str, r: Result<T, Retained<NSError>>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {}", describe_error(&e)))
}
