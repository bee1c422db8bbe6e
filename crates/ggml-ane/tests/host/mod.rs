//! A small safe host around real ggml for tests: load our library, build MUL_MAT graphs,
//! run them through the scheduler or a single backend. The test crate's FFI module.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test crates, each using a part"
)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::OnceLock;

type Ptr = *mut c_void;

#[repr(C)]
struct InitParams {
    mem_size: usize,
    mem_buffer: Ptr,
    no_alloc: bool,
}

#[link(name = "ggml")]
unsafe extern "C" {
    fn ggml_backend_load_all_from_path(dir: *const c_char);
    fn ggml_backend_load(path: *const c_char) -> Ptr;
    fn ggml_backend_reg_dev_get(reg: Ptr, i: usize) -> Ptr;
    fn ggml_backend_init_by_type(t: c_int, params: *const c_char) -> Ptr;
    fn ggml_backend_reg_get_proc_address(reg: Ptr, name: *const c_char) -> Ptr;
    fn ggml_backend_dev_supports_buft(dev: Ptr, buft: Ptr) -> bool;
}

#[link(name = "ggml-base")]
unsafe extern "C" {
    fn ggml_backend_dev_init(dev: Ptr, params: *const c_char) -> Ptr;
    fn ggml_backend_sched_new(
        backends: *mut Ptr,
        bufts: *mut Ptr,
        n: c_int,
        graph_size: usize,
        parallel: bool,
        op_offload: bool,
    ) -> Ptr;
    fn ggml_backend_sched_free(s: Ptr);
    fn ggml_backend_sched_alloc_graph(s: Ptr, g: Ptr) -> bool;
    fn ggml_backend_sched_graph_compute(s: Ptr, g: Ptr) -> c_int;
    fn ggml_backend_sched_get_tensor_backend(s: Ptr, t: Ptr) -> Ptr;
    fn ggml_backend_name(b: Ptr) -> *const c_char;
    fn ggml_backend_free(b: Ptr);
    fn ggml_backend_graph_compute(b: Ptr, g: Ptr) -> c_int;
    fn ggml_init(p: InitParams) -> Ptr;
    fn ggml_free(ctx: Ptr);
    fn ggml_new_tensor_4d(ctx: Ptr, t: c_int, ne0: i64, ne1: i64, ne2: i64, ne3: i64) -> Ptr;
    fn ggml_mul_mat(ctx: Ptr, a: Ptr, b: Ptr) -> Ptr;
    fn ggml_add(ctx: Ptr, a: Ptr, b: Ptr) -> Ptr;
    fn ggml_get_data(t: Ptr) -> *mut c_void;
    fn ggml_backend_graph_compute_async(b: Ptr, g: Ptr) -> c_int;
    fn ggml_backend_synchronize(b: Ptr);
    fn ggml_backend_buft_alloc_buffer(buft: Ptr, size: usize) -> Ptr;
    fn ggml_backend_buffer_get_base(buf: Ptr) -> *mut c_void;
    fn ggml_permute(ctx: Ptr, a: Ptr, a0: c_int, a1: c_int, a2: c_int, a3: c_int) -> Ptr;
    fn ggml_new_graph(ctx: Ptr) -> Ptr;
    fn ggml_build_forward_expand(g: Ptr, t: Ptr);
    fn ggml_set_input(t: Ptr);
    fn ggml_backend_alloc_ctx_tensors_from_buft(ctx: Ptr, buft: Ptr) -> Ptr;
    fn ggml_backend_cpu_buffer_type() -> Ptr;
    fn ggml_backend_buffer_set_usage(buf: Ptr, usage: c_int);
    fn ggml_backend_buffer_free(buf: Ptr);
    fn ggml_backend_tensor_set(t: Ptr, data: *const c_void, offset: usize, size: usize);
    fn ggml_backend_tensor_get(t: Ptr, data: *mut c_void, offset: usize, size: usize);
    fn ggml_quantize_chunk(
        t: c_int,
        src: *const f32,
        dst: *mut c_void,
        start: i64,
        nrows: i64,
        n_per_row: i64,
        imatrix: *const f32,
    ) -> usize;
    fn ggml_row_size(t: c_int, ne: i64) -> usize;
    fn ggml_nbytes(t: Ptr) -> usize;
}

pub const F32: i32 = 0;
pub const F16: i32 = 1;
pub const Q4_0: i32 = 2;
pub const Q8_0: i32 = 8;
const USAGE_WEIGHTS: c_int = 1;
pub const USAGE_ANY: c_int = 0;
const DEVICE_CPU: c_int = 0;

