//! NSError and Objective-C exceptions → our string errors, for both Apple engines' bindings.

use std::panic::AssertUnwindSafe;

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

/// Runs `f`, turning an Objective-C exception it throws into an error naming the call and the
/// exception's reason: the frameworks throw on malformed programs and internal errors, and an
/// uncaught exception aborts the host process. The object the call was made on may be left
/// inconsistent ("the Cocoa frameworks are generally not exception-safe"): callers drop it
/// and fall back to the CPU. Only exceptions on this thread are caught.
pub(crate) fn objc_try<R>(what: &str, f: impl FnOnce() -> R) -> Result<R, String> {
    objc2::exception::catch(AssertUnwindSafe(f)).map_err(|e| match e {
        Some(exception) => format!("{what}: Objective-C exception: {exception:?}"),
        None => format!("{what}: Objective-C exception (nil)"),
    })
}

#[cfg(test)]
mod tests {
    use objc2::msg_send;
    use objc2::runtime::AnyObject;
    use objc2_foundation::NSArray;

    use super::objc_try;

    /// An out-of-range `objectAtIndex:` raises NSRangeException: caught, named, and the
    /// process goes on (a Mac runs this; Linux type-checks it).
    #[test]
    fn an_objective_c_exception_becomes_an_error() {
        let empty = NSArray::<AnyObject>::new();
        let got = objc_try("objectAtIndex:", || {
            // SAFETY: a live NSArray and a selector it has; index 5 of an empty array makes
            // it raise NSRangeException, which objc_try catches.
            let _: *mut AnyObject = unsafe { msg_send![&*empty, objectAtIndex: 5usize] };
        });
        let err = got.expect_err("the exception was caught");
        assert!(
            err.contains("objectAtIndex:") && err.contains("NSRangeException"),
            "{err}"
        );
        // and a call that does not throw passes its value through
        assert_eq!(objc_try("count", || empty.count()), Ok(0));
    }
}
