//! Every struct size, field offset and enum value `sys` relies on, against the real headers.
#![cfg(ggml_linked)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;

#[test]
fn sys_layout_matches_the_pinned_headers() {
    let src = support::src_dir();
    let exe = support::compile_c(
        "layout.c",
        "layout",
        &[format!("-I{}", src.join("src").display())],
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
