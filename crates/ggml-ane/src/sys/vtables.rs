//! The registry, device and backend vtables ggml calls, and the exported entry points.
//!
//! Order follows ggml's own backends: backend (stream) → device → registry → exports, each
//! vtable right after the functions it points to; functions carry ggml's names
//! (`ggml_backend_ane_<class>_<method>`). Every entry point runs inside `guard`: no panic
//! crosses into C.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use super::tensor::{describe_node, NodeDesc, TensorRows, TensorRowsMut};
use super::*;
use super::{cpu, graph, tensor};
use crate::backend::{self, BackendContext};
use crate::sys::{host_ggml_version, readable_buft};
use crate::walker::{self, Chain, OpKind, Step};
use ane_runtime::fused::FusedOutputs;
use ane_runtime::matmul::MatmulJob;

/// Runs `f`, turning a panic into `default` (after logging it).
pub(super) fn guard<R>(what: &str, default: R, f: impl FnOnce() -> R) -> R {
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

const NAME: &CStr = c"ANE";

// ---- backend (stream) ----

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

unsafe extern "C" fn ggml_backend_ane_get_name(backend: *mut ggml_backend) -> *const c_char {
    guard("get_name", NAME.as_ptr(), || {
        // SAFETY: ggml passes one of our live backends (or NULL, checked).
        let device = unsafe { backend.as_ref() }.map(|b| b.device);
        if device == Some(super::full_device::full_device()) {
            super::full_device::NAME.as_ptr()
        } else {
            NAME.as_ptr()
        }
    })
}

unsafe extern "C" fn ggml_backend_ane_free(backend: *mut ggml_backend) {
    guard("free", (), || {
        if backend.is_null() {
            return;
        }
        // SAFETY: `backend` and its context were created by `ggml_backend_ane_init` with
        // Box::into_raw and ggml frees each backend exactly once.
        let (b, ctx) = unsafe {
            let b = Box::from_raw(backend);
            let ctx = Box::from_raw(b.context.cast::<BackendContext>());
            (b, ctx)
        };
        if let Ok(rt) = backend::runtime() {
            backend::instance_ended(&ctx, rt);
        }
        drop((b, ctx));
    })
}

unsafe extern "C" fn ggml_backend_ane_graph_compute(
    backend: *mut ggml_backend,
    cgraph: *mut ggml_cgraph,
) -> c_int {
    guard("graph_compute", GGML_STATUS_FAILED, || {
        let rt = match backend::runtime() {
            Ok(rt) => rt,
            Err(e) => {
                log(GGML_LOG_LEVEL_ERROR, &format!("ggml-ane: no engine: {e}"));
                return GGML_STATUS_FAILED;
            }
        };
        // SAFETY: ggml passes the backend it created through init_backend; its context is ours.
        let ctx = unsafe { &*((*backend).context as *const BackendContext) };
        // SAFETY: `cgraph` is a live graph for the duration of this call.
        let (ptrs, mut nodes) = unsafe { graph::collect(cgraph, use_counts_layout()) };
        if rt.config.fuse && nodes.iter().any(|n| n.uses.is_none()) {
            use_counts_missing();
        }
        // SAFETY: live nodes of that graph.
        let descs: Vec<Option<NodeDesc>> =
            ptrs.iter().map(|&p| unsafe { describe_node(p) }).collect();
        for (n, d) in nodes.iter_mut().zip(&descs) {
            n.engine = n.kind == OpKind::MulMat
                && d.as_ref().is_some_and(|d| backend::engine_mul_mat(rt, d));
        }
        let walk = Walk {
            ctx,
            rt,
            ptrs: &ptrs,
            descs: &descs,
        };
        let plan = walker::plan(&nodes, rt.config.fuse);
        let mut chains: Vec<Option<FusedOutputs>> = vec![None; plan.chains.len()];
        for step in &plan.steps {
            let done = match step {
                Step::Cpu(ix) => walk.on_cpu(ix),
                Step::Engine(i) => walk.mul_mat(*i),
                Step::Fused(c) => {
                    chains[*c] = walk.fused(&plan.chains[*c]);
                    Ok(())
                }
                Step::Member { chain, node } => {
                    walk.member(&plan.chains[*chain], chains[*chain].as_ref(), *node)
                }
            };
            if let Err(why) = done {
                log(
                    GGML_LOG_LEVEL_ERROR,
                    &format!("ggml-ane: graph_compute: {why}"),
                );
                return GGML_STATUS_FAILED;
            }
        }
        backend::graph_done(rt);
        GGML_STATUS_SUCCESS
    })
}

/// Whether this host's `struct ggml_cgraph` is the one `sys` mirrors: a version of the table,
/// whose headers the layout test checks (elsewhere the use counts are not read).
fn use_counts_layout() -> bool {
    static KNOWN: OnceLock<bool> = OnceLock::new();
    *KNOWN.get_or_init(|| {
        matches!(
            crate::hosts::host_support(&host_ggml_version()),
            crate::hosts::HostSupport::Supported(_)
        )
    })
}

/// Says once that graphs come without use counts: fused blocks then write back their normed
/// input, and FFN blocks are not fused (their intermediates might be read by another split).
fn use_counts_missing() {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        log(
            GGML_LOG_LEVEL_INFO,
            "ggml-ane: this graph carries no use counts we can read (rpc-server, or a ggml outside the table): fused blocks write back their normed input and FFN blocks are not fused",
        );
    });
}

