//! What `graph_compute` does with a split, in safe Rust: plan it with the walker, then run
//! the steps — fused chains and MUL_MATs on the engine, every other node batched to ggml's own
//! CPU backend. Nothing here touches ggml's structs: the split was read once into a
//! [`Split`] by the ABI layer.

pub(crate) mod context;
pub(crate) mod expert_ffn;
pub(crate) mod experts;
pub(crate) mod fused;
pub(crate) mod matmul;
pub(crate) mod patterns;
pub(crate) mod walker;

use std::collections::HashSet;
use std::sync::Mutex;

use ane_runtime::fused::{FusedForm, FusedOutputs};

use crate::abi::Split;
use crate::runtime::Runtime;
use context::{BackendContext, Failure};
use expert_ffn::ExpertFfnOutputs;
use walker::{Chain, ChainKind, OpKind, Step};

/// A chain's results, held until each output's place.
enum ChainOutputs {
    /// One fused program's.
    Block(FusedOutputs),
    /// An expert FFN's, expert by expert.
    Experts(ExpertFfnOutputs),
}

/// Computes every node of `split`; an error only when ggml's CPU backend fails or is aborted
/// (engine failures fall back to the CPU and are counted), with the status it returned.
pub(crate) fn graph_compute(
    ctx: &BackendContext,
    rt: &Runtime,
    split: &mut Split<'_>,
) -> Result<(), Failure> {
    for (n, d) in split.nodes.iter_mut().zip(&split.descs) {
        n.engine = match n.kind {
            OpKind::MulMat => d.as_ref().is_some_and(|d| matmul::engine_mul_mat(rt, d)),
            OpKind::MulMatId => d
                .as_ref()
                .is_some_and(|d| experts::engine_mul_mat_id(rt, d)),
            _ => false,
        };
    }
    if rt.config.fuse && split.nodes.iter().any(|n| n.uses.is_none()) {
        crate::abi::use_counts_missing();
    }
    let plan = walker::plan(&split.nodes, rt.config.fuse);
    let walk = Walk { ctx, rt, split };
    let mut chains: Vec<Option<ChainOutputs>> = plan.chains.iter().map(|_| None).collect();
    for step in &plan.steps {
        match step {
            Step::Cpu(ix) => walk.on_cpu(ix)?,
            Step::Engine(i) => walk.engine(*i)?,
            Step::Fused(c) => chains[*c] = walk.fused(&plan.chains[*c]),
            Step::Member { chain, node } => {
                walk.member(&plan.chains[*chain], chains[*chain].as_ref(), *node)?
            }
        }
    }
    crate::stats::graph_done(rt);
    Ok(())
}

/// Whether this is the first time `what` happened in the process (among the `seen` set one
/// log site keeps): the first of each reason is logged, the rest counted. The caller logs
/// after this returns, with the lock released — the host's log callback may call back into us.
pub(crate) fn first_of_kind(
    seen: &Mutex<Option<HashSet<&'static str>>>,
    what: &'static str,
) -> bool {
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(what)
}

/// Every node of `split` on ggml's CPU backend, as one graph: what a backend without a usable
/// engine does with whatever it is handed.
pub(crate) fn on_cpu_only(ctx: &BackendContext, split: &Split<'_>) -> Result<(), Failure> {
    let ix: Vec<usize> = split
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.compute && n.kind != OpKind::View)
        .map(|(i, _)| i)
        .collect();
    ctx.run_on_cpu(ix.len(), |cpu| split.compute_on(cpu, &ix))
}

/// One graph computation: its nodes, and where each step goes.
struct Walk<'a, 'g> {
    ctx: &'a BackendContext,
    rt: &'a Runtime,
    split: &'a Split<'g>,
}

impl Walk<'_, '_> {
    /// Nodes `ix` on ggml's CPU backend, as one graph.
    fn on_cpu(&self, ix: &[usize]) -> Result<(), Failure> {
        self.ctx
            .run_on_cpu(ix.len(), |cpu| self.split.compute_on(cpu, ix))
    }

    /// A MUL_MAT on the engine path; or a MUL_MAT_ID, expert by expert — ggml's CPU backend
    /// takes it whole when only thin experts are routed or its ids cannot be read.
    fn engine(&self, i: usize) -> Result<(), Failure> {
        if self.split.nodes[i].kind != OpKind::MulMatId {
            return Ok(matmul::run(self.ctx, self.rt, self.split, i)?);
        }
        match experts::run(self.ctx, self.rt, self.split, i) {
            Ok(true) => Ok(()),
            _ => self.on_cpu(&[i]),
        }
    }

    /// Evaluates a chain as one fused program (an expert FFN: one per expert): its results,
    /// or `None` (counted, the first of each reason logged) when the engine declines it and its
    /// nodes run one by one.
    fn fused(&self, chain: &Chain) -> Option<ChainOutputs> {
        let done = if chain.kind == ChainKind::ExpertFfn {
            expert_ffn::run(self.rt, self.ctx, chain, self.split).map(|out| {
                let place = format!("{} of {} experts", out.on_engine, out.groups);
                (ChainOutputs::Experts(out), place)
            })
        } else {
            fused::run(self.rt, self.ctx, chain, self.split)
                .map(|out| (ChainOutputs::Block(out), String::new()))
        };
        match done {
            Ok((out, detail)) => {
                self.ctx
                    .stats
                    .record_fused(chain.members.len(), chain.write_back.len());
                let form = match &out {
                    ChainOutputs::Block(b) => b.form(),
                    ChainOutputs::Experts(e) => e.form.unwrap_or(FusedForm::Streamed),
                };
                fused::record_placement(self.ctx, self.rt, chain, &self.split.descs, form, &detail);
                Some(out)
            }
            Err(reason) => {
                fused::declined_chain(self.ctx, chain, &reason);
                None
            }
        }
    }

    /// A chain's node at its own place: its result written (when it is one of the chain's
    /// outputs), or, for a declined chain, the node computed as without fusion.
    fn member(
        &self,
        chain: &Chain,
        done: Option<&ChainOutputs>,
        node: usize,
    ) -> Result<(), Failure> {
        let out = match done {
            None => {
                // a chain's MUL_MATs and MUL_MAT_IDs are ones the engine takes
                return match self.split.nodes[node].kind {
                    OpKind::MulMat | OpKind::MulMatId => self.engine(node),
                    _ => self.on_cpu(&[node]),
                };
            }
            Some(ChainOutputs::Experts(e)) => {
                return match chain.outputs.contains(&node) {
                    true => Ok(e.write(self.split, node)?),
                    false => Ok(()),
                };
            }
            Some(ChainOutputs::Block(out)) => out,
        };
        let Some(k) = chain.outputs.iter().position(|&o| o == node) else {
            return Ok(());
        };
        // the output node is an F32 tensor of `tokens` rows of the output's width (checked
        // when the chain's job was built)
        let sink = self.split.sink(node).ok_or("a fused output without data")?;
        out.write(k, &sink);
        Ok(())
    }
}
