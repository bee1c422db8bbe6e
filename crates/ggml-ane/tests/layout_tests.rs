//! Every struct size, field offset and enum value `abi` relies on, against the real headers.
#![cfg(ggml_linked)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;

/// What the layout program prints when compiled against the ggml sources at `src`.
fn c_layout(src: &std::path::Path, name: &str) -> BTreeMap<String, usize> {
    // compiled here, not by support::compile_c, which puts the pinned headers first
    let exe = support::scratch_dir(name).join(name);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(cc)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/c/layout.c"))
        .arg(format!("-I{}", src.join("include").display()))
        .arg(format!("-I{}", src.join("src").display()))
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
