//! The apple engine and its kernels (macOS only; see the module above for the sequence).

use std::sync::Mutex;
use std::time::Duration;

use ane_mil::{check_program, print_program, Program, WeightFiles};

use super::layouts::{procedure_layouts, retry, uniform_alloc_size};
use super::model_dir::ModelDir;
use super::sys::ane::{self, Framework, InMemoryModel, Request};
use super::sys::iosurface::{IoSurface, LentIoSurface};
use super::AppleConfig;
use crate::engine::limits::{MAX_DIM, ROW_ALIGNMENT};
use crate::engine::{
    in_place, lent_capacity, port_layout, CompileCounter, Engine, EngineInfo, EngineKind, Kernel,
    Limits, Port, ProcedureInfo,
};
use crate::error::{Error, Result};
use crate::surface::{Lender, LentMemory, Surface};

/// Requests kept per procedure for surface sets the caller lent (least recently used
/// dropped first). A kept request holds its IOSurfaces; it is dropped as soon as one of its
/// lent surfaces is (their tokens), so it pins nothing the caches above have let go.
const KEPT_REQUESTS: usize = 64;

/// One retry after 100 ms, as the seed, prefill-bench and tmc do: more only delays the CPU
/// fallback for deterministic failures such as 0x20004 "program too large".
const LOAD_ATTEMPTS: u32 = 2;
const LOAD_BACKOFF: Duration = Duration::from_millis(100);

/// The private-API engine.
pub struct AppleEngine {
    fw: &'static Framework,
    device: ane::DeviceInfo,
    counter: CompileCounter,
    rules: Option<ane_mil::rules::RuleOptions>,
}

impl AppleEngine {
    /// Opens the framework; fails with the reason when a class or selector is missing.
    pub fn new(config: &AppleConfig) -> Result<Self> {
        let fw = ane::framework().map_err(|reason| Error::EngineUnavailable {
            kind: EngineKind::Apple,
            reason,
        })?;
        let device = ane::device_info(fw);
        // the framework also loads in macOS VMs and perhaps on Intel Macs; there `auto` must
        // move on to coreml instead of failing every compile (apple-audit.md finding 14)
        if device.has_ane == Some(false) {
            return Err(Error::EngineUnavailable {
                kind: EngineKind::Apple,
                reason: "+[_ANEDeviceInfo hasANE] is NO (a virtual machine, or a Mac without \
                         a Neural Engine)"
                    .into(),
            });
        }
        Ok(AppleEngine {
            fw,
            device,
            counter: CompileCounter::process(EngineKind::Apple, Some(config.compile_budget)),
            rules: config.rules,
        })
    }
}

impl Engine for AppleEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            kind: EngineKind::Apple,
            description: "Apple Neural Engine (private _ANEInMemoryModel path)".to_string(),
            details: self.device.facts.clone(),
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_dim: MAX_DIM,
            row_alignment: ROW_ALIGNMENT,
            compile_budget: self.counter.budget(),
            compiles_used: self.counter.used(),
            accumulator: crate::chips::accumulator_here(),
        }
    }

    fn build_id(&self) -> String {
        // the daemon keeps its own cache keyed by the program hash; ours adds the
        // architecture (the disk cache adds the OS name, not its build)
        format!("apple-{}", std::env::consts::ARCH)
    }

    fn compile(&self, program: &Program, weights: &WeightFiles) -> Result<Box<dyn Kernel>> {
        if let Some(options) = &self.rules {
            crate::engine::enforce_rules(program, options)?;
        }
        let checked = check_program(program, Some(weights))?;
        if checked.len() > 1 {
            // a second procedure's request indices are global symbol indices read from
            // ANEFModelProcedures, which no run here has seen (apple-audit.md finding 5)
            return Err(Error::Unsupported {
                engine: EngineKind::Apple,
                reason: format!(
                    "{} functions in one program; the apple engine binds one procedure",
                    checked.len()
                ),
            });
        }
        // the budget first: with it spent, nothing is copied or written (finding 18)
        self.counter.take()?;
        let text = print_program(program);
        let files: Vec<(&str, &[u8])> = weights.iter().map(|(p, f)| (p, f.bytes())).collect();
        let model = InMemoryModel::new(self.fw, &text, &files).map_err(Error::Compile)?;
        let hex = model.hex_id().map_err(Error::Compile)?;
        let dir = ModelDir::acquire(ane::temporary_directory().join(&hex), &text, weights)
            .map_err(|e| Error::Compile(format!("preparing the model folder: {e}")))?;
        if !model.compiled_exists() {
            model.compile().map_err(Error::Compile)?;
        }
        retry(LOAD_ATTEMPTS, LOAD_BACKOFF, || model.load()).map_err(Error::Compile)?;
        // from here on the model is loaded: dropping the kernel unloads it
        let mut kernel = AppleKernel {
            model,
            procedures: Vec::new(),
            state: Mutex::new(Vec::new()),
            fw: self.fw,
            _dir: dir,
        };
        let attrs = kernel.model.attributes().map_err(Error::Compile)?;
        let mut states = Vec::new();
        for (i, f) in checked.iter().enumerate() {
            let (info, in_idx, out_idx) = procedure_layouts(&attrs, i, f, ROW_ALIGNMENT)?;
            // every input the same size, every output the same size (0x1d otherwise)
            let alloc = |group: &[crate::layout::TensorLayout]| {
                let size = uniform_alloc_size(group);
                group
                    .iter()
                    .map(|_| IoSurface::new(size).map_err(Error::Compile))
                    .collect::<Result<Vec<_>>>()
            };
            let (ins, outs) = (alloc(&info.inputs)?, alloc(&info.outputs)?);
            let in_refs: Vec<&IoSurface> = ins.iter().collect();
            let out_refs: Vec<&IoSurface> = outs.iter().collect();
            let request = Request::new(self.fw, &in_refs, &in_idx, &out_refs, &out_idx, i)
                .map_err(Error::Compile)?;
            kernel.procedures.push(info);
            states.push(ProcedureState {
                ins,
                outs,
                request,
                indices: (in_idx, out_idx),
                lent_requests: Vec::new(),
            });
        }
        kernel.state = Mutex::new(states);
        Ok(Box::new(kernel))
    }
}

