//! Reading a ggml graph into the walker's plain description of it, and op kinds by name.

use std::ffi::CStr;

use super::{
    ggml_cgraph, ggml_cgraph_head, ggml_get_glu_op, ggml_get_unary_op, ggml_glu_op_name,
    ggml_graph_n_nodes, ggml_graph_node, ggml_graph_nodes, ggml_op_name, ggml_tensor,
    ggml_unary_op_name, GGML_MAX_SRC, GGML_TENSOR_FLAG_COMPUTE, GGML_TENSOR_FLAG_OUTPUT,
};
use crate::walker::{OpKind, WalkNode};

/// What kind of op `t` is, by ggml's names for it: enum values past MUL_MAT move between
/// ggml versions, names do not (full-layer-device.md §4).
pub(crate) fn op_kind(t: &ggml_tensor) -> OpKind {
    let name = |p: *const std::ffi::c_char| {
        if p.is_null() {
            ""
        } else {
            // SAFETY: ggml's name tables hold static NUL-terminated literals.
            unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("")
        }
    };
    // SAFETY: `t.op` comes from a live tensor, so it indexes ggml's own table.
    match name(unsafe { ggml_op_name(t.op) }) {
        "NONE" | "RESHAPE" | "VIEW" | "PERMUTE" | "TRANSPOSE" => OpKind::View,
        "MUL_MAT" => OpKind::MulMat,
        "RMS_NORM" => OpKind::RmsNorm,
        "MUL" => OpKind::Mul,
        "ADD" => OpKind::Add,
        "SCALE" => OpKind::Scale,
        "ROPE" => OpKind::Rope,
        // SAFETY: a live UNARY tensor; the getter reads its op params and the name function
        // indexes ggml's table with the value it returns.
        "UNARY" => match name(unsafe { ggml_unary_op_name(ggml_get_unary_op(t)) }) {
            "SILU" => OpKind::Silu,
            _ => OpKind::Other,
        },
        // SAFETY: as above, for a GLU tensor.
        "GLU" => match name(unsafe { ggml_glu_op_name(ggml_get_glu_op(t)) }) {
            "SWIGLU" => OpKind::SwiGlu,
            "GEGLU" => OpKind::GeGlu,
            _ => OpKind::Other,
        },
        _ => OpKind::Other,
    }
}

/// Whether a MUL_MAT reads what a fused block's matmuls read: a norm's scale (`MUL` of an
/// `RMS_NORM`: Q, K, V, gate, up, the output head) or a GLU (down).
///
/// # Safety
/// `t` is NULL or a live tensor whose sources are live.
pub(crate) unsafe fn reads_block_input(t: *const ggml_tensor) -> bool {
    // SAFETY: NULL or live, by the caller; sources of live tensors are NULL or live.
    let input = unsafe { t.as_ref().and_then(|t| t.src[1].as_ref()) };
    let Some(input) = input else {
        return false;
    };
    match op_kind(input) {
        OpKind::SwiGlu | OpKind::GeGlu => true,
        OpKind::Mul => {
            // SAFETY: as above.
            let first = unsafe { input.src[0].as_ref() };
            first.is_some_and(|n| op_kind(n) == OpKind::RmsNorm)
        }
        _ => false,
    }
}

/// How many tokens a tensor carries: rows (`ne[1]`; `ne[2]` for ROPE, whose rows are heads),
/// never more than its first source carries, so a decode step's `[head_dim, heads, 1]`
/// reshape of a one-token projection counts one token, not `heads`. Views count what they
/// view. Follows at most 8 sources back.
///
/// # Safety
/// `t` is NULL or a live tensor whose sources are live.
pub(crate) unsafe fn token_count(t: *const ggml_tensor) -> i64 {
    let mut t = t;
    let mut tokens = i64::MAX;
    for _ in 0..8 {
        // SAFETY: NULL or live, by the caller (sources of live tensors are live).
        let Some(r) = (unsafe { t.as_ref() }) else {
            break;
        };
        let kind = op_kind(r);
        let src0 = r.src[0];
        match kind {
            OpKind::View if !src0.is_null() => {}
            OpKind::Rope => tokens = tokens.min(r.ne[2]),
            // a MUL_MAT's first source is its weights
            OpKind::MulMat => return tokens.min(r.ne[1]),
            _ => tokens = tokens.min(r.ne[1]),
        }
        t = src0;
    }
    if tokens == i64::MAX {
        0
    } else {
        tokens
    }
}

