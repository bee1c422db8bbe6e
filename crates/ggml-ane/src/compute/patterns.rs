//! The fused patterns the walker looks for, as a registry: each declares its kind, the ops
//! its chains hold, and — when it matches the readers of a normed input — the chain's
//! members, outputs and the intermediates the host may write back. Adding a pattern
//! (LayerNorm/GELU blocks, attention, experts) is an entry here and a job builder in
//! `fused.rs`; the walker does not change.

use super::walker::{Chain, ChainKind, Graph, OpKind};

/// Where a fused block starts: a normed input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    /// The RMS_NORM (or a LayerNorm's NORM), when it is in this split.
    pub(crate) norm: Option<usize>,
    /// The MUL by the norm weight (a weight no node of the split computes).
    pub(crate) scale: usize,
    /// The norm is a LayerNorm (NORM: the mean subtracted), not an RMSNorm.
    pub(crate) layer: bool,
    /// A LayerNorm's ADD of its bias (a weight too), after the scale, where it has one.
    pub(crate) bias: Option<usize>,
}

impl Head {
    /// The node whose result the block's matmuls read.
    pub(crate) fn input(&self) -> usize {
        self.bias.unwrap_or(self.scale)
    }
}

/// A kind of chain one fused program computes.
pub(crate) trait Pattern: Sync {
    fn kind(&self) -> ChainKind;
    /// The ops its chains hold: the device must take each of them for a chain to form (a
    /// test holds the registry to the device's list; the walker matches by structure).
    #[allow(dead_code, reason = "a declaration the registry's test checks")]
    fn ops(&self) -> &'static [OpKind];
    /// The chain this pattern makes of the readers of `head`, if they fit it (the walker
    /// then checks it is safe to compute at its first node's place).
    fn match_at(&self, g: &Graph<'_>, head: Head) -> Option<Chain>;
}

/// The patterns, tried in this order at every head.
pub(crate) static REGISTRY: &[&dyn Pattern] = &[&FfnPattern, &GeluFfnPattern, &QkvPattern];

/// The chains that may start at node `i`: the registry's at a head there, or an expert FFN
/// at its first MUL_MAT_ID.
pub(crate) fn chains_at(g: &Graph<'_>, i: usize) -> Vec<Chain> {
    match head_at(g, i) {
        Some(head) => REGISTRY
            .iter()
            .filter_map(|p| p.match_at(g, head))
            .collect(),
        None => expert_ffn_at(g, i).into_iter().collect(),
    }
}

/// The ops an expert FFN chain holds.
#[cfg(test)]
pub(crate) const EXPERT_FFN_OPS: &[OpKind] = &[OpKind::MulMatId, OpKind::SwiGlu];

/// up and gate MUL_MAT_IDs (either first) of one input and one routing, read only by a
/// SWIGLU(gate, up), read only by a down MUL_MAT_ID of the same routing: llama.cpp's
/// `build_moe_ffn` with separate gate and up experts (`ffn_moe_up`, `ffn_moe_gate`,
/// `ffn_moe_swiglu`, `ffn_moe_down`), the chain starting at node `i`.
fn expert_ffn_at(graph: &Graph<'_>, i: usize) -> Option<Chain> {
    let nodes = graph.nodes;
    let first = &nodes[i];
    let engine_id = |j: usize| nodes[j].kind == OpKind::MulMatId && nodes[j].engine;
    if !engine_id(i) {
        return None;
    }
    let &[glu] = graph.consumers(i) else {
        return None;
    };
    let g = &nodes[glu];
    if g.kind != OpKind::SwiGlu {
        return None;
    }
    // the SWIGLU's other operand: the second MUL_MAT_ID, of the same input and ids
    let other_id = if g.src(0) == first.id {
        g.src(1)
    } else {
        g.src(0)
    };
    let other = graph.index_of(other_id)?;
    let o = &nodes[other];
    if other <= i
        || !engine_id(other)
        || graph.consumers(other) != [glu]
        || o.src(1) != first.src(1)
        || o.src(2) != first.src(2)
        || o.src(0) == first.src(0)
    {
        return None;
    }
    // split form: src0 the gate, src1 the up projection
    let (gate, up) = if g.src(0) == first.id && g.src(1) == o.id {
        (i, other)
    } else if g.src(0) == o.id && g.src(1) == first.id {
        (other, i)
    } else {
        return None;
    };
    let &[down] = graph.consumers(glu) else {
        return None;
    };
    let d = &nodes[down];
    if !engine_id(down) || d.src(1) != g.id || d.src(2) != first.src(2) {
        return None;
    }
    Some(Chain {
        kind: ChainKind::ExpertFfn,
        norm: None,
        scale: i,
        layer: false,
        bias: None,
        matmuls: vec![gate, up],
        glu: Some(glu),
        biases: Vec::new(),
        down: Some(down),
        add: None,
        members: {
            let mut m = vec![gate, up, glu, down];
            m.sort_unstable();
            m
        },
        outputs: vec![down],
        may_write_back: Vec::new(),
        write_back: Vec::new(),
    })
}

/// The normed input starting at node `i`: an RMS_NORM read only by a MUL by a weight, or —
/// the norm computed elsewhere — a MUL of two tensors no node of the split computes; or a
/// LayerNorm: a NORM read only by a MUL by a weight, read only by an ADD of a bias.
pub(crate) fn head_at(g: &Graph<'_>, i: usize) -> Option<Head> {
    let n = &g.nodes[i];
    let (norm, scale) = match n.kind {
        OpKind::RmsNorm | OpKind::Norm => {
            let &[scale] = g.consumers(i) else {
                return None;
            };
            (Some(i), scale)
        }
        OpKind::Mul if g.is_input(n.src(0)) && g.is_input(n.src(1)) => (None, i),
        _ => return None,
    };
    let s = &g.nodes[scale];
    // × a weight that no node of this graph computes
    let weight = match norm {
        Some(nm) if s.src(0) == g.nodes[nm].id => s.src(1),
        Some(_) => s.src(0),
        None => s.src(1),
    };
    if s.kind != OpKind::Mul || !g.is_input(weight) {
        return None;
    }
    let layer = n.kind == OpKind::Norm;
    // a LayerNorm: + a bias no node of this graph computes, where it has one (whisper,
    // GPT-2; Command-R's has none)
    let bias = match g.consumers(scale) {
        &[b] if layer => {
            let add = &g.nodes[b];
            let other = if add.src(0) == s.id {
                add.src(1)
            } else {
                add.src(0)
            };
            (add.kind == OpKind::Add && add.srcs.contains(&s.id) && g.is_input(other)).then_some(b)
        }
        _ => None,
    };
    Some(Head {
        norm,
        scale,
        layer,
        bias,
    })
}

/// The members of a chain of `head` and `rest`, in graph order.
fn members(head: Head, rest: &[usize]) -> Vec<usize> {
    let mut m = head_members(head);
    m.extend(rest);
    m.sort_unstable();
    m
}

/// The norm and its scale: recomputed on the host when another split reads the normed input
/// (parallel blocks: Command-R, GPT-NeoX, Phi-2 read it in the FFN's split too).
fn head_members(head: Head) -> Vec<usize> {
    head.norm
        .into_iter()
        .chain([head.scale])
        .chain(head.bias)
        .collect()
}

/// The readers of the normed input, if all are MUL_MATs of it the engine takes.
fn matmul_readers<'g>(g: &'g Graph<'_>, head: Head) -> Option<&'g [usize]> {
    let s = &g.nodes[head.input()];
    let users = g.consumers(head.input());
    users
        .iter()
        .all(|&u| {
            let n = &g.nodes[u];
            n.kind == OpKind::MulMat && n.engine && n.compute && n.src(1) == s.id
        })
        .then_some(users)
}

/// norm → × weight → gate, up → SWIGLU(gate, up) → down → ADD(down, residual).
struct FfnPattern;

impl Pattern for FfnPattern {
    fn kind(&self) -> ChainKind {
        ChainKind::Ffn
    }

