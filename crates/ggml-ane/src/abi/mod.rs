//! The ggml ABI: the crate's only `unsafe` (enforced by `#![deny(unsafe_code)]` at the root).
//!
//! Hand-written `#[repr(C)]` mirrors of `include/ggml.h`, `include/ggml-backend.h`,
//! `src/ggml-backend-impl.h` and the head of `src/ggml-impl.h`'s `ggml_cgraph`, pinned to
//! ggml 0.25.3 (backend API v2, the PyPI sdist `llama-cpp-python==0.3.36`) and checked
//! against 0.26 and 0.28. Every size and offset is asserted at compile time below, and
//! `tests/layout_tests.rs` checks the same numbers against each host's real headers. Enums are
//! `i32` newtypes, not Rust enums: a value from a newer ggml must not be UB.
//!
//! - `mod.rs`: the mirrored structs, constants and functions; logging; buffer-type and
//!   version queries.
//! - `tensor.rs`: a tensor read into a plain `TensorDesc`; bounds-checked row access.
//! - `split.rs`: a split read once into a `Split` (nodes, descriptions, use counts).
//! - `cpu.rs`: ggml's CPU backend, borrowed from the host.
//! - `host.rs`: what the host's ggml is, read at run time (its exports; tensors read back).
//! - `backend.rs`, `device.rs`, `registry.rs`: the vtables ggml calls and the exported entry
//!   points; each hands over to safe code in a line or two.
//! - `signals.rs`: the stats table on SIGINT/SIGTERM.
#![allow(
    non_camel_case_types,
    missing_docs,
    reason = "C names, documented in the ggml headers"
)]

pub(crate) mod backend;
pub(crate) mod cpu;
mod device;
pub(crate) mod gpu;
pub(crate) mod host;
pub mod registry;
pub(crate) mod signals;
pub(crate) mod split;
pub(crate) mod tensor;

pub(crate) use backend::use_counts_missing;
pub(crate) use cpu::CpuBackend;
pub(crate) use registry::guard;
pub(crate) use split::Split;
pub(crate) use tensor::{NodeDesc, TensorDesc, TensorRows, TensorRowsMut};

use std::ffi::{c_char, c_int, c_void};

pub const GGML_MAX_DIMS: usize = 4;
pub const GGML_MAX_SRC: usize = 10;
pub const GGML_MAX_NAME: usize = 64;
pub const GGML_MAX_OP_PARAMS: usize = 64;
/// The backend API version of the pinned ggml.
pub const GGML_BACKEND_API_VERSION: c_int = 2;

/// `enum ggml_type`.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ggml_type(pub c_int);

impl ggml_type {
    pub const F32: ggml_type = ggml_type(0);
    pub const F16: ggml_type = ggml_type(1);
    pub const BF16: ggml_type = ggml_type(30);
    /// MUL_MAT_ID's expert ids.
    pub const I32: ggml_type = ggml_type(26);
}

/// `enum ggml_op` (values of the pinned version; they shift between ggml versions).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ggml_op(pub c_int);

impl ggml_op {
    pub const NONE: ggml_op = ggml_op(0);
    pub const MUL_MAT: ggml_op = ggml_op(29);
    pub const RESHAPE: ggml_op = ggml_op(36);
    pub const VIEW: ggml_op = ggml_op(37);
    pub const PERMUTE: ggml_op = ggml_op(38);
    pub const TRANSPOSE: ggml_op = ggml_op(39);
}

pub const GGML_TENSOR_FLAG_INPUT: i32 = 1;
pub const GGML_TENSOR_FLAG_OUTPUT: i32 = 2;
pub const GGML_TENSOR_FLAG_COMPUTE: i32 = 16;

pub const GGML_STATUS_FAILED: c_int = -1;
pub const GGML_STATUS_SUCCESS: c_int = 0;
pub const GGML_STATUS_ABORTED: c_int = 1;

pub const GGML_LOG_LEVEL_DEBUG: c_int = 1;
pub const GGML_LOG_LEVEL_INFO: c_int = 2;
pub const GGML_LOG_LEVEL_WARN: c_int = 3;
pub const GGML_LOG_LEVEL_ERROR: c_int = 4;

