//! The ANE rulebook: what the Neural Engine's compiler and evaluator accept, as far as public
//! code that ran on the hardware has shown. No machine this crate is developed on has an ANE,
//! so every rule cites the project or report that established it, and a program is judged by
//! these rules alone: the runtime builds only programs that pass, and the reference engine
//! refuses the rest, so a test here fails where a Mac would.
//!
//! A rule either **refuses** a program (the hardware is reported to reject it: compile failure
//! or status 0x1d at evaluation) or **warns** (reports disagree, or only one chip or one
//! unnamed fork reports it). Ops have a status of their own ([`OP_STATUS`]): shown evaluating
//! correctly on hardware, compiled only, or rejected (with the known substitute).
//!
//! Sources (the commits read, and the lines, are in `docs/ane-rules.md`):
//! - jafreck/ironmill `docs/design/ane/ane-op-support-matrix.md` (74 ops probed one by one on
//!   `[1, 32, 1, 32]` tensors), `docs/design/ane/ane-constraints.md` and its archived notes;
//! - maderix/ANE (README; `training/ane_classifier.h`), maderix/ane-prefill-bench
//!   (`ane_prefill_27b.m`, README);
//! - arozanov/ggml-ane (`ggml/src/ggml-ane/ggml-ane.mm`), the project this one replaces;
//! - ncdrone/rustane (M3 Ultra reports), sbryngelson/ANEForge (chip families; its programs run
//!   through another runtime path, e5rt, so its limits are weaker evidence for ours).
//!
//! A program passing here is one the ANE compiler is expected to accept as far as anyone has
//! shown, not one known to: `ane doctor` on a Mac settles what the sources leave open.

use std::fmt;

use crate::check::Location;
use crate::ir::{Arg, Literal, Program, Statement};
use crate::types::{DType, ValueType};

/// What a broken rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Severity {
    /// Reported, the program still runs.
    Warn,
    /// The program is refused.
    Refuse,
}

/// One constraint, with where it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Short stable name (`io-rank4`), used in messages and `--rules` lists.
    pub id: &'static str,
    /// Refuse or warn.
    pub severity: Severity,
    /// The constraint in one sentence.
    pub summary: &'static str,
    /// The public code or report that established it.
    pub source: &'static str,
}

/// Function inputs and outputs are rank-4 `[1, C, 1, S]`.
pub const IO_RANK4: Rule = Rule {
    id: "io-rank4",
    severity: Severity::Refuse,
    summary: "function inputs and outputs are rank-4 [1, C, 1, S] tensors (channels, then the \
              spatial width)",
    source: "every private-path program found: arozanov/ggml-ane ggml-ane.mm, maderix/ANE, \
             maderix/ane-prefill-bench ane_prefill_27b.m, thebasedcapital/ane-infer, tmc/apple x/ane",
};

/// Function inputs are fp16, fp32 or bool; outputs fp16 or fp32.
pub const IO_DTYPE: Rule = Rule {
    id: "io-dtype",
    severity: Severity::Refuse,
    summary: "function inputs are fp16, fp32 or bool, outputs fp16 or fp32",
    source:
        "jafreck/ironmill docs/design/ane/ane-op-support-matrix.md (function inputs: fp16, fp32, \
             bool; int8 outputs rejected)",
};

/// One input per function.
pub const SINGLE_INPUT: Rule = Rule {
    id: "single-input",
    severity: Severity::Refuse,
    summary: "one input per function: multi-input requests fail with status 0x1d; pack extra \
              operands into the input's spatial dimension",
    source: "maderix/ANE README (single-input constraint); maderix/ane-prefill-bench \
             compile_dyn_conv; jafreck/ironmill docs/design/ane/ane-constraints.md (multi-input \
             requests can fail with 0x1d)",
};

/// Every dimension at most 16384.
pub const MAX_DIM: Rule = Rule {
    id: "max-dim",
    severity: Severity::Refuse,
    summary: "every tensor dimension is at most 16384",
    source: "docs/ane-notes.md#surface-layout (arozanov/ggml-ane and maderix/ANE tile past it)",
};

