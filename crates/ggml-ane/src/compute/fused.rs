//! A chain the walker found, as one fused engine job: the split's tensors read as the engine's
//! sources. Every shape and type is checked here; anything unexpected declines the chain (it
//! then runs node by node), never guesses.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use ane_runtime::fused::{engine_fused, Block, FusedForm, FusedJob, FusedOutputs};
use ane_runtime::matmul::{FallbackReason, MatrixSource, WeightId};

use super::context::BackendContext;
use super::walker::{Chain, ChainKind};
use crate::abi::{self, ggml_type, NodeDesc, Split, TensorDesc, TensorRows};
use crate::runtime::Runtime;
use crate::stats::placement::{display_name, Placement};

/// Why a chain (or a part of it) runs elsewhere: shapes or types it does not take.
pub(super) fn declined(why: impl Into<String>) -> FallbackReason {
    FallbackReason::Unsupported(why.into())
}

/// A dense F32 `[c, t]` activation (rows contiguous or strided, no batches).
fn is_activation(t: &TensorDesc, c: i64, tokens: i64) -> bool {
    t.ty == ggml_type::F32 && t.ne == [c, tokens, 1, 1] && t.readable
}

/// A MUL_MAT's weights `[k, rows]`: readable rows, no batches.
fn weights_ok(t: &TensorDesc, k: i64) -> Result<(), FallbackReason> {
    if t.ne[0] != k || t.ne[2] != 1 || t.ne[3] != 1 || !t.readable {
        return Err(declined(format!("weights {:?} for {k} inputs", t.ne)));
    }
    Ok(())
}

/// The slot of `node`'s two operands that is not `other` (the one a chain member wrote).
fn other_operand(node: &NodeDesc, other: &TensorDesc) -> Result<usize, FallbackReason> {
    match (node.src[0], node.src[1]) {
        (Some(a), Some(_)) if a.addr == other.addr => Ok(1),
        (Some(_), Some(_)) => Ok(0),
        _ => Err(declined("a binary op without two operands")),
    }
}

