//! `ane mil check`, `ane mil run` and `ane mil package`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use ane_mil::rules::{check_rules, RuleOptions};
use ane_mil::text::error::{render_diagnostic, render_labelled};
use ane_mil::{check_program, parse_with_spans, Program, SourceMap};
use ane_runtime::matmul::KernelPolicy;
use ane_runtime::Surface;
use anyhow::{bail, Context};

use crate::npy;
use crate::settings::EngineArgs;

#[derive(clap::Subcommand)]
pub(crate) enum MilCommand {
    /// Parse and type-check a MIL program; print each function's signature. With `--target
    /// ane`, also judge it by the ANE rulebook: every broken rule with its line and source;
    /// exit 1 when one refuses the program.
    Check {
        /// The MIL text file.
        file: PathBuf,
        /// The folder `@model_path/` stands for; BLOBFILE constants are checked against it.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// What the program must run on: `any` (type-check only) or `ane` (the rulebook too).
        #[arg(long, value_enum, default_value_t = Target::Any)]
        target: Target,
        /// With `--target ane`: allow two inputs per function (the two-input opt-in form).
        #[arg(long)]
        allow_two_inputs: bool,
    },
    /// Run a MIL program on an engine with `.npy` inputs; write each output as `OUT/<name>.npy` (fp32).
    Run {
        /// The MIL text file.
        file: PathBuf,
        /// The folder `@model_path/` stands for (weights at DIR/weights/*.bin).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// An input: NAME=FILE.npy (float16/32/64 or int), once per parameter.
        #[arg(long = "input", value_name = "NAME=FILE.npy")]
        inputs: Vec<String>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// The function to run.
        #[arg(long, default_value = "main")]
        function: String,
        #[command(flatten)]
        engine: EngineArgs,
        /// Compare an output with expected values: NAME=FILE.npy; exit 1 past --max-nmse.
        #[arg(long = "expect", value_name = "NAME=FILE.npy")]
        expect: Vec<String>,
        /// Largest normalised mean squared error accepted by --expect (test-backend-ops uses 5e-4).
        #[arg(long, default_value_t = 5e-4)]
        max_nmse: f64,
    },
    /// Turn a MIL program into a Core ML model package (.mlpackage) for the public Core ML path.
    Package {
        /// The MIL text file.
        file: PathBuf,
        /// The folder `@model_path/` stands for (weights at DIR/weights/*.bin).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// The package folder to write (e.g. kernel.mlpackage).
        #[arg(long)]
        out: PathBuf,
        /// The function to package (packages hold one; default: the only one).
        #[arg(long)]
        function: Option<String>,
    },
}

pub(crate) fn run(cmd: MilCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        MilCommand::Check {
            file,
            weights,
            target,
            allow_two_inputs,
        } => check(&file, weights.as_deref(), target, allow_two_inputs),
        MilCommand::Run {
            file,
            weights,
            inputs,
            out,
            function,
            engine,
            expect,
            max_nmse,
        } => {
            let outputs =
                run_program(&file, weights.as_deref(), &inputs, &out, &function, &engine)?;
            compare(&outputs, &expect, max_nmse)
        }
        MilCommand::Package {
            file,
            weights,
            out,
            function,
        } => package(&file, weights.as_deref(), &out, function.as_deref()),
    }
}

