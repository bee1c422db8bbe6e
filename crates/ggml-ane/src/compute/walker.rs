//! The node walker: what `graph_compute` does with the split ggml hands it, decided over a
//! plain description of the nodes so it is tested without ggml. The chains it fuses come
//! from the pattern registry (`patterns.rs`); this file knows none of them.
//!
//! In order: views and nodes without the COMPUTE flag are skipped; a chain one fused program
//! computes (see [`Chain`]) is evaluated where its first node was, and each of its results
//! is written where its own node was (ggml reuses memory: a result written earlier could
//! overwrite bytes a node in between still reads); a MUL_MAT the engine takes runs alone;
//! every other node joins a batch that ggml's own CPU backend computes as one graph, flushed
//! before anything that may read it. A chain the engine declines is computed node by node at
//! those same places, exactly as without fusion. The full-layer device of issue #14 walks
//! with the same plan.

use std::collections::HashMap;

/// The ops the walker tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpKind {
    /// NONE, RESHAPE, VIEW, PERMUTE, TRANSPOSE: no computation.
    View,
    MulMat,
    /// MUL_MAT_ID: a mixture-of-experts layer's matmuls, each token by its experts.
    MulMatId,
    RmsNorm,
    /// NORM: ggml's LayerNorm without weight and bias (whisper, GPT-2).
    Norm,
    Mul,
    Add,
    Scale,
    /// UNARY(SILU).
    Silu,
    /// UNARY(GELU): ggml's tanh approximation.
    Gelu,
    /// GLU(SWIGLU).
    SwiGlu,
    /// GLU(GEGLU).
    GeGlu,
    Rope,
    Other,
}

/// One node, as the walker sees it.
#[derive(Clone, Debug)]
pub(crate) struct WalkNode {
    /// The tensor's address: what sources refer to.
    pub(crate) id: usize,
    pub(crate) kind: OpKind,
    /// Source addresses by slot (0: none).
    pub(crate) srcs: Vec<usize>,
    /// ggml marks it as a graph output.
    pub(crate) is_output: bool,
    /// ggml marks it as to be computed.
    pub(crate) compute: bool,
    /// A MUL_MAT the engine can take.
    pub(crate) engine: bool,
    /// How many source slots of the whole graph read it (ggml's use count; a split is a view
    /// of that graph, so readers in other splits are counted too), or `None` when unknown.
    pub(crate) uses: Option<u32>,
}

impl WalkNode {
    pub(crate) fn src(&self, slot: usize) -> usize {
        self.srcs.get(slot).copied().unwrap_or(0)
    }
}

/// What a chain computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChainKind {
    /// norm → × norm weight → gate and up MUL_MATs → SWIGLU → down MUL_MAT → residual ADD.
    Ffn,
    /// norm → × norm weight → two or more MUL_MATs of that one input (Q, K, V).
    Qkv,
    /// LayerNorm → × weight → + bias → up MUL_MAT → + bias → GELU → down MUL_MAT → + bias →
    /// residual ADD (whisper, GPT-2).
    GeluFfn,
    /// A mixture-of-experts FFN: up and gate MUL_MAT_IDs of one input and one routing →
    /// SWIGLU → down MUL_MAT_ID; computed expert by expert, each expert's token group one
    /// program. No head: the router reads the normed input too.
    ExpertFfn,
}

impl ChainKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChainKind::Ffn => "ffn",
            ChainKind::Qkv => "qkv",
            ChainKind::GeluFfn => "gelu ffn",
            ChainKind::ExpertFfn => "expert ffn",
        }
    }
}