/// The chain's results computed on the engine (not written: the caller writes each at its
/// own node's place), or why not.
pub(crate) fn run(
    rt: &Runtime,
    ctx: &BackendContext,
    chain: &Chain,
    split: &Split<'_>,
) -> Result<FusedOutputs, FallbackReason> {
    let d = |i: usize| {
        split.descs[i]
            .as_ref()
            .ok_or_else(|| FallbackReason::Internal("a chain node vanished".into()))
    };
    let rows = |node: usize, slot: usize| {
        split
            .source(node, slot)
            .ok_or_else(|| declined("an operand without data"))
    };
    let scale = d(chain.scale)?;
    // the block input (the norm's, or — normed elsewhere — the scale's first operand), and
    // the norm weight: the scale's other operand
    let (x_rows, w_slot, eps) = match chain.norm {
        Some(n) => {
            let norm = d(n)?;
            if !norm.src[0].is_some_and(|x| is_activation(&norm.node, x.ne[0], x.ne[1])) {
                return Err(declined("norm shapes or types"));
            }
            let eps = f32::from_bits(norm.op_params[0] as u32);
            (rows(n, 0)?, other_operand(scale, &norm.node)?, Some(eps))
        }
        None => (rows(chain.scale, 0)?, 1, None),
    };
    let w_rows = rows(chain.scale, w_slot)?;
    let (x, w) = (*x_rows.desc(), *w_rows.desc());
    let (c, tokens) = (x.ne[0], x.ne[1]);
    let contiguous_vector = w.ty == ggml_type::F32 && w.ne == [c, 1, 1, 1] && w.nb[0] == 4;
    if !is_activation(&x, c, tokens)
        || !is_activation(&scale.node, c, tokens)
        || !contiguous_vector
        || !w.readable
        || eps.is_some_and(|e| !e.is_finite())
    {
        return Err(declined("norm shapes or types"));
    }
    let mut norm_weight = vec![0f32; c as usize];
    w_rows.read_row(0, 0, 0, &mut norm_weight);
    // a bias's ADD (`add`, reading member `of`): its other operand, a contiguous F32 vector of
    // `n`, read (a LayerNorm's, a matmul's)
    let bias_of = |add: usize, of: &TensorDesc, n: i64| -> Result<Vec<f32>, FallbackReason> {
        let a = d(add)?;
        let r = rows(add, other_operand(a, of)?)?;
        let bd = *r.desc();
        if bd.ty != ggml_type::F32
            || bd.ne != [n, 1, 1, 1]
            || bd.nb[0] != 4
            || !bd.readable
            || !is_activation(&a.node, n, tokens)
        {
            return Err(declined("bias shapes or types"));
        }
        let mut v = vec![0f32; n as usize];
        r.read_row(0, 0, 0, &mut v);
        Ok(v)
    };
    // a LayerNorm's bias: the ADD's other operand, a contiguous F32 vector, the ADD then the
    // normed input the matmuls read; without one (Command-R's) zeros, the scale the input
    if chain.layer && eps.is_none() {
        return Err(declined("a LayerNorm without its norm"));
    }
    let (input, ln_bias) = match chain.bias {
        None if chain.layer => (scale.node, Some(vec![0f32; c as usize])),
        Some(b) => (d(b)?.node, Some(bias_of(b, &scale.node, c)?)),
        None => (scale.node, None),
    };

    let mut id_key = std::collections::hash_map::DefaultHasher::new();
    let mut id_fp = std::collections::hash_map::DefaultHasher::new();
    chain.kind.as_str().hash(&mut id_key);
    (c, w.addr, eps.map(f32::to_bits), chain.layer).hash(&mut id_key);
    norm_weight
        .iter()
        .chain(ln_bias.iter().flatten())
        .map(|v| v.to_bits())
        .collect::<Vec<_>>()
        .hash(&mut id_fp);

    // MUL_MAT `i` of `k` inputs reading `input`: its weights' rows
    let matmul = |i: usize, k: i64, input: &TensorDesc| -> Result<TensorRows<'_>, FallbackReason> {
        let m = d(i)?;
        let s0 = m.src[0].ok_or_else(|| declined("MUL_MAT without weights"))?;
        if m.src[1].map(|s| s.addr) != Some(input.addr) {
            return Err(declined("MUL_MAT input"));
        }
        weights_ok(&s0, k)?;
        if !is_activation(&m.node, s0.ne[1], tokens) {
            return Err(declined("MUL_MAT output"));
        }
        rows(i, 0)
    };

    // an FFN's tail: the down projection (`h` inputs, reading `hidden`) and the residual,
    // the other operand of `add`, whose first operand is node `before`
    let down_and_residual =
        |down: usize, h: i64, hidden: &TensorDesc, add: usize, before: usize| {
            let down_w = matmul(down, h, hidden)?;
            let add_d = d(add)?;
            let residual = rows(add, other_operand(add_d, &d(before)?.node)?)?;
            if down_w.desc().ne[1] != c
                || !is_activation(&add_d.node, c, tokens)
                || !is_activation(residual.desc(), c, tokens)
            {
                return Err(declined("down projection or residual shapes"));
            }
            Ok((down_w, residual))
        };
    // the matrices (FFN: gate, up, down; GELU FFN: up, down; projections: each), the FFN's
    // residual, and a GELU FFN's up and down biases
    let (mats, residual, biases) = match chain.kind {
        ChainKind::Ffn => {
            let (Some(glu), Some(down), Some(add)) = (chain.glu, chain.down, chain.add) else {
                return Err(FallbackReason::Internal(
                    "an FFN chain without its tail".into(),
                ));
            };
            let [gate_i, up_i] = chain.matmuls[..] else {
                return Err(FallbackReason::Internal(
                    "an FFN chain without gate and up".into(),
                ));
            };
            let gate = matmul(gate_i, c, &input)?;
            let up = matmul(up_i, c, &input)?;
            let h = gate.desc().ne[1];
            let g = d(glu)?;
            if up.desc().ne[1] != h || g.op_params[1] != 0 || !is_activation(&g.node, h, tokens) {
                return Err(declined("SWIGLU shapes or swapped"));
            }
            let (down_w, residual) = down_and_residual(down, h, &g.node, add, down)?;
            (vec![gate, up, down_w], Some(residual), None)
        }
        ChainKind::GeluFfn => {
            let (Some(gelu), Some(down), Some(add), [up_i], [up_add, down_add]) = (
                chain.glu,
                chain.down,
                chain.add,
                &chain.matmuls[..],
                &chain.biases[..],
            ) else {
                return Err(FallbackReason::Internal(
                    "a GELU FFN chain without its parts".into(),
                ));
            };
            let up = matmul(*up_i, c, &input)?;
            let h = up.desc().ne[1];
            let up_bias = bias_of(*up_add, &d(*up_i)?.node, h)?;
            let g = d(gelu)?;
            if !is_activation(&g.node, h, tokens)
                || g.src[0].map(|s| s.addr) != Some(d(*up_add)?.node.addr)
            {
                return Err(declined("GELU shapes"));
            }
            let (down_w, residual) = down_and_residual(down, h, &g.node, add, *down_add)?;
            let down_bias = bias_of(*down_add, &d(down)?.node, c)?;
            for v in up_bias.iter().chain(&down_bias) {
                v.to_bits().hash(&mut id_fp);
            }
            (vec![up, down_w], Some(residual), Some((up_bias, down_bias)))
        }
        ChainKind::Qkv => {
            let mut mats = Vec::new();
            for &i in &chain.matmuls {
                mats.push(matmul(i, c, &input)?);
            }
            (mats, None, None)
        }
        ChainKind::ExpertFfn => {
            return Err(FallbackReason::Internal(
                "an expert FFN is run by expert_ffn".into(),
            ))
        }
    };
    // weights identified only when every matrix is contiguous model weights
    let mut identified = true;
    for m in &mats {
        match m.weight_id().filter(|_| m.desc().is_model_weight()) {
            Some(WeightId { key, fingerprint }) => {
                key.hash(&mut id_key);
                fingerprint.hash(&mut id_fp);
            }
            None => identified = false,
        }
    }
    let block = match (&residual, &mats[..], &biases) {
        (Some(residual), [up, down], Some((up_bias, down_bias))) => Block::GeluFfn {
            hidden: up.desc().ne[1] as usize,
            up,
            up_bias,
            down,
            down_bias,
            residual,
        },
        (Some(residual), [gate, up, down], None) => Block::Ffn {
            hidden: gate.desc().ne[1] as usize,
            gate,
            up,
            down,
            residual,
        },
        (None, _, None) => Block::Projections(
            mats.iter()
                .map(|r| (r as &dyn MatrixSource, r.desc().ne[1] as usize))
                .collect(),
        ),
        _ => {
            return Err(FallbackReason::Internal(
                "a fused chain misassembled".into(),
            ))
        }
    };
    let job = FusedJob {
        channels: c as usize,
        tokens: tokens as usize,
        eps,
        x: &x_rows,
        norm_weight: &norm_weight,
        ln_bias: ln_bias.as_deref(),
        block,
        weight_id: identified.then(|| WeightId {
            key: id_key.finish(),
            fingerprint: id_fp.finish(),
        }),
    };
    engine_fused(rt.engine.as_ref(), &rt.cache, &job, &ctx.stats)
}

