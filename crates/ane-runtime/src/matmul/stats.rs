//! Counters for what ran where, and why not on the engine.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Why a node ran on the CPU instead of the engine. `as_str` is the short label the tables
/// use; `Display` adds the detail.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum FallbackReason {
    /// The shape or types are not something the engine path takes.
    Unsupported(String),
    /// The engine refused the program.
    Compile(String),
    /// The program breaks a rule of the ANE rulebook (a form the hardware is reported to
    /// reject); the runtime's own kernels never do, so this marks a bug or an experiment.
    Rules(String),
    /// The compile budget is spent.
    Budget,
    /// Evaluation failed.
    Eval(String),
    /// The engine returned inf or NaN (fp16 overflow).
    NonFinite,
    /// The result has too few elements for fp16 inputs to be trusted (see
    /// `matmul::MIN_ENGINE_OUTPUTS`); the number is the job's output count.
    FewOutputs(usize),
    /// The predicted fp16 rounding error is too large next to the result (see
    /// `matmul::precision`).
    Precision(String),
    /// A bug.
    Internal(String),
}

impl FallbackReason {
    /// A short label for tables.
    pub fn as_str(&self) -> &'static str {
        match self {
            FallbackReason::Unsupported(_) => "unsupported",
            FallbackReason::Compile(_) => "compile failed",
            FallbackReason::Rules(_) => "ANE rulebook",
            FallbackReason::Budget => "budget exhausted",
            FallbackReason::Eval(_) => "eval failed",
            FallbackReason::NonFinite => "fp16 overflow",
            FallbackReason::FewOutputs(_) => "too few outputs",
            FallbackReason::Precision(_) => "fp16 precision",
            FallbackReason::Internal(_) => "internal error",
        }
    }
}

impl fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FallbackReason::Unsupported(s)
            | FallbackReason::Compile(s)
            | FallbackReason::Rules(s)
            | FallbackReason::Eval(s)
            | FallbackReason::Precision(s)
            | FallbackReason::Internal(s) => {
                write!(f, "{}: {s}", self.as_str())
            }
            FallbackReason::FewOutputs(n) => write!(
                f,
                "{}: {n} < {} (one fp16 dot product that cancels can be far off)",
                self.as_str(),
                super::MIN_ENGINE_OUTPUTS
            ),
            _ => f.write_str(self.as_str()),
        }
    }
}

