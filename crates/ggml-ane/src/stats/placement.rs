//! What ran where, node by node: `GGML_ANE_STATS=2` adds a table to the stats (one line per
//! kind of node — llama.cpp's layer suffix dropped — with shape, weight type, where it ran and
//! how often), and `GGML_ANE_LOG=debug` logs every MUL_MAT as it runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use ane_runtime::matmul::{FallbackReason, KernelKind, MatmulShape};

/// One line of the table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Placement {
    /// The node's name without a trailing `-<layer>`.
    pub(crate) op: String,
    /// `MxKxN`, with `[B2,B3]` when batched.
    pub(crate) shape: String,
    /// ggml's name of the weights' type.
    pub(crate) weight_type: &'static str,
    /// `engine (baked)`, `engine (streamed)` or `CPU (<reason>)`.
    pub(crate) place: String,
}

impl Placement {
    /// The row of a MUL_MAT named `node_name` whose weights are named `weight_name`.
    pub(crate) fn new(
        (node_name, weight_name, weights_are_model): (&str, &str, bool),
        shape: &MatmulShape,
        weight_type: &'static str,
        result: &Result<KernelKind, FallbackReason>,
    ) -> Self {
        let mut s = format!("{}x{}x{}", shape.m, shape.k, shape.n);
        if shape.batch != [1, 1] {
            let _ = write!(s, " [{},{}]", shape.batch[0], shape.batch[1]);
        }
        Placement {
            op: display_name(node_name, weight_name, weights_are_model),
            shape: s,
            weight_type,
            place: match result {
                Ok(kind) => format!("engine ({})", kind.as_str()),
                Err(reason) => format!("CPU ({})", reason.as_str()),
            },
        }
    }
}

/// A name without the suffixes ggml appends to a view's or copy's (`Kcur-0 (reshaped)
/// (permuted)` → `Kcur-0`).
fn without_view_suffixes(name: &str) -> &str {
    let mut base = name.trim_end();
    while let Some(open) = base.rfind(" (") {
        if !base.ends_with(')') {
            break;
        }
        base = base[..open].trim_end();
    }
    base
}

