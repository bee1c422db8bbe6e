//! A chain the walker found, as one fused engine job: ggml's tensors read as the engine's
//! sources and written as its sinks. Every shape and type is checked here; anything
//! unexpected declines the chain (it then runs node by node), never guesses.

use std::hash::{Hash, Hasher};

use ane_runtime::fused::{engine_fused, Block, FusedJob, FusedOutputs};
use ane_runtime::matmul::{FallbackReason, MatrixSource, WeightId};

use super::ggml_type;
use super::tensor::{NodeDesc, TensorDesc, TensorRows};
use crate::backend::{BackendContext, Runtime};
use crate::walker::{Chain, ChainKind};

fn declined(why: impl Into<String>) -> FallbackReason {
    FallbackReason::Unsupported(why.into())
}

/// A dense F32 `[c, t]` activation (rows contiguous or strided, no batches).
fn is_activation(t: &TensorDesc, c: i64, tokens: i64) -> bool {
    t.ty == ggml_type::F32 && t.ne == [c, tokens, 1, 1] && t.readable()
}

/// A MUL_MAT's weights `[k, rows]`: readable rows, no batches.
fn weights_ok(t: &TensorDesc, k: i64) -> Result<(), FallbackReason> {
    if t.ne[0] != k || t.ne[2] != 1 || t.ne[3] != 1 || !t.readable() {
        return Err(declined(format!("weights {:?} for {k} inputs", t.ne)));
    }
    Ok(())
}

/// Model weights with contiguous rows ([`TensorDesc::is_model_weight`]): their identity may
/// key baked kernels and staged surfaces.
fn identifiable(t: &TensorDesc) -> bool {
    t.nb[0] == t.type_size && t.is_model_weight()
}