struct Reg(Ptr);
// SAFETY: a registry handle is process-global and immutable once loaded.
unsafe impl Sync for Reg {}
// SAFETY: as above.
unsafe impl Send for Reg {}

/// Loads ggml's CPU backend and our library, once per process; returns our registry.
fn ane_reg() -> Ptr {
    static REG: OnceLock<Reg> = OnceLock::new();
    REG.get_or_init(|| {
        // these tests put every matmul, one-token ones included, on the engine; the library
        // reads its settings once, when first asked, in this process
        if std::env::var_os("GGML_ANE_MIN_TOKENS").is_none() {
            std::env::set_var("GGML_ANE_MIN_TOKENS", "1");
        }
        let dir = CString::new(super::support::lib_dir().to_str().unwrap()).unwrap();
        let lib = CString::new(super::support::cdylib().to_str().unwrap()).unwrap();
        // SAFETY: NUL-terminated paths; ggml's loader has no other preconditions.
        let reg = unsafe {
            ggml_backend_load_all_from_path(dir.as_ptr());
            ggml_backend_load(lib.as_ptr())
        };
        assert!(
            !reg.is_null(),
            "ggml_backend_load refused {}",
            lib.to_string_lossy()
        );
        Reg(reg)
    })
    .0
}

/// What our registry's `ggml_backend_get_features` reports.
/// Whether our device accepts each buffer type of the stand-in Metal backend at `standin`
/// (`MTL0`, `MTL0_Mapped`, `MTL0_Private`, in that order).
pub fn accepts_standin_metal_buffer_types(standin: &std::path::Path) -> Vec<bool> {
    let path = CString::new(standin.to_str().unwrap()).unwrap();
    let ane = ane_reg();
    // SAFETY: a NUL-terminated path; the stand-in exports `standin_buffer_type(int)` through
    // its registry, returning its static buffer types; our device pointer is live.
    unsafe {
        let reg = ggml_backend_load(path.as_ptr());
        assert!(!reg.is_null(), "the stand-in did not load");
        let f = ggml_backend_reg_get_proc_address(reg, c"standin_buffer_type".as_ptr());
        assert!(!f.is_null(), "the stand-in exports standin_buffer_type");
        let buffer_type: unsafe extern "C" fn(c_int) -> Ptr = std::mem::transmute(f);
        let dev = ggml_backend_reg_dev_get(ane, 0);
        (0..3)
            .map(|i| ggml_backend_dev_supports_buft(dev, buffer_type(i)))
            .collect()
    }
}

/// `y = a + b` (f32 `[n]`) as a graph, its tensors allocated in a buffer of `buft` and `a`, `b`
/// written; the caller computes it and frees `buf`, then `ctx`.
struct AddGraph {
    ctx: Ptr,
    y: Ptr,
    graph: Ptr,
    buf: Ptr,
}

impl AddGraph {
    /// # Safety
    /// `buft` is a live buffer type of a loaded backend.
    unsafe fn new(a: &[f32], b: &[f32], buft: Ptr) -> AddGraph {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        // SAFETY: a context for three tensors and a graph; the tensors are allocated before
        // they are written, with the sizes given.
        unsafe {
            let ctx = ggml_init(InitParams {
                mem_size: 1 << 20,
                mem_buffer: std::ptr::null_mut(),
                no_alloc: true,
            });
            let ta = ggml_new_tensor_4d(ctx, F32, n as i64, 1, 1, 1);
            let tb = ggml_new_tensor_4d(ctx, F32, n as i64, 1, 1, 1);
            let y = ggml_add(ctx, ta, tb);
            let graph = ggml_new_graph(ctx);
            ggml_build_forward_expand(graph, y);
            let buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx, buft);
            ggml_backend_tensor_set(ta, a.as_ptr().cast(), 0, n * 4);
            ggml_backend_tensor_set(tb, b.as_ptr().cast(), 0, n * 4);
            AddGraph { ctx, y, graph, buf }
        }
    }
}

/// What the stand-in Metal at `standin` shows a neighbour: `y = a + b` computed on it with
/// ggml's asynchronous call, `y`'s memory read directly before and after synchronising, and
/// the base address of an `MTL0_Private` buffer.
pub struct StandinBehaviour {
    pub before_sync: Vec<f32>,
    pub after_sync: Vec<f32>,
    pub private_base: usize,
}

