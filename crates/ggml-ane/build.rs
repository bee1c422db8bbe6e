//! Links libggml-base (DT_NEEDED) when `GGML_LIB_DIR` names a folder holding it, and tells the
//! tests (cfg `ggml_linked`) that real ggml is there to load the library into.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=GGML_LIB_DIR");
    println!("cargo::rustc-check-cfg=cfg(ggml_linked)");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let dir = std::env::var("GGML_LIB_DIR").ok().filter(|d| {
        let p = Path::new(d);
        p.join("libggml-base.so").exists() || p.join("libggml-base.dylib").exists()
    });
    match dir {
        Some(d) => {
            println!("cargo:rustc-link-search=native={d}");
            println!("cargo:rustc-link-lib=dylib=ggml-base");
            println!("cargo:rustc-cfg=ggml_linked");
            println!("cargo:rustc-env=GGML_LIB_DIR_AT_BUILD={d}");
            if target_os != "macos" {
                println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{d}");
            }
        }
        None if target_os == "macos" => {
            // resolve ggml-base symbols from the host process at load time; the unit tests
            // (walker, settings, hosts: no ggml symbol reached) link the same way
            println!("cargo:rustc-link-arg=-Wl,-undefined,dynamic_lookup");
        }
        None => {}
    }
}
