//! ggml's own CPU backend, borrowed from the host process: every node the engine does not
//! compute is computed by it, exactly as a CPU-only run would.
//!
//! The registry function that finds it (`ggml_backend_dev_by_type`) lives in libggml, not
//! in ggml-base, which is all this library links. It is looked up, in order
//! (../shared/research/full-layer-device.md, Q1):
//! 1. in the global scope (`dlsym(RTLD_DEFAULT)`): fails in hosts that open ggml with
//!    RTLD_LOCAL, such as llama-cpp-python;
//! 2. in an already loaded libggml, by name with `RTLD_NOLOAD` (never loads anything);
//! 3. next to the ggml-base this library is bound to (`dladdr`), again with `RTLD_NOLOAD`.
//!
//! Whether dyld matches `RTLD_NOLOAD` by leaf name or by full path only a Mac can tell; step 3
//! covers the second case.

use std::ffi::{c_int, c_void, CStr, CString};
use std::sync::OnceLock;

use super::{
    ggml_abort_callback, ggml_backend, ggml_backend_dev_backend_reg, ggml_backend_dev_init,
    ggml_backend_device, ggml_backend_free, ggml_backend_graph_compute,
    ggml_backend_reg_get_proc_address, ggml_cgraph, ggml_free, ggml_graph_add_node,
    ggml_graph_overhead_custom, ggml_init, ggml_init_params, ggml_new_graph_custom, ggml_tensor,
    ggml_threadpool_params, ggml_threadpool_params_init, GGML_BACKEND_DEVICE_TYPE_CPU,
    GGML_STATUS_FAILED,
};

type DevByType = unsafe extern "C" fn(c_int) -> *mut ggml_backend_device;
type SetNThreads = unsafe extern "C" fn(*mut ggml_backend, c_int);
type SetAbort = unsafe extern "C" fn(*mut ggml_backend, ggml_abort_callback, *mut c_void);
type ThreadpoolNew = unsafe extern "C" fn(*mut ggml_threadpool_params) -> *mut c_void;
type ThreadpoolFree = unsafe extern "C" fn(*mut c_void);
type SetThreadpool = unsafe extern "C" fn(*mut ggml_backend, *mut c_void);

/// The host's CPU device and the extras its registry offers.
#[derive(Clone, Copy)]
pub(crate) struct CpuDevice {
    dev: *mut ggml_backend_device,
    set_n_threads: Option<SetNThreads>,
    set_abort: Option<SetAbort>,
    threadpool: Option<(ThreadpoolNew, ThreadpoolFree, SetThreadpool)>,
}

// SAFETY: a device registered with ggml lives for the process and ggml's device functions
// may be called from any thread.
unsafe impl Send for CpuDevice {}
// SAFETY: as above; CpuDevice is never mutated after it is found.
unsafe impl Sync for CpuDevice {}

const LIBGGML_NAMES: [&CStr; 4] = [
    c"libggml.so.0",
    c"libggml.so",
    c"libggml.0.dylib",
    c"libggml.dylib",
];