/// `[1, C, 1, S]` inputs and outputs with C > 768 need S ≥ 32.
pub const WIDE_CHANNELS_NARROW_SPATIAL: Rule = Rule {
    id: "wide-channels-narrow-spatial",
    severity: Severity::Refuse,
    summary: "a [1, C, 1, S] input or output with C > 768 and S < 32 compiles but fails at \
              evaluation (0x1d); pad S to 32",
    source: "jafreck/ironmill docs/design/ane/ane-constraints.md and \
             docs/archive/ane-attention-split-investigation.md (C=768,S=1 ok; C=800,S=1 fails; \
             C=1024,S=32 ok)",
};

/// Every runtime input at least 32 wide, whatever its channels.
pub const NARROW_INPUT: Rule = Rule {
    id: "narrow-input",
    severity: Severity::Refuse,
    summary: "a function input narrower than 32 returns garbage with no error, whatever its \
              channel count; pad the width to 32",
    source: "skyfallsin/apple-neural-engine-field-guide README.md@4a1b518",
};

/// Beside many channels, widths that are multiples of 32.
pub const SPATIAL_MULTIPLE_OF_32: Rule = Rule {
    id: "spatial-multiple-of-32",
    severity: Severity::Warn,
    summary: "a [1, C, 1, S] input or output with C >= 768 and S not a multiple of 32: one probe \
              saw C=768, S=33 fail at evaluation; every working dyn-conv width is a multiple of 32",
    source: "jafreck/ironmill docs/archive/ane-attention-split-investigation.md (C=768, S=33 \
             fails); maderix/ane-prefill-bench (widths 17664, 5376)",
};

/// Concat on M3 Ultra.
pub const CONCAT_M3_ULTRA: Rule = Rule {
    id: "concat-m3-ultra",
    severity: Severity::Warn,
    summary: "concat is reported rejected on M3 Ultra (accepted on M4 Max)",
    source: "ncdrone/rustane PR #9 and results/2026-03-19_m3ultra_report.md",
};

/// Input widths 14593–14622 fail.
pub const BAD_WIDTHS: Rule = Rule {
    id: "bad-widths",
    severity: Severity::Refuse,
    summary: "an input whose width is 14593 to 14622 fails at evaluation (0x1d)",
    source: "maderix/ane-prefill-bench README.md (\"with complex graphs\")",
};

/// Surfaces are at least 16 KB.
pub const MIN_SURFACE: Rule = Rule {
    id: "min-surface",
    severity: Severity::Refuse,
    summary: "an IOSurface allocation under 16 KB fails with 0x1d (engines allocate at least \
              that; programs are not judged by it)",
    source: "jafreck/ironmill docs/design/ane/ane-constraints.md",
};

/// At least 16 channels and 16 wide.
pub const SMALL_TENSORS: Rule = Rule {
    id: "small-tensors",
    severity: Severity::Warn,
    summary: "evaluation is reported to need at least 16 channels and a width of 16",
    source: "a fork of maderix/ANE, README (one report; ironmill's probes use [1, 32, 1, 32])",
};

/// Ops shown on hardware.
pub const OP_REJECTED: Rule = Rule {
    id: "op-rejected",
    severity: Severity::Refuse,
    summary: "the op is rejected by the ANE compiler",
    source: "jafreck/ironmill docs/design/ane/ane-op-support-matrix.md",
};

/// Ops only compiled, never shown evaluating correctly.
pub const OP_COMPILE_ONLY: Rule = Rule {
    id: "op-compile-only",
    severity: Severity::Warn,
    summary: "the op compiles on the ANE but has not been shown evaluating correctly",
    source: "jafreck/ironmill docs/design/ane/ane-op-support-matrix.md",
};

/// Ops no source shows at all.
pub const OP_UNSEEN: Rule = Rule {
    id: "op-unseen",
    severity: Severity::Warn,
    summary: "no public source shows this op on the ANE",
    source: "jafreck/ironmill docs/design/ane/ane-op-support-matrix.md and the projects above",
};

