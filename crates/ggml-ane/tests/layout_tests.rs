//! Every struct size, field offset and enum value `sys` relies on, against the real headers.
#![cfg(ggml_linked)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;

#[test]
fn sys_layout_matches_the_pinned_headers() {
    let src = support::src_dir();
    let dir = tempfile_dir();
    let exe = dir.join("layout");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/c/layout.c"))
        .arg(format!("-I{}", src.join("include").display()))
        .arg(format!("-I{}", src.join("src").display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run the C compiler");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = Command::new(&exe).output().unwrap();
    let c: BTreeMap<String, usize> = String::from_utf8(printed.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    let rust = ggml_ane::sys::layout_table();
    assert_eq!(
        rust.len(),
        c.len(),
        "the C program and sys::layout_table list different items"
    );
    for (name, value) in rust {
        assert_eq!(
            c.get(name),
            Some(&value),
            "{name}: the pinned header says {:?}, sys says {value}",
            c.get(name)
        );
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ggml-ane-layout-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
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