pub const GGML_BACKEND_DEVICE_TYPE_CPU: c_int = 0;
pub const GGML_BACKEND_DEVICE_TYPE_GPU: c_int = 1;
pub const GGML_BACKEND_DEVICE_TYPE_IGPU: c_int = 2;
pub const GGML_BACKEND_DEVICE_TYPE_ACCEL: c_int = 3;
/// `GGML_BACKEND_BUFFER_USAGE_ANY`: a buffer whose use nobody said (rpc-server's, test hosts').
pub const GGML_BACKEND_BUFFER_USAGE_ANY: c_int = 0;
/// `GGML_BACKEND_BUFFER_USAGE_WEIGHTS`: a buffer holding model weights.
pub const GGML_BACKEND_BUFFER_USAGE_WEIGHTS: c_int = 1;

#[repr(C)]
pub struct ggml_tensor {
    pub type_: ggml_type,
    pub buffer: *mut c_void,
    pub ne: [i64; GGML_MAX_DIMS],
    pub nb: [usize; GGML_MAX_DIMS],
    pub op: ggml_op,
    pub op_params: [i32; GGML_MAX_OP_PARAMS / 4],
    pub flags: i32,
    pub src: [*mut ggml_tensor; GGML_MAX_SRC],
    pub view_src: *mut ggml_tensor,
    pub view_offs: usize,
    pub data: *mut c_void,
    pub name: [c_char; GGML_MAX_NAME],
    pub extra: *mut c_void,
    pub padding: [c_char; 8],
}

pub type ggml_to_float_t = Option<unsafe extern "C" fn(x: *const c_void, y: *mut f32, k: i64)>;

#[repr(C)]
pub struct ggml_type_traits {
    pub type_name: *const c_char,
    pub blck_size: i64,
    pub blck_size_interleave: i64,
    pub type_size: usize,
    pub is_quantized: bool,
    pub to_float: ggml_to_float_t,
    pub from_float_ref: Option<unsafe extern "C" fn()>,
}

/// Opaque handles we only pass through.
pub type ggml_backend_buffer_type_t = *mut c_void;
pub type ggml_backend_buffer_t = *mut c_void;
pub type ggml_cgraph = c_void;

/// `struct ggml_hash_set` (`src/ggml-impl.h`): open addressing, linear probing, keyed by a
/// tensor's address shifted right by 4.
#[repr(C)]
pub struct ggml_hash_set {
    pub size: usize,
    /// One bit per slot: in use.
    pub used: *mut u32,
    pub keys: *mut *mut ggml_tensor,
}

/// The head of `struct ggml_cgraph` (`src/ggml-impl.h`), as far as the use counts: how many
/// source slots of the graph read each tensor, indexed by its hash slot. A split the
/// scheduler hands a backend is a view of the whole graph and shares these.
#[repr(C)]
pub struct ggml_cgraph_head {
    pub size: c_int,
    pub n_nodes: c_int,
    pub n_leafs: c_int,
    pub nodes: *mut *mut ggml_tensor,
    pub grads: *mut *mut ggml_tensor,
    pub grad_accs: *mut *mut ggml_tensor,
    pub leafs: *mut *mut ggml_tensor,
    pub use_counts: *mut i32,
    pub visited_hash_set: ggml_hash_set,
}
/// A vtable slot we leave empty (its real signature does not matter for NULL).
pub type unused_fn = Option<unsafe extern "C" fn()>;

#[repr(C)]
pub struct ggml_backend_reg_i {
    pub get_name: Option<unsafe extern "C" fn(reg: *mut ggml_backend_reg) -> *const c_char>,
    pub get_device_count: Option<unsafe extern "C" fn(reg: *mut ggml_backend_reg) -> usize>,
    pub get_device: Option<
        unsafe extern "C" fn(reg: *mut ggml_backend_reg, index: usize) -> *mut ggml_backend_device,
    >,
    pub get_proc_address: Option<
        unsafe extern "C" fn(reg: *mut ggml_backend_reg, name: *const c_char) -> *mut c_void,
    >,
}