/// The nodes of `cgraph`, as pointers and as the walker sees them (with ggml's use counts
/// when `use_counts_layout` says this host's `struct ggml_cgraph` is the one we mirror).
///
/// # Safety
/// `cgraph` is a live graph whose nodes and their sources are live for the returned
/// pointers' use.
pub(crate) unsafe fn collect(
    cgraph: *mut ggml_cgraph,
    use_counts_layout: bool,
) -> (Vec<*mut ggml_tensor>, Vec<WalkNode>) {
    // SAFETY: a live graph, by the caller.
    let n = unsafe { ggml_graph_n_nodes(cgraph) }.max(0);
    let mut ptrs = Vec::with_capacity(n as usize);
    let mut nodes = Vec::with_capacity(n as usize);
    for i in 0..n {
        // SAFETY: 0 <= i < n_nodes.
        let p = unsafe { ggml_graph_node(cgraph, i) };
        // SAFETY: ggml returns live nodes.
        let Some(t) = (unsafe { p.as_ref() }) else {
            continue;
        };
        let srcs: Vec<usize> = t.src[..GGML_MAX_SRC].iter().map(|&s| s as usize).collect();
        nodes.push(WalkNode {
            id: p as usize,
            kind: op_kind(t),
            srcs,
            is_output: t.flags & GGML_TENSOR_FLAG_OUTPUT != 0,
            compute: t.flags & GGML_TENSOR_FLAG_COMPUTE != 0,
            engine: false,
            uses: None,
        });
        ptrs.push(p);
    }
    if use_counts_layout {
        // SAFETY: a live graph of a host whose layout the layout test checks; `ptrs` its nodes.
        if let Some(counts) = unsafe { use_counts(cgraph, n, &ptrs) } {
            for (node, uses) in nodes.iter_mut().zip(counts) {
                node.uses = Some(uses);
            }
        }
    }
    (ptrs, nodes)
}

/// ggml's use count of each of `nodes` (source slots of the whole graph that read it), or
/// `None` when the graph does not carry them: the head must agree with ggml's own accessors
/// and every node must be in the graph's hash set (rpc-server builds its graphs without
/// one; a graph made with `ggml_graph_add_node` has none either).
///
/// # Safety
/// `cgraph` is a live graph of `n_nodes` nodes, `nodes`, whose `struct ggml_cgraph` begins
/// as [`ggml_cgraph_head`].
unsafe fn use_counts(
    cgraph: *mut ggml_cgraph,
    n_nodes: i32,
    nodes: &[*mut ggml_tensor],
) -> Option<Vec<u32>> {
    // SAFETY: the layout is ours, by the caller; only the head is read.
    let head = unsafe { &*(cgraph as *const ggml_cgraph_head) };
    // SAFETY: a live graph.
    let nodes_ptr = unsafe { ggml_graph_nodes(cgraph) };
    let set = &head.visited_hash_set;
    if head.n_nodes != n_nodes
        || head.nodes != nodes_ptr
        || head.use_counts.is_null()
        || set.size == 0
        || set.used.is_null()
        || set.keys.is_null()
    {
        return None;
    }
    let used = |i: usize| {
        // SAFETY: i < set.size, and `used` holds set.size bits.
        unsafe { *set.used.add(i >> 5) & (1u32 << (i & 31)) != 0 }
    };
    nodes
        .iter()
        .map(|&p| {
            // ggml_hash_find: linear probing from the address >> 4
            let start = (p as usize >> 4) % set.size;
            let mut i = start;
            loop {
                if !used(i) {
                    return None;
                }
                // SAFETY: i < set.size; a used slot holds a key.
                if unsafe { *set.keys.add(i) } == p {
                    break;
                }
                i = (i + 1) % set.size;
                if i == start {
                    return None;
                }
            }
            // SAFETY: use_counts has set.size entries.
            let count = unsafe { *head.use_counts.add(i) };
            u32::try_from(count).ok()
        })
        .collect()
}
