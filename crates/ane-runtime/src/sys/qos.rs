//! The calling thread's QoS class for ANE work (macOS).
//!
//! The QoS passed to the framework is not the whole story: ANE work submitted from a
//! background-QoS thread ran 2.2x slower (slavko's tuning notes, via docs/ane-notes.md), and
//! prefill-bench submits from user-interactive queues. ggml's worker threads start at the
//! default class, so each thread that evaluates is raised once to user-initiated, never
//! lowered.

use std::cell::Cell;

use libc::qos_class_t;

thread_local! {
    static RAISED: Cell<bool> = const { Cell::new(false) };
}

/// Raises the calling thread to `QOS_CLASS_USER_INITIATED` unless it is already there or
/// higher; once per thread. Failures are ignored: QoS is a hint, not a requirement.
pub(crate) fn raise_to_user_initiated() {
    if RAISED.with(|r| r.replace(true)) {
        return;
    }
    let mut current = qos_class_t::QOS_CLASS_UNSPECIFIED;
    let mut priority: libc::c_int = 0;
    // SAFETY: the current thread's handle and two valid out-pointers.
    let rc = unsafe {
        libc::pthread_get_qos_class_np(libc::pthread_self(), &mut current, &mut priority)
    };
    if rc == 0 && current as u32 >= qos_class_t::QOS_CLASS_USER_INITIATED as u32 {
        return;
    }
    // SAFETY: sets the calling thread's own class; no pointers involved.
    let _ =
        unsafe { libc::pthread_set_qos_class_self_np(qos_class_t::QOS_CLASS_USER_INITIATED, 0) };
}