#[repr(C)]
pub struct ggml_backend_reg {
    pub api_version: c_int,
    pub iface: ggml_backend_reg_i,
    pub context: *mut c_void,
}

/// `struct ggml_backend_feature`: one `name = value` pair of `ggml_backend_get_features`.
#[repr(C)]
pub struct ggml_backend_feature {
    pub name: *const c_char,
    pub value: *const c_char,
}

#[repr(C)]
pub struct ggml_backend_dev_caps {
    pub async_: bool,
    pub host_buffer: bool,
    pub buffer_from_host_ptr: bool,
    pub events: bool,
    pub mmap_support: bool,
}

#[repr(C)]
pub struct ggml_backend_dev_props {
    pub name: *const c_char,
    pub description: *const c_char,
    pub memory_free: usize,
    pub memory_total: usize,
    pub type_: c_int,
    pub device_id: *const c_char,
    pub caps: ggml_backend_dev_caps,
}

type Dev = *mut ggml_backend_device;

#[repr(C)]
pub struct ggml_backend_device_i {
    pub get_name: Option<unsafe extern "C" fn(dev: Dev) -> *const c_char>,
    pub get_description: Option<unsafe extern "C" fn(dev: Dev) -> *const c_char>,
    pub get_memory: Option<unsafe extern "C" fn(dev: Dev, free: *mut usize, total: *mut usize)>,
    pub get_type: Option<unsafe extern "C" fn(dev: Dev) -> c_int>,
    pub get_props: Option<unsafe extern "C" fn(dev: Dev, props: *mut ggml_backend_dev_props)>,
    pub init_backend:
        Option<unsafe extern "C" fn(dev: Dev, params: *const c_char) -> *mut ggml_backend>,
    pub get_buffer_type: Option<unsafe extern "C" fn(dev: Dev) -> ggml_backend_buffer_type_t>,
    pub get_host_buffer_type: unused_fn,
    pub buffer_from_host_ptr: Option<
        unsafe extern "C" fn(
            dev: Dev,
            ptr: *mut c_void,
            size: usize,
            max_tensor_size: usize,
        ) -> ggml_backend_buffer_t,
    >,
    pub supports_op: Option<unsafe extern "C" fn(dev: Dev, op: *const ggml_tensor) -> bool>,
    pub supports_buft:
        Option<unsafe extern "C" fn(dev: Dev, buft: ggml_backend_buffer_type_t) -> bool>,
    pub offload_op: Option<unsafe extern "C" fn(dev: Dev, op: *const ggml_tensor) -> bool>,
    pub event_new: unused_fn,
    pub event_free: unused_fn,
    pub event_synchronize: unused_fn,
}

#[repr(C)]
pub struct ggml_backend_device {
    pub iface: ggml_backend_device_i,
    pub reg: *mut ggml_backend_reg,
    pub context: *mut c_void,
}

type Backend = *mut ggml_backend;

#[repr(C)]
pub struct ggml_backend_i {
    pub get_name: Option<unsafe extern "C" fn(backend: Backend) -> *const c_char>,
    pub free: Option<unsafe extern "C" fn(backend: Backend)>,
    pub set_tensor_async: unused_fn,
    pub get_tensor_async: unused_fn,
    pub set_tensor_2d_async: unused_fn,
    pub get_tensor_2d_async: unused_fn,
    pub cpy_tensor_async: unused_fn,
    pub synchronize: unused_fn,
    pub graph_plan_create: unused_fn,
    pub graph_plan_free: unused_fn,
    pub graph_plan_update: unused_fn,
    pub graph_plan_compute: unused_fn,
    pub graph_compute:
        Option<unsafe extern "C" fn(backend: Backend, cgraph: *mut ggml_cgraph) -> c_int>,
    pub event_record: unused_fn,
    pub event_wait: unused_fn,
    pub graph_optimize: unused_fn,
}