/// Nodes (indices into the walked list) one fused program computes: the roles the job
/// builder reads, and what the walker needs to know, as data the pattern filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chain {
    pub(crate) kind: ChainKind,
    /// The RMS_NORM, when it is in this graph (beside Metal, llama.cpp pins every `norm` to
    /// the layer's device: the chain then starts at the scale, on a normed input).
    pub(crate) norm: Option<usize>,
    /// The MUL by the norm weight (an expert FFN, which has no head: its first member).
    pub(crate) scale: usize,
    /// The norm is a LayerNorm (NORM), not an RMSNorm.
    pub(crate) layer: bool,
    /// A LayerNorm's ADD of its bias, after the scale: then the normed input the matmuls read.
    pub(crate) bias: Option<usize>,
    /// FFN and expert FFN: gate, up. QKV: the projections, in graph order. GELU FFN: up.
    pub(crate) matmuls: Vec<usize>,
    /// The SWIGLU, or the GELU.
    pub(crate) glu: Option<usize>,
    /// The ADDs of a matmul's bias inside the chain (GELU FFN: up's, down's).
    pub(crate) biases: Vec<usize>,
    pub(crate) down: Option<usize>,
    pub(crate) add: Option<usize>,
    /// Every member, in graph order.
    pub(crate) members: Vec<usize>,
    /// The members whose results leave the program, in its output order.
    pub(crate) outputs: Vec<usize>,
    /// Members the host may compute again (at their places, on ggml's CPU backend) when
    /// something outside the program reads them; any other intermediate read outside stops
    /// the chain.
    pub(crate) may_write_back: Vec<usize>,
    /// Of those, the ones that are read outside (set by the walker).
    pub(crate) write_back: Vec<usize>,
}

impl Chain {
    /// The first member: where the program is evaluated.
    pub(crate) fn start(&self) -> usize {
        self.members[0]
    }
}

/// One thing to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nodes for ggml's CPU backend, as one graph.
    Cpu(Vec<usize>),
    /// A MUL_MAT (or MUL_MAT_ID) for the engine.
    Engine(usize),
    /// Evaluate chain `.0` (an index into [`Plan::chains`]) as one fused program.
    Fused(usize),
    /// Node `node` of chain `chain`, at its own place: its result is written now (or, if the
    /// chain was declined, the node is computed now).
    Member { chain: usize, node: usize },
}

/// The steps, and the chains they refer to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) steps: Vec<Step>,
    pub(crate) chains: Vec<Chain>,
}

/// The steps that compute `nodes`; chains are looked for only with `fuse`.
pub(crate) fn plan(nodes: &[WalkNode], fuse: bool) -> Plan {
    let g = Graph::new(nodes);
    let mut member_of: Vec<Option<usize>> = vec![None; nodes.len()];
    let mut chains: Vec<Chain> = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    for i in 0..nodes.len() {
        let n = &nodes[i];
        if let Some(chain) = member_of[i] {
            if chains[chain].write_back.contains(&i) {
                push_cpu(&mut steps, i);
            } else {
                steps.push(Step::Member { chain, node: i });
            }
            continue;
        }
        if n.kind == OpKind::View || !n.compute {
            continue;
        }
        let chain = if fuse { find_chain(&g, i) } else { None };
        if let Some(chain) = chain {
            for &m in &chain.members {
                member_of[m] = Some(chains.len());
            }
            steps.push(Step::Fused(chains.len()));
            if chain.write_back.contains(&i) {
                push_cpu(&mut steps, i);
            } else {
                steps.push(Step::Member {
                    chain: chains.len(),
                    node: i,
                });
            }
            chains.push(chain);
            continue;
        }
        if matches!(n.kind, OpKind::MulMat | OpKind::MulMatId) && n.engine {
            steps.push(Step::Engine(i));
        } else {
            push_cpu(&mut steps, i);
        }
    }
    Plan { steps, chains }
}

/// Node `i` for ggml's CPU backend: into the batch before it, if the last step is one.
fn push_cpu(steps: &mut Vec<Step>, i: usize) {
    if let Some(Step::Cpu(batch)) = steps.last_mut() {
        batch.push(i);
    } else {
        steps.push(Step::Cpu(vec![i]));
    }
}

/// The nodes, with who reads whom, indexed once.
pub(crate) struct Graph<'a> {
    pub(crate) nodes: &'a [WalkNode],
    /// A tensor's address → its node's index.
    index: HashMap<usize, usize>,
    /// For each node, the later nodes that read it.
    users: Vec<Vec<usize>>,
    /// For each node, how many source slots of this graph's nodes read it.
    reads: Vec<u32>,
}

