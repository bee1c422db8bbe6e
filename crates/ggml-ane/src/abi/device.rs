//! The device vtable ggml calls, one for both devices: each entry finds its device's row of
//! the table (`devices.rs`, kept in the device's context) and hands over to safe code.

use std::ffi::{c_char, c_int, c_void};

use super::backend::new_backend;
use super::tensor::{
    all_readable, describe_node, op_kind, reads_block_input, token_count, BuftMemo,
};
use super::*;
use crate::devices::{self, DeviceSpec, DeviceType, Memory, OpQuery, ANE};
use crate::runtime;

/// The table row of `dev` (ours carry it as their context; NULL reads as `ANE`).
///
/// # Safety
/// `dev` is NULL or one of the devices this library made.
pub(super) unsafe fn spec_of(dev: *mut ggml_backend_device) -> &'static DeviceSpec {
    // SAFETY: NULL or ours, by the caller; ours hold a &'static DeviceSpec as context.
    unsafe { dev.as_ref() }
        .and_then(|d| unsafe { d.context.cast::<DeviceSpec>().as_ref() })
        .unwrap_or(&ANE)
}

/// What both devices can do: they compute on host memory (ggml's CPU buffer type, buffers
/// from host pointers) and never asynchronously.
const HOST_DEVICE_CAPS: ggml_backend_dev_caps = ggml_backend_dev_caps {
    async_: false,
    host_buffer: false,
    buffer_from_host_ptr: true,
    events: false,
    // true: llama.cpp turns mmap off for the whole model when a listed device lacks it
    mmap_support: true,
};

fn device_type(spec: &DeviceSpec) -> c_int {
    match spec.device_type {
        DeviceType::Accel => GGML_BACKEND_DEVICE_TYPE_ACCEL,
        DeviceType::Igpu => GGML_BACKEND_DEVICE_TYPE_IGPU,
    }
}

fn memory(spec: &DeviceSpec) -> (usize, usize) {
    match spec.memory {
        Memory::None => (0, 0),
        Memory::MachineRam => machine_memory(),
    }
}

const NO_ENGINE: &std::ffi::CStr = c"Apple Neural Engine (no engine available)";

fn description(spec: &DeviceSpec) -> *const c_char {
    match spec.description {
        Some(d) => d.as_ptr(),
        None => match runtime::runtime_if_made() {
            Some(rt) => rt.description.as_ptr(),
            None => {
                runtime::engine_at_hand().map_or(NO_ENGINE.as_ptr(), |e| e.description.as_ptr())
            }
        },
    }
}

unsafe extern "C" fn ggml_backend_ane_device_get_name(
    dev: *mut ggml_backend_device,
) -> *const c_char {
    guard("get_name", ANE.name.as_ptr(), || {
        // SAFETY: ggml passes one of our devices.
        unsafe { spec_of(dev) }.name.as_ptr()
    })
}

unsafe extern "C" fn ggml_backend_ane_device_get_description(
    dev: *mut ggml_backend_device,
) -> *const c_char {
    guard("get_description", NO_ENGINE.as_ptr(), || {
        // SAFETY: ggml passes one of our devices.
        description(unsafe { spec_of(dev) })
    })
}

unsafe extern "C" fn ggml_backend_ane_device_get_memory(
    dev: *mut ggml_backend_device,
    free: *mut usize,
    total: *mut usize,
) {
    guard("get_memory", (), || {
        // SAFETY: ggml passes one of our devices.
        let (f, t) = memory(unsafe { spec_of(dev) });
        // SAFETY: ggml passes valid out-pointers.
        unsafe {
            *free = f;
            *total = t;
        }
    })
}

unsafe extern "C" fn ggml_backend_ane_device_get_type(dev: *mut ggml_backend_device) -> c_int {
    guard("get_type", GGML_BACKEND_DEVICE_TYPE_ACCEL, || {
        // SAFETY: ggml passes one of our devices.
        device_type(unsafe { spec_of(dev) })
    })
}

unsafe extern "C" fn ggml_backend_ane_device_get_props(
    dev: *mut ggml_backend_device,
    props: *mut ggml_backend_dev_props,
) {
    guard("get_props", (), || {
        // SAFETY: ggml passes one of our devices and a valid, zeroed props struct to fill.
        let (spec, p) = unsafe { (spec_of(dev), &mut *props) };
        let (free, total) = memory(spec);
        p.name = spec.name.as_ptr();
        p.description = description(spec);
        p.memory_free = free;
        p.memory_total = total;
        p.type_ = device_type(spec);
        p.device_id = std::ptr::null();
        p.caps = HOST_DEVICE_CAPS;
    })
}