/// The chain's results computed on the engine (not written: the caller writes each at its
/// own node's place), or why not.
pub(crate) fn run(
    rt: &Runtime,
    ctx: &BackendContext,
    chain: &Chain,
    descs: &[Option<NodeDesc>],
) -> Result<FusedOutputs, FallbackReason> {
    let d = |i: usize| {
        descs[i]
            .as_ref()
            .ok_or_else(|| FallbackReason::Internal("a chain node vanished".into()))
    };
    let scale = d(chain.scale)?;
    let norm = chain.norm.map(&d).transpose()?;
    // the block input: the norm's (or, normed elsewhere, the scale's first operand), and
    // the norm weight: the scale's other operand
    let (x, w, eps) = match norm {
        Some(norm) => {
            let x = norm.src[0].ok_or_else(|| declined("norm without input"))?;
            let w = match (scale.src[0], scale.src[1]) {
                (Some(a), Some(b)) if a.data == norm.node.data => b,
                (Some(a), Some(_)) => a,
                _ => return Err(declined("norm scale without weight")),
            };
            if !is_activation(&norm.node, x.ne[0], x.ne[1]) {
                return Err(declined("norm shapes or types"));
            }
            (x, w, Some(f32::from_bits(norm.op_params[0] as u32)))
        }
        None => match (scale.src[0], scale.src[1]) {
            (Some(x), Some(w)) => (x, w, None),
            _ => return Err(declined("norm scale without weight")),
        },
    };
    let (c, tokens) = (x.ne[0], x.ne[1]);
    let contiguous_vector = w.ty == ggml_type::F32 && w.ne == [c, 1, 1, 1] && w.nb[0] == 4;
    if !is_activation(&x, c, tokens)
        || !is_activation(&scale.node, c, tokens)
        || !contiguous_vector
        || !w.readable()
        || eps.is_some_and(|e| !e.is_finite())
    {
        return Err(declined("norm shapes or types"));
    }
    // (every TensorRows below: the chain's tensors are live host tensors of the graph being
    // computed, readable by supports_buft; their shapes were checked against the job's, so
    // every row read lies inside them)
    let norm_weight = {
        // SAFETY: a tensor of the chain: live, host memory, shape checked above.
        let rows = unsafe { TensorRows::new(w) };
        let mut v = vec![0f32; c as usize];
        rows.read_row(0, 0, 0, &mut v);
        v
    };
    // SAFETY: a tensor of the chain: live, host memory, shape checked above.
    let x_rows = unsafe { TensorRows::new(x) };

    let mut id_key = std::collections::hash_map::DefaultHasher::new();
    let mut id_fp = std::collections::hash_map::DefaultHasher::new();
    chain.kind.as_str().hash(&mut id_key);
    (c, w.data as usize, eps.map(f32::to_bits)).hash(&mut id_key);
    norm_weight
        .iter()
        .map(|v| v.to_bits())
        .collect::<Vec<_>>()
        .hash(&mut id_fp);
    let mut identify = |rows: &TensorRows| {
        let WeightId { key, fingerprint } = rows.weight_id();
        key.hash(&mut id_key);
        fingerprint.hash(&mut id_fp);
    };

    // MUL_MAT `i` of `k` inputs reading `input`: its weights and its output
    let mut identified = true;
    let mut matmul = |i: usize,
                      k: i64,
                      input: &TensorDesc|
     -> Result<(TensorDesc, TensorDesc), FallbackReason> {
        let m = d(i)?;
        let s0 = m.src[0].ok_or_else(|| declined("MUL_MAT without weights"))?;
        if m.src[1].map(|s| s.data) != Some(input.data) {
            return Err(declined("MUL_MAT input"));
        }
        weights_ok(&s0, k)?;
        identified &= identifiable(&s0);
        if !is_activation(&m.node, s0.ne[1], tokens) {
            return Err(declined("MUL_MAT output"));
        }
        Ok((s0, m.node))
    };

    // the matrices (FFN: gate, up, down; projections: each), and the FFN's residual
    let (mats, residual) = match chain.kind {
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
            let (gate, _) = matmul(gate_i, c, &scale.node)?;
            let (up, _) = matmul(up_i, c, &scale.node)?;
            let h = gate.ne[1];
            let g = d(glu)?;
            if up.ne[1] != h || g.op_params[1] != 0 || !is_activation(&g.node, h, tokens) {
                return Err(declined("SWIGLU shapes or swapped"));
            }
            let (down_w, _) = matmul(down, h, &g.node)?;
            let add = d(add)?;
            let down_out = d(down)?.node;
            // the ADD's other operand is the residual
            let residual = match (add.src[0], add.src[1]) {
                (Some(a), Some(b)) if a.data == down_out.data => b,
                (Some(a), Some(_)) => a,
                _ => return Err(declined("residual ADD without operands")),
            };
            if down_w.ne[1] != c
                || !is_activation(&add.node, c, tokens)
                || !is_activation(&residual, c, tokens)
            {
                return Err(declined("down projection or residual shapes"));
            }
            (vec![gate, up, down_w], Some(residual))
        }
        ChainKind::Qkv => {
            let mut mats = Vec::new();
            for &i in &chain.matmuls {
                mats.push(matmul(i, c, &scale.node)?.0);
            }
            (mats, None)
        }
    };
    // SAFETY: tensors of the chain: live, host memory, shapes checked above.
    let rows: Vec<TensorRows> = mats
        .iter()
        .map(|&t| unsafe { TensorRows::new(t) })
        .collect();
    // SAFETY: as above.
    let residual = residual.map(|t| unsafe { TensorRows::new(t) });
    for r in &rows {
        identify(r);
    }
    let block = match (&residual, &rows[..]) {
        (Some(residual), [gate, up, down]) => Block::Ffn {
            hidden: mats[0].ne[1] as usize,
            gate,
            up,
            down,
            residual,
        },
        _ => Block::Projections(
            rows.iter()
                .zip(&mats)
                .map(|(r, t)| (r as &dyn MatrixSource, t.ne[1] as usize))
                .collect(),
        ),
    };
    let job = FusedJob {
        channels: c as usize,
        tokens: tokens as usize,
        eps,
        x: &x_rows,
        norm_weight: &norm_weight,
        block,
        weight_id: identified.then(|| WeightId {
            key: id_key.finish(),
            fingerprint: id_fp.finish(),
        }),
    };
    engine_fused(rt.engine.as_ref(), &rt.cache, &job, &ctx.stats)
}
