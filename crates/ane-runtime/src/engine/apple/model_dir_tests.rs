//! The framework's per-program folder: shared by kernels of one program (in any process),
//! removed by the last.

use super::ModelDir;
use ane_mil::{BlobWriter, WeightFiles};

/// Spawning a process copies every descriptor until it execs, lock files included: a test
/// that spawns one must not overlap the tests that watch locks being released.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn weights() -> WeightFiles {
    let mut w = BlobWriter::new();
    w.add_fp32(&[1.0, 2.0]);
    let mut files = WeightFiles::new();
    files
        .insert("@model_path/weights/weight.bin", w.finish())
        .unwrap();
    files
}

#[test]
fn the_folder_outlives_every_holder_but_the_last() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("ABC123");
    let w = weights();
    let first = ModelDir::acquire(path.clone(), "program(1.3)\n", &w).unwrap();
    assert_eq!(
        std::fs::read_to_string(path.join("model.mil")).unwrap(),
        "program(1.3)\n"
    );
    assert_eq!(
        std::fs::read(path.join("weights/weight.bin")).unwrap(),
        w.file("@model_path/weights/weight.bin").unwrap().bytes()
    );
    let second = ModelDir::acquire(path.clone(), "program(1.3)\n", &w).unwrap();
    drop(first);
    assert!(
        path.join("model.mil").exists(),
        "still held by the second kernel"
    );
    drop(second);
    assert!(!path.exists(), "the last holder removes it");
    assert!(
        !root.path().join("ABC123.lock").exists(),
        "and its lock file, so they do not pile up"
    );
}

/// A holder whose lock file was removed under it (the last holder elsewhere finishing)
/// starts over on a fresh lock file instead of holding a lock nobody else can see.
#[test]
fn a_lock_file_removed_under_a_waiter_is_replaced() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("BEEF");
    let lock_path = root.path().join("BEEF.lock");
    // a last holder elsewhere: the exclusive lock it takes before removing everything
    std::fs::write(&lock_path, b"").unwrap();
    let last = super::open_lock(&lock_path).unwrap();
    last.lock().unwrap();
    let waiter = {
        let path = path.clone();
        std::thread::spawn(move || ModelDir::acquire(path, "p", &weights()).unwrap())
    };
    // the waiter has opened the old lock file and waits for its shared lock
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::remove_file(&lock_path).unwrap();
    drop(last);
    let held = waiter.join().unwrap();
    assert!(
        super::still_named_by(held.lock.as_ref().unwrap(), &lock_path),
        "the waiter holds the lock file the path names, not the removed one"
    );
    drop(held);
    assert!(!path.exists() && !lock_path.exists());
}

#[test]
fn weights_that_would_leave_the_folder_are_refused_before_any_write() {
    let root = tempfile::tempdir().unwrap();
    let mut bad = WeightFiles::new();
    bad.insert(
        "@model_path/../escape.bin",
        weights()
            .file("@model_path/weights/weight.bin")
            .unwrap()
            .bytes()
            .to_vec(),
    )
    .unwrap();
    let path = root.path().join("X");
    assert!(ModelDir::acquire(path.clone(), "p", &bad).is_err());
    assert!(!path.exists(), "refused before anything is written");
    assert!(!root.path().join("escape.bin").exists());
}

/// Another process holding the folder (here: a child holding the lock file) keeps it alive.
#[cfg(unix)]
#[test]
fn a_holder_in_another_process_keeps_the_folder() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("F00D");
    let held = ModelDir::acquire(path.clone(), "program(1.3)\n", &weights()).unwrap();
    // flock(1) from util-linux takes a shared lock on the same file and waits for `sleep`
    // (--close: the lock stays with flock itself, so killing it releases the lock)
    let Ok(mut other) = std::process::Command::new("flock")
        .args([
            "--shared",
            "--close",
            root.path().join("F00D.lock").to_str().unwrap(),
            "sleep",
            "5",
        ])
        .spawn()
    else {
        eprintln!("SKIP: flock(1) not found");
        return;
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(held);
    assert!(
        path.join("model.mil").exists(),
        "the other process still holds it"
    );
    other.kill().unwrap();
    other.wait().unwrap();
    // now the next holder that lets go is the last
    drop(ModelDir::acquire(path.clone(), "program(1.3)\n", &weights()).unwrap());
    assert!(!path.exists());
    assert!(!root.path().join("F00D.lock").exists());
}
