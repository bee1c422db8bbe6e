//! The registry vtable ggml calls and the exported entry points (`ggml_backend_init`,
//! `ggml_backend_score`): which devices are offered, in which ggml, with what features.
//! Every entry runs inside `guard`: no panic crosses into C.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use super::backend::{ggml_backend_ane_set_abort_callback, ggml_backend_ane_set_n_threads};
use super::device::DEVICE_I;
use super::*;
use crate::devices::{self, DeviceSpec, ANE, ANE_FULL};
use crate::runtime;

/// Runs `f`, turning a panic into `default` (after logging it).
pub(crate) fn guard<R>(what: &str, default: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            log(
                GGML_LOG_LEVEL_ERROR,
                &format!("ggml-ane: {what} panicked: {msg}"),
            );
            default
        }
    }
}

/// Leaked, process-lifetime objects handed to ggml by pointer.
pub(super) struct Leaked<T>(pub(super) *mut T);
// SAFETY: created once, never freed or mutated after construction; ggml reads them from any thread.
unsafe impl<T> Sync for Leaked<T> {}
// SAFETY: as above.
unsafe impl<T> Send for Leaked<T> {}

// ---- registry ----

unsafe extern "C" fn ggml_backend_ane_reg_get_name(_reg: *mut ggml_backend_reg) -> *const c_char {
    guard("get_name", ANE.name.as_ptr(), || ANE.name.as_ptr())
}

/// The devices offered: none when the registry stays out, `ANE-FULL` unless hidden.
fn devices_offered() -> Vec<&'static DeviceSpec> {
    if !offered() {
        return Vec::new();
    }
    let full = crate::settings::get().as_ref().is_ok_and(|c| c.full_device);
    devices::offered(full)
}

unsafe extern "C" fn ggml_backend_ane_reg_get_device_count(_reg: *mut ggml_backend_reg) -> usize {
    guard("get_device_count", 0, || devices_offered().len())
}

unsafe extern "C" fn ggml_backend_ane_reg_get_device(
    _reg: *mut ggml_backend_reg,
    index: usize,
) -> *mut ggml_backend_device {
    guard("get_device", std::ptr::null_mut(), || {
        devices_offered()
            .get(index)
            .map_or(std::ptr::null_mut(), |spec| device(spec))
    })
}

/// The ggml device of table row `spec`, made once: the shared vtable, the row as context.
pub(super) fn device(spec: &'static DeviceSpec) -> *mut ggml_backend_device {
    static DEVICES: OnceLock<Vec<Leaked<ggml_backend_device>>> = OnceLock::new();
    let all = DEVICES.get_or_init(|| {
        [&ANE, &ANE_FULL]
            .into_iter()
            .map(|spec| {
                Leaked(Box::into_raw(Box::new(ggml_backend_device {
                    iface: DEVICE_I,
                    reg: registry(),
                    context: (spec as *const DeviceSpec).cast_mut().cast::<c_void>(),
                })))
            })
            .collect()
    });
    let i = usize::from(std::ptr::eq(spec, &ANE_FULL));
    all[i].0
}

/// `ggml_backend_get_features`: what llama.cpp prints in its system info. The strings and
/// the array live for the process (built once). A panic yields an empty list.
unsafe extern "C" fn ggml_backend_ane_reg_get_features(
    _reg: *mut ggml_backend_reg,
) -> *mut ggml_backend_feature {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    static EMPTY: OnceLock<Features> = OnceLock::new();
    let empty = EMPTY.get_or_init(|| Features::new(Vec::new())).as_ptr();
    // two lists, each built once: before a backend made the runtime, and after (with the
    // self-probe's findings)
    static FEATURES_EARLY: OnceLock<Features> = OnceLock::new();
    guard("get_features", empty, || {
        let list = if runtime::runtime_if_made().is_some() {
            &FEATURES
        } else {
            &FEATURES_EARLY
        };
        list.get_or_init(|| Features::new(runtime::features()))
            .as_ptr()
    })
}

/// A NULL-terminated feature array and the strings it points into.
struct Features(
    Vec<ggml_backend_feature>,
    #[allow(dead_code, reason = "owns the strings the pointers borrow")] Vec<std::ffi::CString>,
);

// SAFETY: the pointers borrow the CStrings stored alongside, which never change or move (a
// Vec's heap buffer stays put when the Vec is moved).
unsafe impl Sync for Features {}
// SAFETY: as above.
unsafe impl Send for Features {}

impl Features {
    fn new(pairs: Vec<(String, String)>) -> Self {
        let strings: Vec<std::ffi::CString> = pairs
            .iter()
            .flat_map(|(k, v)| [k.clone(), v.clone()])
            .map(|s| std::ffi::CString::new(s).unwrap_or_default())
            .collect();
        let mut list: Vec<ggml_backend_feature> = strings
            .chunks(2)
            .map(|kv| ggml_backend_feature {
                name: kv[0].as_ptr(),
                value: kv[1].as_ptr(),
            })
            .collect();
        list.push(ggml_backend_feature {
            name: std::ptr::null(),
            value: std::ptr::null(),
        });
        Features(list, strings)
    }

    fn as_ptr(&self) -> *mut ggml_backend_feature {
        self.0.as_ptr().cast_mut()
    }
}