unsafe extern "C" fn ggml_backend_ane_device_init_backend(
    dev: *mut ggml_backend_device,
    _params: *const c_char,
) -> *mut ggml_backend {
    guard("init_backend", std::ptr::null_mut(), || {
        // SAFETY: ggml passes one of our devices.
        let spec = unsafe { spec_of(dev) };
        // every op it takes but the engine's goes to ggml's CPU backend: without one, none
        if spec.needs_cpu_backend {
            if let Err(why) = cpu::cpu_device() {
                log(
                    GGML_LOG_LEVEL_ERROR,
                    &format!(
                        "ggml-ane: no {} backend: {why}",
                        spec.name.to_string_lossy()
                    ),
                );
                return std::ptr::null_mut();
            }
        }
        new_backend(dev)
    })
}

unsafe extern "C" fn ggml_backend_ane_device_get_buffer_type(
    _dev: *mut ggml_backend_device,
) -> ggml_backend_buffer_type_t {
    guard("get_buffer_type", std::ptr::null_mut(), || {
        // SAFETY: exported by ggml-base, no preconditions.
        unsafe { ggml_backend_cpu_buffer_type() }
    })
}

unsafe extern "C" fn ggml_backend_ane_device_buffer_from_host_ptr(
    _dev: *mut ggml_backend_device,
    ptr: *mut c_void,
    size: usize,
    _max_tensor_size: usize,
) -> ggml_backend_buffer_t {
    guard("buffer_from_host_ptr", std::ptr::null_mut(), || {
        // SAFETY: ggml hands us host memory of `size` bytes that outlives the buffer.
        unsafe { ggml_backend_cpu_buffer_from_ptr(ptr, size) }
    })
}

unsafe extern "C" fn ggml_backend_ane_device_supports_op(
    dev: *mut ggml_backend_device,
    op: *const ggml_tensor,
) -> bool {
    guard("supports_op", false, || {
        // SAFETY: ggml passes one of our devices and a live tensor (or NULL) whose sources
        // are live.
        let (spec, t) = unsafe { (spec_of(dev), op.as_ref()) };
        let Some(t) = t else {
            return false;
        };
        // SAFETY: as above.
        let desc = unsafe { describe_node(op, &mut BuftMemo::default()) };
        let cpu = cpu::cpu_device();
        let query = OpQuery {
            desc: desc.as_ref(),
            kind: op_kind(t),
            // SAFETY: as above.
            tokens: unsafe { token_count(op) },
            // SAFETY: as above.
            readable: unsafe { all_readable(op) },
            cpu_exists: cpu.is_ok(),
            engine_unusable: runtime::runtime_failed(),
        };
        devices::supports_op(
            spec,
            &query,
            // SAFETY: as above.
            || unsafe { reads_block_input(op) },
            // SAFETY: as above.
            || cpu.is_ok_and(|cpu| unsafe { cpu.supports(op) }),
        )
    })
}

unsafe extern "C" fn ggml_backend_ane_device_supports_buft(
    dev: *mut ggml_backend_device,
    buft: ggml_backend_buffer_type_t,
) -> bool {
    guard("supports_buft", false, || {
        // SAFETY: ggml passes one of our devices and a live buffer type (or NULL, checked).
        unsafe {
            if spec_of(dev).host_buffers_only {
                !buft.is_null() && ggml_backend_buft_is_host(buft)
            } else {
                readable_buft(buft)
            }
        }
    })
}

unsafe extern "C" fn ggml_backend_ane_device_offload_op(
    dev: *mut ggml_backend_device,
    op: *const ggml_tensor,
) -> bool {
    guard("offload_op", false, || {
        // SAFETY: ggml passes one of our devices and a live tensor (or NULL).
        let (spec, t, desc) = unsafe {
            (
                spec_of(dev),
                op.as_ref(),
                describe_node(op, &mut BuftMemo::default()),
            )
        };
        match (t, desc) {
            (Some(t), Some(d)) => devices::offload_op(spec, op_kind(t), &d),
            _ => false,
        }
    })
}

pub(super) const DEVICE_I: ggml_backend_device_i = ggml_backend_device_i {
    get_name: Some(ggml_backend_ane_device_get_name),
    get_description: Some(ggml_backend_ane_device_get_description),
    get_memory: Some(ggml_backend_ane_device_get_memory),
    get_type: Some(ggml_backend_ane_device_get_type),
    get_props: Some(ggml_backend_ane_device_get_props),
    init_backend: Some(ggml_backend_ane_device_init_backend),
    get_buffer_type: Some(ggml_backend_ane_device_get_buffer_type),
    get_host_buffer_type: None,
    buffer_from_host_ptr: Some(ggml_backend_ane_device_buffer_from_host_ptr),
    supports_op: Some(ggml_backend_ane_device_supports_op),
    supports_buft: Some(ggml_backend_ane_device_supports_buft),
    offload_op: Some(ggml_backend_ane_device_offload_op),
    event_new: None,
    event_free: None,
    event_synchronize: None,
};