pub fn standin_behaviour(standin: &std::path::Path, a: &[f32], b: &[f32]) -> StandinBehaviour {
    ane_reg();
    let path = CString::new(standin.to_str().unwrap()).unwrap();
    let n = a.len();
    // SAFETY: the stand-in exports standin_buffer_type(int) through its registry; every
    // tensor is allocated in its MTL0 buffer before it is written; all is freed here.
    unsafe {
        let reg = ggml_backend_load(path.as_ptr());
        assert!(!reg.is_null(), "the stand-in did not load");
        let f = ggml_backend_reg_get_proc_address(reg, c"standin_buffer_type".as_ptr());
        let buffer_type: unsafe extern "C" fn(c_int) -> Ptr = std::mem::transmute(f);
        let backend = ggml_backend_dev_init(ggml_backend_reg_dev_get(reg, 0), std::ptr::null());
        assert!(!backend.is_null());
        let AddGraph { ctx, y, graph, buf } = AddGraph::new(a, b, buffer_type(0));
        assert_eq!(ggml_backend_graph_compute_async(backend, graph), 0);
        let read = || std::slice::from_raw_parts(ggml_get_data(y).cast::<f32>(), n).to_vec();
        let before_sync = read();
        ggml_backend_synchronize(backend);
        let after_sync = read();
        let private = ggml_backend_buft_alloc_buffer(buffer_type(2), 4096);
        let private_base = ggml_backend_buffer_get_base(private) as usize;
        ggml_backend_buffer_free(private);
        ggml_backend_buffer_free(buf);
        ggml_free(ctx);
        ggml_backend_free(backend);
        StandinBehaviour {
            before_sync,
            after_sync,
            private_base,
        }
    }
}

pub fn features() -> Vec<(String, String)> {
    #[repr(C)]
    struct Feature {
        name: *const c_char,
        value: *const c_char,
    }
    let reg = ane_reg();
    // SAFETY: the registry is live; the returned function has ggml_backend_get_features_t's
    // signature and returns a NULL-terminated array of NUL-terminated strings.
    unsafe {
        let f = ggml_backend_reg_get_proc_address(reg, c"ggml_backend_get_features".as_ptr());
        assert!(!f.is_null(), "no ggml_backend_get_features");
        let get: unsafe extern "C" fn(Ptr) -> *const Feature = std::mem::transmute(f);
        let mut p = get(reg);
        let mut out = Vec::new();
        while !(*p).name.is_null() {
            out.push((
                CStr::from_ptr((*p).name).to_string_lossy().into_owned(),
                CStr::from_ptr((*p).value).to_string_lossy().into_owned(),
            ));
            p = p.add(1);
        }
        out
    }
}

/// A backend instance.
pub struct Backend(Ptr);

impl Backend {
    /// A new instance of our ANE device.
    pub fn ane() -> Backend {
        // SAFETY: the registry is loaded; device 0 exists (our get_device_count is 1).
        let b = unsafe {
            ggml_backend_dev_init(ggml_backend_reg_dev_get(ane_reg(), 0), std::ptr::null())
        };
        assert!(!b.is_null());
        Backend(b)
    }

    /// A new CPU backend.
    pub fn cpu() -> Backend {
        ane_reg();
        // SAFETY: the CPU backend was loaded by ane_reg.
        let b = unsafe { ggml_backend_init_by_type(DEVICE_CPU, std::ptr::null()) };
        assert!(!b.is_null());
        Backend(b)
    }

    pub fn name(&self) -> String {
        // SAFETY: a live backend returns a static NUL-terminated name.
        unsafe { CStr::from_ptr(ggml_backend_name(self.0)) }
            .to_string_lossy()
            .into_owned()
    }
}

/// `ggml_abort_callback`.
pub type AbortCallback = unsafe extern "C" fn(data: *mut c_void) -> bool;

impl Backend {
    /// Sets the backend's abort callback through our registry's
    /// `ggml_backend_set_abort_callback`, as llama.cpp does.
    pub fn set_abort_callback(&self, cb: AbortCallback, data: *mut c_void) {
        // SAFETY: the registry is live; the proc has ggml_backend_set_abort_callback_t's
        // signature; `cb` and `data` stay valid while the backend computes.
        unsafe {
            let f = ggml_backend_reg_get_proc_address(
                ane_reg(),
                c"ggml_backend_set_abort_callback".as_ptr(),
            );
            assert!(!f.is_null(), "no ggml_backend_set_abort_callback");
            let set: unsafe extern "C" fn(Ptr, Option<AbortCallback>, *mut c_void) =
                std::mem::transmute(f);
            set(self.0, Some(cb), data);
        }
    }

    /// Sets the thread count through our registry's `ggml_backend_set_n_threads`.
    pub fn set_n_threads(&self, n: c_int) {
        // SAFETY: as above, with ggml_backend_set_n_threads_t's signature.
        unsafe {
            let f = ggml_backend_reg_get_proc_address(
                ane_reg(),
                c"ggml_backend_set_n_threads".as_ptr(),
            );
            assert!(!f.is_null(), "no ggml_backend_set_n_threads");
            let set: unsafe extern "C" fn(Ptr, c_int) = std::mem::transmute(f);
            set(self.0, n);
        }
    }

