//! NSError → our string errors, for both Apple engines' bindings.

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
