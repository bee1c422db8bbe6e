//! The apple engine and its kernels (macOS only; see the module above for the sequence).

use std::sync::Mutex;
use std::time::Duration;

use ane_mil::{check_program, print_program, Program, WeightFiles};

use super::layouts::{procedure_layouts, retry, uniform_alloc_size};
use super::model_dir::ModelDir;
use super::sys::ane::{self, Framework, InMemoryModel, Request};
use super::sys::iosurface::IoSurface;
use super::AppleConfig;
use crate::engine::limits::{MAX_DIM, ROW_ALIGNMENT};
use crate::engine::{
    CompileCounter, Engine, EngineInfo, EngineKind, Kernel, Limits, ProcedureInfo,
};
use crate::error::{Error, Result};
use crate::surface::Surface;

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
            states.push(ProcedureState { ins, outs, request });
        }
        kernel.state = Mutex::new(states);
        Ok(Box::new(kernel))
    }
}

/// One procedure's surfaces and its reusable request.
struct ProcedureState {
    ins: Vec<IoSurface>,
    outs: Vec<IoSurface>,
    request: Request,
}

/// A loaded program. Evaluations are serialised: the surfaces belong to the kernel.
struct AppleKernel {
    model: InMemoryModel,
    procedures: Vec<ProcedureInfo>,
    state: Mutex<Vec<ProcedureState>>,
    _dir: ModelDir,
}

impl Kernel for AppleKernel {
    fn procedures(&self) -> &[ProcedureInfo] {
        &self.procedures
    }

    fn run(&self, index: usize, inputs: &[&Surface], outputs: &mut [&mut Surface]) -> Result<()> {
        // the thread's QoS matters as well as the one passed (apple-audit.md finding 21)
        crate::sys::qos::raise_to_user_initiated();
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let p = &state[index];
        // one copy each way; our surfaces already have the hardware's strides
        for (surface, s) in p.ins.iter().zip(inputs) {
            surface.write(s.as_bytes()).map_err(Error::Eval)?;
        }
        self.model.evaluate(&p.request).map_err(Error::Eval)?;
        for (surface, s) in p.outs.iter().zip(outputs.iter_mut()) {
            surface.read(s.as_bytes_mut()).map_err(Error::Eval)?;
        }
        Ok(())
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
