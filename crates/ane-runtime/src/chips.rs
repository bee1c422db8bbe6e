//! What is known about the ANE, chip by chip, and whether to use it: a table with the source of
//! every figure (`../shared/research/hardware-2026-12.md` gathers them; none was measured by
//! this project), the chip this process runs on, and the routing decision a [`Mode`] makes
//! from them. `?` (None) where no source gives a figure.
//!
//! The evidence, in short: on an M2 Pro and an M3 Ultra the ANE prefills faster than the GPU
//! and at a fraction of its energy; on M5-class chips the GPU's Neural Accelerators win prefill
//! (an ANE offload cost ds4-ssd 24.9 % on an M5 Max; the GPU is 2.9–15.9× faster on an M5 Pro),
//! while the ANE still spends less energy per token on prompts of 500–2 K tokens (M5 Pro).

use std::fmt;

use crate::engine::Accumulator;

/// Which side a source found faster (or cheaper).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The ANE, measured on this chip.
    Ane,
    /// The ANE, inferred: no measurement on this chip, but every measured chip of its kind
    /// (an ANE beside a GPU without Neural Accelerators) had the ANE winning.
    AneInferred,
    /// The GPU, measured on this chip.
    Gpu,
    /// The GPU, inferred from chips of the same generation.
    GpuInferred,
}

impl Verdict {
    /// Whether the ANE is the side to take.
    pub fn ane(self) -> bool {
        matches!(self, Verdict::Ane | Verdict::AneInferred)
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::Ane => "ANE (measured)",
            Verdict::AneInferred => "ANE (inferred)",
            Verdict::Gpu => "GPU (measured)",
            Verdict::GpuInferred => "GPU (inferred)",
        }
    }
}

/// One chip's row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Chip {
    /// As `machdep.cpu.brand_string` names it, without "Apple ": `M2 Pro`.
    pub name: &'static str,
    /// Neural Engines (the Ultras and the M6 have two, which only asynchronous, large calls
    /// keep busy).
    pub anes: u8,
    /// The GPU has matmul Neural Accelerators (the M5 family); `None` where no source says.
    pub neural_accelerators: Option<bool>,
    /// One fp16 GEMM per ANE call, TFLOPS (ANEForge ROOFLINES), low and high.
    pub ane_single_tflops: Option<(f32, f32)>,
    /// Chained or fused ANE programs, TFLOPS.
    pub ane_fused_tflops: Option<f32>,
    /// The GPU on the same work, TFLOPS.
    pub gpu_tflops: Option<f32>,
    /// Prefill speed: who wins.
    pub speed: Verdict,
    /// Energy per token: who wins.
    pub energy: Verdict,
    /// How its ANE sums products: Q15.16 on the M6 (its study); f32 assumed elsewhere, where
    /// no source says.
    pub accumulator: Accumulator,
    /// Where the figures and verdicts come from.
    pub sources: &'static str,
}

const ANEFORGE: &str = "single GEMM: ANEForge ROOFLINES (landscape-2026-11.md)";

