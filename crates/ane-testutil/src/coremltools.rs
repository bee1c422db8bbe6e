//! coremltools 9.0 as an independent validator of our Core ML packages (`py/check_package.py`).

use std::path::Path;
use std::process::{Command, Stdio};

/// One op output as coremltools inferred it.
#[derive(Clone, Debug, PartialEq)]
pub struct InferredOp {
    /// Output variable name.
    pub name: String,
    /// Op type.
    pub op: String,
    /// `fp16`, `int32`, `string`, ...
    pub dtype: String,
    /// Empty for scalars.
    pub shape: Vec<usize>,
    /// Sum and count of a constant's values.
    pub checksum: Option<(f64, usize)>,
}

/// What coremltools made of one package.
#[derive(Clone, Debug, Default)]
pub struct InferredPackage {
    /// Core ML specification version.
    pub spec_version: u32,
    /// Functions and their ops, in order.
    pub functions: Vec<(String, Vec<InferredOp>)>,
}

/// A Python 3 that imports coremltools, or `None` after a visible SKIP line; with
/// `ANE_REQUIRE_COREMLTOOLS` set (the test script and CI set it) a missing one is a failure.
pub fn python() -> Option<String> {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = Command::new(&py)
        .args([
            "-c",
            "import sys, coremltools.libmilstoragepython; print(sys.executable)",
        ])
        .stdin(Stdio::null())
        .output();
    let why = match &out {
        Ok(o) if o.status.success() => return Some(py),
        // the last line of Python's complaint (an ImportError, or which interpreter ran)
        Ok(o) => String::from_utf8_lossy(&o.stderr)
            .lines()
            .last()
            .unwrap_or("no message")
            .to_string(),
        Err(e) => e.to_string(),
    };
    assert!(
        std::env::var_os("ANE_REQUIRE_COREMLTOOLS").is_none(),
        "{py} cannot import coremltools ({why}; pip install coremltools==9.0)"
    );
    eprintln!("SKIP: {py} cannot import coremltools; cross-check not run");
    None
}

/// Loads every package with coremltools (package + manifest check, then the milproto loader
/// with type inference). `Err` carries coremltools' complaint about the first one it rejects.
pub fn check_packages(py: &str, packages: &[&Path]) -> Result<Vec<InferredPackage>, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/check_package.py");
    let out = Command::new(py)
        .arg(script)
        .args(packages)
        .output()
        .expect("run python");
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(err) = text.lines().find(|l| l.starts_with("error ")) {
        return Err(err.to_string());
    }
    assert!(
        out.status.success(),
        "check_package.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut result: Vec<InferredPackage> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "package" => result.push(InferredPackage {
                spec_version: f[2].parse().unwrap(),
                functions: Vec::new(),
            }),
            "function" => {
                let p = result.last_mut().expect("package line first");
                p.functions.push((f[1].to_string(), Vec::new()));
            }
            "op" => {
                let p = result.last_mut().expect("package line first");
                let ops = &mut p.functions.last_mut().expect("function line first").1;
                let shape = if f[4] == "-" {
                    Vec::new()
                } else {
                    f[4].split('x').map(|d| d.parse().unwrap()).collect()
                };
                let checksum =
                    (f.len() == 7).then(|| (f[5].parse().unwrap(), f[6].parse().unwrap()));
                ops.push(InferredOp {
                    name: f[1].to_string(),
                    op: f[2].to_string(),
                    dtype: f[3].to_string(),
                    shape,
                    checksum,
                });
            }
            _ => {}
        }
    }
    assert_eq!(
        result.len(),
        packages.len(),
        "one description per package:\n{text}"
    );
    Ok(result)
}