/// Thread-safe counters.
#[derive(Debug, Default)]
pub struct Stats {
    offloaded: AtomicU64,
    flops: AtomicU64,
    compiles: AtomicU64,
    cache_hits: AtomicU64,
    disk_hits: AtomicU64,
    baked_nodes: AtomicU64,
    planning_ns: AtomicU64,
    staging_ns: AtomicU64,
    engine_ns: AtomicU64,
    writeback_ns: AtomicU64,
    cpu_ns: AtomicU64,
    weight_bytes: AtomicU64,
    act_bytes: AtomicU64,
    copied_bytes: AtomicU64,
    reloads: AtomicU64,
    dispatches: AtomicU64,
    fused_blocks: AtomicU64,
    fused_nodes: AtomicU64,
    written_back: AtomicU64,
    glue_nodes: AtomicU64,
    glue_graphs: AtomicU64,
    glue_ns: AtomicU64,
    fallbacks: Mutex<Vec<(&'static str, u64)>>,
    fused_declined: Mutex<Vec<(&'static str, u64)>>,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatsSnapshot {
    /// Nodes computed on the engine.
    pub offloaded: u64,
    /// Nodes computed on the CPU, by reason label.
    pub fallbacks: Vec<(&'static str, u64)>,
    /// FLOPs computed on the engine.
    pub flops: u64,
    /// Kernels compiled.
    pub compiles: u64,
    /// Kernels found in the in-memory cache.
    pub cache_hits: u64,
    /// Kernels loaded from the on-disk cache instead of compiled.
    pub disk_hits: u64,
    /// Nodes (of `offloaded`) served by kernels with their weights baked in.
    pub baked_nodes: u64,
    /// Time planning tiles and fetching (or compiling) their kernels.
    pub planning: Duration,
    /// Time converting inputs into surfaces.
    pub staging: Duration,
    /// Time in engine evaluation.
    pub engine: Duration,
    /// Time reading results back.
    pub writeback: Duration,
    /// Time computing fallbacks on the CPU.
    pub cpu: Duration,
    /// Weight bytes staged into surfaces (fp16); staged weight tiles kept across calls are
    /// not staged again.
    pub weight_bytes: u64,
    /// Activation bytes staged into surfaces (fp16).
    pub act_bytes: u64,
    /// Bytes the engine copied between surfaces it had not lent and its own memory (0 when
    /// staging writes into the engine's memory, as the pipeline does).
    pub copied_bytes: u64,
    /// Kernels compiled again after being dropped to stay within the loaded-kernel cap
    /// (counted in `compiles` too).
    pub reloads: u64,
    /// Kernel evaluations (one per tile and token chunk of a MUL_MAT, one per fused block
    /// and chunk).
    pub dispatches: u64,
    /// Chains of ggml nodes computed as one fused program.
    pub fused_blocks: u64,
    /// ggml nodes inside those chains.
    pub fused_nodes: u64,
    /// Of `fused_nodes`, those also computed outside the program because something outside
    /// it reads them (a fused block's normed input, read by a parallel block's FFN).
    pub written_back: u64,
    /// Nodes other than MUL_MAT that the device took and ggml's own CPU backend computed.
    pub glue_nodes: u64,
    /// Graphs those nodes were sent to the CPU backend in.
    pub glue_graphs: u64,
    /// Time the CPU backend spent on them.
    pub glue: Duration,
    /// Chains found but computed node by node, by reason label.
    pub fused_declined: Vec<(&'static str, u64)>,
}

impl StatsSnapshot {
    /// Adds `other`'s counts and times into these (several backend instances in one process
    /// reported as one).
    pub fn accumulate(&mut self, other: &StatsSnapshot) {
        self.offloaded += other.offloaded;
        for &(label, n) in &other.fallbacks {
            match self.fallbacks.iter_mut().find(|(l, _)| *l == label) {
                Some((_, m)) => *m += n,
                None => self.fallbacks.push((label, n)),
            }
        }
        self.flops += other.flops;
        self.compiles += other.compiles;
        self.cache_hits += other.cache_hits;
        self.disk_hits += other.disk_hits;
        self.baked_nodes += other.baked_nodes;
        self.planning += other.planning;
        self.staging += other.staging;
        self.engine += other.engine;
        self.writeback += other.writeback;
        self.cpu += other.cpu;
        self.weight_bytes += other.weight_bytes;
        self.act_bytes += other.act_bytes;
        self.copied_bytes += other.copied_bytes;
        self.reloads += other.reloads;
        self.dispatches += other.dispatches;
        self.fused_blocks += other.fused_blocks;
        self.fused_nodes += other.fused_nodes;
        self.written_back += other.written_back;
        self.glue_nodes += other.glue_nodes;
        self.glue_graphs += other.glue_graphs;
        self.glue += other.glue;
        for &(label, n) in &other.fused_declined {
            match self.fused_declined.iter_mut().find(|(l, _)| *l == label) {
                Some((_, m)) => *m += n,
                None => self.fused_declined.push((label, n)),
            }
        }
    }

    /// Nodes computed on the CPU.
    pub fn cpu_nodes(&self) -> u64 {
        self.fallbacks.iter().map(|(_, n)| n).sum()
    }

    /// How many nodes fell back for `label`.
    pub fn fallbacks_for(&self, label: &str) -> u64 {
        self.fallbacks
            .iter()
            .filter(|(l, _)| *l == label)
            .map(|(_, n)| n)
            .sum()
    }
}

fn add(a: &AtomicU64, d: Duration) {
    a.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
}

impl Stats {
    pub(crate) fn add_planning(&self, d: Duration) {
        add(&self.planning_ns, d);
    }
    pub(crate) fn add_staging(&self, d: Duration) {
        add(&self.staging_ns, d);
    }
    pub(crate) fn add_engine(&self, d: Duration) {
        add(&self.engine_ns, d);
    }
    pub(crate) fn add_writeback(&self, d: Duration) {
        add(&self.writeback_ns, d);
    }
    pub(crate) fn add_weight_bytes(&self, n: usize) {
        self.weight_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn add_copied_bytes(&self, n: usize) {
        self.copied_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn add_act_bytes(&self, n: usize) {
        self.act_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn add_reload(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_compile(&self) {
        self.compiles.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_cache_hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_disk_hit(&self) {
        self.disk_hits.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_dispatch(&self) {
        self.dispatches.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a chain of `nodes` ggml nodes computed as one fused program, `written_back`
    /// of which are computed outside it too (read by something outside the program).
    pub fn record_fused(&self, nodes: usize, written_back: usize) {
        self.fused_blocks.fetch_add(1, Ordering::Relaxed);
        self.fused_nodes.fetch_add(nodes as u64, Ordering::Relaxed);
        self.written_back
            .fetch_add(written_back as u64, Ordering::Relaxed);
    }

    /// Counts a chain computed node by node instead of fused, and why.
    pub fn record_fused_declined(&self, reason: &FallbackReason) {
        let mut f = self
            .fused_declined
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match f.iter_mut().find(|(l, _)| *l == reason.as_str()) {
            Some((_, n)) => *n += 1,
            None => f.push((reason.as_str(), 1)),
        }
    }

    /// Counts `nodes` nodes computed by ggml's CPU backend as one graph, and the time.
    pub fn record_glue(&self, nodes: usize, time: Duration) {
        self.glue_graphs.fetch_add(1, Ordering::Relaxed);
        self.glue_nodes.fetch_add(nodes as u64, Ordering::Relaxed);
        add(&self.glue_ns, time);
    }
    pub(crate) fn add_baked_node(&self) {
        self.baked_nodes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a node computed on the engine.
    pub fn record_offload(&self, flops: f64) {
        self.offloaded.fetch_add(1, Ordering::Relaxed);
        self.flops.fetch_add(flops as u64, Ordering::Relaxed);
    }

    /// Counts a node computed on the CPU, and the time it took.
    pub fn record_fallback(&self, reason: &FallbackReason, cpu_time: Duration) {
        add(&self.cpu_ns, cpu_time);
        let mut f = self.fallbacks.lock().unwrap_or_else(|e| e.into_inner());
        match f.iter_mut().find(|(l, _)| *l == reason.as_str()) {
            Some((_, n)) => *n += 1,
            None => f.push((reason.as_str(), 1)),
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let ns = |a: &AtomicU64| Duration::from_nanos(a.load(Ordering::Relaxed));
        StatsSnapshot {
            offloaded: self.offloaded.load(Ordering::Relaxed),
            fallbacks: self
                .fallbacks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            flops: self.flops.load(Ordering::Relaxed),
            compiles: self.compiles.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            disk_hits: self.disk_hits.load(Ordering::Relaxed),
            baked_nodes: self.baked_nodes.load(Ordering::Relaxed),
            planning: ns(&self.planning_ns),
            staging: ns(&self.staging_ns),
            engine: ns(&self.engine_ns),
            writeback: ns(&self.writeback_ns),
            cpu: ns(&self.cpu_ns),
            weight_bytes: self.weight_bytes.load(Ordering::Relaxed),
            act_bytes: self.act_bytes.load(Ordering::Relaxed),
            copied_bytes: self.copied_bytes.load(Ordering::Relaxed),
            reloads: self.reloads.load(Ordering::Relaxed),
            dispatches: self.dispatches.load(Ordering::Relaxed),
            fused_blocks: self.fused_blocks.load(Ordering::Relaxed),
            fused_nodes: self.fused_nodes.load(Ordering::Relaxed),
            written_back: self.written_back.load(Ordering::Relaxed),
            glue_nodes: self.glue_nodes.load(Ordering::Relaxed),
            glue_graphs: self.glue_graphs.load(Ordering::Relaxed),
            glue: ns(&self.glue_ns),
            fused_declined: self
                .fused_declined
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let engine_s = self.engine.as_secs_f64();
        let gflops = if engine_s > 0.0 {
            self.flops as f64 / engine_s / 1e9
        } else {
            0.0
        };
        writeln!(f, "  nodes on engine        {}", self.offloaded)?;
        writeln!(f, "    with baked weights   {}", self.baked_nodes)?;
        writeln!(f, "  engine dispatches      {}", self.dispatches)?;
        writeln!(f, "  fused blocks           {}", self.fused_blocks)?;
        writeln!(f, "    nodes fused          {}", self.fused_nodes)?;
        writeln!(f, "    also written back    {}", self.written_back)?;
        for (label, n) in &self.fused_declined {
            writeln!(f, "    not fused: {label:<9} {n}")?;
        }
        writeln!(f, "  nodes on CPU           {}", self.cpu_nodes())?;
        for (label, n) in &self.fallbacks {
            writeln!(f, "    {label:<20} {n}")?;
        }
        writeln!(f, "  compiles               {}", self.compiles)?;
        writeln!(f, "    reloads              {}", self.reloads)?;
        writeln!(f, "  kernel cache hits      {}", self.cache_hits)?;
        writeln!(f, "  loaded from disk       {}", self.disk_hits)?;
        writeln!(f, "  planning               {:.1} ms", ms(self.planning))?;
        writeln!(f, "  staging                {:.1} ms", ms(self.staging))?;
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        writeln!(
            f,
            "    weights staged       {:.1} MiB",
            mib(self.weight_bytes)
        )?;
        writeln!(f, "    activations staged   {:.1} MiB", mib(self.act_bytes))?;
        writeln!(f, "    bytes copied at eval {}", self.copied_bytes)?;
        writeln!(f, "  engine                 {:.1} ms", ms(self.engine))?;
        writeln!(f, "  write-back             {:.1} ms", ms(self.writeback))?;
        writeln!(f, "  CPU fallback           {:.1} ms", ms(self.cpu))?;
        writeln!(f, "  other nodes (ggml CPU) {}", self.glue_nodes)?;
        writeln!(f, "    in CPU graphs        {}", self.glue_graphs)?;
        writeln!(f, "    time                 {:.1} ms", ms(self.glue))?;
        write!(f, "  engine GFLOPS          {gflops:.1}")
    }
}