impl<'a> Graph<'a> {
    fn new(nodes: &'a [WalkNode]) -> Self {
        let index: HashMap<usize, usize> =
            nodes.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
        let mut users = vec![Vec::new(); nodes.len()];
        let mut reads = vec![0u32; nodes.len()];
        for (j, n) in nodes.iter().enumerate() {
            for src in &n.srcs {
                if let Some(&i) = index.get(src) {
                    reads[i] += 1;
                    if i < j && users[i].last() != Some(&j) {
                        users[i].push(j);
                    }
                }
            }
        }
        Graph {
            nodes,
            index,
            users,
            reads,
        }
    }

    /// Whether every reader of node `i` in the whole graph is a node of this split: its
    /// use count is known and equals the reads seen here.
    fn all_readers_seen(&self, i: usize) -> bool {
        self.nodes[i].uses == Some(self.reads[i])
    }

    /// Indices of the nodes that read node `i`.
    pub(crate) fn consumers(&self, i: usize) -> &[usize] {
        &self.users[i]
    }

    pub(crate) fn index_of(&self, id: usize) -> Option<usize> {
        self.index.get(&id).copied()
    }

    /// A tensor no node of this graph computes: a weight, or an input of the split.
    pub(crate) fn is_input(&self, id: usize) -> bool {
        id != 0 && self.index_of(id).is_none()
    }
}

/// The first chain of the registry's patterns that starts at node `i` and is safe to
/// compute at its place.
fn find_chain(g: &Graph, i: usize) -> Option<Chain> {
    super::patterns::chains_at(g, i)
        .into_iter()
        .filter(|c| c.start() == i)
        .find_map(|c| safe_at(g, c))
}

