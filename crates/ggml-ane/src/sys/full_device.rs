//! The second device, `ANE-FULL` (issue #14): it takes every op ggml's CPU backend can
//! compute, so a graph handed to it whole — by ggml's rpc-server, or by `-sm tensor`'s meta
//! device — is computed whole: fused chains and MUL_MATs on the engine (the same walker, kernels
//! and fallbacks as `ANE`), every other node on ggml's own CPU backend.
//!
//! Type IGPU: llama.cpp picks IGPU devices by default only when no GPU exists, so beside Metal
//! it is used only where it is named (`-dev`, `rpc-server -d`). ggml's CPU buffer type,
//! `mmap_support`, and the machine's RAM as its memory (RPC clients split layers by it).
//! `GGML_ANE_FULL=0` hides it.

use std::ffi::{c_char, c_int, CStr};
use std::sync::OnceLock;

use super::tensor::{all_readable, describe_node};
use super::vtables::{
    ggml_backend_ane_device_buffer_from_host_ptr, ggml_backend_ane_device_get_buffer_type, guard,
    new_backend, registry, Leaked, HOST_DEVICE_CAPS,
};
use super::{
    cpu, ggml_backend, ggml_backend_buffer_type_t, ggml_backend_buft_is_host,
    ggml_backend_dev_props, ggml_backend_device, ggml_backend_device_i, ggml_tensor, graph, log,
    GGML_BACKEND_DEVICE_TYPE_IGPU, GGML_LOG_LEVEL_ERROR,
};
use crate::walker::OpKind;

pub(super) const NAME: &CStr = c"ANE-FULL";
const DESCRIPTION: &CStr = c"Apple Neural Engine, every other op on ggml's CPU backend";

/// The machine's memory: (free, total) bytes. Free is the kernel's available pages on Linux;
/// elsewhere the total (macOS has no `_SC_AVPHYS_PAGES`).
pub(crate) fn memory() -> (usize, usize) {
    // SAFETY: sysconf has no preconditions; it returns -1 for names it does not know.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let total = (pages.max(0) as usize).saturating_mul(page.max(0) as usize);
    #[cfg(target_os = "linux")]
    // SAFETY: as above.
    let free = (unsafe { libc::sysconf(libc::_SC_AVPHYS_PAGES) }.max(0) as usize)
        .saturating_mul(page.max(0) as usize);
    #[cfg(not(target_os = "linux"))]
    let free = total;
    (free, total)
}

unsafe extern "C" fn ggml_backend_ane_full_device_get_name(
    _dev: *mut ggml_backend_device,
) -> *const c_char {
    guard("get_name", NAME.as_ptr(), || NAME.as_ptr())
}

unsafe extern "C" fn ggml_backend_ane_full_device_get_description(
    _dev: *mut ggml_backend_device,
) -> *const c_char {
    guard("get_description", DESCRIPTION.as_ptr(), || {
        DESCRIPTION.as_ptr()
    })
}

unsafe extern "C" fn ggml_backend_ane_full_device_get_memory(
    _dev: *mut ggml_backend_device,
    free: *mut usize,
    total: *mut usize,
) {
    guard("get_memory", (), || {
        let (f, t) = memory();
        // SAFETY: ggml passes valid out-pointers.
        unsafe {
            *free = f;
            *total = t;
        }
    })
}

unsafe extern "C" fn ggml_backend_ane_full_device_get_type(
    _dev: *mut ggml_backend_device,
) -> c_int {
    guard("get_type", GGML_BACKEND_DEVICE_TYPE_IGPU, || {
        GGML_BACKEND_DEVICE_TYPE_IGPU
    })
}

unsafe extern "C" fn ggml_backend_ane_full_device_get_props(
    _dev: *mut ggml_backend_device,
    props: *mut ggml_backend_dev_props,
) {
    guard("get_props", (), || {
        // SAFETY: ggml passes a valid, zeroed props struct to fill.
        let p = unsafe { &mut *props };
        let (free, total) = memory();
        p.name = NAME.as_ptr();
        p.description = DESCRIPTION.as_ptr();
        p.memory_free = free;
        p.memory_total = total;
        p.type_ = GGML_BACKEND_DEVICE_TYPE_IGPU;
        p.device_id = std::ptr::null();
        p.caps = HOST_DEVICE_CAPS;
    })
}

