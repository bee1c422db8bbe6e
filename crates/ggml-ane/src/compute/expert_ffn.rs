//! A mixture-of-experts FFN as fused programs: for each expert, the token group routed to it
//! runs gate and up → SWIGLU → down as one fused FFN program (the streamed or baked FFN form
//! of docs/fused-forms.md, its input the gathered rows, no norm and no residual), one
//! dispatch per expert instead of three. Experts whose group is too thin for a dispatch, or
//! whose program the engine declines, are computed here on the CPU in f32, so the chain is
//! whole; the results are held until the down projection's place in the graph and scattered
//! there (ggml may reuse the input's bytes for the result).

use std::hash::{Hash, Hasher};

use ane_runtime::fused::{engine_fused, Block, FusedForm, FusedJob, FusedOutputs};
use ane_runtime::matmul::{
    cpu_matmul, DenseSink, FallbackReason, MatmulJob, MatmulShape, MatrixSource, WeightId,
    MIN_ENGINE_OUTPUTS,
};

use super::context::BackendContext;
use super::experts::{routed_pairs, Expert, Gathered, Scattered, MIN_EXPERT_TOKENS};
use super::fused::declined;
use super::matmul::may_bake;
use super::walker::Chain;
use crate::abi::{ggml_type, Split};
use crate::runtime::Runtime;

/// One expert's result rows, `channels` values per routed pair.
enum ExpertRows {
    /// From its fused program.
    Fused(FusedOutputs),
    /// Computed on the CPU.
    Cpu(Vec<f32>),
}

impl ExpertRows {
    fn values(&self) -> &[f32] {
        match self {
            ExpertRows::Fused(out) => out.values(0),
            ExpertRows::Cpu(v) => v,
        }
    }
}

/// An expert FFN chain's results: each expert's rows with the pairs they belong to.
pub(crate) struct ExpertFfnOutputs {
    channels: usize,
    routed: Vec<Vec<(usize, usize)>>,
    rows: Vec<(usize, ExpertRows)>,
    /// Experts whose group ran as one program, and the form of the first.
    pub(crate) on_engine: usize,
    pub(crate) form: Option<FusedForm>,
    /// Experts with a token group.
    pub(crate) groups: usize,
}

