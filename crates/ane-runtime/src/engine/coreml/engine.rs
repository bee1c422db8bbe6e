//! The coreml engine and its kernels (macOS only; see the module above).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ane_mil::{check_program, Program, WeightFiles};
use sha2::{Digest, Sha256};

use super::sys::{compile_package, LoadedModel};
use super::CoreMlConfig;
use crate::engine::limits::{MAX_DIM, ROW_ALIGNMENT};
use crate::engine::{
    port_layout, CompileCounter, Engine, EngineInfo, EngineKind, Kernel, Limits, Port,
    ProcedureInfo,
};
use crate::error::{Error, Result};
use crate::layout::{SurfaceDType, TensorLayout};
use crate::surface::{AlignedMemory, Lender, Surface};

/// The Core ML engine.
pub struct CoreMlEngine {
    models_dir: PathBuf,
    counter: CompileCounter,
}

impl CoreMlEngine {
    /// Compiled models go to `config.models_dir`.
    pub fn new(config: &CoreMlConfig) -> Result<Self> {
        let models_dir = config.models_dir.clone();
        std::fs::create_dir_all(&models_dir).map_err(|e| Error::EngineUnavailable {
            kind: EngineKind::CoreMl,
            reason: format!("cannot create {}: {e}", models_dir.display()),
        })?;
        Ok(CoreMlEngine {
            models_dir,
            counter: CompileCounter::process(EngineKind::CoreMl, None),
        })
    }

    /// The compiled model for one package, compiling it on first use.
    fn compiled(&self, package: &ane_mil::coreml::Package) -> Result<PathBuf> {
        let mut h = Sha256::new();
        for (path, bytes) in &package.files {
            h.update(path.to_string_lossy().as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        let key: String = h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let target = self.models_dir.join(format!("{key}.mlmodelc"));
        if target.is_dir() {
            return Ok(target);
        }
        self.counter.take()?;
        let staging = self
            .models_dir
            .join(format!("{key}.{}.mlpackage", std::process::id()));
        package
            .write_to(&staging)
            .map_err(|e| Error::Compile(format!("writing {}: {e}", staging.display())))?;
        let compiled = compile_package(&staging);
        let _ = std::fs::remove_dir_all(&staging);
        let compiled = compiled.map_err(Error::Compile)?;
        move_dir(&compiled, &target)
            .map_err(|e| Error::Compile(format!("keeping {}: {e}", target.display())))?;
        Ok(target)
    }
}

/// Renames, or copies then removes across file systems; another process that got there
/// first wins (the content is the same).
fn move_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    if to.is_dir() {
        let _ = std::fs::remove_dir_all(from);
        return Ok(());
    }
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    copy_dir(from, to)?;
    std::fs::remove_dir_all(from)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

impl Engine for CoreMlEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            kind: EngineKind::CoreMl,
            description: "Apple Neural Engine through Core ML (cpuAndNeuralEngine)".to_string(),
            details: vec![("models".to_string(), self.models_dir.display().to_string())],
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_dim: MAX_DIM,
            row_alignment: ROW_ALIGNMENT,
            compile_budget: None,
            compiles_used: self.counter.used(),
            accumulator: crate::chips::accumulator_here(),
        }
    }

    fn build_id(&self) -> String {
        format!("coreml-{}", std::env::consts::ARCH)
    }

    fn compile(&self, program: &Program, weights: &WeightFiles) -> Result<Box<dyn Kernel>> {
        let checked = check_program(program, Some(weights))?;
        let mut procedures = Vec::new();
        let mut models = Vec::new();
        for f in &checked {
            let package =
                ane_mil::coreml::package(program, Some(&f.name), weights).map_err(|e| {
                    Error::Unsupported {
                        engine: EngineKind::CoreMl,
                        reason: e.to_string(),
                    }
                })?;
            let path = self.compiled(&package)?;
            models.push(Mutex::new(
                LoadedModel::load(&path).map_err(Error::Compile)?,
            ));
            let layout = |p: &ane_mil::ir::Param| {
                let dtype =
                    SurfaceDType::from_mil(p.ty.dtype()).ok_or_else(|| Error::Unsupported {
                        engine: EngineKind::CoreMl,
                        reason: format!("`{}` is {}, not fp16/fp32", p.name, p.ty),
                    })?;
                TensorLayout::aligned(&p.name, dtype, p.ty.shape(), ROW_ALIGNMENT)
            };
            procedures.push(ProcedureInfo {
                name: f.name.clone(),
                inputs: f.inputs.iter().map(layout).collect::<Result<_>>()?,
                outputs: f.outputs.iter().map(layout).collect::<Result<_>>()?,
            });
        }
        Ok(Box::new(CoreMlKernel { procedures, models }))
    }
}

/// Apple silicon's page size: the alignment of the memory this engine lends.
const PAGE: usize = 16 * 1024;

/// One loaded Core ML model per procedure.
struct CoreMlKernel {
    procedures: Vec<ProcedureInfo>,
    models: Vec<Mutex<LoadedModel>>,
}

impl Kernel for CoreMlKernel {
    fn procedures(&self) -> &[ProcedureInfo] {
        &self.procedures
    }

    /// Page-aligned host memory, which Core ML can use as a backing without copying
    /// (apple-audit.md finding 22).
    fn lend(&self, index: usize, port: Port) -> Result<Surface> {
        let layout = port_layout(&self.procedures, index, port)?;
        let memory = AlignedMemory::<PAGE>::new(Lender {
            kind: EngineKind::CoreMl,
            capacity: layout.byte_len().next_multiple_of(PAGE),
        });
        Surface::lent(layout.clone(), Box::new(memory))
    }

    fn takes_in_place(&self, _index: usize, _port: Port, surface: &Surface) -> bool {
        surface
            .lender()
            .is_some_and(|l| l.kind == EngineKind::CoreMl)
    }

    /// Core ML wraps the surfaces' own memory (any copy it makes is its own): 0 bytes.
    fn run(
        &self,
        index: usize,
        inputs: &[&Surface],
        outputs: &mut [&mut Surface],
    ) -> Result<usize> {
        // Core ML schedules the ANE from the calling thread's QoS too
        crate::sys::qos::raise_to_user_initiated();
        let model = self.models[index].lock().unwrap_or_else(|e| e.into_inner());
        model.predict(inputs, outputs).map_err(Error::Eval)?;
        Ok(0)
    }
}