/// The chain, with the members it writes back, if it may be evaluated at its first node's
/// place:
/// - every member is to be computed;
/// - no result but the outputs is read outside the chain or marked as a graph output —
///   except members the pattern lets the host write back (those are then computed by ggml's
///   CPU backend at their places as well, with the members they read); a member whose
///   readers are not all in this split counts as read outside (ggml's use count says;
///   unknown counts as read);
/// - every member reads only chain members, nodes before the chain, or tensors no node of
///   this graph computes (so all inputs are ready at the start).
fn safe_at(g: &Graph, mut chain: Chain) -> Option<Chain> {
    let start = chain.start();
    let is_member = |i: usize| chain.members.contains(&i);
    let read_elsewhere = |m: usize| g.nodes[m].is_output || !g.all_readers_seen(m);
    let ok = chain.members.iter().all(|&m| {
        let n = &g.nodes[m];
        let in_split_private = g.consumers(m).iter().all(|&c| is_member(c));
        let private = chain.outputs.contains(&m)
            || (in_split_private && (chain.may_write_back.contains(&m) || !read_elsewhere(m)));
        let inputs_ready = n
            .srcs
            .iter()
            .filter(|&&s| s != 0)
            .all(|&src| g.index_of(src).is_none_or(|j| j < start || is_member(j)));
        n.compute && private && inputs_ready
    });
    if !ok {
        return None;
    }
    // members read outside, and the members those read (the CPU computes them in order)
    let mut write_back: Vec<usize> = chain
        .may_write_back
        .iter()
        .copied()
        .filter(|&m| read_elsewhere(m))
        .collect();
    let mut k = 0;
    while k < write_back.len() {
        for &src in &g.nodes[write_back[k]].srcs {
            if let Some(j) = g.index_of(src).filter(|&j| is_member(j)) {
                if !chain.may_write_back.contains(&j) {
                    return None;
                }
                if !write_back.contains(&j) {
                    write_back.push(j);
                }
            }
        }
        k += 1;
    }
    write_back.sort_unstable();
    chain.write_back = write_back;
    Some(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A graph in llama's order: builder helpers allocate ids.
    struct G(Vec<WalkNode>);

    impl G {
        fn add(&mut self, kind: OpKind, srcs: &[usize]) -> usize {
            let id = 1000 + self.0.len();
            self.0.push(WalkNode {
                id,
                kind,
                srcs: srcs.to_vec(),
                is_output: false,
                compute: true,
                engine: kind == OpKind::MulMat,
                uses: Some(0),
            });
            for src in srcs {
                if let Some(n) = self.0.iter_mut().find(|n| n.id == *src) {
                    *n.uses.as_mut().expect("known") += 1;
                }
            }
            id
        }
    }

    const X: usize = 7; // the layer input, computed elsewhere
    const W: usize = 8; // a weight

    /// norm, mul, gate, up, swiglu, down, add
    fn ffn() -> G {
        let mut g = G(Vec::new());
        let n = g.add(OpKind::RmsNorm, &[X]);
        let s = g.add(OpKind::Mul, &[n, W]);
        let gate = g.add(OpKind::MulMat, &[W, s]);
        let up = g.add(OpKind::MulMat, &[W, s]);
        let glu = g.add(OpKind::SwiGlu, &[gate, up]);
        let down = g.add(OpKind::MulMat, &[W, glu]);
        g.add(OpKind::Add, &[down, X]);
        g
    }

    fn member(chain: usize, node: usize) -> Step {
        Step::Member { chain, node }
    }

    fn kinds(p: &Plan) -> Vec<ChainKind> {
        p.chains.iter().map(|c| c.kind).collect()
    }

    #[test]
    fn an_ffn_is_one_evaluation_and_its_nodes_keep_their_places() {
        let g = ffn();
        let p = plan(&g.0, true);
        assert_eq!(kinds(&p), [ChainKind::Ffn]);
        let c = &p.chains[0];
        assert_eq!(c.members, (0..7).collect::<Vec<_>>());
        assert_eq!(c.outputs, vec![6]);
        let mut want = vec![Step::Fused(0)];
        want.extend((0..7).map(|i| member(0, i)));
        assert_eq!(p.steps, want);
        // without fusion: CPU glue between single engine MUL_MATs
        let plain = plan(&g.0, false);
        assert!(plain.chains.is_empty());
        assert_eq!(
            plain.steps,
            vec![
                Step::Cpu(vec![0, 1]),
                Step::Engine(2),
                Step::Engine(3),
                Step::Cpu(vec![4]),
                Step::Engine(5),
                Step::Cpu(vec![6]),
            ]
        );
    }

    /// llama.cpp's MoE FFN (`build_moe_ffn`): the router reads the normed input too, so the
    /// chain is the experts' up, gate, SWIGLU and down, starting at up; the routing weights'
    /// MUL after it stays outside. A down reading other ids, or a gate read elsewhere, is no
    /// chain.
    #[test]
    fn an_expert_ffn_is_one_evaluation_from_its_first_mul_mat_id() {
        let moe = |same_ids: bool, gate_read_elsewhere: bool| {
            let mut g = G(Vec::new());
            let n = g.add(OpKind::RmsNorm, &[X]);
            let s = g.add(OpKind::Mul, &[n, W]);
            let router = g.add(OpKind::MulMat, &[W, s]);
            g.0[2].engine = false; // the router is never taken
            let ids = g.add(OpKind::Other, &[router]);
            let up = g.add(OpKind::MulMatId, &[W, s, ids]);
            let gate = g.add(OpKind::MulMatId, &[W + 1, s, ids]);
            let glu = g.add(OpKind::SwiGlu, &[gate, up]);
            let down_ids = if same_ids { ids } else { 9 };
            let down = g.add(OpKind::MulMatId, &[W + 2, glu, down_ids]);
            g.add(OpKind::Mul, &[down, 9]);
            if gate_read_elsewhere {
                g.add(OpKind::Add, &[gate, X]);
            }
            for node in g.0.iter_mut().filter(|n| n.kind == OpKind::MulMatId) {
                node.engine = true;
            }
            g
        };
        let p = plan(&moe(true, false).0, true);
        assert_eq!(kinds(&p), [ChainKind::ExpertFfn]);
        let c = &p.chains[0];
        assert_eq!(
            (
                c.members.clone(),
                c.matmuls.clone(),
                c.down,
                c.outputs.clone()
            ),
            (vec![4, 5, 6, 7], vec![5, 4], Some(7), vec![7])
        );
        assert_eq!(
            p.steps,
            vec![
                Step::Cpu(vec![0, 1, 2, 3]),
                Step::Fused(0),
                member(0, 4),
                member(0, 5),
                member(0, 6),
                member(0, 7),
                Step::Cpu(vec![8]),
            ]
        );
        for (same_ids, gate_read_elsewhere) in [(false, false), (true, true)] {
            let p = plan(&moe(same_ids, gate_read_elsewhere).0, true);
            assert!(p.chains.is_empty(), "{same_ids} {gate_read_elsewhere}");
            assert!(p.steps.contains(&Step::Engine(7)));
        }
    }

    #[test]
    fn qkv_with_ropes_between_is_one_evaluation_and_the_ropes_stay_between() {
        let mut g = G(Vec::new());
        let n = g.add(OpKind::RmsNorm, &[X]);
        let s = g.add(OpKind::Mul, &[n, W]);
        let q = g.add(OpKind::MulMat, &[W, s]);
        let qr = g.add(OpKind::View, &[q]);
        g.add(OpKind::Rope, &[qr, 9]);
        g.add(OpKind::MulMat, &[W, s]);
        let k = g.add(OpKind::MulMat, &[W, s]);
        g.add(OpKind::Rope, &[k, 9]);
        let p = plan(&g.0, true);
        assert_eq!(kinds(&p), [ChainKind::Qkv]);
        assert_eq!(p.chains[0].matmuls, vec![2, 5, 6]);
        // V (5) is written after the rope (4) that reads Q: ggml may have put V where Q was
        assert_eq!(
            p.steps,
            vec![
                Step::Fused(0),
                member(0, 0),
                member(0, 1),
                member(0, 2),
                Step::Cpu(vec![4]),
                member(0, 5),
                member(0, 6),
                Step::Cpu(vec![7]),
            ]
        );
    }

    /// whisper's attention input: NORM → × weight → + bias → Q (+ bias), K, V (+ bias); the
    /// bias ADDs after the projections stay outside the chain, on the CPU at their places.
    #[test]
    fn a_layer_normed_qkv_is_one_evaluation() {
        const B: usize = 11; // a bias
        let mut g = G(Vec::new());
        let n = g.add(OpKind::Norm, &[X]);
        let s = g.add(OpKind::Mul, &[n, W]);
        let b = g.add(OpKind::Add, &[s, B]);
        let q = g.add(OpKind::MulMat, &[W, b]);
        g.add(OpKind::Add, &[q, B]);
        g.add(OpKind::MulMat, &[W, b]);
        let v = g.add(OpKind::MulMat, &[W, b]);
        g.add(OpKind::Add, &[v, B]);
        let p = plan(&g.0, true);
        assert_eq!(kinds(&p), [ChainKind::Qkv]);
        let c = &p.chains[0];
        assert_eq!(
            (c.norm, c.scale, c.layer, c.bias),
            (Some(0), 1, true, Some(2))
        );
        assert_eq!(c.matmuls, vec![3, 5, 6]);
        assert_eq!(
            p.steps,
            vec![
                Step::Fused(0),
                member(0, 0),
                member(0, 1),
                member(0, 2),
                member(0, 3),
                Step::Cpu(vec![4]),
                member(0, 5),
                member(0, 6),
                Step::Cpu(vec![7]),
            ]
        );
        // a lone MUL_MAT behind a LayerNorm is no chain
        let mut g = G(Vec::new());
        let n = g.add(OpKind::Norm, &[X]);
        let s = g.add(OpKind::Mul, &[n, W]);
        let b = g.add(OpKind::Add, &[s, B]);
        g.add(OpKind::MulMat, &[W, b]);
        assert!(plan(&g.0, true).chains.is_empty());
        // a LayerNorm without a bias (Command-R's): the scale is the normed input
        let mut g = G(Vec::new());
        let n = g.add(OpKind::Norm, &[X]);
        let s = g.add(OpKind::Mul, &[n, W]);
        g.add(OpKind::MulMat, &[W, s]);
        g.add(OpKind::MulMat, &[W, s]);
        let p = plan(&g.0, true);
        assert_eq!(kinds(&p), [ChainKind::Qkv]);
        let c = &p.chains[0];
        assert_eq!(
            (c.layer, c.bias, c.matmuls.clone()),
            (true, None, vec![2, 3])
        );
    }

    /// whisper's FFN in its graph order: LayerNorm (norm, × w, + b), fc1, + b1, GELU, fc2,
    /// + b2, + the residual.
    fn gelu_ffn() -> G {
        const B: usize = 11; // a bias
        let mut g = G(Vec::new());
        let n = g.add(OpKind::Norm, &[X]);
        let s = g.add(OpKind::Mul, &[n, W]);
        let b = g.add(OpKind::Add, &[s, B]);
        let up = g.add(OpKind::MulMat, &[W, b]);
        let ub = g.add(OpKind::Add, &[up, B]);
        let ge = g.add(OpKind::Gelu, &[ub]);
        let down = g.add(OpKind::MulMat, &[W, ge]);
        let db = g.add(OpKind::Add, &[down, B]);
        g.add(OpKind::Add, &[db, X]);
        g
    }

    #[test]
    fn a_gelu_ffn_is_one_evaluation_written_at_its_residual_add() {
        let p = plan(&gelu_ffn().0, true);
        assert_eq!(kinds(&p), [ChainKind::GeluFfn]);
        let c = &p.chains[0];
        assert_eq!(
            (c.norm, c.scale, c.layer, c.bias),
            (Some(0), 1, true, Some(2))
        );
        assert_eq!(
            (c.matmuls.clone(), c.glu, c.down, c.add, c.biases.clone()),
            (vec![3], Some(5), Some(6), Some(8), vec![4, 7])
        );
        assert_eq!(c.outputs, vec![8]);
        let mut steps = vec![Step::Fused(0)];
        steps.extend((0..9).map(|i| member(0, i)));
        assert_eq!(p.steps, steps);
        // the hidden values read elsewhere (an output, another split): node by node
        let marks: [fn(&mut WalkNode); 2] = [|n| n.is_output = true, |n| n.uses = Some(2)];
        for mark in marks {
            let mut g = gelu_ffn();
            mark(&mut g.0[5]);
            assert!(!kinds(&plan(&g.0, true)).contains(&ChainKind::GeluFfn));
        }
        // a SiLU instead of the GELU, or no bias after the up projection: no GELU FFN
        let mut g = gelu_ffn();
        g.0[5].kind = OpKind::Silu;
        assert!(plan(&g.0, true).chains.is_empty());
        let mut g = gelu_ffn();
        g.0[4].kind = OpKind::Mul;
        assert!(plan(&g.0, true).chains.is_empty());
        // an RMSNorm in front (no model has that block): no GELU FFN
        let mut g = gelu_ffn();
        g.0[0].kind = OpKind::RmsNorm;
        assert!(plan(&g.0, true).chains.is_empty());
    }

    #[test]
    fn a_result_read_outside_the_chain_stops_fusion() {
        let mut g = ffn();
        // something else reads the gate projection: gate and up can still be one program
        g.add(OpKind::Scale, &[1002]);
        let p = plan(&g.0, true);
        assert_eq!(kinds(&p), [ChainKind::Qkv]);
        assert_eq!(p.chains[0].matmuls, [2, 3]);
        // a graph output inside the chain
        let mut g = ffn();
        g.0[4].is_output = true;
        assert!(!kinds(&plan(&g.0, true)).contains(&ChainKind::Ffn));
        // the norm read by something else: nothing fuses
        let mut g = ffn();
        g.add(OpKind::Scale, &[1000]);
        assert!(plan(&g.0, true).chains.is_empty());
    }

    #[test]
    fn a_member_reading_a_node_computed_inside_the_chain_span_stops_fusion() {
        // the down projection's weights are computed after the norm
        let mut g = G(Vec::new());
        let n = g.add(OpKind::RmsNorm, &[X]);
        let s = g.add(OpKind::Mul, &[n, W]);
        let gate = g.add(OpKind::MulMat, &[W, s]);
        let up = g.add(OpKind::MulMat, &[W, s]);
        let glu = g.add(OpKind::SwiGlu, &[gate, up]);
        let w = g.add(OpKind::Scale, &[W]);
        let down = g.add(OpKind::MulMat, &[w, glu]);
        g.add(OpKind::Add, &[down, X]);
        assert!(!kinds(&plan(&g.0, true)).contains(&ChainKind::Ffn));
        // the same graph with the weights computed before the norm fuses
        let mut g = G(Vec::new());
        let w = g.add(OpKind::Scale, &[W]);
        let n = g.add(OpKind::RmsNorm, &[X]);
        let s = g.add(OpKind::Mul, &[n, W]);
        let gate = g.add(OpKind::MulMat, &[W, s]);
        let up = g.add(OpKind::MulMat, &[W, s]);
        let glu = g.add(OpKind::SwiGlu, &[gate, up]);
        let down = g.add(OpKind::MulMat, &[w, glu]);
        g.add(OpKind::Add, &[X, down]);
        assert_eq!(kinds(&plan(&g.0, true)), [ChainKind::Ffn]);
    }

    #[test]
    fn other_shapes_do_not_fuse() {
        // a norm whose scale feeds a single MUL_MAT (llama's output head)
        let mut g = G(Vec::new());
        let n = g.add(OpKind::RmsNorm, &[X]);
        let s = g.add(OpKind::Mul, &[n, W]);
        g.add(OpKind::MulMat, &[W, s]);
        assert!(plan(&g.0, true).chains.is_empty());
        // a scale by a computed tensor, not a weight
        let mut g = ffn();
        g.0[1].srcs = vec![1000, X];
        g.0[1].srcs[1] = 1006;
        assert!(plan(&g.0, true).chains.is_empty());
        // a swapped SWIGLU operand order is still found (gate is whichever is src0)
        let mut g = ffn();
        g.0[4].srcs = vec![1003, 1002];
        let p = plan(&g.0, true);
        assert_eq!(p.chains[0].matmuls, [3, 2]);
        // MUL_MATs the engine cannot take
        let mut g = ffn();
        g.0[5].engine = false;
        assert!(!kinds(&plan(&g.0, true)).contains(&ChainKind::Ffn));
    }

    #[test]
    fn a_chain_normed_elsewhere_starts_at_its_scale() {
        // beside Metal the norm runs on the layer's device: the split starts at the MUL
        const NORMED: usize = 6;
        let mut g = G(Vec::new());
        let s = g.add(OpKind::Mul, &[NORMED, W]);
        let gate = g.add(OpKind::MulMat, &[W, s]);
        let up = g.add(OpKind::MulMat, &[W, s]);
        let glu = g.add(OpKind::SwiGlu, &[gate, up]);
        let down = g.add(OpKind::MulMat, &[W, glu]);
        g.add(OpKind::Add, &[down, X]);
        let p = plan(&g.0, true);
        assert_eq!(kinds(&p), [ChainKind::Ffn]);
        assert_eq!((p.chains[0].norm, p.chains[0].start()), (None, 0));
        assert_eq!(p.chains[0].members, (0..6).collect::<Vec<_>>());
        // a MUL of a computed tensor is no chain start
        let mut g = G(Vec::new());
        let a = g.add(OpKind::Add, &[X, X]);
        let s = g.add(OpKind::Mul, &[a, W]);
        g.add(OpKind::MulMat, &[W, s]);
        g.add(OpKind::MulMat, &[W, s]);
        assert!(plan(&g.0, true).chains.is_empty());
    }

    /// norm, mul, Q, K, V (no ropes)
    fn qkv_graph() -> G {
        let mut g = G(Vec::new());
        let n = g.add(OpKind::RmsNorm, &[X]);
        let s = g.add(OpKind::Mul, &[n, W]);
        for _ in 0..3 {
            g.add(OpKind::MulMat, &[W, s]);
        }
        g
    }

    #[test]
    fn a_normed_input_another_split_reads_is_written_back() {
        // parallel blocks (Command-R): the FFN's gate and up, in a later split, read the
        // scale too; ggml counts 5 uses, this split holds 3
        let mut g = qkv_graph();
        g.0[1].uses = Some(5);
        let p = plan(&g.0, true);
        assert_eq!(kinds(&p), [ChainKind::Qkv]);
        assert_eq!(p.chains[0].write_back, [0, 1]);
        assert_eq!(
            p.steps,
            vec![
                Step::Fused(0),
                Step::Cpu(vec![0, 1]),
                member(0, 2),
                member(0, 3),
                member(0, 4),
            ]
        );
        // only the norm read elsewhere: the scale stays inside the program
        let mut g = qkv_graph();
        g.0[0].uses = Some(2);
        let p = plan(&g.0, true);
        assert_eq!(p.chains[0].write_back, [0]);
        assert_eq!(
            p.steps[..3],
            [Step::Fused(0), Step::Cpu(vec![0]), member(0, 1)]
        );
        // the scale marked as a graph output: written back as well
        let mut g = qkv_graph();
        g.0[1].is_output = true;
        assert_eq!(plan(&g.0, true).chains[0].write_back, [0, 1]);
        // every reader here: nothing written back (llama's graphs)
        let p = plan(&qkv_graph().0, true);
        assert!(p.chains[0].write_back.is_empty());
        assert_eq!(p.steps[1], member(0, 0));
    }

    #[test]
    fn a_chain_normed_elsewhere_writes_back_its_scale_when_read_elsewhere() {
        // beside the CPU the LayerNorm runs elsewhere: the split starts at the scale
        const NORMED: usize = 6;
        let mut g = G(Vec::new());
        let s = g.add(OpKind::Mul, &[NORMED, W]);
        for _ in 0..3 {
            g.add(OpKind::MulMat, &[W, s]);
        }
        g.0[0].uses = Some(5);
        let p = plan(&g.0, true);
        assert_eq!(p.chains[0].write_back, [0]);
        assert_eq!(
            p.steps[..3],
            [Step::Fused(0), Step::Cpu(vec![0]), member(0, 1)]
        );
    }

    #[test]
    fn an_ffn_intermediate_another_split_reads_stops_the_ffn_fusion() {
        // the SWIGLU is read by a later split: the FFN cannot keep it inside; gate and up
        // still make one program (their results are its outputs)
        let mut g = ffn();
        g.0[4].uses = Some(2);
        let p = plan(&g.0, true);
        assert_eq!(kinds(&p), [ChainKind::Qkv]);
        assert_eq!(p.chains[0].matmuls, [2, 3]);
        assert!(p.chains[0].write_back.is_empty());
    }

    #[test]
    fn unknown_use_counts_write_back_the_normed_input_and_keep_ffns_apart() {
        // a host whose graphs carry no use counts we can read (rpc-server's graphs, a ggml
        // outside the table): any member may be read elsewhere
        let mut g = ffn();
        for n in &mut g.0 {
            n.uses = None;
        }
        let p = plan(&g.0, true);
        assert_eq!(kinds(&p), [ChainKind::Qkv]);
        assert_eq!(p.chains[0].write_back, [0, 1]);
        assert_eq!(
            p.steps,
            vec![
                Step::Fused(0),
                Step::Cpu(vec![0, 1]),
                member(0, 2),
                member(0, 3),
                Step::Cpu(vec![4]),
                Step::Engine(5),
                Step::Cpu(vec![6]),
            ]
        );
    }

    #[test]
    fn views_and_nodes_not_to_compute_are_skipped() {
        let mut g = G(Vec::new());
        let a = g.add(OpKind::View, &[X]);
        let b = g.add(OpKind::Add, &[a, X]);
        g.add(OpKind::Mul, &[b, W]);
        g.0[2].compute = false;
        assert_eq!(plan(&g.0, true).steps, vec![Step::Cpu(vec![1])]);
    }
}
