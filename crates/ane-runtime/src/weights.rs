//! Loading a program's weight files from the folder `@model_path/` stands for.

use std::collections::BTreeSet;
use std::path::Path;

use ane_mil::{Program, WeightFiles};

use crate::error::{Error, Result};

/// The prefix every BLOBFILE path starts with.
pub const MODEL_PATH_PREFIX: &str = "@model_path/";

/// Reads every weight file `program` references, with `@model_path/` replaced by `dir`.
pub fn load_model_dir(dir: &Path, program: &Program) -> Result<WeightFiles> {
    let paths: BTreeSet<&str> = program.blob_refs().map(|b| b.path.as_str()).collect();
    let mut files = WeightFiles::new();
    for p in paths {
        let rel = p.strip_prefix(MODEL_PATH_PREFIX).ok_or_else(|| {
            Error::Staging(format!(
                "BLOBFILE path `{p}` does not start with `{MODEL_PATH_PREFIX}`"
            ))
        })?;
        let full = dir.join(rel);
        let bytes = std::fs::read(&full).map_err(|source| Error::Io {
            path: full.clone(),
            source,
        })?;
        files
            .insert(p, bytes)
            .map_err(|e| Error::Staging(format!("{}: {e}", full.display())))?;
    }
    Ok(files)
}