/// One graph computation: its nodes, and where each step goes.
struct Walk<'a> {
    ctx: &'a BackendContext,
    rt: &'a backend::Runtime,
    ptrs: &'a [*mut ggml_tensor],
    descs: &'a [Option<NodeDesc>],
}

impl Walk<'_> {
    /// Nodes `ix` on ggml's CPU backend, as one graph.
    fn on_cpu(&self, ix: &[usize]) -> Result<(), String> {
        let nodes: Vec<*mut ggml_tensor> = ix.iter().map(|&i| self.ptrs[i]).collect();
        self.ctx.run_on_cpu(&nodes, |cpu, nodes| {
            // SAFETY: live nodes of the graph being computed, data allocated by ggml.
            unsafe { cpu.compute(nodes) }
        })
    }

    /// A MUL_MAT on the engine (or, failing that, on the CPU with the reason counted).
    fn mul_mat(&self, i: usize) -> Result<(), String> {
        let desc = self.descs[i].as_ref().ok_or("a node vanished")?;
        let (Some(s0), Some(s1), Some(shape)) =
            (desc.src[0], desc.src[1], backend::mul_mat_shape(desc))
        else {
            return Err("a MUL_MAT without sources".into());
        };
        // SAFETY: the node's tensors live in host buffers (supports_buft admits only host
        // buffer types) and stay valid and unshared for this call; the shape comes from
        // their ne, so every row read or written is inside them.
        let (w, a, d) = unsafe {
            (
                TensorRows::new(s0),
                TensorRows::new(s1),
                TensorRowsMut::new(desc.node),
            )
        };
        // the fingerprint is read on every call: only when baking is possible
        let weight_id = backend::may_bake(self.rt, &s0).then(|| w.weight_id());
        backend::mul_mat(
            self.ctx,
            self.rt,
            desc,
            &MatmulJob {
                shape,
                weights: &w,
                acts: &a,
                dst: &d,
                weight_id,
            },
        );
        Ok(())
    }

    /// Evaluates a chain as one fused program: its results, or `None` (counted, the first of
    /// each reason logged) when the engine declines it and its nodes run one by one.
    fn fused(&self, chain: &Chain) -> Option<FusedOutputs> {
        match super::chain::run(self.rt, self.ctx, chain, self.descs) {
            Ok(out) => {
                self.ctx
                    .stats
                    .record_fused(chain.members().len(), chain.write_back.len());
                backend::record_fused_placement(self.ctx, self.rt, chain, self.descs, out.form());
                Some(out)
            }
            Err(reason) => {
                backend::fused_declined(self.ctx, chain, &reason);
                None
            }
        }
    }

    /// A chain's node at its own place: its result written (when it is one of the chain's
    /// outputs), or, for a declined chain, the node computed as without fusion.
    fn member(
        &self,
        chain: &Chain,
        done: Option<&FusedOutputs>,
        node: usize,
    ) -> Result<(), String> {
        let Some(out) = done else {
            let is_matmul = chain.matmuls.contains(&node) || chain.down == Some(node);
            return if is_matmul {
                self.mul_mat(node)
            } else {
                self.on_cpu(&[node])
            };
        };
        let Some(k) = chain.outputs().iter().position(|&o| o == node) else {
            return Ok(());
        };
        let desc = self.descs[node].as_ref().ok_or("a node vanished")?;
        // SAFETY: the output node is a live F32 host tensor of `tokens` rows of the output's
        // width (checked when the chain's job was built), written by nobody else now.
        let sink = unsafe { TensorRowsMut::new(desc.node) };
        out.write(k, &sink);
        Ok(())
    }
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