/// Counts a fused chain, and with `GGML_ANE_STATS=2` (or debug logging) says where it ran:
/// one table row named after its MUL_MATs (`ffn_gate+ffn_up+ffn_out`).
pub(crate) fn record_placement(
    ctx: &BackendContext,
    rt: &Runtime,
    chain: &Chain,
    descs: &[Option<NodeDesc>],
    form: FusedForm,
    detail: &str,
) {
    let debug = abi::log_enabled(abi::GGML_LOG_LEVEL_DEBUG);
    if rt.config.stats_level < 2 && !debug {
        return;
    }
    let mut matmuls: Vec<usize> = chain.matmuls.clone();
    matmuls.extend(chain.down);
    let names: Vec<String> = matmuls
        .iter()
        .filter_map(|&i| descs[i].as_ref())
        .map(|d| display_name(&d.name(), &d.src0_name(), true))
        .collect();
    let first = descs[matmuls[0]].as_ref();
    let (rows, k, tokens, weight_type) = first.and_then(|d| Some((d.src[0]?, d.node.ne))).map_or(
        (0, 0, String::new(), "?"),
        |(w, t)| {
            let rows: i64 = chain
                .matmuls
                .iter()
                .filter_map(|&i| descs[i].as_ref()?.src[0])
                .map(|w| w.ne[1])
                .sum();
            // a MUL_MAT_ID's tokens are ne[2], each with ne[1] experts (as its own rows say)
            let t = match chain.kind {
                ChainKind::ExpertFfn => format!("{}x{}", t[2], t[1]),
                _ => t[1].to_string(),
            };
            (rows, w.ne[0], t, w.type_name)
        },
    );
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(", {detail}")
    };
    let p = Placement {
        op: names.join("+"),
        shape: format!("{rows}x{k}x{tokens}"),
        weight_type,
        place: match form {
            FusedForm::Baked => format!("engine (fused {}{detail})", chain.kind.as_str()),
            FusedForm::Streamed => {
                format!("engine (fused {}, streamed{detail})", chain.kind.as_str())
            }
        },
    };
    if debug {
        abi::log(
            abi::GGML_LOG_LEVEL_DEBUG,
            &format!(
                "ggml-ane: FUSED {} {} {} -> {}",
                p.op, p.shape, p.weight_type, p.place
            ),
        );
    }
    if rt.config.stats_level >= 2 {
        ctx.placements.record(p);
    }
}

/// A chain that runs node by node: counted, and the first of each reason logged.
pub(crate) fn declined_chain(ctx: &BackendContext, chain: &Chain, reason: &FallbackReason) {
    ctx.stats.record_fused_declined(reason);
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    if super::first_of_kind(&SEEN, reason.as_str()) {
        abi::log(
            abi::GGML_LOG_LEVEL_INFO,
            &format!(
                "ggml-ane: a fused {} block ran node by node ({reason}); further cases are counted, not logged",
                chain.kind.as_str()
            ),
        );
    }
}