unsafe extern "C" fn ggml_backend_ane_full_device_init_backend(
    _dev: *mut ggml_backend_device,
    _params: *const c_char,
) -> *mut ggml_backend {
    guard("init_backend", std::ptr::null_mut(), || {
        // every op it takes but the engine's goes to ggml's CPU backend: without one, no device
        if let Err(why) = cpu::cpu_device() {
            log(
                GGML_LOG_LEVEL_ERROR,
                &format!("ggml-ane: no ANE-FULL backend: {why}"),
            );
            return std::ptr::null_mut();
        }
        new_backend(full_device())
    })
}

unsafe extern "C" fn ggml_backend_ane_full_device_supports_op(
    _dev: *mut ggml_backend_device,
    op: *const ggml_tensor,
) -> bool {
    guard("supports_op", false, || {
        // SAFETY: ggml passes a live tensor (or NULL) whose sources are live.
        let Some(t) = (unsafe { op.as_ref() }) else {
            return false;
        };
        if graph::op_kind(t) == OpKind::View {
            return true;
        }
        // SAFETY: as above.
        let readable = unsafe { describe_node(op).is_some() && all_readable(op) };
        if !readable {
            // tensors in another device's buffers: `-sm tensor`'s meta device asks about its
            // own (meta) tensors and hands us sub-graphs in our buffers; a scheduler copies
            // split inputs into them. What we compute is always in host memory.
            return cpu::cpu_device().is_ok();
        }
        // SAFETY: as above.
        cpu::cpu_device().is_ok_and(|cpu| unsafe { cpu.supports(op) })
    })
}

unsafe extern "C" fn ggml_backend_ane_full_device_supports_buft(
    _dev: *mut ggml_backend_device,
    buft: ggml_backend_buffer_type_t,
) -> bool {
    guard("supports_buft", false, || {
        // SAFETY: ggml passes a live buffer type (or NULL, checked).
        !buft.is_null() && unsafe { ggml_backend_buft_is_host(buft) }
    })
}

unsafe extern "C" fn ggml_backend_ane_full_device_offload_op(
    _dev: *mut ggml_backend_device,
    _op: *const ggml_tensor,
) -> bool {
    // never pulls work over from another backend: it is used where it is named
    false
}

const FULL_DEVICE_I: ggml_backend_device_i = ggml_backend_device_i {
    get_name: Some(ggml_backend_ane_full_device_get_name),
    get_description: Some(ggml_backend_ane_full_device_get_description),
    get_memory: Some(ggml_backend_ane_full_device_get_memory),
    get_type: Some(ggml_backend_ane_full_device_get_type),
    get_props: Some(ggml_backend_ane_full_device_get_props),
    init_backend: Some(ggml_backend_ane_full_device_init_backend),
    // the same host memory as the ANE device's: ggml's CPU buffer type
    get_buffer_type: Some(ggml_backend_ane_device_get_buffer_type),
    get_host_buffer_type: None,
    buffer_from_host_ptr: Some(ggml_backend_ane_device_buffer_from_host_ptr),
    supports_op: Some(ggml_backend_ane_full_device_supports_op),
    supports_buft: Some(ggml_backend_ane_full_device_supports_buft),
    offload_op: Some(ggml_backend_ane_full_device_offload_op),
    event_new: None,
    event_free: None,
    event_synchronize: None,
};

/// The `ANE-FULL` device.
pub(crate) fn full_device() -> *mut ggml_backend_device {
    static DEV: OnceLock<Leaked<ggml_backend_device>> = OnceLock::new();
    DEV.get_or_init(|| {
        Leaked(Box::into_raw(Box::new(ggml_backend_device {
            iface: FULL_DEVICE_I,
            reg: registry(),
            context: std::ptr::null_mut(),
        })))
    })
    .0
}
