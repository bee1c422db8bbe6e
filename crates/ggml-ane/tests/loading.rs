//! Loading the library is cheap: a process that loads every backend and lists the devices
//! and features — `llama-cli --list-devices`, a whisper.cpp run that computes elsewhere —
//! creates no runtime and compiles nothing. The self-probe runs at the first backend.
#![cfg(ggml_linked)]

mod support;

use std::process::Command;

/// Runs the device lister with our library and the reference engine's self-probe on (so
/// a probe, if one ran, would compile and say so); `init` names a device to make a backend of.
fn list(init: Option<&str>) -> (String, String) {
    let lib_dir = support::lib_dir();
    let exe = support::compile_c(
        "list_devices.c",
        &format!("list-devices-{}", init.unwrap_or("none")),
        &[
            format!("-L{}", lib_dir.display()),
            format!("-Wl,-rpath,{}", lib_dir.display()),
            "-lggml".into(),
            "-lggml-base".into(),
        ],
    );
    let mut cmd = Command::new(exe);
    cmd.current_dir(&lib_dir)
        .env("LD_LIBRARY_PATH", &lib_dir)
        .env("GGML_BACKEND_PATH", support::cdylib())
        .env("GGML_ANE_PROBE", "1")
        .env("GGML_ANE_LOG", "debug")
        .env("GGML_ANE_CACHE_DIR", "off")
        .env_remove("GGML_ANE_ENGINE");
    if let Some(name) = init {
        cmd.env("LIST_INIT", name);
    }
    let out = cmd.output().expect("run list_devices");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    (stdout, stderr)
}

#[test]
fn loading_and_listing_devices_compiles_nothing() {
    let (stdout, log) = list(None);
    // both devices listed, described, with the engine and its limits among the features
    assert!(stdout.contains("device ANE: "), "{stdout}");
    assert!(stdout.contains("device ANE-FULL: "), "{stdout}");
    assert!(stdout.contains("feature ANE ENGINE=reference"), "{stdout}");
    assert!(stdout.contains("feature ANE MAX_DIM=16384"), "{stdout}");
    // the ggml it is bound to, the one copy in this process (two would be a second ggml)
    assert!(
        stdout.contains("feature ANE GGML_BASE_COPIES=1"),
        "{stdout}"
    );
    let base = stdout
        .lines()
        .find_map(|l| l.strip_prefix("feature ANE GGML_BASE="))
        .unwrap_or_else(|| panic!("no GGML_BASE feature:\n{stdout}"));
    assert!(base.contains("libggml-base."), "{base}");
    assert!(!log.contains("copies of libggml-base"), "{log}");
    // no runtime made, no self-probe run (each would say so at this log level)
    assert!(!log.contains("self-probe"), "{log}");
    assert!(!log.contains("ggml-ane: using the"), "{log}");
    assert!(!stdout.contains("SELF_PROBE"), "{stdout}");

    // the control: the first backend makes the runtime, and its probe compiles and says so
    let (_, log) = list(Some("ANE"));
    assert!(
        log.contains("ggml-ane: using the reference engine"),
        "{log}"
    );
    assert!(log.contains("self-probe"), "{log}");
}

/// Every host, the newest included, loads us as llama.cpp's common does since it loads
/// backends lazily (llama.cpp#22290: `ggml_backend_load_all` once per `-dev`, `--list-devices`
/// and `-ot` it parses, then `-dev ANE` by name): each device listed once however often the
/// loader runs, and the one named made into a backend. (The newest host has no llama-server
/// built — its cold build would cost CI minutes — so this harness makes common's calls against
/// that host's ggml; the pinned llama-server runs `--list-devices` itself below.)
#[test]
fn repeated_lazy_loads_list_each_device_once_and_dev_by_name_works_in_every_host() {
    let mut hosts = vec![("pinned", support::lib_dir())];
    hosts.extend(support::v3_hosts());
    for (host, lib_dir) in hosts {
        let exe = support::compile_c(
            "list_devices.c",
            &format!("list-devices-lazy-{host}"),
            &[
                format!("-L{}", lib_dir.display()),
                format!("-Wl,-rpath,{}", lib_dir.display()),
                "-lggml".into(),
                "-lggml-base".into(),
            ],
        );
        for name in ["ANE", "ANE-FULL"] {
            let out = Command::new(&exe)
                .current_dir(&lib_dir)
                .env("LD_LIBRARY_PATH", &lib_dir)
                .env("GGML_BACKEND_PATH", support::cdylib())
                .env("GGML_ANE_CACHE_DIR", "off")
                .env("LIST_LOADS", "3")
                .env("GGML_ANE_LOG", "debug")
                .env("LIST_INIT", name)
                .env_remove("GGML_ANE_ENGINE")
                .output()
                .expect("run list_devices");
            let (stdout, log) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            assert!(out.status.success(), "{host} -dev {name}: {stdout}{log}");
            for device in ["ANE", "ANE-FULL"] {
                let listed = stdout
                    .lines()
                    .filter(|l| l.starts_with(&format!("device {device}: ")))
                    .count();
                assert_eq!(
                    listed, 1,
                    "{host}: {device} listed {listed} times\n{stdout}"
                );
            }
            assert!(
                log.contains("ggml-ane: using the"),
                "{host} -dev {name}: {log}"
            );
        }
    }
}

/// llama.cpp's own device listing (`--list-devices`, common's lazy `ggml_backend_load_all`,
/// llama.cpp#22290) shows both devices from `GGML_BACKEND_PATH`, with nothing compiled; the
/// pinned llama-server is built with `GGML_BACKEND_DL`, as released llama.cpp builds are.
#[test]
fn llama_server_lists_our_devices() {
    let lib_dir = support::lib_dir();
    let Some(server) = support::llama_server() else {
        return;
    };
    let out = Command::new(server)
        .arg("--list-devices")
        .current_dir(&lib_dir)
        .env("LD_LIBRARY_PATH", &lib_dir)
        .env("GGML_BACKEND_PATH", support::cdylib())
        .env("GGML_ANE_LOG", "debug")
        .env("GGML_ANE_CACHE_DIR", "off")
        .env_remove("GGML_ANE_ENGINE")
        .output()
        .expect("run llama-server --list-devices");
    let (stdout, log) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{log}");
    for device in ["  ANE: ", "  ANE-FULL: "] {
        assert!(stdout.contains(device), "{stdout}{log}");
    }
    assert!(!log.contains("self-probe"), "{log}");
}