/// `rsqrt`, `log`, `inverse` need `epsilon`.
pub const EPSILON_REQUIRED: Rule = Rule {
    id: "epsilon-required",
    severity: Severity::Refuse,
    summary: "rsqrt, log and inverse are rejected without their epsilon argument",
    source: "jafreck/ironmill docs/design/ane/ane-op-support-matrix.md (eval with epsilon); \
             maderix/ane-prefill-bench README reports rsqrt and inverse failing (it does not say \
             whether with epsilon)",
};

/// Casts to or from int32 are rejected.
pub const CAST_INT32: Rule = Rule {
    id: "cast-int32",
    severity: Severity::Refuse,
    summary: "cast to or from int32 is rejected (fp16<->fp32 compiles; fp16<->int8/bool evaluates)",
    source: "jafreck/ironmill docs/design/ane/ane-op-support-matrix.md",
};

/// Weights per program: reports disagree.
pub const PROGRAM_WEIGHTS: Rule = Rule {
    id: "program-weights",
    severity: Severity::Warn,
    summary: "a program with more than 8 MB of constant weights: one report saw such a program \
              fail to compile (op count and buffers, not size alone), another runs ~2 GB",
    source: "jafreck/ironmill docs/design/ane/ane-constraints.md (~8 MB, ~37 ops; its archive \
             blames program structure, not bytes); sbryngelson/ANEForge docs/llm.md (~2 GB per \
             program, on the e5rt path)",
};

/// Width-axis slicing on one chip family.
pub const WIDTH_SLICE: Rule = Rule {
    id: "width-slice",
    severity: Severity::Warn,
    summary:
        "on M1 (A13), slice_by_size with a nonzero width offset clamps values beyond ±4094 to \
              ±inf (the runtime's precision check then sends the node to the CPU); clean on A14 \
              and later, and width slices of a packed input pass on M3 Ultra",
    source: "sbryngelson/ANEForge docs/cross-chip.md (h13 slice saturation); ncdrone/rustane \
             results/2026-03-19_m3ultra_report.md (DynMatmul PASS)",
};

/// The opset the sources' programs declare.
pub const OPSET: Rule = Rule {
    id: "opset",
    severity: Severity::Warn,
    summary: "programs shown on hardware declare func main<ios18> in program(1.3)",
    source: "jafreck/ironmill docs/design/ane/ane-op-support-matrix.md; arozanov/ggml-ane",
};

/// Several outputs arrive in the alphabetical order of their names.
pub const OUTPUTS_IN_NAME_ORDER: Rule = Rule {
    id: "outputs-in-name-order",
    severity: Severity::Refuse,
    summary: "a function's outputs arrive sorted by name, not in return order: several outputs \
              must be named so that both orders agree",
    source: "mechramc/Orion docs/ane_constraints.md L21-37 ((q32, k32, v32) arrives as k32, q32, \
             v32); jafreck/ironmill docs/design/ane/ane-inference.md L77",
};

/// Reductions along the channel or the last axis only.
pub const REDUCE_AXES: Rule = Rule {
    id: "reduce-axes",
    severity: Severity::Refuse,
    summary: "reductions are shown on hardware along axis 1 (channels) and the last axis only",
    source: "jafreck/ironmill docs/design/ane/ane-op-support-matrix.md (reduce_sum, reduce_mean, \
             reduce_max, reduce_min: axis -1 and 1); maderix/ANE training/ane_classifier.h \
             (reduce_sum over axis 1 in RMSNorm)",
};

/// A conv's bias goes in an `add` of its own.
pub const CONV_BIAS: Rule = Rule {
    id: "conv-bias",
    severity: Severity::Refuse,
    summary: "conv with a bias argument is reported unsupported: the bias goes in a separate \
              add(conv, b [1, M, 1, 1])",
    source: "mechramc/Orion 65372ff README L261, compiler/codegen.m L69 (\"ANE doesn't support \
             bias= in conv\"), compiler/pipeline.c L21-23; no source shows it working",
};