/// One procedure's own surfaces and their request (for callers' surfaces it did not lend,
/// copied in and out), the live indices its ports bind to, and the requests built for
/// surface sets it lent, by the surfaces' addresses.
struct ProcedureState {
    ins: Vec<IoSurface>,
    outs: Vec<IoSurface>,
    request: Request,
    indices: (Vec<usize>, Vec<usize>),
    lent_requests: Vec<KeptRequest>,
}

/// A request for a surface set: the surfaces' addresses (each port's, in order), the tokens
/// of those the caller lent (alive while they are), and the request.
struct KeptRequest {
    key: Vec<usize>,
    alive: Vec<std::sync::Weak<()>>,
    request: Request,
}

impl ProcedureState {
    /// The request binding these surfaces: the procedure's own when none was lent, else the
    /// one kept for the set (built on first use; most recently used last).
    fn request_for(
        &mut self,
        fw: &Framework,
        index: usize,
        lent_in: &[Option<&LentIoSurface>],
        lent_out: &[Option<&LentIoSurface>],
    ) -> Result<&Request> {
        if lent_in.iter().chain(lent_out).all(Option::is_none) {
            return Ok(&self.request);
        }
        // requests whose lent surfaces are gone go first: their addresses may be reused
        self.lent_requests
            .retain(|r| r.alive.iter().all(|a| a.strong_count() > 0));
        let (ins, outs) = (bound(lent_in, &self.ins), bound(lent_out, &self.outs));
        let key: Vec<usize> = ins
            .iter()
            .chain(&outs)
            .map(|s| std::ptr::from_ref(s.raw()) as usize)
            .collect();
        let kept = match self.lent_requests.iter().position(|r| r.key == key) {
            Some(i) => self.lent_requests.remove(i),
            None => {
                let (in_idx, out_idx) = &self.indices;
                let request =
                    Request::new(fw, &ins, in_idx, &outs, out_idx, index).map_err(Error::Eval)?;
                if self.lent_requests.len() >= KEPT_REQUESTS {
                    self.lent_requests.remove(0);
                }
                let alive = lent_in
                    .iter()
                    .chain(lent_out)
                    .flatten()
                    .map(|l| l.alive())
                    .collect();
                KeptRequest {
                    key,
                    alive,
                    request,
                }
            }
        };
        self.lent_requests.push(kept);
        Ok(&self.lent_requests[self.lent_requests.len() - 1].request)
    }
}

/// Evaluates `request` with the `lent` surfaces unlocked for the hardware: every one unlocked
/// is relocked afterwards, whatever the outcome, and the first failure is reported.
fn evaluate_unlocked(
    model: &InMemoryModel,
    request: &Request,
    lent: &[&LentIoSurface],
) -> Result<()> {
    let mut begun = Vec::with_capacity(lent.len());
    let mut result = lent
        .iter()
        .try_for_each(|l| {
            l.begin_eval()?;
            begun.push(*l);
            Ok(())
        })
        .map_err(Error::Eval);
    if result.is_ok() {
        result = model.evaluate(request).map_err(Error::Eval);
    }
    for l in begun {
        if let Err(e) = l.end_eval() {
            result = result.and(Err(Error::Eval(e)));
        }
    }
    result
}