#[repr(C)]
pub struct ggml_backend {
    pub guid: *mut [u8; 16],
    pub iface: ggml_backend_i,
    pub device: *mut ggml_backend_device,
    pub context: *mut c_void,
}

/// `struct ggml_backend_i` before ggml 0.10.0 (0.9.5: whisper-rs-sys 0.15.0): no
/// `set_tensor_2d_async` / `get_tensor_2d_async`, everything after them 16 bytes earlier.
#[repr(C)]
pub struct ggml_backend_i_0_9 {
    pub get_name: Option<unsafe extern "C" fn(backend: Backend) -> *const c_char>,
    pub free: Option<unsafe extern "C" fn(backend: Backend)>,
    pub set_tensor_async: unused_fn,
    pub get_tensor_async: unused_fn,
    pub cpy_tensor_async: unused_fn,
    pub synchronize: unused_fn,
    pub graph_plan_create: unused_fn,
    pub graph_plan_free: unused_fn,
    pub graph_plan_update: unused_fn,
    pub graph_plan_compute: unused_fn,
    pub graph_compute:
        Option<unsafe extern "C" fn(backend: Backend, cgraph: *mut ggml_cgraph) -> c_int>,
    pub event_record: unused_fn,
    pub event_wait: unused_fn,
    pub graph_optimize: unused_fn,
}

/// `struct ggml_backend` before ggml 0.10.0, around [`ggml_backend_i_0_9`]. Our functions
/// receive it as `*mut ggml_backend` (the first field, the GUID, is where it always was);
/// `abi::backend` reads `device` and `context` through the layout the host has.
#[repr(C)]
pub struct ggml_backend_0_9 {
    pub guid: *mut [u8; 16],
    pub iface: ggml_backend_i_0_9,
    pub device: *mut ggml_backend_device,
    pub context: *mut c_void,
}