    /// Computes `y = a + b` (f32 `[n]`, in a CPU buffer) on this backend alone: its ggml
    /// status and `y`.
    pub fn add(&self, a: &[f32], b: &[f32]) -> (c_int, Vec<f32>) {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        // SAFETY: a context for three tensors and a graph; the tensors are allocated in a CPU
        // buffer before they are written; everything is freed here.
        unsafe {
            let AddGraph { ctx, y, graph, buf } =
                AddGraph::new(a, b, ggml_backend_cpu_buffer_type());
            let status = ggml_backend_graph_compute(self.0, graph);
            let mut out = vec![0f32; n];
            ggml_backend_tensor_get(y, out.as_mut_ptr().cast(), 0, n * 4);
            ggml_backend_buffer_free(buf);
            ggml_free(ctx);
            (status, out)
        }
    }

    /// The raw handle, for callbacks that call back into the backend.
    pub fn handle(&self) -> *mut c_void {
        self.0
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: created by us, freed once.
        unsafe { ggml_backend_free(self.0) }
    }
}

/// One `y = mul_mat(w, x)` graph: weights in a CPU buffer marked WEIGHTS, `x` an input
/// (optionally a permuted view), `y` computed by a scheduler over `[ANE, CPU]`.
pub struct MulMat {
    ctx_w: Ptr,
    ctx: Ptr,
    w_buf: Ptr,
    pub w: Ptr,
    pub x: Ptr,
    pub y: Ptr,
    graph: Ptr,
    /// Created by the first run and kept: the graph's tensors live in its buffers.
    sched: std::cell::Cell<Ptr>,
    w_type: i32,
    w_shape: [i64; 4],
    x_len: usize,
    y_len: usize,
}

// SAFETY: the graph and its contexts are owned by this value and used by one thread at a time.
unsafe impl Send for MulMat {}

impl MulMat {
    /// `w [k, m, w2, w3]` of `w_type`, `x [k, n, b2, b3]` f32 (built permuted when `permuted`).
    pub fn new(
        w_type: i32,
        m: i64,
        k: i64,
        n: i64,
        wb: [i64; 2],
        b: [i64; 2],
        permuted: bool,
    ) -> MulMat {
        let params = |bytes| InitParams {
            mem_size: bytes,
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        };
        // SAFETY: every call below gets live contexts/tensors created just before; shapes are
        // valid for ggml (mul_mat's own asserts hold: same k, b divisible by wb).
        unsafe {
            let ctx_w = ggml_init(params(1 << 16));
            let w = ggml_new_tensor_4d(ctx_w, w_type, k, m, wb[0], wb[1]);
            let w_buf =
                ggml_backend_alloc_ctx_tensors_from_buft(ctx_w, ggml_backend_cpu_buffer_type());
            ggml_backend_buffer_set_usage(w_buf, USAGE_WEIGHTS);
            let ctx = ggml_init(params(1 << 20));
            let x = if permuted {
                let raw = ggml_new_tensor_4d(ctx, F32, k, b[0], n, b[1]);
                ggml_set_input(raw);
                (raw, ggml_permute(ctx, raw, 0, 2, 1, 3))
            } else {
                let raw = ggml_new_tensor_4d(ctx, F32, k, n, b[0], b[1]);
                ggml_set_input(raw);
                (raw, raw)
            };
            let y = ggml_mul_mat(ctx, w, x.1);
            let graph = ggml_new_graph(ctx);
            ggml_build_forward_expand(graph, y);
            let x_len = (k * n * b[0] * b[1]) as usize;
            let y_len = (m * n * b[0] * b[1]) as usize;
            MulMat {
                ctx_w,
                ctx,
                w_buf,
                w,
                x: x.0,
                y,
                graph,
                sched: std::cell::Cell::new(std::ptr::null_mut()),
                w_type,
                w_shape: [k, m, wb[0], wb[1]],
                x_len,
                y_len,
            }
        }
    }