/// Every rule, for listing.
pub const RULES: &[Rule] = &[
    IO_RANK4,
    IO_DTYPE,
    SINGLE_INPUT,
    MAX_DIM,
    WIDE_CHANNELS_NARROW_SPATIAL,
    NARROW_INPUT,
    BAD_WIDTHS,
    MIN_SURFACE,
    SMALL_TENSORS,
    OP_REJECTED,
    OP_COMPILE_ONLY,
    OP_UNSEEN,
    EPSILON_REQUIRED,
    CAST_INT32,
    PROGRAM_WEIGHTS,
    WIDTH_SLICE,
    OPSET,
    SPATIAL_MULTIPLE_OF_32,
    CONCAT_M3_ULTRA,
    OUTPUTS_IN_NAME_ORDER,
    REDUCE_AXES,
    CONV_BIAS,
];

/// Largest tensor dimension.
pub const ANE_MAX_DIM: usize = 16384;
/// Smallest surface allocation that evaluates.
pub const MIN_SURFACE_BYTES: usize = 16 * 1024;
/// Input widths that fail at evaluation.
pub const BAD_INPUT_WIDTHS: std::ops::RangeInclusive<usize> = 14593..=14622;
/// Past this many channels, a `[1, C, 1, S]` input or output needs S of at least
/// [`MIN_SPATIAL_FOR_WIDE`].
pub const WIDE_CHANNELS: usize = 768;
/// The smallest width a wide-channel input or output evaluates with.
pub const MIN_SPATIAL_FOR_WIDE: usize = 32;
/// Constant weight bytes past which [`PROGRAM_WEIGHTS`] warns.
pub const PROGRAM_WEIGHT_WARN_BYTES: usize = 8 << 20;

/// What is known of an op on the ANE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpStatus {
    /// Compiled and run on hardware inside a working program (compared with a CPU result
    /// where the source says so: ironmill's matrix, maderix's classifier test).
    Eval,
    /// Compiled only.
    CompileOnly,
    /// Refused by the compiler; the known substitute.
    Rejected(&'static str),
}