/// Every chip with a row, oldest first.
pub const CHIPS: &[Chip] = &[
    Chip {
        name: "M1",
        anes: 1,
        neural_accelerators: Some(false),
        ane_single_tflops: Some((2.7, 4.3)),
        ane_fused_tflops: None,
        gpu_tflops: None,
        speed: Verdict::AneInferred,
        energy: Verdict::AneInferred,
        accumulator: Accumulator::F32,
        sources: ANEFORGE,
    },
    Chip {
        name: "M1 Max",
        anes: 1,
        neural_accelerators: Some(false),
        ane_single_tflops: Some((4.6, 4.6)),
        ane_fused_tflops: None,
        gpu_tflops: None,
        speed: Verdict::AneInferred,
        energy: Verdict::AneInferred,
        accumulator: Accumulator::F32,
        sources: ANEFORGE,
    },
    Chip {
        name: "M2 Pro",
        anes: 1,
        neural_accelerators: Some(false),
        ane_single_tflops: Some((3.4, 3.4)),
        ane_fused_tflops: Some(12.16),
        gpu_tflops: Some(4.94),
        speed: Verdict::Ane,
        energy: Verdict::Ane,
        accumulator: Accumulator::F32,
        sources: "trisanths/ane-llm-prefill README.md, results/power.md @45f9692: 8 chained \
                  4096² fp16 linears, ANE 12.16 TFLOPS at 8.70 W vs GPU 4.94 at 21.76 W; \
                  Qwen3-0.6B 512-token prefill 4,649 vs 3,913 tok/s (MLX GPU); ANEForge",
    },
    Chip {
        name: "M3 Ultra",
        anes: 2,
        neural_accelerators: Some(false),
        ane_single_tflops: None,
        ane_fused_tflops: None,
        gpu_tflops: None,
        speed: Verdict::Ane,
        energy: Verdict::AneInferred,
        accumulator: Accumulator::F32,
        sources: "Anemll/ds4-ssd M3U_RECOMMENDATIONS.md @0fb1864: shared expert on the ANE, \
                  +22.6 % prefill (220 -> 270 t/s)",
    },
    Chip {
        name: "M4",
        anes: 1,
        neural_accelerators: Some(false),
        ane_single_tflops: Some((5.4, 5.7)),
        ane_fused_tflops: None,
        gpu_tflops: None,
        speed: Verdict::AneInferred,
        energy: Verdict::AneInferred,
        accumulator: Accumulator::F32,
        sources: ANEFORGE,
    },
    Chip {
        name: "M5",
        anes: 1,
        neural_accelerators: Some(true),
        ane_single_tflops: Some((8.7, 8.7)),
        ane_fused_tflops: None,
        gpu_tflops: None,
        speed: Verdict::GpuInferred,
        energy: Verdict::AneInferred,
        accumulator: Accumulator::F32,
        sources: "inferred from the M5 Pro and M5 Max rows; ANEForge",
    },
    Chip {
        name: "M5 Pro",
        anes: 1,
        neural_accelerators: Some(true),
        ane_single_tflops: Some((10.0, 10.0)),
        ane_fused_tflops: None,
        gpu_tflops: None,
        speed: Verdict::Gpu,
        energy: Verdict::Ane,
        accumulator: Accumulator::F32,
        sources: "cadamcat/llms-on-apple-neural-engine README.md @0225236 (Core AI, Qwen3-4B \
                  fp16): GPU prefill 2.9-15.9x faster; ANE energy per prompt token 0.68-0.81x \
                  the GPU's for 500-2K-token prompts, 0.90-1.33x for 4-16K; ANEForge",
    },
    Chip {
        name: "M5 Max",
        anes: 1,
        neural_accelerators: Some(true),
        ane_single_tflops: None,
        ane_fused_tflops: None,
        gpu_tflops: None,
        speed: Verdict::Gpu,
        energy: Verdict::AneInferred,
        accumulator: Accumulator::F32,
        sources: "Anemll/ds4-ssd moe-batch-bench/M5M_ANE_OPTIMIZATION_REPORT.md @6a0f8ac: the \
                  shared-expert ANE offload that gains on an M3 Ultra: -24.9 % (339.6 -> 254.9 \
                  t/s); the GPU's Neural Accelerators +20-24 %",
    },
    Chip {
        name: "M6",
        anes: 2,
        neural_accelerators: None,
        ane_single_tflops: Some((10.8, 10.8)),
        ane_fused_tflops: Some(42.3),
        gpu_tflops: None,
        speed: Verdict::Ane,
        energy: Verdict::Ane,
        accumulator: Accumulator::Q15_16,
        sources: "751K/Apple-Neural-Engine-Microarchitecture-Study-M6 final_report/en.md \
                  @0b52dda §1.5, §13.7-13.8, §14: 20.6 TFLOPS per engine, 42.3 both (1.92x \
                  compute-bound); 2.5-2.8 TFLOPS/W; 0.16-0.36 ms host time per synchronous \
                  call; fp16 products accumulate in Q15.16",
    },
];

/// The row of `name` (`M5 Max`, `m5-max`, `Apple M5 Max`: case, dashes and the maker ignored).
pub fn chip(name: &str) -> Option<&'static Chip> {
    let norm = |s: &str| {
        s.trim()
            .trim_start_matches("Apple")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase()
    };
    let want = norm(name);
    CHIPS.iter().find(|c| norm(c.name) == want)
}

