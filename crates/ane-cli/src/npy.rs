//! `.npy` files in and out.

use std::io::BufWriter;
use std::path::Path;

use anyhow::{bail, Context};
use half::f16;

/// A dense array read from `.npy`, as f32 (fp16 values convert exactly).
pub(crate) struct Array {
    pub(crate) shape: Vec<usize>,
    pub(crate) values: Vec<f32>,
}

pub(crate) fn read(path: &Path) -> anyhow::Result<Array> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .with_context(|| format!("{} is not a .npy file", path.display()))?;
    if npy.order() == npyz::Order::Fortran {
        bail!(
            "{}: Fortran-order arrays are not supported; save it C-contiguous",
            path.display()
        );
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let descr = npy.dtype().descr().trim_matches('\'').to_string();
    let values: Vec<f32> = match descr.as_str() {
        "<f2" => npy
            .into_vec::<f16>()?
            .into_iter()
            .map(f16::to_f32)
            .collect(),
        "<f4" => npy.into_vec::<f32>()?,
        "<f8" => npy
            .into_vec::<f64>()?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        "<i4" => npy
            .into_vec::<i32>()?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        "<i8" => npy
            .into_vec::<i64>()?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        other => bail!(
            "{}: dtype {other} is not supported (use float16, float32, float64 or int)",
            path.display()
        ),
    };
    Ok(Array { shape, values })
}

pub(crate) fn write_f32(path: &Path, shape: &[usize], values: &[f32]) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    use npyz::WriterBuilder;
    let mut w = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&shape)
        .writer(BufWriter::new(file))
        .begin_nd()?;
    w.extend(values.iter().copied())?;
    w.finish()?;
    Ok(())
}