/// Each op's status, with the source that showed it. Ops missing here are [`OP_UNSEEN`].
pub const OP_STATUS: &[(&str, OpStatus, &str)] = &[
    // the ops the runtime's kernels use, each run on hardware inside a working program
    ("const", OpStatus::Eval, "every program"),
    (
        "conv",
        OpStatus::Eval,
        "arozanov/ggml-ane; maderix/ANE; maderix/ane-prefill-bench",
    ),
    (
        "transpose",
        OpStatus::Eval,
        "arozanov/ggml-ane (ironmill: compile-only alone)",
    ),
    (
        "reshape",
        OpStatus::Eval,
        "maderix/ane-prefill-bench compile_dyn_conv; ironmill (in larger programs)",
    ),
    (
        "slice_by_size",
        OpStatus::Eval,
        "maderix/ane-prefill-bench compile_dyn_conv (ironmill: compile-only alone)",
    ),
    (
        "slice_by_index",
        OpStatus::Eval,
        "ironmill (in larger programs)",
    ),
    ("concat", OpStatus::Eval, "ironmill"),
    (
        "matmul",
        OpStatus::Eval,
        "ironmill (transpose flags as bool consts)",
    ),
    (
        "cast",
        OpStatus::CompileOnly,
        "ironmill (fp16<->fp32 compile-only; int8/bool eval; int32 rejected)",
    ),
    (
        "constexpr_affine_dequantize",
        OpStatus::CompileOnly,
        "ironmill lists dequantize; the constexpr form is unshown",
    ),
    // elementwise and reductions (ironmill's matrix)
    ("add", OpStatus::Eval, "ironmill"),
    ("sub", OpStatus::Eval, "ironmill"),
    ("mul", OpStatus::Eval, "ironmill"),
    ("real_div", OpStatus::Eval, "ironmill"),
    ("maximum", OpStatus::Eval, "ironmill"),
    ("minimum", OpStatus::Eval, "ironmill"),
    ("abs", OpStatus::Eval, "ironmill"),
    ("sqrt", OpStatus::Eval, "ironmill"),
    ("square", OpStatus::Eval, "ironmill"),
    ("exp", OpStatus::Eval, "ironmill"),
    ("exp2", OpStatus::Eval, "ironmill"),
    ("erf", OpStatus::Eval, "ironmill"),
    ("pow", OpStatus::Eval, "ironmill (scalar constant exponent)"),
    ("clip", OpStatus::Eval, "ironmill"),
    ("relu", OpStatus::Eval, "ironmill"),
    ("sigmoid", OpStatus::Eval, "ironmill"),
    ("tanh", OpStatus::Eval, "ironmill"),
    ("softmax", OpStatus::Eval, "ironmill"),
    ("silu", OpStatus::Eval, "ironmill"),
    ("reduce_sum", OpStatus::Eval, "ironmill (axis -1 and 1)"),
    ("reduce_mean", OpStatus::Eval, "ironmill (axis -1 and 1)"),
    ("reduce_max", OpStatus::Eval, "ironmill (axis -1 and 1)"),
    ("reduce_min", OpStatus::Eval, "ironmill (axis -1 and 1)"),
    (
        "layer_norm",
        OpStatus::CompileOnly,
        "ironmill evaluates it only over the last axis without gamma/beta (examples/ane_op_eval.rs \
         L726-754 at a750b7d); over channels, mechramc/Orion builds it from reduce_mean, sub, \
         mul, add, pow (compiler/builder.c L227-283)",
    ),
    (
        "gelu",
        OpStatus::Rejected("the tanh chain of mechramc/Orion compiler/builder.c L285-333"),
        "mechramc/Orion docs/ane_constraints.md L120-132 (fails to compile); no source shows it",
    ),
    ("identity", OpStatus::Eval, "ironmill"),
    ("select", OpStatus::Eval, "ironmill"),
    ("pad", OpStatus::Eval, "ironmill (constant mode)"),
    (
        "tile",
        OpStatus::Rejected("none: broadcasting ops, or the host"),
        "skyfallsin/apple-neural-engine-field-guide README.md@4a1b518: after a program with \
         `tile`, every later evaluation in the process fails (0x1d); ironmill's matrix lists it \
         evaluating inside larger programs",
    ),
    ("quantize", OpStatus::Eval, "ironmill"),
    ("dequantize", OpStatus::Eval, "ironmill"),
    ("rsqrt", OpStatus::Eval, "ironmill (with epsilon only)"),
    ("log", OpStatus::Eval, "ironmill (with epsilon only)"),
    ("inverse", OpStatus::Eval, "ironmill (with epsilon only)"),
    ("split", OpStatus::CompileOnly, "ironmill"),
    ("expand_dims", OpStatus::CompileOnly, "ironmill"),
    ("squeeze", OpStatus::CompileOnly, "ironmill"),
    ("neg", OpStatus::Rejected("mul(x, -1)"), "ironmill"),
    ("mod", OpStatus::Rejected("none known"), "ironmill"),
    (
        "sin",
        OpStatus::Rejected("precomputed tables (RoPE: ironmill, mechramc/Orion)"),
        "ironmill",
    ),
    (
        "cos",
        OpStatus::Rejected("precomputed tables (RoPE: ironmill, mechramc/Orion)"),
        "ironmill",
    ),
    ("tan", OpStatus::Rejected("none known"), "ironmill"),
    ("asin", OpStatus::Rejected("none known"), "ironmill"),
    ("acos", OpStatus::Rejected("none known"), "ironmill"),
    ("sinh", OpStatus::Rejected("none known"), "ironmill"),
    ("cosh", OpStatus::Rejected("none known"), "ironmill"),
    ("reduce_prod", OpStatus::Rejected("none known"), "ironmill"),
    (
        "batch_norm",
        OpStatus::Rejected("mul and add with folded constants"),
        "ironmill",
    ),
    ("avg_pool", OpStatus::Rejected("reduce_mean"), "ironmill"),
    ("max_pool", OpStatus::Rejected("reduce_max"), "ironmill"),
    ("logical_and", OpStatus::Rejected("none known"), "ironmill"),
    ("logical_or", OpStatus::Rejected("none known"), "ironmill"),
    ("logical_xor", OpStatus::Rejected("none known"), "ironmill"),
    ("where", OpStatus::Rejected("select"), "ironmill"),
    ("gather", OpStatus::Rejected("none known"), "ironmill"),
    ("scatter", OpStatus::Rejected("none known"), "ironmill"),
    ("scatter_nd", OpStatus::Rejected("none known"), "ironmill"),
    (
        "scatter_along_axis",
        OpStatus::Rejected("none known"),
        "ironmill",
    ),
];

