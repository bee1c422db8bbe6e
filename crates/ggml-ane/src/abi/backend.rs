//! The backend (stream) vtable ggml calls: each entry turns C pointers into our types and
//! hands over to safe code (`compute`, `stats`). Every entry runs inside `guard`.

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

use super::device::spec_of;
use super::split::Split;
use super::*;
use crate::compute::context::BackendContext;
use crate::devices::ANE;
use crate::{compute, runtime, stats};

static GUID: [u8; 16] = *b"ggml-ane-backend";

struct Guid(*mut [u8; 16]);
// SAFETY: the GUID is immutable static data; ggml only compares it.
unsafe impl Sync for Guid {}
// SAFETY: as above.
unsafe impl Send for Guid {}

fn guid() -> *mut [u8; 16] {
    static G: OnceLock<Guid> = OnceLock::new();
    G.get_or_init(|| Guid(&GUID as *const [u8; 16] as *mut [u8; 16]))
        .0
}

/// Whether backends are laid out as before ggml 0.10.0 in this host ([`ggml_backend_0_9`]).
fn legacy_layout() -> bool {
    super::registry::host_layout().is_some_and(|l| !l.backend_2d_slots)
}

/// `device` and `context` of one of our backends, read through the layout it was made with.
///
/// # Safety
/// `backend` is one of ours, live.
unsafe fn parts(backend: *mut ggml_backend) -> (*mut ggml_backend_device, *mut c_void) {
    if legacy_layout() {
        // SAFETY: ours, made as a ggml_backend_0_9 in this host (`new_backend`).
        let b = unsafe { &*backend.cast::<ggml_backend_0_9>() };
        (b.device, b.context)
    } else {
        // SAFETY: ours, made as a ggml_backend.
        let b = unsafe { &*backend };
        (b.device, b.context)
    }
}

/// Our context of `backend`, if it is one of ours.
///
/// # Safety
/// `backend` is NULL or a live ggml backend.
unsafe fn context<'a>(backend: *mut ggml_backend) -> Option<&'a BackendContext> {
    // SAFETY: NULL or live, by the caller; ours (checked by the GUID) carry a BackendContext.
    unsafe { (ggml_backend_is_ane(backend)).then(|| &*(parts(backend).1 as *const BackendContext)) }
}

unsafe extern "C" fn ggml_backend_ane_get_name(backend: *mut ggml_backend) -> *const c_char {
    guard("get_name", ANE.name.as_ptr(), || {
        // SAFETY: ggml passes one of our live backends (or NULL, checked).
        let device = if unsafe { ggml_backend_is_ane(backend) } {
            // SAFETY: one of ours, live.
            unsafe { parts(backend) }.0
        } else {
            std::ptr::null_mut()
        };
        // SAFETY: NULL or one of our devices.
        unsafe { spec_of(device) }.name.as_ptr()
    })
}

unsafe extern "C" fn ggml_backend_ane_free(backend: *mut ggml_backend) {
    guard("free", (), || {
        if backend.is_null() {
            return;
        }
        // SAFETY: `backend` and its context were created by `new_backend` with
        // Box::into_raw, in the layout read here, and ggml frees each backend exactly once.
        let ctx = unsafe {
            let ctx = Box::from_raw(parts(backend).1.cast::<BackendContext>());
            if legacy_layout() {
                drop(Box::from_raw(backend.cast::<ggml_backend_0_9>()));
            } else {
                drop(Box::from_raw(backend));
            }
            ctx
        };
        if let Ok(rt) = runtime::runtime() {
            stats::instance_ended(&ctx, rt);
        }
        drop(ctx);
    })
}

unsafe extern "C" fn ggml_backend_ane_graph_compute(
    backend: *mut ggml_backend,
    cgraph: *mut ggml_cgraph,
) -> c_int {
    guard("graph_compute", GGML_STATUS_FAILED, || {
        // SAFETY: ggml passes a backend it created through init_backend: one of ours.
        let Some(ctx) = (unsafe { context(backend) }) else {
            return GGML_STATUS_FAILED;
        };
        let compute_flag = super::registry::host_layout().is_none_or(|l| l.compute_flag);
        // SAFETY: `cgraph` is a live graph handed to this backend for the duration of this
        // call, its tensors ours to read and write until we return.
        let mut split = unsafe { Split::read(cgraph, use_counts_layout(), compute_flag) };
        let done = match runtime::runtime() {
            Ok(rt) => compute::graph_compute(ctx, rt, &mut split),
            // no usable engine: the devices took no ops; whatever is handed to us anyway goes
            // to ggml's CPU backend
            Err(_) => compute::on_cpu_only(ctx, &split),
        };
        match done {
            Ok(()) => GGML_STATUS_SUCCESS,
            // the host's abort is not an error to log: its status goes back as it came
            Err(f) if f.status == GGML_STATUS_ABORTED => f.status,
            Err(f) => {
                log(
                    GGML_LOG_LEVEL_ERROR,
                    &format!("ggml-ane: graph_compute: {}", f.why),
                );
                f.status
            }
        }
    })
}

/// Whether this host's `struct ggml_cgraph` is the one we mirror: a version of the table,
/// whose headers the layout test checks (elsewhere the use counts are not read).
fn use_counts_layout() -> bool {
    static KNOWN: OnceLock<bool> = OnceLock::new();
    *KNOWN.get_or_init(|| crate::hosts::use_counts_readable(&host_ggml_version()))
}

