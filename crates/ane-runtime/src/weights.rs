//! Loading a program's weight files from the folder `@model_path/` stands for.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use ane_mil::{Program, WeightFiles};

use crate::error::{Error, Result};

/// The prefix every BLOBFILE path starts with.
pub const MODEL_PATH_PREFIX: &str = "@model_path/";

/// Where a BLOBFILE path (`@model_path/weights/w.bin`) lives inside the folder `dir` that
/// `@model_path/` stands for. The one resolver for the CLI's model folders and the apple
/// engine's: it refuses paths without the prefix and paths that would leave the folder.
pub(crate) fn model_path_file(dir: &Path, mil_path: &str) -> std::io::Result<PathBuf> {
    let invalid = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("weight path `{mil_path}` {why}"),
        )
    };
    let rel = mil_path
        .strip_prefix(MODEL_PATH_PREFIX)
        .ok_or_else(|| invalid(&format!("does not start with `{MODEL_PATH_PREFIX}`")))?;
    let rel = Path::new(rel);
    let inside = rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !inside || rel.as_os_str().is_empty() {
        return Err(invalid("leaves the model folder"));
    }
    Ok(dir.join(rel))
}

/// Reads every weight file `program` references, with `@model_path/` replaced by `dir`.
///
/// # Errors
/// [`Error::Staging`] for a path without the prefix or leaving `dir`, [`Error::Io`] for a
/// file that cannot be read, [`Error::Staging`] for one that is not a weight file.
pub fn load_model_dir(dir: &Path, program: &Program) -> Result<WeightFiles> {
    let paths: BTreeSet<&str> = program.blob_refs().map(|b| b.path.as_str()).collect();
    let mut files = WeightFiles::new();
    for p in paths {
        let full = model_path_file(dir, p).map_err(|e| Error::Staging(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::model_path_file;

    #[test]
    fn weight_paths_cannot_leave_the_folder() {
        let dir = std::path::Path::new("/tmp/m");
        assert_eq!(
            model_path_file(dir, "@model_path/weights/w.bin").unwrap(),
            dir.join("weights/w.bin")
        );
        for bad in [
            "@model_path/../etc/passwd",
            "/etc/passwd",
            "@model_path/",
            "weights/w.bin",
        ] {
            assert!(model_path_file(dir, bad).is_err(), "{bad}");
        }
    }
}
