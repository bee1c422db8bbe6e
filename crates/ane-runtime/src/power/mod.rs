//! Energy of the ANE, CPU and GPU while a workload runs, from the OS's energy model.
//!
//! On macOS the counters are IOReport's "Energy Model" channels, read without sudo through
//! `libIOReport.dylib` opened at run time (the route macmon, mactop and socpowerbud use; see
//! docs/hardware-validation.md). They are the OS's modelled energy, not a shunt measurement.
//! Everything but the reading itself is portable and tested on Linux with a stand-in meter:
//! unit conversion from each channel's own label, exact rail names, the idle baseline, and the
//! flags for windows too short or readings that cannot be trusted.
//!
//! `ane bench --power`, `ane doctor` and ggml-ane's energy routing (`GGML_ANE_MODE=energy`)
//! read power; the module lives here, not in `ane-cli`, because the readout is FFI — a `sys`
//! module of `unsafe` calls — and this crate is the one that keeps such bindings (under
//! `#![deny(unsafe_code)]` with one exemption per `sys`), while `ane-cli` forbids `unsafe`
//! outright.

#[cfg(target_os = "macos")]
#[allow(
    unsafe_code,
    reason = "the IOReport and CoreFoundation bindings of the power readout"
)]
mod sys;

use std::time::{Duration, Instant};

/// One channel's energy over a window, as the counter reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelEnergy {
    /// The channel name (`ANE`, `CPU Energy`, `GPU Energy`, ...).
    pub name: String,
    /// The channel's own unit label (`mJ`, `uJ`, `nJ`, ...).
    pub unit: String,
    /// The counter's change over the window, in `unit`.
    pub value: i64,
}

/// The rails this module reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rail {
    /// The Neural Engine: `ANE` (base chips), `ANE0` (Max), `ANE0_0`/`ANE0_1` (Ultra), with
    /// or without a `DIE<n>_` prefix (macOS 27 renames).
    Ane,
    /// `CPU Energy`.
    Cpu,
    /// `GPU Energy`.
    Gpu,
}

/// Which rail a channel belongs to, by its exact name. Substring matching is what summed
/// hundreds of unrelated channels into "CPU power" in another tool (lablup/all-smi#410), so
/// only these exact shapes count.
pub fn rail_of(name: &str) -> Option<Rail> {
    let name = strip_die_prefix(name);
    match name {
        "CPU Energy" => Some(Rail::Cpu),
        "GPU Energy" => Some(Rail::Gpu),
        _ => {
            let rest = name.strip_prefix("ANE")?;
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            let ok = rest.is_empty()
                || digits(rest)
                || rest
                    .split_once('_')
                    .is_some_and(|(a, b)| digits(a) && digits(b));
            ok.then_some(Rail::Ane)
        }
    }
}

fn strip_die_prefix(name: &str) -> &str {
    if let Some(rest) = name.strip_prefix("DIE") {
        if let Some((n, tail)) = rest.split_once('_') {
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
                return tail;
            }
        }
    }
    name
}

/// Joules per unit for an energy unit label; `None` for a label we do not know.
pub fn joules_per_unit(label: &str) -> Option<f64> {
    match label.trim() {
        "J" => Some(1.0),
        "mJ" => Some(1e-3),
        "uJ" | "µJ" => Some(1e-6),
        "nJ" => Some(1e-9),
        _ => None,
    }
}

/// Energy per rail over one window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RailEnergy {
    /// Joules on the ANE channels.
    pub ane: f64,
    /// Joules on `CPU Energy`.
    pub cpu: f64,
    /// Joules on `GPU Energy`.
    pub gpu: f64,
    /// The ANE channels that were present (empty: this machine reports none).
    pub ane_channels: Vec<String>,
    /// Channels of a rail whose unit label we do not know (left out, named here).
    pub unknown_units: Vec<String>,
}

impl RailEnergy {
    /// Sums a window's channels into rails.
    pub fn from_channels(channels: &[ChannelEnergy]) -> Self {
        let mut e = RailEnergy::default();
        for c in channels {
            let Some(rail) = rail_of(&c.name) else {
                continue;
            };
            if rail == Rail::Ane && !e.ane_channels.contains(&c.name) {
                e.ane_channels.push(c.name.clone());
            }
            let Some(scale) = joules_per_unit(&c.unit) else {
                e.unknown_units.push(format!("{} ({})", c.name, c.unit));
                continue;
            };
            let j = c.value as f64 * scale;
            match rail {
                Rail::Ane => e.ane += j,
                Rail::Cpu => e.cpu += j,
                Rail::Gpu => e.gpu += j,
            }
        }
        e
    }
}

/// A source of energy counters: each call returns every channel's energy since the last.
pub trait EnergyMeter {
    /// The energy of every channel since the previous call (or since the meter opened).
    fn since_last(&mut self) -> Result<Vec<ChannelEnergy>, String>;
}