/// `ggml_backend_dev_by_type` of the host's libggml, and where it was found.
fn dev_by_type() -> Option<(DevByType, String)> {
    let name = c"ggml_backend_dev_by_type";
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no preconditions.
    let global = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if !global.is_null() {
        // SAFETY: the symbol is ggml's `ggml_backend_dev_by_type`, of this signature.
        return Some((
            unsafe { std::mem::transmute::<*mut c_void, DevByType>(global) },
            "global scope".into(),
        ));
    }
    let mut candidates: Vec<CString> = LIBGGML_NAMES.iter().map(|n| (*n).to_owned()).collect();
    if let Some(dir) = base_dir() {
        for n in LIBGGML_NAMES {
            let path = format!("{dir}/{}", n.to_string_lossy());
            candidates.extend(CString::new(path).ok());
        }
    }
    for lib in candidates {
        // SAFETY: RTLD_NOLOAD only returns a handle to a library that is already loaded
        // (taking a reference we keep: the host keeps it loaded anyway); nothing is loaded.
        let handle = unsafe { libc::dlopen(lib.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        if handle.is_null() {
            continue;
        }
        // SAFETY: a live handle and a NUL-terminated name.
        let sym = unsafe { libc::dlsym(handle, name.as_ptr()) };
        if !sym.is_null() {
            // SAFETY: as above, ggml's function of this signature.
            let f = unsafe { std::mem::transmute::<*mut c_void, DevByType>(sym) };
            return Some((f, lib.to_string_lossy().into_owned()));
        }
    }
    None
}

/// The host registry's first device of `device_type` (ggml's `ggml_backend_dev_by_type`), or
/// `None` when the registry cannot be reached or has none.
pub(super) fn device_of_type(device_type: c_int) -> Option<*mut ggml_backend_device> {
    let (by_type, _) = dev_by_type()?;
    // SAFETY: ggml's registry function; it returns NULL when no such device is registered.
    let dev = unsafe { by_type(device_type) };
    (!dev.is_null()).then_some(dev)
}

/// The folder of the ggml-base this library is bound to.
fn base_dir() -> Option<String> {
    super::host::bound_ggml_base()
        .and_then(|path| path.rsplit_once('/').map(|(dir, _)| dir.to_string()))
}

/// The host's CPU device, found once; `Err` says why there is none (retried on later calls:
/// a host may register its CPU backend after loading us).
pub(crate) fn cpu_device() -> Result<&'static CpuDevice, String> {
    static FOUND: OnceLock<CpuDevice> = OnceLock::new();
    if let Some(d) = FOUND.get() {
        return Ok(d);
    }
    let (by_type, _where) = dev_by_type().ok_or_else(|| {
        "ggml's registry (libggml) is not loaded in this process, so its CPU backend cannot be \
         reached"
            .to_string()
    })?;
    // SAFETY: ggml's registry function; it returns NULL when no CPU device is registered.
    let dev = unsafe { by_type(GGML_BACKEND_DEVICE_TYPE_CPU) };
    if dev.is_null() {
        return Err("the host registered no CPU backend".into());
    }
    // SAFETY: a live device; its registry's proc lookup takes a NUL-terminated name and
    // returns NULL for names it lacks; each name's function has the signature given.
    let found = unsafe {
        let reg = ggml_backend_dev_backend_reg(dev);
        let proc_ = |name: &CStr| {
            if reg.is_null() {
                std::ptr::null_mut()
            } else {
                ggml_backend_reg_get_proc_address(reg, name.as_ptr())
            }
        };
        let p = proc_(c"ggml_backend_set_n_threads");
        let set_n_threads =
            (!p.is_null()).then(|| std::mem::transmute::<*mut c_void, SetNThreads>(p));
        let p = proc_(c"ggml_backend_set_abort_callback");
        let set_abort = (!p.is_null()).then(|| std::mem::transmute::<*mut c_void, SetAbort>(p));
        let (new, free, set) = (
            proc_(c"ggml_threadpool_new"),
            proc_(c"ggml_threadpool_free"),
            proc_(c"ggml_backend_cpu_set_threadpool"),
        );
        let threadpool = (!new.is_null() && !free.is_null() && !set.is_null()).then(|| {
            (
                std::mem::transmute::<*mut c_void, ThreadpoolNew>(new),
                std::mem::transmute::<*mut c_void, ThreadpoolFree>(free),
                std::mem::transmute::<*mut c_void, SetThreadpool>(set),
            )
        });
        CpuDevice {
            dev,
            set_n_threads,
            set_abort,
            threadpool,
        }
    };
    Ok(FOUND.get_or_init(|| found))
}

impl CpuDevice {
    /// Whether the CPU backend can compute `op` (it is asked, not guessed).
    ///
    /// # Safety
    /// `op` is a live tensor whose sources are live.
    pub(crate) unsafe fn supports(&self, op: *const ggml_tensor) -> bool {
        // SAFETY: a live device and, by the caller, a live tensor.
        unsafe { super::ggml_backend_dev_supports_op(self.dev, op) }
    }
}

/// One CPU backend instance, owned by one of our backend instances, with a thread pool of
/// its own that sleeps between graphs (`poll = 0`: no spinning while the ANE works).
pub(crate) struct CpuBackend {
    backend: *mut ggml_backend,
    device: CpuDevice,
    pool: *mut c_void,
}

// SAFETY: the CPU backend is used by one graph computation at a time (our backend instance
// is, as ggml requires of every backend); it and its pool may move between threads.
unsafe impl Send for CpuBackend {}

impl CpuBackend {
    /// A new CPU backend with `n_threads` threads.
    pub(crate) fn new(n_threads: c_int) -> Result<Self, String> {
        let device = *cpu_device()?;
        // SAFETY: a live device; NULL params as llama.cpp passes.
        let backend = unsafe { ggml_backend_dev_init(device.dev, std::ptr::null()) };
        if backend.is_null() {
            return Err("ggml's CPU backend could not be created".into());
        }
        let mut cpu = CpuBackend {
            backend,
            device,
            pool: std::ptr::null_mut(),
        };
        cpu.set_n_threads(n_threads);
        Ok(cpu)
    }

    /// Sets the thread count (what llama.cpp sets through our registry): the backend's, and
    /// a new sleeping pool of that size.
    pub(crate) fn set_n_threads(&mut self, n: c_int) {
        if let Some(f) = self.device.set_n_threads {
            // SAFETY: the CPU registry's own setter, on the CPU backend it made.
            unsafe { f(self.backend, n) };
        }
        let Some((new, free, set)) = self.device.threadpool else {
            return;
        };
        // SAFETY: params filled by ggml's own initialiser, then polling off; the new pool is
        // attached before the old one is freed, and freed only here or on drop.
        unsafe {
            let mut params: ggml_threadpool_params = std::mem::zeroed();
            ggml_threadpool_params_init(&mut params, n);
            params.poll = 0;
            let pool = new(&mut params);
            if pool.is_null() {
                return;
            }
            set(self.backend, pool);
            if !self.pool.is_null() {
                free(self.pool);
            }
            self.pool = pool;
        }
    }

    /// Forwards ggml's abort callback (llama.cpp sets one through every registry).
    pub(crate) fn set_abort_callback(&self, cb: ggml_abort_callback, data: *mut c_void) {
        if let Some(f) = self.device.set_abort {
            // SAFETY: the CPU registry's own setter, on the CPU backend it made; ggml keeps
            // the callback and its data as the caller's promise.
            unsafe { f(self.backend, cb, data) };
        }
    }

    /// Computes `nodes`, in order, as one graph; the ggml status when it is not success.
    ///
    /// # Safety
    /// Every pointer is a live node of the graph being computed, with its data allocated.
    pub(crate) unsafe fn compute(&self, nodes: &[*mut ggml_tensor]) -> Result<(), c_int> {
        if nodes.is_empty() {
            return Ok(());
        }
        let n = nodes.len();
        // SAFETY: a graph object in a context sized for it by ggml's own formula; the nodes
        // are live tensors whose data ggml already allocated, so nothing is allocated here.
        unsafe {
            let ctx = ggml_init(ggml_init_params {
                mem_size: ggml_graph_overhead_custom(n, false),
                mem_buffer: std::ptr::null_mut(),
                no_alloc: true,
            });
            if ctx.is_null() {
                return Err(GGML_STATUS_FAILED);
            }
            let graph: *mut ggml_cgraph = ggml_new_graph_custom(ctx, n, false);
            for &t in nodes {
                ggml_graph_add_node(graph, t);
            }
            let status = ggml_backend_graph_compute(self.backend, graph);
            ggml_free(ctx);
            if status == super::GGML_STATUS_SUCCESS {
                Ok(())
            } else {
                Err(status)
            }
        }
    }
}

impl Drop for CpuBackend {
    fn drop(&mut self) {
        // SAFETY: created by ggml_backend_dev_init and freed once; the pool after the backend
        // that used it.
        unsafe {
            ggml_backend_free(self.backend);
            if let (Some((_, free, _)), false) = (self.device.threadpool, self.pool.is_null()) {
                free(self.pool);
            }
        }
    }
}

/// A short description of where the registry was found, for `ggml-ane` info lines.
pub(crate) fn registry_source() -> Option<String> {
    dev_by_type().map(|(_, w)| w)
}
