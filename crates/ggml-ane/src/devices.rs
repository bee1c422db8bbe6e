//! The two devices the registry offers, described by one table, and what each accepts.
//!
//! - `ANE` (type ACCEL): the matmuls and the ops around them (a layer's prompt), beside the
//!   host's GPU or CPU; it owns no memory and reports none.
//! - `ANE-FULL` (type IGPU, issue #14): every op ggml's CPU backend can compute, so a graph
//!   handed to it whole — by ggml's rpc-server, or by `-sm tensor`'s meta device — is computed
//!   whole. llama.cpp picks IGPU devices by default only when no GPU exists, so beside Metal
//!   it is used only where it is named (`-dev`, `rpc-server -d`); it reports the machine's
//!   RAM (RPC clients split layers by it). `GGML_ANE_FULL=0` hides it.
//!
//! Both compute alike (the same walker, kernels and fallbacks); the C vtable in
//! `abi/device.rs` serves both from this table.

use std::ffi::CStr;

use crate::abi::NodeDesc;
use crate::compute::matmul::supports_mul_mat;
use crate::compute::walker::OpKind;
use crate::settings;

/// ggml's device types we announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeviceType {
    Accel,
    Igpu,
}

/// What memory a device reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Memory {
    /// 0/0, ggml's "nothing to report" (the BLAS backend does the same).
    None,
    /// The machine's RAM.
    MachineRam,
}

/// Which ops a device accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Takes {
    /// MUL_MATs the engine can take and the ops around them ([`is_glue`]).
    Layer,
    /// Every op ggml's CPU backend can compute.
    Everything,
}

/// One device: everything that differs between the two.
#[derive(Debug)]
pub(crate) struct DeviceSpec {
    pub(crate) name: &'static CStr,
    /// `None`: the engine's own description.
    pub(crate) description: Option<&'static CStr>,
    pub(crate) device_type: DeviceType,
    pub(crate) memory: Memory,
    pub(crate) takes: Takes,
    /// Buffers it computes on: any host buffer, or (when false) the buffer types the backend
    /// can read, Metal's mapped ones included ([`crate::buffers`]).
    pub(crate) host_buffers_only: bool,
    /// Whether `offload_op` pulls big MUL_MATs over from another backend's split.
    pub(crate) pulls_work: bool,
    /// Whether a backend needs ggml's CPU backend to exist (it computes every other op).
    pub(crate) needs_cpu_backend: bool,
}

pub(crate) static ANE: DeviceSpec = DeviceSpec {
    name: c"ANE",
    description: None,
    device_type: DeviceType::Accel,
    memory: Memory::None,
    takes: Takes::Layer,
    host_buffers_only: false,
    pulls_work: true,
    needs_cpu_backend: false,
};

pub(crate) static ANE_FULL: DeviceSpec = DeviceSpec {
    name: c"ANE-FULL",
    description: Some(c"Apple Neural Engine, every other op on ggml's CPU backend"),
    device_type: DeviceType::Igpu,
    memory: Memory::MachineRam,
    takes: Takes::Everything,
    host_buffers_only: true,
    pulls_work: false,
    needs_cpu_backend: true,
};

/// The devices the registry offers, in order: `ANE`, then `ANE-FULL` unless hidden.
pub(crate) fn offered(full_device: bool) -> Vec<&'static DeviceSpec> {
    let mut devices = vec![&ANE];
    if full_device {
        devices.push(&ANE_FULL);
    }
    devices
}

/// The ops besides MUL_MAT the `ANE` device takes: computed inside a fused program when they
/// are part of a chain, else by ggml's own CPU backend.
pub(crate) fn is_glue(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::RmsNorm
            | OpKind::Mul
            | OpKind::Add
            | OpKind::Scale
            | OpKind::Silu
            | OpKind::SwiGlu
            | OpKind::GeGlu
            | OpKind::Rope
    )
}

/// An op ggml asks about, as `supports_op` sees it.
pub(crate) struct OpQuery<'a> {
    /// The node and its sources (`None`: NULL).
    pub(crate) desc: Option<&'a NodeDesc>,
    pub(crate) kind: OpKind,
    /// Tokens it carries (`abi::token_count`).
    pub(crate) tokens: i64,
    /// It and all its sources are in buffers the backend can read.
    pub(crate) readable: bool,
    /// ggml's CPU backend exists in this process.
    pub(crate) cpu_exists: bool,
    /// A backend found no usable engine (`crate::runtime::runtime_failed`).
    pub(crate) engine_unusable: bool,
}

