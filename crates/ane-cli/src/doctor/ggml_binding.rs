//! Which ggml the backend library will bind to in a host (#20): on a Mac it must take
//! whatever libggml-base the host loaded (`-undefined dynamic_lookup`), never name one by its
//! install name — dyld would load a second copy from that path, or fail. Read off the
//! `libggml_ane` built next to this `ane` with `otool -L` (macOS) or `readelf -d` (Linux).
//! In the host itself the library logs a warning when the process holds two libggml-base
//! images, and its features name the one it is bound to (`GGML_BASE`, `GGML_BASE_COPIES`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The library built beside the running `ane` (cargo puts both in `target/<profile>/`).
fn sibling_library() -> Option<PathBuf> {
    let dir = std::env::current_exe().ok()?.parent()?.to_path_buf();
    let name = if cfg!(target_os = "macos") {
        "libggml_ane.dylib"
    } else {
        "libggml_ane.so"
    };
    Some(dir.join(name)).filter(|p| p.exists())
}

/// The library's dynamic dependencies naming a libggml-base, as the platform's tool prints
/// them; `Err` when the tool cannot be run.
fn ggml_base_dependencies(lib: &Path) -> Result<Vec<String>, String> {
    let (tool, args): (&str, &[&str]) = if cfg!(target_os = "macos") {
        ("otool", &["-L"])
    } else {
        ("readelf", &["-d"])
    };
    let out = Command::new(tool)
        .args(args)
        .arg(lib)
        .output()
        .map_err(|e| format!("{tool}: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("libggml-base"))
        .map(|l| l.trim().to_string())
        .collect())
}

/// `(passed, detail)`, or `None` when there is no library to look at.
pub(super) fn check() -> Option<(Option<bool>, String)> {
    let lib = sibling_library()?;
    let shown = lib.display();
    Some(match ggml_base_dependencies(&lib) {
        Err(why) => (None, format!("{shown}: {why}")),
        // macOS: any load command naming libggml-base is a path dyld will try
        Ok(deps) if cfg!(target_os = "macos") && !deps.is_empty() => (
            Some(false),
            format!(
                "{shown} names {} — a host with its own ggml (Homebrew, an app) would get a second copy; rebuild (build.rs links with -undefined dynamic_lookup)",
                deps.join(", ")
            ),
        ),
        Ok(_) if cfg!(target_os = "macos") => (
            Some(true),
            format!("{shown} binds to the libggml-base its host loaded (no load command names one)"),
        ),
        // ELF: a NEEDED soname is matched against the images already loaded
        Ok(deps) => (
            Some(true),
            format!(
                "{shown}: {}",
                if deps.is_empty() {
                    "no libggml-base named: ggml's symbols come from the host".to_string()
                } else {
                    format!("{} (by soname: the host's own copy serves it)", deps.join(", "))
                }
            ),
        ),
    })
}