/// The status of `op`, `None` when no source shows it.
pub fn op_status(op: &str) -> Option<OpStatus> {
    OP_STATUS
        .iter()
        .find(|(name, _, _)| *name == op)
        .map(|(_, status, _)| *status)
}

/// Options of a check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuleOptions {
    /// Allow two inputs per function (the two-input streamed form, an explicit opt-in: some
    /// ANE builds are reported to run equal-size two-input requests).
    pub allow_two_inputs: bool,
}

/// A rule a program breaks, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// The function (index in the program).
    pub function_index: usize,
    /// Where in it (the crate's check positions, so a source map gives line and column).
    pub at: Location,
    /// What, with the numbers.
    pub message: String,
}

impl Violation {
    /// Whether the program is refused for it.
    pub fn refuses(&self) -> bool {
        self.rule.severity == Severity::Refuse
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {} (source: {})",
            self.rule.id, self.message, self.rule.source
        )
    }
}

/// Every rule `program` breaks, refusals and warnings, in source order per function.
pub fn check_rules(program: &Program, options: &RuleOptions) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut weight_bytes = 0usize;
    for (fi, f) in program.functions.iter().enumerate() {
        let mut push = |rule: Rule, at: Location, message: String| {
            out.push(Violation {
                rule,
                function_index: fi,
                at,
                message,
            })
        };
        if f.opset != "ios18" {
            push(
                OPSET,
                Location::Function,
                format!("`{}` declares <{}>", f.name, f.opset),
            );
        }
        if f.params.len() > 1 && !(options.allow_two_inputs && f.params.len() == 2) {
            push(
                SINGLE_INPUT,
                Location::Param(1),
                format!("`{}` takes {} inputs", f.name, f.params.len()),
            );
        }
        for (i, p) in f.params.iter().enumerate() {
            let at = Location::Param(i);
            if let Some(&d) = p.ty.shape().iter().find(|&&d| d > ANE_MAX_DIM) {
                push(
                    MAX_DIM,
                    at,
                    format!(
                        "input `{}` has a dimension of {d} (limit {ANE_MAX_DIM})",
                        p.name
                    ),
                );
            }
            if !matches!(p.ty.dtype(), DType::Fp16 | DType::Fp32 | DType::Bool) {
                push(IO_DTYPE, at, format!("input `{}` is {}", p.name, p.ty));
            }
            io_shape(&mut push, at, "input", &p.name, &p.ty);
            if let Some(&w) = p.ty.shape().last() {
                if BAD_INPUT_WIDTHS.contains(&w) && p.ty.shape().len() == 4 {
                    push(
                        BAD_WIDTHS,
                        at,
                        format!("input `{}` is {w} wide (14593-14622 fail); pad it", p.name),
                    );
                }
            }
        }
        let mut sorted = f.outputs.clone();
        sorted.sort();
        if sorted != f.outputs {
            push(
                OUTPUTS_IN_NAME_ORDER,
                Location::Outputs,
                format!(
                    "outputs ({}) would arrive as ({})",
                    f.outputs.join(", "),
                    sorted.join(", ")
                ),
            );
        }
        for o in &f.outputs {
            let Some(ty) = f.body.iter().find(|s| &s.name == o).map(|s| &s.ty) else {
                continue;
            };
            if !matches!(ty.dtype(), DType::Fp16 | DType::Fp32) {
                push(IO_DTYPE, Location::Outputs, format!("output `{o}` is {ty}"));
            }
            io_shape(&mut push, Location::Outputs, "output", o, ty);
        }
        for (si, s) in f.body.iter().enumerate() {
            let at = Location::Statement(si);
            if let Some(&d) = s.ty.shape().iter().find(|&&d| d > ANE_MAX_DIM) {
                push(
                    MAX_DIM,
                    at,
                    format!("`{}` has a dimension of {d} (limit {ANE_MAX_DIM})", s.name),
                );
            }
            op_rules(&mut push, at, s, f.params.as_slice(), &f.body);
            weight_bytes += blob_bytes(s);
        }
    }
    if weight_bytes > PROGRAM_WEIGHT_WARN_BYTES {
        out.push(Violation {
            rule: PROGRAM_WEIGHTS,
            function_index: 0,
            at: Location::Function,
            message: format!(
                "{:.1} MB of constant weights",
                weight_bytes as f64 / (1 << 20) as f64
            ),
        });
    }
    out
}