    fn ops(&self) -> &'static [OpKind] {
        &[
            OpKind::RmsNorm,
            OpKind::Mul,
            OpKind::MulMat,
            OpKind::SwiGlu,
            OpKind::Add,
        ]
    }

    fn match_at(&self, graph: &Graph<'_>, head: Head) -> Option<Chain> {
        // a LayerNorm'd FFN (not built yet: whisper's and GPT-2's are GELU ones)
        if head.layer {
            return None;
        }
        let &[a, b] = matmul_readers(graph, head)? else {
            return None;
        };
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
        let add = residual_add(graph, down)?;
        Some(Chain {
            kind: self.kind(),
            norm: head.norm,
            scale: head.scale,
            layer: head.layer,
            bias: head.bias,
            matmuls: vec![gate, up],
            glu: Some(glu),
            biases: Vec::new(),
            down: Some(down),
            add: Some(add),
            members: members(head, &[gate, up, glu, down, add]),
            outputs: vec![add],
            may_write_back: head_members(head),
            write_back: Vec::new(),
        })
    }
}

/// The ADD of node `i` and the residual, when it is `i`'s only reader (the residual, its other
/// operand, must be ready before the chain: the walker checks).
fn residual_add(g: &Graph<'_>, i: usize) -> Option<usize> {
    let &[a] = g.consumers(i) else {
        return None;
    };
    let (add, id) = (&g.nodes[a], g.nodes[i].id);
    let residual = if add.src(0) == id {
        add.src(1)
    } else {
        add.src(0)
    };
    (add.kind == OpKind::Add && add.srcs.contains(&id) && residual != 0 && residual != id)
        .then_some(a)
}

