//! `ane doctor`: everything a first run on a machine should establish, in one command — the
//! engines and why one is unavailable, each kernel form compiled and evaluated against f64
//! (the self-probe) with its layouts and times, the rulebook on the bundled program, and the
//! questions only hardware answers, marked skipped with the reason where this engine cannot
//! answer them. Ends with a summary and a verdict; `--json` and `--markdown` write the report.

mod ggml_binding;
mod limit_probes;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use ane_mil::rules::{check_rules, RuleOptions};
use ane_runtime::matmul::probe::{probe, PROBE_SHAPE};
use ane_runtime::matmul::{
    baked_matmul_program, baked_weights, matmul_program, two_input_matmul_program, KernelKind,
    KernelPolicy,
};
use ane_runtime::{EngineChoice, EngineKind, Kernel};
use anyhow::Context;

use crate::settings::EngineArgs;

#[derive(clap::Args)]
pub(crate) struct DoctorArgs {
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    routing: crate::info::RoutingArgs,
    /// Write the report as JSON (a `probes` list: name, status, reason, figures).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the report as Markdown, to paste into an issue.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// The limit probes (largest baked weight, kernels loaded at once, smallest wide width),
    /// about 80 compiles: `auto` runs them on an ANE engine only.
    #[arg(long, value_enum, default_value = "auto")]
    limits: LimitsChoice,
    /// Ceiling of the largest-baked-weight bisection, in rows of 2048 fp16 (16384: 64 MiB).
    #[arg(long, default_value_t = 16384)]
    max_baked_rows: usize,
    /// Ceiling of the loaded-kernels probe.
    #[arg(long, default_value_t = 60)]
    max_loaded: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LimitsChoice {
    /// On an ANE engine (apple, coreml) only.
    Auto,
    /// On any engine.
    On,
    /// Never.
    Off,
}

/// What one probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pass,
    Fail,
    Skipped,
}

struct Probe {
    name: String,
    status: Status,
    /// Why it failed or was skipped; what it measured otherwise.
    detail: String,
    figures: Vec<(String, String)>,
}

impl Probe {
    fn new(name: &str, status: Status, detail: impl Into<String>) -> Self {
        Probe {
            name: name.to_string(),
            status,
            detail: detail.into(),
            figures: Vec::new(),
        }
    }

    fn figure(mut self, key: &str, value: impl ToString) -> Self {
        self.figures.push((key.to_string(), value.to_string()));
        self
    }
}

impl Status {
    fn as_str(&self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skipped => "skipped",
        }
    }
}

/// `s` as a JSON string literal.
pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What the backend measured on this chip (ggml-ane's `routing-verdicts.tsv` in the kernel
/// cache: `chip|os|engine|gpu, m, k, bucket, engine µs, GPU µs` a line), in one line.
fn measured_line(cache: &crate::settings::CacheArgs, chip: &str) -> String {
    let Some(path) = cache.disk().map(|d| d.dir().join("routing-verdicts.tsv")) else {
        return "kernel cache off: no verdicts kept".into();
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return format!(
            "nothing yet: the backend times each matmul shape against the GPU on first use \
             and keeps the verdicts in {}",
            path.display()
        );
    };
    let rows: Vec<(String, f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let [key, m, k, b, e, g] = f[..] else {
                return None;
            };
            key.starts_with(&format!("{chip}|"))
                .then(|| Some((format!("{m}x{k}x{b}"), e.parse().ok()?, g.parse().ok()?)))
                .flatten()
        })
        .collect();
    if rows.is_empty() {
        return format!("no verdicts for this chip in {}", path.display());
    }
    let faster = rows.iter().filter(|(_, e, g)| e < g).count();
    let shown: Vec<String> = rows
        .iter()
        .take(4)
        .map(|(s, e, g)| format!("{s} engine {:.2} ms / GPU {:.2} ms", e / 1e3, g / 1e3))
        .collect();
    format!(
        "{} shapes timed, the engine faster on {faster}: {}{}",
        rows.len(),
        shown.join(", "),
        if rows.len() > 4 { ", …" } else { "" }
    )
}