/// Whether `program` passes (warnings allowed); the first refusal otherwise.
pub fn first_refusal(program: &Program, options: &RuleOptions) -> Option<Violation> {
    check_rules(program, options)
        .into_iter()
        .find(Violation::refuses)
}

fn io_shape(
    push: &mut impl FnMut(Rule, Location, String),
    at: Location,
    what: &str,
    name: &str,
    ty: &ValueType,
) {
    let shape = ty.shape();
    let [b, c, h, s] = shape else {
        push(
            IO_RANK4,
            at,
            format!("{what} `{name}` is {ty}, not a rank-4 [1, C, 1, S] tensor"),
        );
        return;
    };
    if (*b, *h) != (1, 1) {
        push(
            IO_RANK4,
            at,
            format!("{what} `{name}` is {ty}: batch and height must be 1 ([1, C, 1, S])"),
        );
    }
    if *c > WIDE_CHANNELS && *s < MIN_SPATIAL_FOR_WIDE {
        push(
            WIDE_CHANNELS_NARROW_SPATIAL,
            at,
            format!(
                "{what} `{name}` is [1, {c}, 1, {s}]: more than {WIDE_CHANNELS} channels need a width of at least {MIN_SPATIAL_FOR_WIDE}"
            ),
        );
    }
    if what == "input" && *s < MIN_SPATIAL_FOR_WIDE && *c <= WIDE_CHANNELS {
        push(
            NARROW_INPUT,
            at,
            format!("input `{name}` is [1, {c}, 1, {s}]: every input needs a width of at least {MIN_SPATIAL_FOR_WIDE}"),
        );
    }
    if *c >= WIDE_CHANNELS && *s >= MIN_SPATIAL_FOR_WIDE && !s.is_multiple_of(MIN_SPATIAL_FOR_WIDE)
    {
        push(
            SPATIAL_MULTIPLE_OF_32,
            at,
            format!("{what} `{name}` is [1, {c}, 1, {s}]"),
        );
    }
    if *c < 16 || *s < 16 {
        push(
            SMALL_TENSORS,
            at,
            format!("{what} `{name}` is [1, {c}, 1, {s}]"),
        );
    }
}