/// A loaded program. Evaluations are serialised.
struct AppleKernel {
    model: InMemoryModel,
    procedures: Vec<ProcedureInfo>,
    state: Mutex<Vec<ProcedureState>>,
    fw: &'static Framework,
    _dir: ModelDir,
}

/// What the apple engine lends: an IOSurface the host writes and reads while it is locked,
/// and the hardware while it is not.
impl LentMemory for LentIoSurface {
    fn bytes(&self) -> &[u8] {
        LentIoSurface::bytes(self)
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        LentIoSurface::bytes_mut(self)
    }

    fn lender(&self) -> Lender {
        Lender {
            kind: EngineKind::Apple,
            capacity: self.bytes().len(),
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The surfaces a request binds: each port's lent one, else the procedure's own.
fn bound<'a>(lent: &[Option<&'a LentIoSurface>], own: &'a [IoSurface]) -> Vec<&'a IoSurface> {
    lent.iter()
        .zip(own)
        .map(|(l, o)| l.map_or(o, |l| l.io_surface()))
        .collect()
}

/// The IOSurface behind `surface` when this engine lent it for `port` of `p`.
fn lent_for<'s>(p: &ProcedureInfo, port: Port, surface: &'s Surface) -> Option<&'s LentIoSurface> {
    if !in_place(EngineKind::Apple, p, port, surface) {
        return None;
    }
    let lent = surface
        .lent_memory()?
        .as_any()
        .downcast_ref::<LentIoSurface>()?;
    // not after a relock failed: such a surface is copied like host memory
    lent.usable().then_some(lent)
}

impl Kernel for AppleKernel {
    fn procedures(&self) -> &[ProcedureInfo] {
        &self.procedures
    }

    fn lend(&self, index: usize, port: Port) -> Result<Surface> {
        let layout = port_layout(&self.procedures, index, port)?;
        let memory = LentIoSurface::new(lent_capacity(&self.procedures[index], port))
            .map_err(Error::Eval)?;
        Surface::lent(layout.clone(), Box::new(memory))
    }

    fn takes_in_place(&self, index: usize, port: Port, surface: &Surface) -> bool {
        self.procedures
            .get(index)
            .is_some_and(|p| lent_for(p, port, surface).is_some())
    }

    fn run(
        &self,
        index: usize,
        inputs: &[&Surface],
        outputs: &mut [&mut Surface],
    ) -> Result<usize> {
        // the thread's QoS matters as well as the one passed (apple-audit.md finding 21)
        crate::sys::qos::raise_to_user_initiated();
        let fw = self.fw;
        let procedure = &self.procedures[index];
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let p = &mut state[index];
        let mut copied = 0;
        let evaluated = {
            // each port: the caller's IOSurface when this engine lent it for the port, else
            // the procedure's own, copied into
            let lent_in: Vec<Option<&LentIoSurface>> = (0..inputs.len())
                .map(|i| lent_for(procedure, Port::Input(i), inputs[i]))
                .collect();
            let lent_out: Vec<Option<&LentIoSurface>> = (0..outputs.len())
                .map(|i| lent_for(procedure, Port::Output(i), &*outputs[i]))
                .collect();
            for ((lent, own), s) in lent_in.iter().zip(&p.ins).zip(inputs) {
                if lent.is_none() {
                    own.write(s.as_bytes()).map_err(Error::Eval)?;
                    copied += s.as_bytes().len();
                }
            }
            let request = p.request_for(fw, index, &lent_in, &lent_out)?;
            let lent: Vec<&LentIoSurface> =
                lent_in.iter().chain(&lent_out).flatten().copied().collect();
            evaluate_unlocked(&self.model, request, &lent)
        };
        evaluated?;
        for (i, (own, s)) in p.outs.iter().zip(outputs.iter_mut()).enumerate() {
            if lent_for(procedure, Port::Output(i), s).is_none() {
                own.read(s.as_bytes_mut()).map_err(Error::Eval)?;
                copied += s.as_bytes().len();
            }
        }
        Ok(copied)
    }
}

impl Drop for AppleKernel {
    fn drop(&mut self) {
        if let Err(e) = self.model.unload() {
            // nothing to return to; the next load will tell if the slot leaked
            eprintln!("ggml-ane: unloading a kernel failed: {e}");
        }
    }
}