/// A new ANE backend, or NULL when no engine can be created.
#[unsafe(no_mangle)]
pub extern "C" fn ggml_backend_ane_init() -> *mut ggml_backend {
    guard("init", std::ptr::null_mut(), || new_backend(device()))
}

/// A backend of `device` (ANE or ANE-FULL: they compute alike, the devices differ in what they
/// accept), or NULL when no engine can be created.
pub(super) fn new_backend(device: *mut ggml_backend_device) -> *mut ggml_backend {
    if let Err(e) = backend::runtime() {
        log(
            GGML_LOG_LEVEL_ERROR,
            &format!("ggml-ane: cannot create an engine: {e}"),
        );
        return std::ptr::null_mut();
    }
    let ctx = Box::new(BackendContext::default());
    backend::instance_started(&ctx);
    if let Ok(rt) = backend::runtime() {
        if rt.config.stats_level > 0 {
            super::signals::print_stats_on_signal(rt);
        }
    }
    let ctx = Box::into_raw(ctx);
    Box::into_raw(Box::new(ggml_backend {
        guid: guid(),
        iface: BACKEND_I,
        device,
        context: ctx.cast::<c_void>(),
    }))
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

// ---- device ----

unsafe extern "C" fn ggml_backend_ane_device_get_name(
    _dev: *mut ggml_backend_device,
) -> *const c_char {
    guard("get_name", NAME.as_ptr(), || NAME.as_ptr())
}

unsafe extern "C" fn ggml_backend_ane_device_get_description(
    _dev: *mut ggml_backend_device,
) -> *const c_char {
    guard(
        "get_description",
        c"Apple Neural Engine (no engine available)".as_ptr(),
        || match backend::runtime() {
            Ok(rt) => rt.description.as_ptr(),
            Err(_) => c"Apple Neural Engine (no engine available)".as_ptr(),
        },
    )
}

unsafe extern "C" fn ggml_backend_ane_device_get_memory(
    _dev: *mut ggml_backend_device,
    free: *mut usize,
    total: *mut usize,
) {
    // The device computes on host buffers and owns no memory of its own: 0/0 is ggml's
    // "nothing to report" (the BLAS backend does the same).
    guard("get_memory", (), || {
        // SAFETY: ggml passes valid out-pointers.
        unsafe {
            *free = 0;
            *total = 0;
        }
    })
}

unsafe extern "C" fn ggml_backend_ane_device_get_type(_dev: *mut ggml_backend_device) -> c_int {
    guard("get_type", GGML_BACKEND_DEVICE_TYPE_ACCEL, || {
        GGML_BACKEND_DEVICE_TYPE_ACCEL
    })
}

/// What both devices can do: they compute on host memory (ggml's CPU buffer type, buffers
/// from host pointers) and never asynchronously.
pub(super) const HOST_DEVICE_CAPS: ggml_backend_dev_caps = ggml_backend_dev_caps {
    async_: false,
    host_buffer: false,
    buffer_from_host_ptr: true,
    events: false,
    // true: llama.cpp turns mmap off for the whole model when a listed device lacks it
    mmap_support: true,
};

unsafe extern "C" fn ggml_backend_ane_device_get_props(
    dev: *mut ggml_backend_device,
    props: *mut ggml_backend_dev_props,
) {
    guard("get_props", (), || {
        // SAFETY: ggml passes a valid, zeroed props struct to fill.
        let p = unsafe { &mut *props };
        // SAFETY: forwarding the same live device pointer.
        unsafe {
            p.name = ggml_backend_ane_device_get_name(dev);
            p.description = ggml_backend_ane_device_get_description(dev);
        }
        p.memory_free = 0;
        p.memory_total = 0;
        p.type_ = GGML_BACKEND_DEVICE_TYPE_ACCEL;
        p.device_id = std::ptr::null();
        p.caps = HOST_DEVICE_CAPS;
    })
}

unsafe extern "C" fn ggml_backend_ane_device_init_backend(
    _dev: *mut ggml_backend_device,
    _params: *const c_char,
) -> *mut ggml_backend {
    // guarded inside
    ggml_backend_ane_init()
}

pub(super) unsafe extern "C" fn ggml_backend_ane_device_get_buffer_type(
    _dev: *mut ggml_backend_device,
) -> ggml_backend_buffer_type_t {
    guard("get_buffer_type", std::ptr::null_mut(), || {
        // SAFETY: exported by ggml-base, no preconditions.
        unsafe { ggml_backend_cpu_buffer_type() }
    })
}

pub(super) unsafe extern "C" fn ggml_backend_ane_device_buffer_from_host_ptr(
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
    _dev: *mut ggml_backend_device,
    op: *const ggml_tensor,
) -> bool {
    guard("supports_op", false, || {
        // SAFETY: ggml passes a live tensor (or NULL) whose sources are live.
        let Some(desc) = (unsafe { describe_node(op) }) else {
            return false;
        };
        // SAFETY: as above.
        let (kind, tokens, readable) = unsafe {
            (
                graph::op_kind(&*op),
                graph::token_count(op),
                tensor::all_readable(op),
            )
        };
        backend::supports_op(
            &desc,
            kind,
            tokens,
            readable,
            // SAFETY: as above.
            || unsafe { graph::reads_block_input(op) },
            // SAFETY: as above.
            || cpu::cpu_device().is_ok_and(|cpu| unsafe { cpu.supports(op) }),
        )
    })
}

unsafe extern "C" fn ggml_backend_ane_device_supports_buft(
    _dev: *mut ggml_backend_device,
    buft: ggml_backend_buffer_type_t,
) -> bool {
    guard("supports_buft", false, || {
        // SAFETY: ggml passes a live buffer type (or NULL).
        unsafe { readable_buft(buft) }
    })
}

unsafe extern "C" fn ggml_backend_ane_device_offload_op(
    _dev: *mut ggml_backend_device,
    op: *const ggml_tensor,
) -> bool {
    guard("offload_op", false, || {
        let Ok(rt) = backend::runtime() else {
            return false;
        };
        // SAFETY: ggml passes a live tensor (or NULL).
        unsafe { describe_node(op) }.is_some_and(|d| backend::offload_op(&d, rt))
    })
}

const DEVICE_I: ggml_backend_device_i = ggml_backend_device_i {
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

/// Leaked, process-lifetime objects handed to ggml by pointer.
pub(super) struct Leaked<T>(pub(super) *mut T);
// SAFETY: created once, never freed or mutated after construction; ggml reads them from any thread.
unsafe impl<T> Sync for Leaked<T> {}
// SAFETY: as above.
unsafe impl<T> Send for Leaked<T> {}

fn device() -> *mut ggml_backend_device {
    static DEV: OnceLock<Leaked<ggml_backend_device>> = OnceLock::new();
    DEV.get_or_init(|| {
        Leaked(Box::into_raw(Box::new(ggml_backend_device {
            iface: DEVICE_I,
            reg: registry(),
            context: std::ptr::null_mut(),
        })))
    })
    .0
}

// ---- registry ----

unsafe extern "C" fn ggml_backend_ane_reg_get_name(_reg: *mut ggml_backend_reg) -> *const c_char {
    guard("get_name", NAME.as_ptr(), || NAME.as_ptr())
}

unsafe extern "C" fn ggml_backend_ane_reg_get_device_count(_reg: *mut ggml_backend_reg) -> usize {
    guard("get_device_count", 0, || {
        usize::from(offered()) + usize::from(offered() && full_offered())
    })
}

/// Whether the ANE-FULL device is offered (`GGML_ANE_FULL=0` hides it).
fn full_offered() -> bool {
    crate::config::get().as_ref().is_ok_and(|c| c.full_device)
}

unsafe extern "C" fn ggml_backend_ane_reg_get_device(
    _reg: *mut ggml_backend_reg,
    index: usize,
) -> *mut ggml_backend_device {
    guard("get_device", std::ptr::null_mut(), || match index {
        0 if offered() => device(),
        1 if offered() && full_offered() => super::full_device::full_device(),
        _ => std::ptr::null_mut(),
    })
}

/// `ggml_backend_get_features`: what llama.cpp prints in its system info. The strings and
/// the array live for the process (built once). A panic yields an empty list.
unsafe extern "C" fn ggml_backend_ane_reg_get_features(
    _reg: *mut ggml_backend_reg,
) -> *mut ggml_backend_feature {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    static EMPTY: OnceLock<Features> = OnceLock::new();
    let empty = EMPTY.get_or_init(|| Features::new(Vec::new())).as_ptr();
    guard("get_features", empty, || {
        FEATURES
            .get_or_init(|| Features::new(backend::features()))
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

/// `ggml_backend_set_n_threads` (what llama.cpp and rpc-server call on every registry that
/// has it): the thread count of the CPU backend that computes our other nodes.
unsafe extern "C" fn ggml_backend_ane_set_n_threads(backend: *mut ggml_backend, n_threads: c_int) {
    guard("set_n_threads", (), || {
        // SAFETY: the caller passes one of our backends (checked by its GUID).
        if unsafe { ggml_backend_is_ane(backend) } {
            // SAFETY: our backend's context is a BackendContext.
            let ctx = unsafe { &*((*backend).context as *const BackendContext) };
            ctx.set_n_threads(n_threads);
        }
    })
}

/// `ggml_backend_set_abort_callback` (llama.cpp sets one on every registry that has it):
/// forwarded to the CPU backend that computes our other nodes.
unsafe extern "C" fn ggml_backend_ane_set_abort_callback(
    backend: *mut ggml_backend,
    callback: ggml_abort_callback,
    data: *mut c_void,
) {
    guard("set_abort_callback", (), || {
        // SAFETY: the caller passes one of our backends (checked by its GUID).
        if unsafe { ggml_backend_is_ane(backend) } {
            // SAFETY: our backend's context is a BackendContext.
            let ctx = unsafe { &*((*backend).context as *const BackendContext) };
            ctx.set_abort_callback(callback, data as usize);
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
        let (api_version, offered) = host_decision();
        OFFERED.get_or_init(|| offered);
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

/// Whether the registry offers its device: not with `GGML_ANE_DISABLE=1`, nor in a ggml the
/// version table does not cover (unless `GGML_ANE_ANY_GGML=1`).
static OFFERED: OnceLock<bool> = OnceLock::new();

fn offered() -> bool {
    OFFERED.get().copied().unwrap_or(false)
}

/// The backend API version to announce, and whether to offer the device; logs why not.
fn host_decision() -> (c_int, bool) {
    let version = host_ggml_version();
    let (disable, any) = match crate::config::get() {
        Ok(c) => (c.disable, c.any_ggml),
        Err(_) => (false, false),
    };
    match crate::hosts::host_support(&version) {
        crate::hosts::HostSupport::Supported(api) => {
            if disable {
                log(
                    GGML_LOG_LEVEL_INFO,
                    "ggml-ane: GGML_ANE_DISABLE is set: no ANE device",
                );
            }
            (api, !disable)
        }
        other => {
            let api = crate::hosts::guessed_api(&version);
            let why = other.relation();
            let tested = crate::hosts::tested_versions();
            if any && !disable {
                log(
                    GGML_LOG_LEVEL_WARN,
                    &format!("ggml-ane: ggml {version} is {why} the versions this build is tested with ({tested}); trying anyway with backend API v{api} (GGML_ANE_ANY_GGML)"),
                );
                (api, true)
            } else {
                log(
                    GGML_LOG_LEVEL_ERROR,
                    &format!("ggml-ane: ggml {version} is {why} the versions this build is tested with ({tested}): staying out, no ANE device (GGML_ANE_ANY_GGML=1 tries anyway)"),
                );
                (api, false)
            }
        }
    }
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
    guard("score", 0, || match backend::runtime() {
        Ok(rt) if rt.engine.info().kind == ane_runtime::EngineKind::Reference => 1,
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