fn op_rules(
    push: &mut impl FnMut(Rule, Location, String),
    at: Location,
    s: &Statement,
    params: &[crate::ir::Param],
    body: &[Statement],
) {
    match op_status(&s.op) {
        Some(OpStatus::Rejected(instead)) => push(
            OP_REJECTED,
            at,
            format!(
                "`{}` is rejected by the ANE compiler (instead: {instead})",
                s.op
            ),
        ),
        Some(OpStatus::CompileOnly) if s.op != "cast" => push(
            OP_COMPILE_ONLY,
            at,
            format!("`{}` compiles but has not been shown evaluating", s.op),
        ),
        None => push(OP_UNSEEN, at, format!("`{}` is not shown on the ANE", s.op)),
        _ => {}
    }
    if s.op == "concat" {
        push(CONCAT_M3_ULTRA, at, format!("`{}` concatenates", s.name));
    }
    if s.op.starts_with("reduce_") {
        let rank = s
            .args
            .iter()
            .find(|(k, _)| k == "x")
            .and_then(|(_, a)| match a {
                Arg::Var(v) => type_of(v, params, body).map(|t| t.shape().len() as i64),
                _ => None,
            });
        let axes = match s.args.iter().find(|(k, _)| k == "axes").map(|(_, a)| a) {
            Some(Arg::Var(v)) => const_ints(v, body),
            Some(Arg::Literal(Literal::Tensor(t))) => t.as_i64s(),
            _ => None,
        };
        let allowed = |a: i64| a == 1 || a == -1 || Some(a + 1) == rank;
        match (axes, rank) {
            (Some(axes), Some(_)) if axes.iter().all(|&a| allowed(a)) => {}
            (axes, _) => push(
                REDUCE_AXES,
                at,
                format!("`{}` reduces axes {axes:?}", s.name),
            ),
        }
    }
    if s.op == "conv" && s.input("bias").is_some() {
        push(CONV_BIAS, at, format!("`{}` takes a bias", s.name));
    }
    if matches!(s.op.as_str(), "rsqrt" | "log" | "inverse") && s.input("epsilon").is_none() {
        push(
            EPSILON_REQUIRED,
            at,
            format!("`{}` without `epsilon`", s.op),
        );
    }
    if s.op == "cast" {
        let from = s
            .args
            .iter()
            .find(|(k, _)| k == "x")
            .and_then(|(_, a)| match a {
                Arg::Var(v) => type_of(v, params, body).map(ValueType::dtype),
                _ => None,
            });
        let to = s.ty.dtype();
        if from == Some(DType::Int32) || to == DType::Int32 {
            push(
                CAST_INT32,
                at,
                format!("`{}` casts to or from int32", s.name),
            );
        } else if matches!(
            (from, to),
            (Some(DType::Fp16), DType::Fp32) | (Some(DType::Fp32), DType::Fp16)
        ) {
            push(
                OP_COMPILE_ONLY,
                at,
                format!(
                    "`{}`: cast between fp16 and fp32 compiles but has not been shown evaluating",
                    s.name
                ),
            );
        }
    }
    if matches!(s.op.as_str(), "slice_by_size" | "slice_by_index") {
        // a zero width offset takes the clean route on every chip; only a nonzero one warns
        let begin = s
            .args
            .iter()
            .find(|(k, _)| k == "begin")
            .and_then(|(_, a)| match a {
                Arg::Var(v) => const_ints(v, body),
                Arg::Literal(Literal::Tensor(t)) => t.as_i64s(),
                Arg::Literal(_) => None,
                Arg::Tuple(_) => None,
            });
        if let Some(&w) = begin.as_ref().and_then(|b| b.last()) {
            if w != 0 {
                push(
                    WIDTH_SLICE,
                    at,
                    format!("`{}` slices the width from column {w}", s.name),
                );
            }
        }
    }
}

/// The integers of a `const` statement called `name`.
fn const_ints(name: &str, body: &[Statement]) -> Option<Vec<i64>> {
    let s = body.iter().find(|s| s.name == name && s.op == "const")?;
    s.attributes
        .iter()
        .find(|(k, _)| k == "val")
        .and_then(|(_, l)| match l {
            Literal::Tensor(t) => t.as_i64s(),
            _ => None,
        })
}

/// The declared type of a parameter or statement result.
fn type_of<'a>(
    name: &str,
    params: &'a [crate::ir::Param],
    body: &'a [Statement],
) -> Option<&'a ValueType> {
    params
        .iter()
        .find(|p| p.name == name)
        .map(|p| &p.ty)
        .or_else(|| body.iter().find(|s| s.name == name).map(|s| &s.ty))
}

/// Bytes of BLOBFILE constants a statement declares.
fn blob_bytes(s: &Statement) -> usize {
    s.attributes
        .iter()
        .map(|(_, v)| v)
        .chain(s.literal_args())
        .map(|l| match l {
            Literal::Blob(b) => {
                crate::types::checked_bytes(b.dtype, &b.shape).unwrap_or(usize::MAX)
            }
            _ => 0,
        })
        .fold(0usize, usize::saturating_add)
}