    /// Stores f32 weights, converting (quantizing) to the weight type.
    pub fn set_weights(&self, values: &[f32]) {
        let [k, m, w2, w3] = self.w_shape;
        assert_eq!(values.len() as i64, k * m * w2 * w3);
        // SAFETY: `w` is allocated in w_buf with ggml_nbytes(w) bytes; quantize_chunk writes
        // rows·row_size bytes, which is that size for a contiguous tensor.
        unsafe {
            let bytes = ggml_nbytes(self.w);
            let mut buf = vec![0u8; bytes];
            let rows = m * w2 * w3;
            if self.w_type == F32 {
                buf.copy_from_slice(std::slice::from_raw_parts(
                    values.as_ptr().cast::<u8>(),
                    bytes,
                ));
            } else {
                assert_eq!(ggml_row_size(self.w_type, k) * rows as usize, bytes);
                ggml_quantize_chunk(
                    self.w_type,
                    values.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    0,
                    rows,
                    k,
                    std::ptr::null(),
                );
            }
            ggml_backend_tensor_set(self.w, buf.as_ptr().cast(), 0, bytes);
        }
    }

    /// Marks the weights' buffer with another usage (`USAGE_ANY`: as rpc-server's and test
    /// hosts' buffers are).
    pub fn set_weights_usage(&self, usage: c_int) {
        // SAFETY: the live buffer made in new().
        unsafe { ggml_backend_buffer_set_usage(self.w_buf, usage) };
    }

    /// Overwrites `bytes` of the weights' data at byte `offset`, in place.
    pub fn poke_weights(&self, offset: usize, bytes: &[u8]) {
        // SAFETY: `w` is allocated; the range is checked against its size.
        unsafe {
            assert!(offset + bytes.len() <= ggml_nbytes(self.w));
            ggml_backend_tensor_set(self.w, bytes.as_ptr().cast(), offset, bytes.len());
        }
    }

    pub fn x_len(&self) -> usize {
        self.x_len
    }

    /// Runs the graph through a scheduler over `backends` (the last must be the CPU), then
    /// the same graph on that CPU backend alone. Every run must pass the same backends, which
    /// must outlive this graph.
    pub fn run_sched(&self, backends: &[&Backend], x: &[f32]) -> Run {
        assert_eq!(x.len(), self.x_len);
        let mut handles: Vec<Ptr> = backends.iter().map(|b| b.0).collect();
        // SAFETY: live backends; the graph outlives the scheduler, which is freed here; the
        // input and output sizes are those of the tensors.
        unsafe {
            let mut s = self.sched.get();
            if s.is_null() {
                s = ggml_backend_sched_new(
                    handles.as_mut_ptr(),
                    std::ptr::null_mut(),
                    handles.len() as c_int,
                    64,
                    false,
                    true,
                );
                assert!(ggml_backend_sched_alloc_graph(s, self.graph));
                self.sched.set(s);
            }
            ggml_backend_tensor_set(self.x, x.as_ptr().cast(), 0, x.len() * 4);
            assert_eq!(ggml_backend_sched_graph_compute(s, self.graph), 0);
            let on = ggml_backend_sched_get_tensor_backend(s, self.y);
            let name = if on.is_null() {
                String::from("?")
            } else {
                CStr::from_ptr(ggml_backend_name(on))
                    .to_string_lossy()
                    .into_owned()
            };
            let mut y = vec![0f32; self.y_len];
            ggml_backend_tensor_get(self.y, y.as_mut_ptr().cast(), 0, y.len() * 4);
            // compute the same graph (same buffers) on the CPU backend alone for reference
            let cpu = backends.last().unwrap();
            assert_eq!(ggml_backend_graph_compute(cpu.0, self.graph), 0);
            let mut y_cpu = vec![0f32; self.y_len];
            ggml_backend_tensor_get(self.y, y_cpu.as_mut_ptr().cast(), 0, y_cpu.len() * 4);
            Run {
                y,
                y_cpu,
                backend: name,
            }
        }
    }
}

/// Results of one scheduled run and of the CPU-only run of the same graph.
pub struct Run {
    /// `y` from the scheduler.
    pub y: Vec<f32>,
    /// `y` from the CPU backend alone.
    pub y_cpu: Vec<f32>,
    /// The backend the scheduler put the MUL_MAT on.
    pub backend: String,
}

impl Drop for MulMat {
    fn drop(&mut self) {
        // SAFETY: created in new() and run_sched, freed once, scheduler first (it owns the
        // graph's buffers), while the backends it uses are still alive (callers' contract).
        unsafe {
            if !self.sched.get().is_null() {
                ggml_backend_sched_free(self.sched.get());
            }
            ggml_backend_buffer_free(self.w_buf);
            ggml_free(self.ctx);
            ggml_free(self.ctx_w);
        }
    }
}

/// ggml's normalised mean squared error.
pub fn nmse(got: &[f32], want: &[f32]) -> f64 {
    let (mut e, mut n) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        e += (g as f64 - w as f64).powi(2);
        n += (w as f64).powi(2);
    }
    e / n
}