/// The chip this process runs on: the row `named` (the backend passes `GGML_ANE_CHIP`: to try
/// another chip's policy, or to name one whose brand string the table lacks), else on macOS the
/// brand string (`sysctl -n machdep.cpu.brand_string`, read once). `Err` says what was found
/// when no row matches; `Ok(None)` off Apple silicon.
pub fn identify(named: Option<&str>) -> Result<Option<&'static Chip>, String> {
    if let Some(name) = named.filter(|v| !v.trim().is_empty()) {
        return chip(name)
            .map(Some)
            .ok_or_else(|| format!("`{name}`: no such chip in the table ({})", names()));
    }
    match brand_string() {
        Some(brand) => chip(&brand)
            .map(Some)
            .ok_or_else(|| format!("{brand}: not in the chip table")),
        None => Ok(None),
    }
}

/// How this Mac's ANE accumulates, from its row (f32 where there is none).
pub fn accumulator_here() -> Accumulator {
    identify(None)
        .ok()
        .flatten()
        .map_or(Accumulator::F32, |c| c.accumulator)
}

/// The rows' names, for messages.
pub fn names() -> String {
    CHIPS.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
}

/// `machdep.cpu.brand_string` on macOS (`Apple M2 Pro`); `None` elsewhere.
fn brand_string() -> Option<String> {
    if !cfg!(target_os = "macos") {
        return None;
    }
    static BRAND: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BRAND
        .get_or_init(|| {
            let out = std::process::Command::new("/usr/sbin/sysctl")
                .args(["-n", "machdep.cpu.brand_string"])
                .output()
                .ok()?;
            let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
            (!s.is_empty()).then_some(s)
        })
        .clone()
}

/// What the user asks of the backend (`GGML_ANE_MODE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// `speed` where the chip's evidence says the ANE wins, out of the way (with a line saying
    /// why) where it says the GPU does.
    #[default]
    Auto,
    /// Take work only where the ANE is faster.
    Speed,
    /// Take work where the ANE costs fewer joules per token.
    Energy,
    /// Take every op the engine can do, whatever the chip.
    Always,
    /// Take nothing.
    Off,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Mode::Auto),
            "speed" => Ok(Mode::Speed),
            "energy" => Ok(Mode::Energy),
            "always" => Ok(Mode::Always),
            "off" => Ok(Mode::Off),
            other => Err(format!(
                "`{other}`: expected auto, speed, energy, always or off"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Speed => "speed",
            Mode::Energy => "energy",
            Mode::Always => "always",
            Mode::Off => "off",
        })
    }
}

/// Whether to take work on this chip, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Take ops (MUL_MATs and blocks) at all.
    pub take: bool,
    /// One line: the chip, the mode, the reason (and, where it declines for speed, the
    /// `energy` recipe).
    pub reason: String,
}

/// The routing decision for `mode` on `chip` (`None`: no Apple chip, or not identified — the
/// reference engine here; the backend then does what it is asked).
pub fn route(mode: Mode, chip: Option<&Chip>) -> Route {
    let take = |reason: String| Route { take: true, reason };
    let decline = |reason: String| Route {
        take: false,
        reason,
    };
    let Some(c) = chip else {
        return match mode {
            Mode::Off => decline("GGML_ANE_MODE=off".into()),
            _ => take("no chip identified: taking what the engine can do".into()),
        };
    };
    let name = c.name;
    match mode {
        Mode::Off => decline("GGML_ANE_MODE=off".into()),
        Mode::Always => take(format!("{name}: GGML_ANE_MODE=always")),
        Mode::Auto | Mode::Speed if c.speed.ane() => take(format!(
            "{name}: the ANE prefills faster than the GPU here ({})",
            c.speed.as_str()
        )),
        Mode::Auto | Mode::Speed => {
            let energy = if c.energy.ane() {
                " GGML_ANE_MODE=energy uses the ANE for fewer joules per token (prompts of \
                 500-2K tokens on an M5 Pro: 0.68-0.81x the GPU's energy)."
            } else {
                " GGML_ANE_MODE=always uses it anyway."
            };
            decline(format!(
                "{name}: the GPU{} prefills faster than the ANE here ({}): staying out of the \
                 way.{energy}",
                if c.neural_accelerators == Some(true) {
                    " with its Neural Accelerators"
                } else {
                    ""
                },
                c.speed.as_str()
            ))
        }
        Mode::Energy if c.energy.ane() => take(format!(
            "{name}: GGML_ANE_MODE=energy, the ANE spends less energy per token here ({})",
            c.energy.as_str()
        )),
        Mode::Energy => decline(format!(
            "{name}: GGML_ANE_MODE=energy, but the GPU spends less energy per token here ({})",
            c.energy.as_str()
        )),
    }
}