unsafe extern "C" {
    pub fn ggml_backend_cpu_buffer_type() -> ggml_backend_buffer_type_t;
    pub fn ggml_backend_cpu_buffer_from_ptr(ptr: *mut c_void, size: usize)
        -> ggml_backend_buffer_t;
    pub fn ggml_backend_buft_is_host(buft: ggml_backend_buffer_type_t) -> bool;
    pub fn ggml_backend_buffer_get_usage(buffer: *mut c_void) -> c_int;
    pub fn ggml_get_type_traits(type_: ggml_type) -> *const ggml_type_traits;
    pub fn ggml_graph_n_nodes(cgraph: *mut ggml_cgraph) -> c_int;
    pub fn ggml_graph_node(cgraph: *mut ggml_cgraph, i: c_int) -> *mut ggml_tensor;
    pub fn ggml_graph_nodes(cgraph: *mut ggml_cgraph) -> *mut *mut ggml_tensor;
    pub fn ggml_log_internal(level: c_int, format: *const c_char, ...);
    pub fn ggml_version() -> *const c_char;
    pub fn ggml_backend_buft_name(buft: ggml_backend_buffer_type_t) -> *const c_char;
    pub fn ggml_backend_buft_get_device(buft: ggml_backend_buffer_type_t) -> Dev;
    pub fn ggml_backend_dev_name(dev: Dev) -> *const c_char;
    pub fn ggml_backend_buffer_get_type(buffer: *mut c_void) -> ggml_backend_buffer_type_t;
    // op names: enum values past MUL_MAT move between ggml versions, names do not
    pub fn ggml_op_name(op: ggml_op) -> *const c_char;
    pub fn ggml_get_unary_op(tensor: *const ggml_tensor) -> c_int;
    pub fn ggml_unary_op_name(op: c_int) -> *const c_char;
    pub fn ggml_get_glu_op(tensor: *const ggml_tensor) -> c_int;
    pub fn ggml_glu_op_name(op: c_int) -> *const c_char;
    // graphs handed to ggml's CPU backend
    pub fn ggml_init(params: ggml_init_params) -> *mut ggml_context;
    pub fn ggml_free(ctx: *mut ggml_context);
    pub fn ggml_graph_overhead_custom(size: usize, grads: bool) -> usize;
    pub fn ggml_new_graph_custom(
        ctx: *mut ggml_context,
        size: usize,
        grads: bool,
    ) -> *mut ggml_cgraph;
    pub fn ggml_graph_add_node(cgraph: *mut ggml_cgraph, tensor: *mut ggml_tensor);
    pub fn ggml_backend_graph_compute(
        backend: *mut ggml_backend,
        cgraph: *mut ggml_cgraph,
    ) -> c_int;
    pub fn ggml_backend_dev_init(dev: Dev, params: *const c_char) -> *mut ggml_backend;
    pub fn ggml_backend_dev_backend_reg(dev: Dev) -> *mut ggml_backend_reg;
    pub fn ggml_backend_dev_supports_op(dev: Dev, op: *const ggml_tensor) -> bool;
    pub fn ggml_backend_reg_get_proc_address(
        reg: *mut ggml_backend_reg,
        name: *const c_char,
    ) -> *mut c_void;
    pub fn ggml_backend_free(backend: *mut ggml_backend);
    // tensors built for the run-time layout check (`host.rs`)
    pub fn ggml_new_tensor_4d(
        ctx: *mut ggml_context,
        type_: ggml_type,
        ne0: i64,
        ne1: i64,
        ne2: i64,
        ne3: i64,
    ) -> *mut ggml_tensor;
    pub fn ggml_view_2d(
        ctx: *mut ggml_context,
        a: *mut ggml_tensor,
        ne0: i64,
        ne1: i64,
        nb1: usize,
        offset: usize,
    ) -> *mut ggml_tensor;
    pub fn ggml_set_name(tensor: *mut ggml_tensor, name: *const c_char) -> *mut ggml_tensor;
    pub fn ggml_add(
        ctx: *mut ggml_context,
        a: *mut ggml_tensor,
        b: *mut ggml_tensor,
    ) -> *mut ggml_tensor;
    pub fn ggml_set_output(tensor: *mut ggml_tensor);
    pub fn ggml_threadpool_params_init(p: *mut ggml_threadpool_params, n_threads: c_int);
    // one matmul timed on another device's backend (`gpu.rs`)
    pub fn ggml_tensor_overhead() -> usize;
    pub fn ggml_graph_overhead() -> usize;
    pub fn ggml_new_graph(ctx: *mut ggml_context) -> *mut ggml_cgraph;
    pub fn ggml_build_forward_expand(cgraph: *mut ggml_cgraph, tensor: *mut ggml_tensor);
    pub fn ggml_mul_mat(
        ctx: *mut ggml_context,
        a: *mut ggml_tensor,
        b: *mut ggml_tensor,
    ) -> *mut ggml_tensor;
    pub fn ggml_nbytes(tensor: *const ggml_tensor) -> usize;
    pub fn ggml_backend_alloc_ctx_tensors(
        ctx: *mut ggml_context,
        backend: *mut ggml_backend,
    ) -> *mut c_void;
    pub fn ggml_backend_buffer_free(buffer: *mut c_void);
    pub fn ggml_backend_tensor_set(
        tensor: *mut ggml_tensor,
        data: *const c_void,
        offset: usize,
        size: usize,
    );
}

/// `GGML_MAX_N_THREADS`.
pub const GGML_MAX_N_THREADS: usize = 512;

/// `struct ggml_threadpool_params`.
#[repr(C)]
pub struct ggml_threadpool_params {
    pub cpumask: [bool; GGML_MAX_N_THREADS],
    pub n_threads: c_int,
    pub prio: c_int,
    pub poll: u32,
    pub strict_cpu: bool,
    pub paused: bool,
}

/// `ggml_abort_callback`: true aborts the computation.
pub type ggml_abort_callback = Option<unsafe extern "C" fn(data: *mut c_void) -> bool>;

/// `struct ggml_init_params`.
#[repr(C)]
pub struct ggml_init_params {
    pub mem_size: usize,
    pub mem_buffer: *mut c_void,
    pub no_alloc: bool,
}

/// `struct ggml_context` (opaque).
pub type ggml_context = c_void;