/// The machine's energy meter, or why there is none (`power: not available on this OS`).
pub fn open_meter() -> Result<Box<dyn EnergyMeter>, String> {
    #[cfg(target_os = "macos")]
    {
        sys::IoReportMeter::open().map(|m| Box::new(m) as Box<dyn EnergyMeter>)
    }
    #[cfg(not(target_os = "macos"))]
    {
        Err("power: not available on this OS".to_string())
    }
}

/// The counters of the newest macOS publish in batches about 2.2 s apart (all-smi#412):
/// shorter windows alternate between nothing and too much.
pub const MIN_WINDOW: Duration = Duration::from_millis(2500);

/// Energy attributable to a workload: its window minus the idle power over the same time.
#[derive(Clone, Debug, PartialEq)]
pub struct PowerReading {
    /// Idle watts per rail (ANE, CPU, GPU), measured before the workload.
    pub idle_watts: [f64; 3],
    /// The workload's window.
    pub seconds: f64,
    /// Times the workload ran in the window.
    pub runs: u64,
    /// Joules per run above idle (ANE, CPU, GPU).
    pub joules_per_run: [f64; 3],
    /// Why the reading should not be trusted (empty when nothing is wrong), the window's
    /// length first when it was short.
    pub flags: Vec<String>,
    /// Whether the window (idle or busy) was shorter than [`MIN_WINDOW`]: a caller that chose
    /// such a window knows, and may read the other flags alone.
    pub short_window: bool,
}

impl PowerReading {
    /// Joules per run above idle, all three rails.
    pub fn total_joules_per_run(&self) -> f64 {
        self.joules_per_run.iter().sum()
    }

    /// GFLOP per joule for a workload of `flops` per run (None when no energy was seen).
    pub fn gflop_per_joule(&self, flops: f64) -> Option<f64> {
        let j = self.total_joules_per_run();
        (j > 0.0).then(|| flops / 1e9 / j)
    }
}

fn rails(e: &RailEnergy) -> [f64; 3] {
    [e.ane, e.cpu, e.gpu]
}

/// Measures idle power for `idle`, then runs `work` until `window` has passed (at least
/// once), and returns the energy per run above idle. `expect_ane`: the work runs on the ANE,
/// so an ANE reading of zero is flagged (macOS 27 reports zero there; mactop#72).
pub fn measure(
    meter: &mut dyn EnergyMeter,
    idle: Duration,
    window: Duration,
    expect_ane: bool,
    mut work: impl FnMut(),
) -> Result<PowerReading, String> {
    meter.since_last()?;
    let t = Instant::now();
    std::thread::sleep(idle);
    let idle_energy = RailEnergy::from_channels(&meter.since_last()?);
    let idle_s = t.elapsed().as_secs_f64().max(1e-9);
    let idle_watts = rails(&idle_energy).map(|j| j / idle_s);

    let t = Instant::now();
    let mut runs = 0u64;
    while runs == 0 || t.elapsed() < window {
        work();
        runs += 1;
    }
    let busy = RailEnergy::from_channels(&meter.since_last()?);
    let seconds = t.elapsed().as_secs_f64();
    let busy_j = rails(&busy);
    let mut joules_per_run = [0.0; 3];
    for i in 0..3 {
        joules_per_run[i] = (busy_j[i] - idle_watts[i] * seconds) / runs as f64;
    }

    let mut flags = Vec::new();
    let short_window = seconds < MIN_WINDOW.as_secs_f64() || idle_s < MIN_WINDOW.as_secs_f64();
    if short_window {
        flags.push(format!(
            "window shorter than {:.1} s: counters publish in batches (~2.2 s on recent macOS)",
            MIN_WINDOW.as_secs_f64()
        ));
    }
    if busy.ane_channels.is_empty() {
        flags.push("no ANE energy channel on this machine".into());
    } else if expect_ane && busy.ane <= 0.0 {
        flags.push(format!(
            "the ANE channel(s) {} read zero while the ANE worked (reported on macOS 27)",
            busy.ane_channels.join(", ")
        ));
    }
    if !busy.unknown_units.is_empty() {
        flags.push(format!(
            "left out, unknown unit: {}",
            busy.unknown_units.join(", ")
        ));
    }
    // a few percent under idle is clock skew between the counters and us; more is noise
    if (0..3).any(|i| busy_j[i] < 0.95 * idle_watts[i] * seconds) {
        flags.push("a rail read below its idle baseline: too noisy to trust".into());
    }
    Ok(PowerReading {
        idle_watts,
        seconds,
        runs,
        joules_per_run,
        flags,
        short_window,
    })
}

#[cfg(test)]
#[path = "power_tests.rs"]
mod tests;
