//! Every struct size, field offset and enum value `abi` relies on, against the real headers.
#![cfg(ggml_linked)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;

/// What the layout program prints when compiled against the ggml sources at `src`.
fn c_layout(src: &std::path::Path, name: &str) -> BTreeMap<String, usize> {
    c_layout_with(src, name, &[])
}

/// [`c_layout`] with extra compiler arguments (`-D` switches).
fn c_layout_with(src: &std::path::Path, name: &str, extra: &[&str]) -> BTreeMap<String, usize> {
    // compiled here, not by support::compile_c, which puts the pinned headers first
    let exe = support::scratch_dir(name).join(name);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(cc)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/c/layout.c"))
        .arg(format!("-I{}", src.join("include").display()))
        .arg(format!("-I{}", src.join("src").display()))
        .args(extra)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run the C compiler");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let printed = Command::new(&exe).output().unwrap();
    String::from_utf8(printed.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn sys_layout_matches_the_pinned_headers() {
    let c = c_layout(&support::src_dir(), "layout");
    let rust = ggml_ane::abi::layout_table();
    assert_eq!(
        rust.len(),
        c.len(),
        "the C program and abi::layout_table list different items"
    );
    for (name, value) in rust {
        assert_eq!(
            c.get(name),
            Some(&value),
            "{name}: the pinned header says {:?}, abi says {value}",
            c.get(name)
        );
    }
}

/// The ggml sources a test host was built from (`GGML_SRC` in its CMake cache).
fn host_sources(lib_dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let cache = std::fs::read_to_string(lib_dir.join("../CMakeCache.txt")).ok()?;
    cache
        .lines()
        .find_map(|l| l.strip_prefix("GGML_SRC:").and_then(|r| r.split_once('=')))
        .map(|(_, path)| std::path::PathBuf::from(path))
}

/// The version table claims a ggml only when its headers are checked: every struct `abi`
/// mirrors has the same layout in the v3 hosts' sources (0.26, 0.28) as in the pinned one; only
/// the backend API version differs.
#[test]
fn the_v3_hosts_headers_have_the_same_layouts() {
    let pinned = c_layout(&support::src_dir(), "layout-pinned");
    for (var, dir) in support::v3_hosts() {
        let src = host_sources(&dir)
            .unwrap_or_else(|| panic!("{var}: no GGML_SRC in the host's CMake cache"));
        let host = c_layout(&src, &format!("layout-{var}"));
        for (name, value) in &pinned {
            let want = if name == "GGML_BACKEND_API_VERSION" {
                3
            } else {
                *value
            };
            assert_eq!(host.get(name), Some(&want), "{var}: {name}");
        }
        assert_eq!(host.len(), pinned.len(), "{var}");
    }
}

/// The whisper.cpp hosts' ggml sources (`WHISPER_SRC` in the host's CMake cache, `/ggml`).
fn whisper_sources(bin: &std::path::Path) -> std::path::PathBuf {
    let cache = std::fs::read_to_string(bin.join("../CMakeCache.txt")).unwrap();
    cache
        .lines()
        .find_map(|l| {
            l.strip_prefix("WHISPER_SRC:")
                .and_then(|r| r.split_once('='))
        })
        .map(|(_, path)| std::path::PathBuf::from(path).join("ggml"))
        .expect("WHISPER_SRC in the whisper host's CMake cache")
}

/// The table's 0.9 and 0.13 rows, against those hosts' headers: ggml 0.13.1 (whisper.cpp 1.8.5)
/// lays out everything as the pinned ggml does; 0.9.5 (whisper.cpp 1.8.3) too, but for
/// `ggml_backend_i` and `ggml_backend` (`abi::layout_table_0_9`) and the COMPUTE flag, which it
/// lacks. Both lack the pinned caps' last field (`mmap_support`): our props write it into
/// padding there (the props' size and the caps' offset are the same).
#[test]
fn the_whisper_hosts_headers_have_the_layouts_the_table_gives() {
    let pinned = c_layout(&support::src_dir(), "layout-pinned-w");
    let legacy: BTreeMap<&str, usize> = ggml_ane::abi::layout_table_0_9().into_iter().collect();
    for (version, bin) in support::whisper_hosts() {
        let src = whisper_sources(&bin);
        let old = version == "1.8.3";
        let flags: &[&str] = if old {
            &["-DLAYOUT_NO_COMPUTE_FLAG"]
        } else {
            &[]
        };
        let host = c_layout_with(&src, &format!("layout-whisper-{version}"), flags);
        for (name, value) in &pinned {
            let want = match name.as_str() {
                "ggml_backend_dev_caps" => Some(4),
                "GGML_TENSOR_FLAG_COMPUTE" if old => None,
                n if old && legacy.contains_key(n) => Some(legacy[n]),
                _ => Some(*value),
            };
            assert_eq!(
                host.get(name).copied(),
                want,
                "whisper.cpp {version}: {name}"
            );
        }
    }
}

/// The library needs libggml-base (so RTLD_LOCAL hosts can load it) and never libggml.
#[cfg(target_os = "linux")]
#[test]
fn links_ggml_base_only() {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(support::cdylib())
        .output()
        .expect("readelf");
    let text = String::from_utf8_lossy(&out.stdout);
    let needed: Vec<&str> = text.lines().filter(|l| l.contains("(NEEDED)")).collect();
    assert!(
        needed.iter().any(|l| l.contains("[libggml-base.so")),
        "{needed:#?}"
    );
    assert!(
        !needed.iter().any(|l| l.contains("[libggml.so")),
        "{needed:#?}"
    );
}
