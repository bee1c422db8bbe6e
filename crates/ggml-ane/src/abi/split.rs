//! A split ggml hands the backend, read once into plain data ([`Split`]): the walker's view
//! of each node (with ggml's use counts), each node's description, and safe access to the
//! rows of its tensors for as long as the graph is borrowed.

use std::ffi::c_int;
use std::marker::PhantomData;

use super::cpu::CpuBackend;
use super::tensor::{describe_node, op_kind, BuftMemo, NodeDesc, TensorRows, TensorRowsMut};
use super::{
    ggml_cgraph, ggml_cgraph_head, ggml_graph_n_nodes, ggml_graph_node, ggml_graph_nodes,
    ggml_tensor, ggml_type, GGML_MAX_SRC, GGML_TENSOR_FLAG_COMPUTE, GGML_TENSOR_FLAG_OUTPUT,
};
use crate::compute::walker::OpKind;
use crate::compute::walker::WalkNode;

/// The nodes of one split, read once.
pub(crate) struct Split<'g> {
    ptrs: Vec<*mut ggml_tensor>,
    /// The walker's view of each node.
    pub(crate) nodes: Vec<WalkNode>,
    /// Each node's shapes, types, buffers and its first two sources'.
    pub(crate) descs: Vec<Option<NodeDesc>>,
    _graph: PhantomData<&'g mut ggml_cgraph>,
}

impl<'g> Split<'g> {
    /// Reads `cgraph` (with ggml's use counts when `use_counts_layout` says this host's
    /// `struct ggml_cgraph` is the one we mirror). With `compute_flag` the nodes to compute
    /// are those ggml flagged COMPUTE; without (ggml before 0.9.6), as that ggml's CPU backend
    /// decides: every node but NONE, views and empty tensors.
    ///
    /// # Safety
    /// `cgraph` is a live graph, handed to the backend to compute, whose nodes, their sources
    /// and their data stay live and are not used by anyone else for `'g`.
    pub(crate) unsafe fn read(
        cgraph: *mut ggml_cgraph,
        use_counts_layout: bool,
        compute_flag: bool,
    ) -> Self {
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
            let kind = op_kind(t);
            let compute = if compute_flag {
                t.flags & GGML_TENSOR_FLAG_COMPUTE != 0
            } else {
                kind != OpKind::View && t.ne.iter().all(|&n| n > 0)
            };
            nodes.push(WalkNode {
                id: p as usize,
                kind,
                srcs,
                is_output: t.flags & GGML_TENSOR_FLAG_OUTPUT != 0,
                compute,
                engine: false,
                uses: None,
            });
            ptrs.push(p);
        }
        if use_counts_layout {
            // SAFETY: a live graph of a host whose layout the layout test checks.
            if let Some(counts) = unsafe { use_counts(cgraph, n, &ptrs) } {
                for (node, uses) in nodes.iter_mut().zip(counts) {
                    node.uses = Some(uses);
                }
            }
        }
        let memo = &mut BuftMemo::default();
        // SAFETY: live nodes of the graph, by the caller.
        let descs = ptrs
            .iter()
            .map(|&p| unsafe { describe_node(p, memo) })
            .collect();
        Split {
            ptrs,
            nodes,
            descs,
            _graph: PhantomData,
        }
    }

    /// The rows of source `slot` (0 or 1) of node `node`.
    pub(crate) fn source(&self, node: usize, slot: usize) -> Option<TensorRows<'_>> {
        let desc = (*self.descs.get(node)?.as_ref()?.src.get(slot)?)?;
        // SAFETY: a live node of the graph (Split::read's promise) and its source slot, NULL
        // or live.
        let src = unsafe { (*self.ptrs[node]).src[slot].as_ref() }?;
        // SAFETY: the source's data is live for 'g; rows are checked against desc.ne.
        Some(unsafe { TensorRows::new(desc, src.data) })
    }

    /// The rows of node `node`'s own F32 result, to write.
    pub(crate) fn sink(&self, node: usize) -> Option<TensorRowsMut<'_>> {
        let desc = self.descs.get(node)?.as_ref()?.node;
        if desc.ty != ggml_type::F32 || !desc.readable {
            return None;
        }
        // SAFETY: a live node of the graph, by Split::read's promise.
        let data = unsafe { (*self.ptrs[node]).data };
        // SAFETY: the node's data is live for 'g and this backend computes it now, so nobody
        // else reads or writes it; writes are checked against desc.ne.
        Some(unsafe { TensorRowsMut::new(desc, data) })
    }

    /// Computes nodes `ix` (in order, as one graph) on ggml's CPU backend `cpu`.
    pub(crate) fn compute_on(&self, cpu: &CpuBackend, ix: &[usize]) -> Result<(), c_int> {
        let nodes: Vec<*mut ggml_tensor> = ix.iter().map(|&i| self.ptrs[i]).collect();
        // SAFETY: live nodes of the graph being computed, data allocated by ggml.
        unsafe { cpu.compute(&nodes) }
    }
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