/// A C string as Rust text ("" for NULL).
///
/// # Safety
/// `p` is NULL or a NUL-terminated string that outlives the call.
pub(crate) unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the caller guarantees a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

/// Whether the backend may read and write tensors in buffers of type `buft`
/// ([`crate::buffers::readable_buffer_type`]).
///
/// # Safety
/// `buft` is NULL or a live ggml buffer type.
pub(crate) unsafe fn readable_buft(buft: ggml_backend_buffer_type_t) -> bool {
    if buft.is_null() {
        return false;
    }
    // SAFETY: a live buffer type; its name and device name are static strings of ggml's.
    let (is_host, device, name) = unsafe {
        let dev = ggml_backend_buft_get_device(buft);
        let device = if dev.is_null() {
            String::new()
        } else {
            text(ggml_backend_dev_name(dev))
        };
        (
            ggml_backend_buft_is_host(buft),
            device,
            text(ggml_backend_buft_name(buft)),
        )
    };
    crate::buffers::readable_buffer_type(is_host, &device, &name)
}

/// The machine's memory: (free, total) bytes. Free is the kernel's available pages on Linux;
/// elsewhere the total (macOS has no `_SC_AVPHYS_PAGES`).
pub(crate) fn machine_memory() -> (usize, usize) {
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

/// The ggml version of the host, as it reports it.
pub(crate) fn host_ggml_version() -> String {
    // SAFETY: ggml_version returns a static NUL-terminated string.
    unsafe { text(ggml_version()) }
}

/// [`layout_table`]'s entries for the structs that differ before ggml 0.10.0, under the C
/// names, as the 0.9.5 host's headers give them (`tests/layout_tests.rs`).
pub fn layout_table_0_9() -> Vec<(&'static str, usize)> {
    use std::mem::{offset_of, size_of};
    vec![
        ("ggml_backend_i", size_of::<ggml_backend_i_0_9>()),
        (
            "ggml_backend_i.graph_compute",
            offset_of!(ggml_backend_i_0_9, graph_compute),
        ),
        (
            "ggml_backend_i.graph_optimize",
            offset_of!(ggml_backend_i_0_9, graph_optimize),
        ),
        ("ggml_backend", size_of::<ggml_backend_0_9>()),
        ("ggml_backend.iface", offset_of!(ggml_backend_0_9, iface)),
        ("ggml_backend.device", offset_of!(ggml_backend_0_9, device)),
        (
            "ggml_backend.context",
            offset_of!(ggml_backend_0_9, context),
        ),
    ]
}

/// `(name, size)` and `(name.field, offset)` of every mirrored struct, and the enum values
/// we rely on: compared with the real headers by `tests/layout_tests.rs`.
pub fn layout_table() -> Vec<(&'static str, usize)> {
    use std::mem::{offset_of, size_of};
    vec![
        ("ggml_tensor", size_of::<ggml_tensor>()),
        ("ggml_tensor.ne", offset_of!(ggml_tensor, ne)),
        ("ggml_tensor.nb", offset_of!(ggml_tensor, nb)),
        ("ggml_tensor.op", offset_of!(ggml_tensor, op)),
        ("ggml_tensor.op_params", offset_of!(ggml_tensor, op_params)),
        ("ggml_tensor.flags", offset_of!(ggml_tensor, flags)),
        ("ggml_tensor.src", offset_of!(ggml_tensor, src)),
        ("ggml_tensor.view_src", offset_of!(ggml_tensor, view_src)),
        ("ggml_tensor.data", offset_of!(ggml_tensor, data)),
        ("ggml_tensor.name", offset_of!(ggml_tensor, name)),
        ("ggml_tensor.extra", offset_of!(ggml_tensor, extra)),
        ("ggml_type_traits", size_of::<ggml_type_traits>()),
        (
            "ggml_type_traits.type_size",
            offset_of!(ggml_type_traits, type_size),
        ),
        (
            "ggml_type_traits.is_quantized",
            offset_of!(ggml_type_traits, is_quantized),
        ),
        (
            "ggml_type_traits.to_float",
            offset_of!(ggml_type_traits, to_float),
        ),
        ("ggml_backend_reg", size_of::<ggml_backend_reg>()),
        (
            "ggml_backend_reg.iface",
            offset_of!(ggml_backend_reg, iface),
        ),
        (
            "ggml_backend_reg.context",
            offset_of!(ggml_backend_reg, context),
        ),
        ("ggml_backend_reg_i", size_of::<ggml_backend_reg_i>()),
        ("ggml_backend_device", size_of::<ggml_backend_device>()),
        (
            "ggml_backend_device.reg",
            offset_of!(ggml_backend_device, reg),
        ),
        ("ggml_backend_device_i", size_of::<ggml_backend_device_i>()),
        (
            "ggml_backend_device_i.supports_op",
            offset_of!(ggml_backend_device_i, supports_op),
        ),
        (
            "ggml_backend_device_i.offload_op",
            offset_of!(ggml_backend_device_i, offload_op),
        ),
        (
            "ggml_backend_device_i.event_synchronize",
            offset_of!(ggml_backend_device_i, event_synchronize),
        ),
        ("ggml_backend", size_of::<ggml_backend>()),
        ("ggml_backend.iface", offset_of!(ggml_backend, iface)),
        ("ggml_backend.device", offset_of!(ggml_backend, device)),
        ("ggml_backend.context", offset_of!(ggml_backend, context)),
        ("ggml_backend_i", size_of::<ggml_backend_i>()),
        (
            "ggml_backend_i.graph_compute",
            offset_of!(ggml_backend_i, graph_compute),
        ),
        (
            "ggml_backend_i.graph_optimize",
            offset_of!(ggml_backend_i, graph_optimize),
        ),
        (
            "ggml_backend_dev_props",
            size_of::<ggml_backend_dev_props>(),
        ),
        (
            "ggml_backend_dev_props.type",
            offset_of!(ggml_backend_dev_props, type_),
        ),
        (
            "ggml_backend_dev_props.device_id",
            offset_of!(ggml_backend_dev_props, device_id),
        ),
        (
            "ggml_backend_dev_props.caps",
            offset_of!(ggml_backend_dev_props, caps),
        ),
        ("ggml_backend_dev_caps", size_of::<ggml_backend_dev_caps>()),
        (
            "ggml_threadpool_params",
            size_of::<ggml_threadpool_params>(),
        ),
        (
            "ggml_threadpool_params.n_threads",
            offset_of!(ggml_threadpool_params, n_threads),
        ),
        (
            "ggml_threadpool_params.poll",
            offset_of!(ggml_threadpool_params, poll),
        ),
        ("ggml_hash_set", size_of::<ggml_hash_set>()),
        ("ggml_hash_set.used", offset_of!(ggml_hash_set, used)),
        ("ggml_hash_set.keys", offset_of!(ggml_hash_set, keys)),
        ("ggml_bitset_t", size_of::<u32>()),
        ("ggml_cgraph.n_nodes", offset_of!(ggml_cgraph_head, n_nodes)),
        ("ggml_cgraph.nodes", offset_of!(ggml_cgraph_head, nodes)),
        (
            "ggml_cgraph.use_counts",
            offset_of!(ggml_cgraph_head, use_counts),
        ),
        (
            "ggml_cgraph.visited_hash_set",
            offset_of!(ggml_cgraph_head, visited_hash_set),
        ),
        ("GGML_OP_MUL_MAT", ggml_op::MUL_MAT.0 as usize),
        ("GGML_OP_RESHAPE", ggml_op::RESHAPE.0 as usize),
        ("GGML_OP_VIEW", ggml_op::VIEW.0 as usize),
        ("GGML_OP_PERMUTE", ggml_op::PERMUTE.0 as usize),
        ("GGML_OP_TRANSPOSE", ggml_op::TRANSPOSE.0 as usize),
        ("GGML_TYPE_BF16", ggml_type::BF16.0 as usize),
        ("GGML_TYPE_I32", ggml_type::I32.0 as usize),
        (
            "GGML_TENSOR_FLAG_COMPUTE",
            GGML_TENSOR_FLAG_COMPUTE as usize,
        ),
        ("GGML_TENSOR_FLAG_INPUT", GGML_TENSOR_FLAG_INPUT as usize),
        ("GGML_TENSOR_FLAG_OUTPUT", GGML_TENSOR_FLAG_OUTPUT as usize),
        (
            "GGML_BACKEND_DEVICE_TYPE_ACCEL",
            GGML_BACKEND_DEVICE_TYPE_ACCEL as usize,
        ),
        (
            "GGML_BACKEND_DEVICE_TYPE_IGPU",
            GGML_BACKEND_DEVICE_TYPE_IGPU as usize,
        ),
        (
            "GGML_BACKEND_DEVICE_TYPE_GPU",
            GGML_BACKEND_DEVICE_TYPE_GPU as usize,
        ),
        (
            "GGML_BACKEND_BUFFER_USAGE_WEIGHTS",
            GGML_BACKEND_BUFFER_USAGE_WEIGHTS as usize,
        ),
        ("GGML_STATUS_ABORTED", GGML_STATUS_ABORTED as usize),
        (
            "GGML_BACKEND_BUFFER_USAGE_ANY",
            GGML_BACKEND_BUFFER_USAGE_ANY as usize,
        ),
        (
            "GGML_BACKEND_API_VERSION",
            GGML_BACKEND_API_VERSION as usize,
        ),
    ]
}

// The numbers of the pinned headers (LP64), checked at compile time as well.
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<ggml_tensor>() == 336);
    assert!(offset_of!(ggml_tensor, data) == 248);
    assert!(size_of::<ggml_type_traits>() == 56);
    assert!(size_of::<ggml_backend_reg>() == 48);
    assert!(size_of::<ggml_backend_device_i>() == 120);
    assert!(size_of::<ggml_backend_device>() == 136);
    assert!(size_of::<ggml_backend_i>() == 128);
    assert!(size_of::<ggml_backend>() == 152);
    // ggml 0.9.5 (tests/layout_tests.rs checks them against that host's headers)
    assert!(size_of::<ggml_backend_i_0_9>() == 112);
    assert!(offset_of!(ggml_backend_i_0_9, graph_compute) == 80);
    assert!(size_of::<ggml_backend_0_9>() == 136);
    assert!(offset_of!(ggml_backend_0_9, device) == 120);
    assert!(offset_of!(ggml_backend_0_9, context) == 128);
    assert!(size_of::<ggml_backend_dev_props>() == 56);
    assert!(offset_of!(ggml_threadpool_params, poll) == 520);
    assert!(offset_of!(ggml_cgraph_head, use_counts) == 48);
    assert!(offset_of!(ggml_cgraph_head, visited_hash_set) == 56);
};

