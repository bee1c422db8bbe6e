//! The node walker: what `graph_compute` does with the split ggml hands it, decided over a
//! plain description of the nodes so it is tested without ggml.
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
    RmsNorm,
    Mul,
    Add,
    Scale,
    /// UNARY(SILU).
    Silu,
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
    fn src(&self, slot: usize) -> usize {
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
}

impl ChainKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChainKind::Ffn => "ffn",
            ChainKind::Qkv => "qkv",
        }
    }
}

/// Nodes (indices into the walked list) one fused program computes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chain {
    pub(crate) kind: ChainKind,
    /// The RMS_NORM, when it is in this graph (beside Metal, llama.cpp pins every `norm` to
    /// the layer's device: the chain then starts at the scale, on a normed input).
    pub(crate) norm: Option<usize>,
    /// The MUL by the norm weight.
    pub(crate) scale: usize,
    /// FFN: gate, up. QKV: the projections, in graph order.
    pub(crate) matmuls: Vec<usize>,
    pub(crate) glu: Option<usize>,
    pub(crate) down: Option<usize>,
    pub(crate) add: Option<usize>,
    /// Members the program computes that are also computed, at their own places, by ggml's
    /// CPU backend: the norm and its scale when something outside this split (or a graph
    /// output) reads them. Parallel blocks (Command-R, GPT-NeoX, Phi-2) read the normed
    /// input in the FFN's split too.
    pub(crate) write_back: Vec<usize>,
}

impl Chain {
    /// The first member: where the program is evaluated.
    pub(crate) fn start(&self) -> usize {
        self.norm.unwrap_or(self.scale)
    }

    /// Every member, in graph order.
    pub(crate) fn members(&self) -> Vec<usize> {
        let mut m: Vec<usize> = self.norm.into_iter().collect();
        m.push(self.scale);
        m.extend(&self.matmuls);
        m.extend(self.glu);
        m.extend(self.down);
        m.extend(self.add);
        m.sort_unstable();
        m
    }

    /// The members whose results leave the program.
    pub(crate) fn outputs(&self) -> Vec<usize> {
        match self.kind {
            ChainKind::Ffn => self.add.into_iter().collect(),
            ChainKind::Qkv => self.matmuls.clone(),
        }
    }
}

