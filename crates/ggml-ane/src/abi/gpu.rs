//! The host's GPU backend (Metal on a Mac), found through ggml's registry as the CPU backend
//! is, for one thing only: timing a matmul shape on it, so the routing can set our engine's
//! time beside the GPU's (`crate::measured`). Nothing of the model runs here: the timing
//! builds its own two tensors in the GPU backend's own buffer.

use std::ffi::{c_void, CStr};
use std::time::{Duration, Instant};

use super::{
    ggml_backend_alloc_ctx_tensors, ggml_backend_buffer_free, ggml_backend_dev_init,
    ggml_backend_dev_name, ggml_backend_device, ggml_backend_free, ggml_backend_graph_compute,
    ggml_backend_tensor_set, ggml_build_forward_expand, ggml_free, ggml_graph_overhead, ggml_init,
    ggml_init_params, ggml_mul_mat, ggml_nbytes, ggml_new_graph, ggml_new_tensor_4d,
    ggml_tensor_overhead, ggml_type, GGML_BACKEND_DEVICE_TYPE_GPU, GGML_STATUS_SUCCESS,
};

/// A GPU device of the host's registry.
#[derive(Clone, Copy)]
pub(crate) struct GpuDevice {
    dev: *mut ggml_backend_device,
}

// SAFETY: a registered device lives for the process; ggml's device functions may be called
// from any thread.
unsafe impl Send for GpuDevice {}
// SAFETY: as above; never mutated.
unsafe impl Sync for GpuDevice {}

/// The host's first GPU device (`ggml_backend_dev_by_type(GPU)`: Metal's MTL0 on a Mac; our
/// own devices are ACCEL and IGPU, never this), if it registered one.
pub(crate) fn gpu_device() -> Option<GpuDevice> {
    super::cpu::device_of_type(GGML_BACKEND_DEVICE_TYPE_GPU).map(|dev| GpuDevice { dev })
}

impl GpuDevice {
    /// Its name (`MTL0`).
    pub(crate) fn name(&self) -> String {
        // SAFETY: a live device; ggml returns a NUL-terminated name it owns (or NULL).
        unsafe {
            let p = ggml_backend_dev_name(self.dev);
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        }
    }

    /// The median time of `reps` computations (after one warm-up) of an F16 `[k, m]` weight
    /// times F32 `[k, n]` activations on a backend of this device made for the purpose, or why
    /// it could not be timed.
    pub(crate) fn time_matmul(
        &self,
        (m, k, n): (usize, usize, usize),
        reps: usize,
    ) -> Result<Duration, String> {
        let reps = reps.max(1);
        let (w_data, x_data) = (
            (0..m * k)
                .map(|i| half::f16::from_f32(((i % 13) as f32 - 6.0) / 64.0))
                .collect::<Vec<_>>(),
            (0..n * k)
                .map(|i| ((i % 7) as f32 - 3.0) / 8.0)
                .collect::<Vec<_>>(),
        );
        // SAFETY: every object is made here and freed before returning: a no-alloc context
        // sized by ggml's own overhead figures for three tensors and one graph, the tensors'
        // memory in a buffer of the backend's own type, filled within each tensor's byte size
        // (checked against our host data first).
        unsafe {
            let backend = ggml_backend_dev_init(self.dev, std::ptr::null());
            if backend.is_null() {
                return Err("the GPU backend could not be created".into());
            }
            let ctx = ggml_init(ggml_init_params {
                mem_size: 3 * ggml_tensor_overhead() + ggml_graph_overhead(),
                mem_buffer: std::ptr::null_mut(),
                no_alloc: true,
            });
            if ctx.is_null() {
                ggml_backend_free(backend);
                return Err("no ggml context for the GPU timing".into());
            }
            let (m_, k_, n_) = (m as i64, k as i64, n as i64);
            let w = ggml_new_tensor_4d(ctx, ggml_type::F16, k_, m_, 1, 1);
            let x = ggml_new_tensor_4d(ctx, ggml_type::F32, k_, n_, 1, 1);
            let y = ggml_mul_mat(ctx, w, x);
            let graph = ggml_new_graph(ctx);
            ggml_build_forward_expand(graph, y);
            let buffer = ggml_backend_alloc_ctx_tensors(ctx, backend);
            let done = |result: Result<Duration, String>| {
                if !buffer.is_null() {
                    ggml_backend_buffer_free(buffer);
                }
                ggml_free(ctx);
                ggml_backend_free(backend);
                result
            };
            if buffer.is_null() {
                return done(Err("no GPU buffer for the timing".into()));
            }
            let (wb, xb) = (
                std::mem::size_of_val(w_data.as_slice()),
                std::mem::size_of_val(x_data.as_slice()),
            );
            if ggml_nbytes(w) != wb || ggml_nbytes(x) != xb {
                return done(Err("unexpected tensor sizes for the GPU timing".into()));
            }
            ggml_backend_tensor_set(w, w_data.as_ptr().cast::<c_void>(), 0, wb);
            ggml_backend_tensor_set(x, x_data.as_ptr().cast::<c_void>(), 0, xb);
            let mut times = Vec::with_capacity(reps);
            for i in 0..=reps {
                let t = Instant::now();
                // ggml_backend_graph_compute waits for the device (compute + synchronize)
                if ggml_backend_graph_compute(backend, graph) != GGML_STATUS_SUCCESS {
                    return done(Err("the GPU failed the timing matmul".into()));
                }
                if i > 0 {
                    times.push(t.elapsed());
                }
            }
            times.sort_unstable();
            done(Ok(times[times.len() / 2]))
        }
    }
}