pub(crate) fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut probes = Vec::new();
    probes.push(Probe::new(
        "machine",
        Status::Pass,
        format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
    ));
    // the chip table's row, what the backend's routing decides on it, and the cost model's
    // prediction (timing the model's own shapes here, to set beside it, is #21's next step)
    let (row, route) = args.routing.lines();
    let mut chip = Probe::new("chip", Status::Pass, row).figure(
        "routing",
        format!("GGML_ANE_MODE={}: {route}", args.routing.mode),
    );
    if let Ok(Some(c)) = ane_runtime::chips::identify(args.routing.chip.as_deref()) {
        chip = chip
            .figure(
                "predicted",
                crate::plan::chip_cost::doctor_line(c, args.routing.mode),
            )
            .figure("measured", measured_line(&args.engine.cache, c.name));
    }
    probes.push(chip);

    // engines: available or why not
    let two_input_config = args.engine.config(KernelPolicy::TwoInput);
    for kind in [EngineKind::Apple, EngineKind::CoreMl, EngineKind::Reference] {
        let name = format!("engine {kind}");
        probes.push(
            match ane_runtime::create(EngineChoice::Only(kind), &two_input_config) {
                Ok(e) => {
                    let mut p = Probe::new(&name, Status::Pass, e.info().description);
                    for (k, v) in e.info().details {
                        p = p.figure(&k, v);
                    }
                    p
                }
                Err(err) => Probe::new(&name, Status::Skipped, err.to_string()),
            },
        );
    }

    // the engine under test, with the two-input opt-in so that form can be probed too
    let engine = ane_runtime::create(args.engine.engine, &two_input_config)?;
    let kind = engine.info().kind;

    // each kernel form: the self-probe job against f64, and its layouts and compile time
    let forms = [
        KernelKind::Baked,
        KernelKind::Streamed,
        KernelKind::TwoInput,
    ];
    let (m, k, n) = PROBE_SHAPE;
    for (form, result) in forms.iter().zip(probe(engine.as_ref(), &forms)) {
        let name = format!("form {form}");
        let mut p = match &result.outcome {
            Ok(nmse) => Probe::new(&name, Status::Pass, format!("{m}x{k}x{n} against f64"))
                .figure("nmse", format!("{nmse:.2e}")),
            Err(why) => Probe::new(&name, Status::Fail, why.clone()),
        };
        p = p.figure("compiles", result.compiles);
        let (program, weights) = match form {
            KernelKind::Baked => (
                baked_matmul_program(m, k, 64),
                baked_weights(m, k, &vec![half::f16::ZERO; m * k]),
            ),
            KernelKind::TwoInput => (two_input_matmul_program(m, k, 64), Default::default()),
            _ => (matmul_program(m, k, 64), Default::default()),
        };
        let t = Instant::now();
        match engine.compile(&program, &weights) {
            Ok(kernel) => {
                p = p.figure(
                    "compile_ms",
                    format!("{:.2}", t.elapsed().as_secs_f64() * 1e3),
                );
                let kernel: &dyn Kernel = kernel.as_ref();
                for l in kernel.procedures()[0]
                    .inputs
                    .iter()
                    .chain(&kernel.procedures()[0].outputs)
                {
                    p = p.figure(&format!("layout {}", l.name), l);
                }
            }
            Err(e) => p = p.figure("compile", e),
        }
        probes.push(p);
    }

    // which ggml the backend library built beside this `ane` binds to in a host
    if let Some((passed, detail)) = ggml_binding::check() {
        let status = match passed {
            Some(true) => Status::Pass,
            Some(false) => Status::Fail,
            None => Status::Skipped,
        };
        probes.push(Probe::new("ggml binding", status, detail));
    }

    // the rulebook on the bundled program arozanov/ggml-ane generates
    let seed = ane_mil::parse(&seed_text()).context("the bundled seed program")?;
    let refused = check_rules(&seed, &RuleOptions::default())
        .iter()
        .filter(|v| v.refuses())
        .count();
    probes.push(if refused == 0 {
        Probe::new(
            "rulebook",
            Status::Pass,
            "the seed program passes the ANE rulebook",
        )
    } else {
        Probe::new(
            "rulebook",
            Status::Fail,
            format!("{refused} refusals on the seed program"),
        )
    });

    // what only hardware answers
    let on_hardware = matches!(kind, EngineKind::Apple | EngineKind::CoreMl);
    // two-input requests: the `form two-input` probe above evaluates one (0x1d is reported
    // for them); on an ANE engine its line is the answer
    let two_input = probes
        .iter()
        .find(|p| p.name == "form two-input")
        .map(|p| (p.status, p.detail.clone()));
    probes.push(match (on_hardware, two_input) {
        (true, Some((Status::Pass, _))) => Probe::new(
            "two-input requests",
            Status::Pass,
            "a two-input request evaluates correctly (the `form two-input` probe)",
        ),
        (true, Some((_, why))) => Probe::new(
            "two-input requests",
            Status::Pass,
            format!("two-input requests fail here, as reported (0x1d): {why}"),
        ),
        _ => Probe::new(
            "two-input requests",
            Status::Skipped,
            format!(
                "whether two-input requests evaluate or fail with 0x1d: needs an ANE (the {kind} engine cannot answer)"
            ),
        ),
    });

    // power: a streamed matmul for a window after an idle baseline (macOS: IOReport)
    let (pm, pk, pn) = (2048, 2048, 256);
    let cache = ane_runtime::matmul::KernelCache::new().with_policy(KernelPolicy::Streamed);
    probes.push(
        match crate::power::matmul_power(engine.as_ref(), &cache, (pm, pk, pn), 3.0) {
            Ok(r) => {
                // flags (a short window, an ANE counter reading zero) qualify the figures;
                // they are no failure of the backend
                let flagged = if r.flags.is_empty() {
                    ""
                } else {
                    "; flagged, see below"
                };
                let mut p = Probe::new(
                    "power",
                    Status::Pass,
                    format!(
                        "{pm}x{pk}x{pn} streamed, energy per call above idle (IOReport){flagged}"
                    ),
                );
                for (k, v) in crate::power::figures(&r, 2.0 * (pm * pk * pn) as f64) {
                    p = p.figure(&k, v);
                }
                p
            }
            Err(why) => Probe::new("power", Status::Skipped, why),
        },
    );

    // the limits the sources disagree on, by bisection, last (they spend ~80 compiles)
    let run_limits = match args.limits {
        LimitsChoice::On => true,
        LimitsChoice::Off => false,
        LimitsChoice::Auto => on_hardware,
    };
    if run_limits {
        // the loaded-kernels probe last: it may use the budget up
        for limit in [
            limit_probes::daemon_cache(engine.as_ref()),
            limit_probes::smallest_wide_width(engine.as_ref()),
            limit_probes::largest_baked_weight(engine.as_ref(), args.max_baked_rows.max(16)),
            limit_probes::loaded_kernels(engine.as_ref(), args.max_loaded),
        ] {
            let mut p = Probe::new(limit.name, Status::Pass, limit.detail);
            for (k, v) in limit.figures {
                p = p.figure(&k, v);
            }
            probes.push(p);
        }
    } else {
        for (name, what) in [
            ("daemon cache", "whether compiling a program twice hits the daemon's cache (the second compile's time)"),
            ("largest baked weight", "the largest baked weight one program compiles (~8 MB per ironmill, ~2 GB per ANEForge), by bisection"),
            ("loaded kernels", "how many kernels stay loaded at once (~55 per ironmill)"),
            ("smallest wide width", "the smallest S a [1, C > 768, 1, S] input may have (32 per ironmill), by bisection"),
        ] {
            probes.push(Probe::new(
                name,
                Status::Skipped,
                format!("{what}: not run on the {kind} engine (`--limits on` runs it; ~80 compiles)"),
            ));
        }
    }

    // summary and verdict
    let count = |s: Status| probes.iter().filter(|p| p.status == s).count();
    let (pass, fail, skipped) = (
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Skipped),
    );
    let verdict = if fail > 0 {
        format!("{fail} probe(s) failed: the backend leaves those forms out (see above)")
    } else if on_hardware {
        "the ANE runs every kernel form the backend uses".to_string()
    } else {
        format!("no ANE here: the {kind} engine passes every probe it can answer")
    };
    let mut text = String::new();
    for p in &probes {
        let _ = writeln!(text, "{:<22} {:<8} {}", p.name, p.status.as_str(), p.detail);
        for (k, v) in &p.figures {
            let _ = writeln!(text, "{:<22} {:<8}   {k}: {v}", "", "");
        }
    }
    let _ = writeln!(
        text,
        "summary: {pass} pass, {fail} fail, {skipped} skipped ({kind} engine)"
    );
    let _ = writeln!(text, "verdict: {verdict}");
    print!("{text}");

    if let Some(path) = &args.json {
        let items: Vec<String> = probes
            .iter()
            .map(|p| {
                let figures: Vec<String> = p
                    .figures
                    .iter()
                    .map(|(k, v)| format!("{}: {}", json_string(k), json_string(v)))
                    .collect();
                format!(
                    "{{\"name\": {}, \"status\": {}, \"reason\": {}, \"figures\": {{{}}}}}",
                    json_string(&p.name),
                    json_string(p.status.as_str()),
                    json_string(&p.detail),
                    figures.join(", ")
                )
            })
            .collect();
        let json = format!(
            "{{\"engine\": {}, \"verdict\": {}, \"summary\": {{\"pass\": {pass}, \"fail\": {fail}, \"skipped\": {skipped}}}, \"probes\": [{}]}}\n",
            json_string(kind.as_str()),
            json_string(&verdict),
            items.join(", ")
        );
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        let md = format!("### ane doctor ({kind} engine)\n\n```\n{text}```\n");
        std::fs::write(path, md).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if fail > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The program arozanov/ggml-ane generates for a 96×80 weight and 50 tokens (as bundled in
/// `examples/seed-matmul`).
fn seed_text() -> String {
    include_str!("../../../../examples/seed-matmul/model.mil").to_string()
}