unsafe extern "C" fn ggml_backend_ane_reg_get_proc_address(
    _reg: *mut ggml_backend_reg,
    name: *const c_char,
) -> *mut c_void {
    guard("get_proc_address", std::ptr::null_mut(), || {
        if name.is_null() {
            return std::ptr::null_mut();
        }
        // SAFETY: ggml passes a NUL-terminated name.
        match unsafe { CStr::from_ptr(name) }.to_bytes() {
            b"ggml_backend_get_features" => ggml_backend_ane_reg_get_features as *mut c_void,
            b"ggml_backend_set_n_threads" => ggml_backend_ane_set_n_threads as *mut c_void,
            b"ggml_backend_set_abort_callback" => {
                ggml_backend_ane_set_abort_callback as *mut c_void
            }
            _ => std::ptr::null_mut(),
        }
    })
}

const REG_I: ggml_backend_reg_i = ggml_backend_reg_i {
    get_name: Some(ggml_backend_ane_reg_get_name),
    get_device_count: Some(ggml_backend_ane_reg_get_device_count),
    get_device: Some(ggml_backend_ane_reg_get_device),
    get_proc_address: Some(ggml_backend_ane_reg_get_proc_address),
};

/// The registry: one device, "ANE".
#[unsafe(no_mangle)]
pub extern "C" fn ggml_backend_ane_reg() -> *mut ggml_backend_reg {
    guard("reg", std::ptr::null_mut(), registry)
}

pub(super) fn registry() -> *mut ggml_backend_reg {
    static REG: OnceLock<Leaked<ggml_backend_reg>> = OnceLock::new();
    REG.get_or_init(|| {
        let api_version = host_decision();
        if api_version != GGML_BACKEND_API_VERSION {
            log(
                GGML_LOG_LEVEL_INFO,
                &format!("ggml-ane: host ggml speaks backend API v{api_version}"),
            );
        }
        Leaked(Box::into_raw(Box::new(ggml_backend_reg {
            api_version,
            iface: REG_I,
            context: std::ptr::null_mut(),
        })))
    })
    .0
}

/// Whether the registry offers its device: not with `GGML_ANE_DISABLE=1`, nor in a host the
/// version table and layout checks refuse (`hosts::decide`): exactly when a layout was decided.
fn offered() -> bool {
    host_layout().is_some()
}

/// The layout the host was found to have when the registry was made (`None`: the device is
/// not offered, and no backend of ours is made).
static HOST_LAYOUT: OnceLock<Option<crate::hosts::HostLayout>> = OnceLock::new();

/// The host's layout, as decided when the registry was made.
pub(crate) fn host_layout() -> Option<crate::hosts::HostLayout> {
    HOST_LAYOUT.get().copied().flatten()
}

/// Decides, once, whether to offer the device and in which layout ([`host_layout`]): the
/// version table, the layout the host's exports show, and its tensors read back
/// (`hosts::decide`); logs why not, or what is tried. Returns the backend API version to
/// announce.
fn host_decision() -> c_int {
    let version = host_ggml_version();
    let (disable, any) = match crate::settings::get() {
        Ok(c) => (c.disable, c.any_ggml),
        Err(_) => (false, false),
    };
    let layout = crate::hosts::layout_from_exports(super::host::host_exports());
    let d = crate::hosts::decide(
        &version,
        layout,
        super::host::tensors_read_back(),
        any,
        disable,
    );
    HOST_LAYOUT.get_or_init(|| d.layout);
    // two copies of ggml in one process: two registries, two loggers, a CPU backend one side
    // cannot find (a library linked to a libggml-base by path, on a Mac)
    let bases = super::host::loaded_ggml_bases();
    if bases.len() > 1 {
        log(
            GGML_LOG_LEVEL_WARN,
            &format!(
                "ggml-ane: this process holds {} copies of libggml-base ({}); this library is bound to {}",
                bases.len(),
                bases.join(", "),
                super::host::bound_ggml_base().unwrap_or_else(|| "an unknown one".into())
            ),
        );
    }
    if let Some((is_error, line)) = &d.log {
        let level = match (is_error, d.layout.is_some()) {
            (true, _) => GGML_LOG_LEVEL_ERROR,
            (false, true) => GGML_LOG_LEVEL_WARN,
            (false, false) => GGML_LOG_LEVEL_INFO,
        };
        log(level, line);
    }
    d.api
}

// ---- exports for ggml_backend_load ----

/// What `ggml_backend_load` calls (GGML_BACKEND_DL_IMPL).
#[unsafe(no_mangle)]
pub extern "C" fn ggml_backend_init() -> *mut ggml_backend_reg {
    ggml_backend_ane_reg()
}

/// Non-zero where an engine can be created (GGML_BACKEND_DL_SCORE_IMPL).
#[unsafe(no_mangle)]
pub extern "C" fn ggml_backend_score() -> c_int {
    guard("score", 0, || match runtime::engine_at_hand() {
        Ok(e) if e.kind == ane_runtime::EngineKind::Reference => 1,
        Ok(_) => 10,
        Err(why) => {
            // ggml itself only says the backend "is not supported on this system"
            log(
                GGML_LOG_LEVEL_ERROR,
                &format!("ggml-ane: not registering, no usable engine: {why}"),
            );
            0
        }
    })
}