/// `supports_op` for `spec`. `ANE`: views; MUL_MATs it can read with at least
/// `GGML_ANE_MIN_TOKENS` tokens (with `GGML_ANE_MATMULS=blocks` only those a fused block
/// holds: `block_input`); and the ops around them ([`is_glue`]) when ggml's CPU backend can
/// compute them, with as many tokens — so a decode step stays whole on the other backend.
/// `ANE-FULL`: views, and whatever ggml's CPU backend computes (tensors in another device's
/// buffers too: `-sm tensor`'s meta device asks about its own and hands us sub-graphs in our
/// buffers). Reads the settings only: asking never creates the engine.
pub(crate) fn supports_op(
    spec: &DeviceSpec,
    q: &OpQuery<'_>,
    block_input: impl FnOnce() -> bool,
    cpu_can: impl FnOnce() -> bool,
) -> bool {
    if q.engine_unusable || !crate::routing::route().take {
        // out of the way: the scheduler gives every op to another backend (no engine, or the
        // chip's GPU is the faster side: `routing`)
        return false;
    }
    if q.kind == OpKind::View {
        return true;
    }
    let (min_tokens, blocks_only) = settings::get()
        .as_ref()
        .map_or((1, false), |c| (c.min_tokens, c.blocks_only));
    match spec.takes {
        Takes::Everything => {
            if q.desc.is_none() || !q.readable {
                q.cpu_exists
            } else {
                q.cpu_exists && cpu_can()
            }
        }
        Takes::Layer => {
            let Some(n) = q.desc else {
                return false;
            };
            let enough = q.tokens >= min_tokens as i64;
            match q.kind {
                OpKind::MulMat => {
                    supports_mul_mat(n)
                        && n.node.ne[1] >= min_tokens as i64
                        && (!blocks_only || block_input())
                        && cheaper_here(n)
                }
                // tokens are ne[2] (as Metal counts them): decode steps stay elsewhere
                OpKind::MulMatId => {
                    crate::compute::experts::supports_mul_mat_id(n)
                        && crate::compute::experts::tokens(n) >= min_tokens as i64
                }
                k if is_glue(k) => enough && q.readable && q.cpu_exists && cpu_can(),
                _ => false,
            }
        }
    }
}

/// Whether a weight × activations MUL_MAT costs less on the engine than on the host's GPU —
/// time, or joules under `GGML_ANE_MODE=energy` — where that was measured
/// (`crate::measured`); true where it was not (the chip table decides).
fn cheaper_here(n: &NodeDesc) -> bool {
    let Some(w) = n.src[0] else {
        return true;
    };
    let batched = w.ne[2] * w.ne[3] > 1 || n.node.ne[2] * n.node.ne[3] > 1;
    batched
        || crate::measured::engine_takes(w.ne[1] as usize, w.ne[0] as usize, n.node.ne[1] as usize)
            .unwrap_or(true)
}

/// `offload_op` for `spec`: the `ANE` device pulls MUL_MATs of at least `GGML_ANE_MIN_BATCH`
/// tokens over from another backend's split; `ANE-FULL` never does (used where named).
pub(crate) fn offload_op(spec: &DeviceSpec, kind: OpKind, n: &NodeDesc) -> bool {
    let min_batch = settings::get()
        .as_ref()
        .map_or(settings::DEFAULT_MIN_BATCH, |c| c.min_batch);
    spec.pulls_work
        && !crate::runtime::runtime_failed()
        && crate::routing::route().take
        && match kind {
            OpKind::MulMat => {
                supports_mul_mat(n) && n.node.ne[1] >= min_batch as i64 && cheaper_here(n)
            }
            OpKind::MulMatId => {
                crate::compute::experts::supports_mul_mat_id(n)
                    && crate::compute::experts::tokens(n) >= min_batch as i64
            }
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_says_how_the_devices_differ() {
        assert_eq!(offered(true).len(), 2);
        assert_eq!(
            offered(false).iter().map(|d| d.name).collect::<Vec<_>>(),
            [c"ANE"]
        );
        assert_eq!(
            (ANE.device_type, ANE_FULL.device_type),
            (DeviceType::Accel, DeviceType::Igpu)
        );
        // a view is taken by both; an op nobody can read only by ANE-FULL, and only when the
        // CPU backend exists
        for spec in [&ANE, &ANE_FULL] {
            let view = OpQuery {
                desc: None,
                kind: OpKind::View,
                tokens: 0,
                readable: false,
                cpu_exists: false,
                engine_unusable: false,
            };
            // no usable engine: nothing at all
            let out_of_the_way = OpQuery {
                engine_unusable: true,
                ..OpQuery { ..view }
            };
            assert!(!supports_op(spec, &out_of_the_way, || true, || true));
            assert!(supports_op(spec, &view, || false, || false));
        }
        let other = |cpu_exists| OpQuery {
            desc: None,
            kind: OpKind::Other,
            tokens: 100,
            readable: false,
            cpu_exists,
            engine_unusable: false,
        };
        assert!(!supports_op(&ANE, &other(true), || true, || true));
        assert!(supports_op(&ANE_FULL, &other(true), || true, || true));
        assert!(!supports_op(&ANE_FULL, &other(false), || true, || true));
    }
}