/// Says once that graphs come without use counts: fused blocks then write back their normed
/// input, and FFN blocks are not fused (their intermediates might be read by another split).
pub(crate) fn use_counts_missing() {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        log(
            GGML_LOG_LEVEL_INFO,
            "ggml-ane: this graph carries no use counts we can read (rpc-server, or a ggml outside the table): fused blocks write back their normed input and FFN blocks are not fused",
        );
    });
}

const BACKEND_I: ggml_backend_i = ggml_backend_i {
    get_name: Some(ggml_backend_ane_get_name),
    free: Some(ggml_backend_ane_free),
    set_tensor_async: None,
    get_tensor_async: None,
    set_tensor_2d_async: None,
    get_tensor_2d_async: None,
    cpy_tensor_async: None,
    synchronize: None,
    graph_plan_create: None,
    graph_plan_free: None,
    graph_plan_update: None,
    graph_plan_compute: None,
    graph_compute: Some(ggml_backend_ane_graph_compute),
    event_record: None,
    event_wait: None,
    graph_optimize: None,
};

/// [`BACKEND_I`] in the slots of a ggml before 0.10.0.
const BACKEND_I_0_9: ggml_backend_i_0_9 = ggml_backend_i_0_9 {
    get_name: BACKEND_I.get_name,
    free: BACKEND_I.free,
    set_tensor_async: None,
    get_tensor_async: None,
    cpy_tensor_async: None,
    synchronize: None,
    graph_plan_create: None,
    graph_plan_free: None,
    graph_plan_update: None,
    graph_plan_compute: None,
    graph_compute: BACKEND_I.graph_compute,
    event_record: None,
    event_wait: None,
    graph_optimize: None,
};

/// A backend of `device` (ANE or ANE-FULL: they compute alike, the devices differ in what they
/// accept), laid out as the host's ggml lays out backends; NULL where the host was refused
/// (no layout: no device is offered there). Without a usable engine it takes no ops (its
/// devices say so from then on).
pub(super) fn new_backend(device: *mut ggml_backend_device) -> *mut ggml_backend {
    let Some(layout) = super::registry::host_layout() else {
        return std::ptr::null_mut();
    };
    let ctx = Box::new(BackendContext::default());
    match runtime::runtime() {
        Ok(rt) => {
            stats::instance_started(&ctx);
            if rt.config.stats_level > 0 {
                super::signals::print_stats_on_signal(stats::stats_now_text);
            }
        }
        // the backend still exists (a host treats a NULL backend as a fatal error), and gets
        // out of the way: its device takes no ops from now on
        Err(e) => no_usable_engine(&e),
    }
    let context = Box::into_raw(ctx).cast::<c_void>();
    if layout.backend_2d_slots {
        Box::into_raw(Box::new(ggml_backend {
            guid: guid(),
            iface: BACKEND_I,
            device,
            context,
        }))
    } else {
        Box::into_raw(Box::new(ggml_backend_0_9 {
            guid: guid(),
            iface: BACKEND_I_0_9,
            device,
            context,
        }))
        .cast::<ggml_backend>()
    }
}

/// Says once that no engine is usable, and what follows.
fn no_usable_engine(why: &str) {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        log(
            GGML_LOG_LEVEL_ERROR,
            &format!("ggml-ane: no usable engine ({why}): the ANE devices take no ops and the scheduler gives them elsewhere (GGML_ANE_DISABLE=1 hides the devices)"),
        );
    });
}

/// A new backend of the `ANE` device.
#[unsafe(no_mangle)]
pub extern "C" fn ggml_backend_ane_init() -> *mut ggml_backend {
    guard("init", std::ptr::null_mut(), || {
        new_backend(super::registry::device(&ANE))
    })
}

/// True if `backend` was created by this library.
///
/// # Safety
/// `backend` is NULL or a live ggml backend.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ggml_backend_is_ane(backend: *mut ggml_backend) -> bool {
    guard("is_ane", false, || {
        // SAFETY: the caller passes NULL or a live backend.
        !backend.is_null() && unsafe { (*backend).guid } == guid()
    })
}

/// `ggml_backend_set_n_threads` (what llama.cpp and rpc-server call on every registry that
/// has it): the thread count of the CPU backend that computes our other nodes.
pub(super) unsafe extern "C" fn ggml_backend_ane_set_n_threads(
    backend: *mut ggml_backend,
    n_threads: c_int,
) {
    guard("set_n_threads", (), || {
        // SAFETY: the caller passes a live backend; ours are recognised by their GUID.
        if let Some(ctx) = unsafe { context(backend) } {
            ctx.set_n_threads(n_threads);
        }
    })
}

/// `ggml_backend_set_abort_callback` (llama.cpp sets one on every registry that has it):
/// forwarded to the CPU backend that computes our other nodes.
pub(super) unsafe extern "C" fn ggml_backend_ane_set_abort_callback(
    backend: *mut ggml_backend,
    callback: ggml_abort_callback,
    data: *mut c_void,
) {
    guard("set_abort_callback", (), || {
        // SAFETY: the caller passes a live backend; ours are recognised by their GUID.
        if let Some(ctx) = unsafe { context(backend) } {
            ctx.set_abort_callback(callback, data as usize);
        }
    })
}