/// [`route`] for the chip [`identify`] finds (`named`, else this Mac's): a Mac the table has no
/// row for is decided as if unidentified, and the reason says so.
pub fn route_here(mode: Mode, named: Option<&str>) -> Route {
    match identify(named) {
        Ok(chip) => route(mode, chip),
        Err(unknown) => {
            let mut r = route(mode, None);
            r.reason = format!("{unknown}; {}", r.reason);
            r
        }
    }
}

impl fmt::Display for Chip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tf = |v: Option<f32>| v.map_or("?".to_string(), |v| format!("{v}"));
        let single = self.ane_single_tflops.map_or("?".to_string(), |(lo, hi)| {
            if lo == hi {
                format!("{lo}")
            } else {
                format!("{lo}-{hi}")
            }
        });
        write!(
            f,
            "{}: {} ANE{}, GPU Neural Accelerators {}; TFLOPS ANE single GEMM {single}, fused {}, \
             GPU {}; prefill speed: {}, energy: {} — {}",
            self.name,
            self.anes,
            if self.anes > 1 { "s" } else { "" },
            match self.neural_accelerators {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            },
            tf(self.ane_fused_tflops),
            tf(self.gpu_tflops),
            self.speed.as_str(),
            self.energy.as_str(),
            self.sources
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_found_by_any_spelling_and_each_has_sources() {
        assert_eq!(chip("Apple M5 Max").map(|c| c.name), Some("M5 Max"));
        assert_eq!(chip("m5-max").map(|c| c.name), Some("M5 Max"));
        assert_eq!(chip("M2 Pro").map(|c| c.name), Some("M2 Pro"));
        assert!(chip("M9").is_none());
        for c in CHIPS {
            assert!(!c.sources.is_empty(), "{}", c.name);
            // a verdict measured on the chip names its source
            if matches!(c.speed, Verdict::Ane | Verdict::Gpu) {
                assert!(c.sources.contains('@'), "{}: {}", c.name, c.sources);
            }
        }
    }

    /// Per table entry: auto takes where the ANE wins, declines on M5-class chips with the
    /// energy recipe in the line; energy takes where the ANE is cheaper; always and off do
    /// what they say; no chip (the reference engine) takes what it is asked.
    #[test]
    fn the_policy_accepts_and_declines_per_row() {
        let auto = |n: &str| route(Mode::Auto, chip(n));
        for n in ["M1", "M2 Pro", "M3 Ultra", "M4", "M6"] {
            assert!(auto(n).take, "{n}: {:?}", auto(n));
        }
        for n in ["M5", "M5 Pro", "M5 Max"] {
            let r = auto(n);
            assert!(!r.take, "{n}");
            assert!(
                r.reason.contains(n) && r.reason.contains("Neural Accelerators"),
                "{r:?}"
            );
            assert!(r.reason.contains("GGML_ANE_MODE=energy"), "{r:?}");
            assert!(route(Mode::Energy, chip(n)).take, "{n}");
            assert!(route(Mode::Always, chip(n)).take, "{n}");
            assert!(!route(Mode::Speed, chip(n)).take, "{n}");
        }
        for n in ["M2 Pro", "M5 Max"] {
            assert!(!route(Mode::Off, chip(n)).take);
        }
        assert!(route(Mode::Auto, None).take);
        assert!(!route(Mode::Off, None).take);
        assert_eq!("Energy".parse::<Mode>(), Ok(Mode::Energy));
        assert!("fast".parse::<Mode>().is_err());
    }
}