/// Whether a line at `level` would be logged (to skip formatting it otherwise).
pub(crate) fn log_enabled(level: c_int) -> bool {
    level >= log_threshold()
}

/// The `GGML_ANE_LOG` threshold as a ggml level: error, warn (default), info or debug.
fn log_threshold() -> c_int {
    match crate::settings::log_level() {
        crate::settings::LogLevel::Error => GGML_LOG_LEVEL_ERROR,
        crate::settings::LogLevel::Warn => GGML_LOG_LEVEL_WARN,
        crate::settings::LogLevel::Info => GGML_LOG_LEVEL_INFO,
        crate::settings::LogLevel::Debug => GGML_LOG_LEVEL_DEBUG,
    }
}

/// Logs through ggml's logger, so the host's `ggml_log_set` callback sees our lines.
pub(crate) fn log(level: c_int, msg: &str) {
    if level < log_threshold() {
        return;
    }
    let Ok(text) = std::ffi::CString::new(format!("{msg}\n")) else {
        return;
    };
    // SAFETY: the format is a NUL-terminated "%s" and the one vararg a NUL-terminated string,
    // as printf expects; ggml_log_internal is exported by libggml-base.
    unsafe { ggml_log_internal(level, c"%s".as_ptr(), text.as_ptr()) };
}
