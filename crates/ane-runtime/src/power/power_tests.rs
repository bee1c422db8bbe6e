//! The portable half of the power readout, with a stand-in meter whose energy is known.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{joules_per_unit, measure, rail_of, ChannelEnergy, EnergyMeter, Rail, RailEnergy};

#[test]
fn rails_are_matched_by_exact_name() {
    for ane in ["ANE", "ANE0", "ANE0_0", "ANE0_1", "DIE0_ANE0", "DIE1_ANE"] {
        assert_eq!(rail_of(ane), Some(Rail::Ane), "{ane}");
    }
    assert_eq!(rail_of("CPU Energy"), Some(Rail::Cpu));
    assert_eq!(rail_of("DIE0_CPU Energy"), Some(Rail::Cpu));
    assert_eq!(rail_of("GPU Energy"), Some(Rail::Gpu));
    // bandwidth and residency channels, per-cluster CPU channels and near misses are not rails
    for other in [
        "ANE-AF-BW",
        "ANE-DCS-BW",
        "ANECPU",
        "ANE0_",
        "ANE_1",
        "EACC_CPU Energy",
        "CPU Energy 0",
        "GPU SRAM",
        "DIE_ANE",
        "",
    ] {
        assert_eq!(rail_of(other), None, "{other}");
    }
}

#[test]
fn units_come_from_each_channel_label() {
    assert_eq!(joules_per_unit("mJ"), Some(1e-3));
    assert_eq!(joules_per_unit("uJ"), Some(1e-6));
    assert_eq!(joules_per_unit("µJ"), Some(1e-6));
    assert_eq!(joules_per_unit("nJ"), Some(1e-9));
    assert_eq!(joules_per_unit(" J "), Some(1.0));
    assert_eq!(joules_per_unit("mW"), None);
    let e = RailEnergy::from_channels(&[
        channel("ANE0_0", "mJ", 1500),
        channel("ANE0_1", "mJ", 500),
        channel("CPU Energy", "uJ", 3_000_000),
        channel("GPU Energy", "nJ", 250_000_000),
        channel("ANE-AF-BW", "mJ", 99_999),
        channel("DIE0_ANE1", "kJ", 7),
    ]);
    assert!((e.ane - 2.0).abs() < 1e-12, "{e:?}");
    assert!((e.cpu - 3.0).abs() < 1e-12);
    assert!((e.gpu - 0.25).abs() < 1e-12);
    assert_eq!(e.ane_channels, ["ANE0_0", "ANE0_1", "DIE0_ANE1"]);
    assert_eq!(e.unknown_units, ["DIE0_ANE1 (kJ)"]);
}

fn channel(name: &str, unit: &str, value: i64) -> ChannelEnergy {
    ChannelEnergy {
        name: name.into(),
        unit: unit.into(),
        value,
    }
}

/// Idle watts on each rail, plus a fixed energy per unit of work, reported like IOReport
/// (ANE in mJ, CPU in uJ, GPU in nJ) with a decoy bandwidth channel.
struct StandIn {
    last: Instant,
    idle_watts: [f64; 3],
    per_run_joules: [f64; 3],
    runs: Rc<Cell<u64>>,
    has_ane: bool,
}

impl EnergyMeter for StandIn {
    fn since_last(&mut self) -> Result<Vec<ChannelEnergy>, String> {
        let now = Instant::now();
        let dt = (now - self.last).as_secs_f64();
        self.last = now;
        let runs = self.runs.replace(0) as f64;
        let j = |i: usize| self.idle_watts[i] * dt + self.per_run_joules[i] * runs;
        let mut out = vec![
            channel("CPU Energy", "uJ", (j(1) * 1e6).round() as i64),
            channel("GPU Energy", "nJ", (j(2) * 1e9).round() as i64),
            channel("ANE-AF-BW", "mJ", 123_456),
        ];
        if self.has_ane {
            out.push(channel("ANE", "mJ", (j(0) * 1e3).round() as i64));
        }
        Ok(out)
    }
}

fn stand_in(per_run: [f64; 3], has_ane: bool) -> (StandIn, Rc<Cell<u64>>) {
    let runs = Rc::new(Cell::new(0));
    let meter = StandIn {
        last: Instant::now(),
        // an ANE counter that reads zero reads zero at idle too
        idle_watts: [if per_run[0] > 0.0 { 0.05 } else { 0.0 }, 2.0, 0.5],
        per_run_joules: per_run,
        runs: runs.clone(),
        has_ane,
    };
    (meter, runs)
}

#[test]
fn the_idle_baseline_is_subtracted_per_run() {
    let (mut meter, runs) = stand_in([0.2, 0.05, 0.0], true);
    let work = || {
        std::thread::sleep(Duration::from_millis(10));
        runs.set(runs.get() + 1);
    };
    let r = measure(
        &mut meter,
        Duration::from_millis(100),
        Duration::from_millis(150),
        true,
        work,
    )
    .unwrap();
    assert!(r.runs >= 10, "{r:?}");
    // the stand-in's clock and measure's differ by microseconds: 2 W x 1 ms = 2 mJ, spread
    // over the runs
    let tol = 2e-3;
    assert!((r.joules_per_run[0] - 0.2).abs() < tol, "{r:?}");
    assert!((r.joules_per_run[1] - 0.05).abs() < tol, "{r:?}");
    assert!(r.joules_per_run[2].abs() < tol, "{r:?}");
    assert!((r.idle_watts[1] - 2.0).abs() < 0.1, "{r:?}");
    let gpj = r.gflop_per_joule(2.0e9).unwrap();
    assert!((gpj - 2.0 / 0.25).abs() < 0.2, "{gpj}");
    // 0.1 s windows are far under the counters' publication period
    assert!(
        r.flags.iter().any(|f| f.contains("shorter")),
        "{:?}",
        r.flags
    );
    assert_eq!(r.flags.len(), 1, "{:?}", r.flags);
}

#[test]
fn an_ane_that_reads_zero_or_is_missing_is_flagged() {
    let (mut meter, runs) = stand_in([0.0, 0.05, 0.0], true);
    let work = || runs.set(runs.get() + 1);
    let r = measure(
        &mut meter,
        Duration::from_millis(20),
        Duration::from_millis(20),
        true,
        work,
    )
    .unwrap();
    assert!(
        r.flags.iter().any(|f| f.contains("read zero")),
        "{:?}",
        r.flags
    );
    let (mut meter, runs) = stand_in([0.0, 0.05, 0.0], false);
    let work = || runs.set(runs.get() + 1);
    let r = measure(&mut meter, Duration::ZERO, Duration::ZERO, true, work).unwrap();
    assert_eq!(r.runs, 1, "runs at least once");
    assert!(
        r.flags.iter().any(|f| f.contains("no ANE energy channel")),
        "{:?}",
        r.flags
    );
}

#[cfg(not(target_os = "macos"))]
#[test]
fn other_systems_say_power_is_not_available() {
    let err = super::open_meter().err().unwrap();
    assert_eq!(err, "power: not available on this OS");
}