fn package(
    file: &Path,
    weights: Option<&Path>,
    out: &Path,
    function: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let Some((_, program, _)) = load(file)? else {
        return Ok(ExitCode::FAILURE);
    };
    let w = weights_for(weights, &program)?;
    let pkg = ane_mil::coreml::package(&program, function, &w)?;
    pkg.write_to(out)
        .with_context(|| format!("writing {}", out.display()))?;
    let bytes: usize = pkg.files.iter().map(|(_, b)| b.len()).sum();
    println!(
        "wrote {} ({} files, {bytes} bytes)",
        out.display(),
        pkg.files.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Parses, or prints the rendered diagnostic and returns `None`.
fn load(file: &Path) -> anyhow::Result<Option<(String, Program, SourceMap)>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    match parse_with_spans(&text) {
        Ok((p, map)) => Ok(Some((text, p, map))),
        Err(e) => {
            eprint!("{}", e.render(&file.display().to_string(), &text));
            Ok(None)
        }
    }
}

fn weights_for(dir: Option<&Path>, p: &Program) -> anyhow::Result<ane_mil::WeightFiles> {
    match dir {
        Some(d) => Ok(ane_runtime::weights::load_model_dir(d, p)?),
        None if p.blob_refs().next().is_some() => {
            bail!("the program has BLOBFILE constants; pass --weights DIR (the folder @model_path/ stands for)")
        }
        None => Ok(ane_mil::WeightFiles::new()),
    }
}

/// What `mil check` judges a program for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Target {
    /// Any engine: parse and type-check.
    Any,
    /// The ANE: the rulebook as well.
    Ane,
}

/// Prints every rule `program` breaks; returns whether one refuses it.
fn print_rule_violations(
    path: &str,
    text: &str,
    program: &Program,
    map: &SourceMap,
    options: &RuleOptions,
) -> bool {
    let violations = check_rules(program, options);
    for v in &violations {
        let label = if v.refuses() { "error" } else { "warning" };
        let message = format!("[{}] {}", v.rule.id, v.message);
        let notes = [
            format!("rule: {}", v.rule.summary),
            format!("source: {}", v.rule.source),
        ];
        match v.at.span(map, v.function_index) {
            Some(span) => eprint!(
                "{}",
                render_labelled(label, path, text, span, &message, &notes)
            ),
            None => eprintln!("{label}: {path}: {message}"),
        }
    }
    let refused = violations.iter().filter(|v| v.refuses()).count();
    let warned = violations.len() - refused;
    eprintln!("ane rules: {refused} refused, {warned} warnings");
    refused > 0
}

