//! Links libggml-base (DT_NEEDED, by soname: the loader serves it with the host's own copy) when
//! `GGML_LIB_DIR` names a folder holding it, and tells the tests (cfg `ggml_linked`) that real
//! ggml is there to load the library into. On macOS never by name: a dylib's load command names
//! an install path, and in a host whose ggml came from elsewhere (Homebrew, an app bundle) dyld
//! would load a second copy from there, or fail; `-undefined dynamic_lookup` binds ggml's
//! symbols to whatever ggml the host loaded (`otool -L` shows no libggml-base; `ane doctor`
//! checks it).

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=GGML_LIB_DIR");
    println!("cargo::rustc-check-cfg=cfg(ggml_linked)");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let dir = std::env::var("GGML_LIB_DIR").ok().filter(|d| {
        let p = Path::new(d);
        p.join("libggml-base.so").exists() || p.join("libggml-base.dylib").exists()
    });
    if target_os == "macos" {
        // resolve ggml-base symbols from the host process at load time; the unit tests
        // (walker, settings, hosts: no ggml symbol reached) link the same way
        println!("cargo:rustc-link-arg=-Wl,-undefined,dynamic_lookup");
    }
    if let Some(d) = dir {
        println!("cargo:rustc-cfg=ggml_linked");
        println!("cargo:rustc-env=GGML_LIB_DIR_AT_BUILD={d}");
        if target_os != "macos" {
            println!("cargo:rustc-link-search=native={d}");
            println!("cargo:rustc-link-lib=dylib=ggml-base");
            println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{d}");
        }
    }
}