/// Whether ggml made the name up: `node_12`, `leaf_3` (ggml names what its client left unnamed
/// when it builds the graph; whisper.cpp names no node), a bare view suffix (` (reshaped)`),
/// or none at all.
fn is_generated(name: &str) -> bool {
    let name = without_view_suffixes(name);
    name.is_empty()
        || ["node_", "leaf_"].iter().any(|p| {
            name.strip_prefix(p)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// What a MUL_MAT's row is called: its own name where its client gave one (llama.cpp:
/// `ffn_up-3` → `ffn_up`), else its weights' with layer numbers and `.weight` dropped
/// (`encoder.blocks.3.attn.query.weight` → `encoder.blocks.attn.query`), else what it
/// multiplies: model weights (whisper.cpp names neither nodes nor, in ggml, its weights) or
/// two activations (attention's products). The shape column tells such rows apart.
pub(crate) fn display_name(node_name: &str, weight_name: &str, weights_are_model: bool) -> String {
    if !is_generated(node_name) {
        return op_name(without_view_suffixes(node_name)).to_string();
    }
    if !is_generated(weight_name) {
        let base = weight_name.strip_suffix(".weight").unwrap_or(weight_name);
        let parts: Vec<&str> = base
            .split('.')
            .filter(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        return op_name(&parts.join(".")).to_string();
    }
    if weights_are_model {
        "(weights × activations)".to_string()
    } else {
        "(activations × activations)".to_string()
    }
}

/// `ffn_up-3` → `ffn_up`: llama.cpp names a layer's tensors `<name>-<layer>`.
pub(crate) fn op_name(node_name: &str) -> &str {
    match node_name.rsplit_once('-') {
        Some((base, layer))
            if !base.is_empty()
                && !layer.is_empty()
                && layer.bytes().all(|b| b.is_ascii_digit()) =>
        {
            base
        }
        _ if node_name.is_empty() => "(unnamed)",
        _ => node_name,
    }
}

/// Counts per placement, for one backend instance.
#[derive(Default)]
pub(crate) struct Placements(Mutex<BTreeMap<Placement, u64>>);

impl Placements {
    pub(crate) fn record(&self, p: Placement) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(p)
            .or_default() += 1;
    }

    /// Adds `other`'s counts into these.
    pub(crate) fn merge_from(&self, other: &Placements) {
        let theirs = other.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut ours = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (p, n) in theirs {
            *ours.entry(p).or_default() += n;
        }
    }

    /// The table, widest columns sized to their content.
    pub(crate) fn report(&self) -> String {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let w_op = map.keys().map(|p| p.op.len()).max().unwrap_or(0).max(4);
        let w_shape = map.keys().map(|p| p.shape.len()).max().unwrap_or(0).max(5);
        let w_place = map.keys().map(|p| p.place.len()).max().unwrap_or(0).max(5);
        let mut out = format!(
            "  by node:\n    {:<w_op$}  {:<w_shape$}  {:<7}  {:<w_place$}  count\n",
            "node", "MxKxN", "weights", "where"
        );
        for (p, n) in map.iter() {
            let _ = writeln!(
                out,
                "    {:<w_op$}  {:<w_shape$}  {:<7}  {:<w_place$}  {n}",
                p.op, p.shape, p.weight_type, p.place
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_suffixes_are_dropped_and_nothing_else() {
        assert_eq!(op_name("ffn_up-31"), "ffn_up");
        assert_eq!(op_name("result_output"), "result_output");
        assert_eq!(op_name("a-b"), "a-b");
        assert_eq!(op_name("-3"), "-3");
        assert_eq!(op_name("x-"), "x-");
        assert_eq!(op_name(""), "(unnamed)");
    }

    #[test]
    fn unnamed_nodes_take_their_weights_name_or_their_role() {
        // llama.cpp names its nodes
        assert_eq!(
            display_name("ffn_up-3", "blk.3.ffn_up.weight", true),
            "ffn_up"
        );
        assert_eq!(
            display_name("Kcur-0 (reshaped) (permuted)", "", false),
            "Kcur"
        );
        // an unnamed node gives way to its weights' name
        assert_eq!(
            display_name("node_10", "encoder.blocks.3.attn.query.weight", true),
            "encoder.blocks.attn.query"
        );
        assert_eq!(
            display_name("", "decoder.token_embedding.weight", true),
            "decoder.token_embedding"
        );
        // whisper.cpp: neither named (ggml's view suffixes on an empty name count as none)
        assert_eq!(
            display_name(" (reshaped)", "", true),
            "(weights × activations)"
        );
        assert_eq!(
            display_name("node_7", "node_5", false),
            "(activations × activations)"
        );
        assert_eq!(
            display_name(" (reshaped) (copy) (permuted)", "", false),
            "(activations × activations)"
        );
        // names that only look generated stay
        assert_eq!(display_name("node_", "w", true), "node_");
        assert_eq!(display_name("node_x1", "w", true), "node_x1");
    }

    #[test]
    fn the_table_counts_each_placement() {
        let shape = MatmulShape::new(8, 4, 2);
        let p = Placements::default();
        for layer in 0..3 {
            p.record(Placement::new(
                (&format!("ffn_up-{layer}"), "", true),
                &shape,
                "q8_0",
                &Ok(KernelKind::Baked),
            ));
        }
        p.record(Placement::new(
            ("kq-0", "", false),
            &MatmulShape {
                batch: [4, 1],
                ..shape
            },
            "f32",
            &Err(FallbackReason::FewOutputs(1)),
        ));
        let t = p.report();
        let line = |needle: &str| t.lines().find(|l| l.contains(needle)).unwrap().to_string();
        assert!(
            line("ffn_up").contains("8x4x2") && line("ffn_up").ends_with(" 3"),
            "{t}"
        );
        assert!(line("ffn_up").contains("engine (baked)"), "{t}");
        assert!(line("kq").contains("8x4x2 [4,1]"), "{t}");
        assert!(line("kq").contains("CPU (too few outputs)") && line("kq").ends_with(" 1"));
    }
}