fn check(
    file: &Path,
    weights: Option<&Path>,
    target: Target,
    allow_two_inputs: bool,
) -> anyhow::Result<ExitCode> {
    let Some((text, program, map)) = load(file)? else {
        return Ok(ExitCode::FAILURE);
    };
    let refused = target == Target::Ane && {
        let mut options = RuleOptions::default();
        options.allow_two_inputs = allow_two_inputs;
        print_rule_violations(&file.display().to_string(), &text, &program, &map, &options)
    };
    let w = match weights {
        Some(d) => Some(ane_runtime::weights::load_model_dir(d, &program)?),
        None => None,
    };
    match check_program(&program, w.as_ref()) {
        Ok(functions) => {
            for f in &functions {
                println!("{}", f.signature());
                // what each product sums: the ANE's throughput follows it (docs/ane-rules.md)
                let sums: Vec<String> = f
                    .product_sums()
                    .iter()
                    .map(|(name, k)| format!("{name} {k}"))
                    .collect();
                if !sums.is_empty() {
                    println!("  products sum (K): {}", sums.join(", "));
                }
            }
            Ok(if refused {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Err(e) => {
            let path = file.display().to_string();
            match e.span(&map) {
                Some(span) => eprint!(
                    "{}",
                    render_diagnostic(&path, &text, span, &e.to_string(), &[])
                ),
                None => eprintln!("error: {path}: {e}"),
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn squeeze(shape: &[usize]) -> &[usize] {
    let lead = shape.iter().take_while(|&&d| d == 1).count();
    &shape[lead.min(shape.len().saturating_sub(1))..]
}

fn run_program(
    file: &Path,
    weights: Option<&Path>,
    inputs: &[String],
    out: &Path,
    function: &str,
    engine_args: &EngineArgs,
) -> anyhow::Result<Vec<Surface>> {
    let Some((_, program, _)) = load(file)? else {
        bail!("{} does not parse", file.display());
    };
    let w = weights_for(weights, &program)?;
    let engine = engine_args.create(KernelPolicy::Auto)?;
    let t0 = Instant::now();
    let kernel = engine
        .compile(&program, &w)
        .with_context(|| format!("compiling {}", file.display()))?;
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    let index = kernel.procedure_index(function)?;
    let proc_ = kernel.procedures()[index].clone();

    let mut given: Vec<(String, PathBuf)> = Vec::new();
    for spec in inputs {
        let (name, path) = spec
            .split_once('=')
            .with_context(|| format!("--input `{spec}` is not NAME=FILE.npy"))?;
        if given.iter().any(|(n, _)| n == name) {
            bail!("--input {name} is given twice");
        }
        given.push((name.to_string(), PathBuf::from(path)));
    }
    let mut surfaces = Vec::new();
    for layout in &proc_.inputs {
        let Some((_, path)) = given.iter().find(|(n, _)| *n == layout.name) else {
            bail!(
                "missing --input {}=FILE.npy (shape {:?})",
                layout.name,
                layout.shape
            );
        };
        let a = npy::read(path)?;
        if squeeze(&a.shape) != squeeze(&layout.shape) {
            bail!(
                "{}: shape {:?} does not match parameter `{}` {:?}",
                path.display(),
                a.shape,
                layout.name,
                layout.shape
            );
        }
        let mut s = Surface::new(layout.clone());
        s.write_f32(&a.values)?;
        surfaces.push(s);
    }
    if let Some((n, _)) = given
        .iter()
        .find(|(n, _)| !proc_.inputs.iter().any(|l| &l.name == n))
    {
        bail!("`{function}` has no parameter `{n}`");
    }
    let mut outputs: Vec<Surface> = proc_
        .outputs
        .iter()
        .map(|l| Surface::new(l.clone()))
        .collect();
    let t1 = Instant::now();
    {
        let ins: Vec<&Surface> = surfaces.iter().collect();
        let mut outs: Vec<&mut Surface> = outputs.iter_mut().collect();
        kernel.eval(index, &ins, &mut outs)?;
    }
    let eval_ms = t1.elapsed().as_secs_f64() * 1e3;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    println!(
        "{} on {}: compile {compile_ms:.1} ms, eval {eval_ms:.1} ms",
        proc_.name,
        engine.info().kind
    );
    for s in &outputs {
        let path = out.join(format!("{}.npy", s.layout().name));
        npy::write_f32(&path, &s.layout().shape, &s.read_f32())?;
        println!(
            "  {} {:?} -> {}",
            s.layout().name,
            s.layout().shape,
            path.display()
        );
    }
    Ok(outputs)
}

/// Normalised mean squared error, as ggml's test-backend-ops computes it.
fn nmse(got: &[f32], want: &[f32]) -> f64 {
    let (mut err, mut norm) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        err += (g as f64 - w as f64).powi(2);
        norm += (w as f64).powi(2);
    }
    err / norm
}

fn compare(outputs: &[Surface], expect: &[String], max_nmse: f64) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    for spec in expect {
        let (name, path) = spec
            .split_once('=')
            .with_context(|| format!("--expect `{spec}` is not NAME=FILE.npy"))?;
        let s = outputs
            .iter()
            .find(|s| s.layout().name == name)
            .with_context(|| format!("--expect {name}: no output called `{name}`"))?;
        let want = npy::read(Path::new(path))?;
        if squeeze(&want.shape) != squeeze(&s.layout().shape) {
            bail!(
                "{path}: shape {:?} does not match output `{name}` {:?}",
                want.shape,
                s.layout().shape
            );
        }
        let got = s.read_f32();
        let max_err = got
            .iter()
            .zip(&want.values)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        let e = nmse(&got, &want.values);
        let verdict = if e <= max_nmse { "ok" } else { "MISMATCH" };
        ok &= e <= max_nmse;
        println!("  {name} vs {path}: max |err| {max_err:.3e}, nmse {e:.3e} (limit {max_nmse:.0e}): {verdict}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