/// The ADD reading node `i` and a tensor no node of the graph computes (a bias), when it is
/// `i`'s only reader.
fn bias_add(g: &Graph<'_>, i: usize) -> Option<usize> {
    let &[a] = g.consumers(i) else {
        return None;
    };
    let (add, id) = (&g.nodes[a], g.nodes[i].id);
    let other = if add.src(0) == id {
        add.src(1)
    } else {
        add.src(0)
    };
    (add.kind == OpKind::Add && add.srcs.contains(&id) && g.is_input(other)).then_some(a)
}

/// LayerNorm (with its bias) → up MUL_MAT → + b1 → GELU → down MUL_MAT → + b2 → + residual:
/// whisper's FFN (`whisper.cpp` encoder and decoder) and GPT-2's.
struct GeluFfnPattern;

impl Pattern for GeluFfnPattern {
    fn kind(&self) -> ChainKind {
        ChainKind::GeluFfn
    }

    fn ops(&self) -> &'static [OpKind] {
        &[
            OpKind::Norm,
            OpKind::Mul,
            OpKind::Add,
            OpKind::MulMat,
            OpKind::Gelu,
        ]
    }

    fn match_at(&self, graph: &Graph<'_>, head: Head) -> Option<Chain> {
        if !head.layer || head.norm.is_none() || head.bias.is_none() {
            return None;
        }
        let &[up] = matmul_readers(graph, head)? else {
            return None;
        };
        let nodes = graph.nodes;
        let up_bias = bias_add(graph, up)?;
        let &[gelu] = graph.consumers(up_bias) else {
            return None;
        };
        let ge = &nodes[gelu];
        if ge.kind != OpKind::Gelu || ge.src(0) != nodes[up_bias].id {
            return None;
        }
        let &[down] = graph.consumers(gelu) else {
            return None;
        };
        let d = &nodes[down];
        if d.kind != OpKind::MulMat || !d.engine || d.src(1) != ge.id {
            return None;
        }
        let down_bias = bias_add(graph, down)?;
        let add = residual_add(graph, down_bias)?;
        Some(Chain {
            kind: self.kind(),
            norm: head.norm,
            scale: head.scale,
            layer: head.layer,
            bias: head.bias,
            matmuls: vec![up],
            glu: Some(gelu),
            biases: vec![up_bias, down_bias],
            down: Some(down),
            add: Some(add),
            members: members(head, &[up, up_bias, gelu, down, down_bias, add]),
            outputs: vec![add],
            may_write_back: head_members(head),
            write_back: Vec::new(),
        })
    }
}

/// norm → × weight (→ + bias, a LayerNorm) → two or three MUL_MATs of that input (Q, K, V; or
/// gate and up when the rest of an FFN cannot be fused): each projection an output.
struct QkvPattern;

impl Pattern for QkvPattern {
    fn kind(&self) -> ChainKind {
        ChainKind::Qkv
    }

    fn ops(&self) -> &'static [OpKind] {
        &[
            OpKind::RmsNorm,
            OpKind::Norm,
            OpKind::Mul,
            OpKind::Add,
            OpKind::MulMat,
        ]
    }

    fn match_at(&self, g: &Graph<'_>, head: Head) -> Option<Chain> {
        let users = matmul_readers(g, head)?;
        (2..=3).contains(&users.len()).then(|| Chain {
            kind: self.kind(),
            norm: head.norm,
            scale: head.scale,
            layer: head.layer,
            bias: head.bias,
            matmuls: users.to_vec(),
            glu: None,
            biases: Vec::new(),
            down: None,
            add: None,
            members: members(head, users),
            outputs: users.to_vec(),
            may_write_back: head_members(head),
            write_back: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_holds_only_ops_the_ane_device_takes() {
        for p in REGISTRY {
            for &op in p.ops() {
                // NORM only on ANE-FULL (whole graphs: whisper's GPU): taking it on ANE beside
                // the CPU split Command-R's layers further (14 -> 22 splits) and fused nothing
                // more, so there a LayerNorm's chain starts at its scale, normed elsewhere
                // GELU too: whisper's FFN fuses on ANE-FULL only, as its LayerNorm does
                assert!(
                    op == OpKind::MulMat
                        || op == OpKind::Norm
                        || op == OpKind::Gelu
                        || crate::devices::is_glue(op),
                    "{:?} holds {op:?}",
                    p.kind()
                );
            }
        }
        for &op in EXPERT_FFN_OPS {
            assert!(
                op == OpKind::MulMatId || crate::devices::is_glue(op),
                "expert ffn holds {op:?}"
            );
        }
        // one pattern per kind
        let kinds: Vec<ChainKind> = REGISTRY.iter().map(|p| p.kind()).collect();
        assert_eq!(kinds, [ChainKind::Ffn, ChainKind::GeluFfn, ChainKind::Qkv]);
    }
}