impl ExpertFfnOutputs {
    /// Writes every pair's row at its place in the down projection's result (node `down`).
    pub(crate) fn write(&self, split: &Split<'_>, down: usize) -> Result<(), &'static str> {
        let dst = split
            .sink(down)
            .ok_or("an expert FFN's result without data")?;
        for (x, rows) in &self.rows {
            let pairs = &self.routed[*x];
            let sink = Scattered { dst: &dst, pairs };
            for (i, row) in rows.values().chunks(self.channels).enumerate() {
                ane_runtime::matmul::MatrixSink::write_row(&sink, 0, 0, i, row);
            }
        }
        Ok(())
    }
}

/// Zero rows: the FFN block's residual, which an expert FFN does not have.
struct Zeros;

impl MatrixSource for Zeros {
    fn read_row(&self, _: usize, _: usize, _: usize, out: &mut [f32]) {
        out.fill(0.0);
    }
}

/// Runs the chain expert by expert; an error (the chain then runs node by node) when its
/// tensors are not what `build_moe_ffn` makes or no expert's group is worth a dispatch.
pub(crate) fn run(
    rt: &Runtime,
    ctx: &BackendContext,
    chain: &Chain,
    split: &Split<'_>,
) -> Result<ExpertFfnOutputs, FallbackReason> {
    let (&[gate, up], Some(glu), Some(down)) = (&chain.matmuls[..], chain.glu, chain.down) else {
        return Err(FallbackReason::Internal(
            "an expert FFN misassembled".into(),
        ));
    };
    let src = |node: usize, slot: usize| {
        split
            .source(node, slot)
            .ok_or_else(|| declined("an expert operand without data"))
    };
    let (wg, wu, wd) = (src(gate, 0)?, src(up, 0)?, src(down, 0)?);
    let (b, ids) = (src(up, 1)?, src(up, 2)?);
    let (g, u, d) = (*wg.desc(), *wu.desc(), *wd.desc());
    let (k, hidden, experts) = (g.ne[0], g.ne[1], g.ne[2]);
    let (bd, idd) = (*b.desc(), *ids.desc());
    let (used, tokens) = (idd.ne[0], idd.ne[1]);
    let glu_desc = split.descs[glu]
        .as_ref()
        .ok_or_else(|| FallbackReason::Internal("a chain node vanished".into()))?;
    let down_desc = split.descs[down]
        .as_ref()
        .ok_or_else(|| FallbackReason::Internal("a chain node vanished".into()))?;
    if u.ne != g.ne
        || d.ne != [hidden, k, experts, 1]
        || bd.ty != ggml_type::F32
        || bd.ne[0] != k
        || glu_desc.node.ty != ggml_type::F32
        || glu_desc.node.ne != [hidden, used, tokens, 1]
        || down_desc.node.ne != [k, used, tokens, 1]
    {
        return Err(declined("expert FFN shapes or types"));
    }
    let (k, hidden, rows) = (k as usize, hidden as usize, bd.ne[1] as usize);
    let routed = routed_pairs(&ids, experts as usize).map_err(declined)?;
    let min_batch = rt.config.min_tokens.min(MIN_EXPERT_TOKENS);
    let worthy = |n: usize| n >= min_batch && n * k >= MIN_ENGINE_OUTPUTS;
    if !routed.iter().any(|p| worthy(p.len())) {
        return Err(declined("no expert's token group is worth a dispatch"));
    }
    // one identity per expert and matrix set, when all three are model weights
    let ids_of = [(&wg, &g), (&wu, &u), (&wd, &d)].map(|(r, desc)| {
        if may_bake(rt, desc) {
            r.weight_id()
        } else {
            None
        }
    });
    let ones = vec![1f32; k];
    let mut out = ExpertFfnOutputs {
        channels: k,
        routed: Vec::new(),
        rows: Vec::new(),
        on_engine: 0,
        form: None,
        groups: 0,
    };
    let mut scratch = ctx.scratch.lock().unwrap_or_else(|e| e.into_inner());
    for (x, pairs) in routed.iter().enumerate().filter(|(_, p)| !p.is_empty()) {
        out.groups += 1;
        let acts = Gathered { b: &b, rows, pairs };
        let (eg, eu, ed) = (
            Expert { w: &wg, expert: x },
            Expert { w: &wu, expert: x },
            Expert { w: &wd, expert: x },
        );
        let weight_id = match ids_of {
            [Some(a), Some(b), Some(c)] => {
                let (mut key, mut fp) = (
                    std::collections::hash_map::DefaultHasher::new(),
                    std::collections::hash_map::DefaultHasher::new(),
                );
                ("expert ffn", a.key, b.key, c.key, x).hash(&mut key);
                (a.fingerprint, b.fingerprint, c.fingerprint).hash(&mut fp);
                Some(WeightId {
                    key: key.finish(),
                    fingerprint: fp.finish(),
                })
            }
            _ => None,
        };
        let fused = if worthy(pairs.len()) {
            let job = FusedJob {
                channels: k,
                tokens: pairs.len(),
                eps: None,
                x: &acts,
                norm_weight: &ones,
                ln_bias: None,
                block: Block::Ffn {
                    hidden,
                    gate: &eg,
                    up: &eu,
                    down: &ed,
                    residual: &Zeros,
                },
                weight_id,
            };
            engine_fused(rt.engine.as_ref(), &rt.cache, &job, &ctx.stats).ok()
        } else {
            None
        };
        let rows = match fused {
            Some(f) => {
                out.form.get_or_insert(f.form());
                out.on_engine += 1;
                ExpertRows::Fused(f)
            }
            None => ExpertRows::Cpu(cpu_ffn(&mut scratch, (&eg, &eu, &ed), &acts, k, hidden)),
        };
        out.rows.push((x, rows));
    }
    if out.on_engine == 0 {
        return Err(declined("the engine declined every expert's program"));
    }
    out.routed = routed;
    Ok(out)
}

/// One expert's FFN over its token group on the CPU, in f32 as ggml computes it: gate and up
/// products, `silu(gate) · up`, the down product.
fn cpu_ffn(
    scratch: &mut ane_runtime::matmul::Scratch,
    (gate, up, down): (&Expert<'_>, &Expert<'_>, &Expert<'_>),
    acts: &Gathered<'_>,
    k: usize,
    hidden: usize,
) -> Vec<f32> {
    let n = acts.pairs.len();
    let product = |scratch: &mut ane_runtime::matmul::Scratch,
                   w: &dyn MatrixSource,
                   a: &dyn MatrixSource,
                   (m, k): (usize, usize)| {
        let shape = MatmulShape::new(m, k, n);
        let sink = DenseSink::for_shape(shape);
        let job = MatmulJob {
            shape,
            weights: w,
            acts: a,
            dst: &sink,
            weight_id: None,
        };
        cpu_matmul(&job, scratch);
        sink.data.into_inner().unwrap_or_else(|e| e.into_inner())
    };
    let g = product(scratch, gate, acts, (hidden, k));
    let u = product(scratch, up, acts, (hidden, k));
    let h: Vec<f32> = g
        .iter()
        .zip(&u)
        .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    let h = ane_runtime::matmul::DenseRows::new(n, hidden, h);
    product(scratch, down, &h, (k, hidden))
}