/// One thing to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nodes for ggml's CPU backend, as one graph.
    Cpu(Vec<usize>),
    /// A MUL_MAT for the engine.
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
        let chain = match n.kind {
            OpKind::RmsNorm if fuse => find_chain(&g, i),
            OpKind::Mul if fuse && g.is_input(n.src(0)) && g.is_input(n.src(1)) => {
                chain_from_scale(&g, None, i)
            }
            _ => None,
        };
        if let Some(chain) = chain {
            for m in chain.members() {
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
        if n.kind == OpKind::MulMat && n.engine {
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
struct Graph<'a> {
    nodes: &'a [WalkNode],
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
    fn consumers(&self, i: usize) -> &[usize] {
        &self.users[i]
    }

    fn index_of(&self, id: usize) -> Option<usize> {
        self.index.get(&id).copied()
    }

    /// A tensor no node of this graph computes: a weight, or an input of the split.
    fn is_input(&self, id: usize) -> bool {
        id != 0 && self.index_of(id).is_none()
    }
}

/// The FFN or QKV chain starting at the RMS_NORM `norm`, if the graph has one that is safe to
/// compute at `norm`'s place.
fn find_chain(g: &Graph, norm: usize) -> Option<Chain> {
    let &[scale] = g.consumers(norm) else {
        return None;
    };
    chain_from_scale(g, Some(norm), scale)
}

/// The chain whose norm-weight MUL is `scale` (reading `norm`, or with no norm a normed input
/// from outside the graph as its first operand).
fn chain_from_scale(g: &Graph, norm: Option<usize>, scale: usize) -> Option<Chain> {
    let nodes = g.nodes;
    let s = &nodes[scale];
    // × a weight that no node of this graph computes
    let weight = match norm {
        Some(n) if s.src(0) == nodes[n].id => s.src(1),
        Some(_) => s.src(0),
        None => s.src(1),
    };
    if s.kind != OpKind::Mul || !g.is_input(weight) {
        return None;
    }
    let users = g.consumers(scale);
    let all_matmuls = users.iter().all(|&u| {
        let n = &nodes[u];
        n.kind == OpKind::MulMat && n.engine && n.compute && n.src(1) == s.id
    });
    if !all_matmuls {
        return None;
    }
    let ffn = match *users {
        [a, b] => ffn_tail(g, norm, scale, a, b).and_then(|c| safe_at(g, c)),
        _ => None,
    };
    ffn.or_else(|| {
        (2..=3)
            .contains(&users.len())
            .then(|| qkv(norm, scale, users))
            .and_then(|c| safe_at(g, c))
    })
}

fn qkv(norm: Option<usize>, scale: usize, users: &[usize]) -> Chain {
    Chain {
        kind: ChainKind::Qkv,
        norm,
        scale,
        matmuls: users.to_vec(),
        glu: None,
        down: None,
        add: None,
        write_back: Vec::new(),
    }
}

/// gate, up → SWIGLU(gate, up) → down → ADD(down, residual): the rest of an FFN.
fn ffn_tail(graph: &Graph, norm: Option<usize>, scale: usize, a: usize, b: usize) -> Option<Chain> {
    let nodes = graph.nodes;
    let &[glu] = graph.consumers(a) else {
        return None;
    };
    let g = &nodes[glu];
    if g.kind != OpKind::SwiGlu || graph.consumers(b) != [glu] {
        return None;
    }
    // split form: src0 the gate, src1 the up projection
    let (gate, up) = if g.src(0) == nodes[a].id && g.src(1) == nodes[b].id {
        (a, b)
    } else if g.src(0) == nodes[b].id && g.src(1) == nodes[a].id {
        (b, a)
    } else {
        return None;
    };
    let &[down] = graph.consumers(glu) else {
        return None;
    };
    let d = &nodes[down];
    if d.kind != OpKind::MulMat || !d.engine || d.src(1) != g.id {
        return None;
    }
    let &[add] = graph.consumers(down) else {
        return None;
    };
    let ad = &nodes[add];
    // the other operand is the residual (ready before the chain: see safe_at)
    let residual = if ad.src(0) == d.id {
        ad.src(1)
    } else {
        ad.src(0)
    };
    if ad.kind != OpKind::Add || !ad.srcs.contains(&d.id) || residual == 0 || residual == d.id {
        return None;
    }
    Some(Chain {
        kind: ChainKind::Ffn,
        norm,
        scale,
        matmuls: vec![gate, up],
        glu: Some(glu),
        down: Some(down),
        add: Some(add),
        write_back: Vec::new(),
    })
}

/// The chain, with the members it writes back, if it may be evaluated at its first node's
/// place:
/// - every member is to be computed;
/// - no result but the outputs is read outside the chain or marked as a graph output —
///   except the norm and its scale, which are then written back (computed by ggml's CPU
///   backend at their places as well); a member whose readers are not all in this split
///   counts as read outside (ggml's use count says; unknown counts as read);
/// - every member reads only chain members, nodes before the chain, or tensors no node of
///   this graph computes (so all inputs are ready at the start).
fn safe_at(g: &Graph, mut chain: Chain) -> Option<Chain> {
    let members = chain.members();
    let outputs = chain.outputs();
    let start = chain.start();
    let is_member = |i: usize| members.contains(&i);
    let read_elsewhere = |m: usize| g.nodes[m].is_output || !g.all_readers_seen(m);
    let scale_out = read_elsewhere(chain.scale);
    let norm_out = chain.norm.is_some_and(read_elsewhere);
    let ok = members.iter().all(|&m| {
        let n = &g.nodes[m];
        let in_split_private = g.consumers(m).iter().all(|&c| is_member(c));
        let private = outputs.contains(&m)
            || (in_split_private
                && (m == chain.scale || Some(m) == chain.norm || !read_elsewhere(m)));
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
    // the scale reads the norm: writing the scale back needs the norm computed first
    if let Some(norm) = chain.norm.filter(|_| norm_out || scale_out) {
        chain.write_back.push(norm);
    }
    if scale_out {
        chain.write_back.push(chain.scale);
    }
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
        assert_eq!(c.members(), (0..7).collect::<Vec<_>>());
        assert_eq!(c.outputs(), vec![6]);
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
        assert_eq!(p.chains[0].members(), (0..6).collect::<Vec<_>>());
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
