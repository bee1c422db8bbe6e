//! Our library inside real ggml, scheduled as `[ANE, CPU]` the way llama.cpp does it, against
//! the CPU backend computing the same graph (NMSE ≤ 5e-4, test-backend-ops' MUL_MAT limit).
#![cfg(ggml_linked)]

mod host;
mod support;

use ane_testutil::Rng;
use host::{nmse, Backend, MulMat, F16, F32, Q4_0, Q8_0};

const MAX_NMSE: f64 = 5e-4;

#[allow(clippy::too_many_arguments, reason = "one case, spelled out")]
fn check_case(
    w_type: i32,
    m: i64,
    k: i64,
    n: i64,
    wb: [i64; 2],
    b: [i64; 2],
    permuted: bool,
    seed: u64,
) {
    let (ane, cpu) = (Backend::ane(), Backend::cpu());
    assert_eq!(ane.name(), "ANE");
    let g = MulMat::new(w_type, m, k, n, wb, b, permuted);
    let mut rng = Rng::new(seed);
    g.set_weights(&rng.f16_values((k * m * wb[0] * wb[1]) as usize));
    let x = rng.f16_values(g.x_len());
    let r = g.run_sched(&[&ane, &cpu], &x);
    let what = format!("type {w_type} m={m} k={k} n={n} wb={wb:?} b={b:?} permuted={permuted}");
    assert_eq!(
        r.backend, "ANE",
        "{what}: the scheduler did not pick our backend"
    );
    let e = nmse(&r.y, &r.y_cpu);
    assert!(e <= MAX_NMSE, "{what}: nmse {e:e}");
}

#[test]
fn scheduled_mul_mat_matches_the_cpu_over_types_and_shapes() {
    let mut seed = 100;
    for w_type in [F32, F16, Q8_0, Q4_0] {
        for (m, k, n) in [(64, 64, 64), (33, 96, 7), (100, 256, 129), (1, 32, 1)] {
            seed += 1;
            check_case(w_type, m, k, n, [1, 1], [1, 1], false, seed);
        }
    }
}

#[test]
fn batched_broadcast_and_permuted_inputs() {
    check_case(F16, 40, 64, 9, [2, 3], [4, 3], false, 1);
    check_case(F32, 17, 32, 5, [1, 1], [3, 2], true, 2);
    check_case(Q8_0, 48, 64, 33, [3, 1], [6, 2], true, 3);
}

/// Dimensions past the engine's 16384 are tiled, not refused.
#[test]
fn dimensions_past_16384_are_tiled() {
    check_case(F16, 16500, 64, 3, [1, 1], [1, 1], false, 4);
    check_case(F16, 8, 16416, 2, [1, 1], [1, 1], false, 5);
}

/// Kernels are keyed by content, never by pointer: new weights at the same address give the
/// new result.
#[test]
fn weights_overwritten_in_place_give_the_new_result() {
    let (ane, cpu) = (Backend::ane(), Backend::cpu());
    let (m, k, n) = (48, 64, 80);
    let g = MulMat::new(F16, m, k, n, [1, 1], [1, 1], false);
    let mut rng = Rng::new(9);
    let x = rng.f16_values(g.x_len());
    g.set_weights(&rng.f16_values((m * k) as usize));
    let first = g.run_sched(&[&ane, &cpu], &x);
    g.set_weights(&rng.f16_values((m * k) as usize));
    let second = g.run_sched(&[&ane, &cpu], &x);
    assert_eq!(second.backend, "ANE");
    assert!(nmse(&second.y, &second.y_cpu) <= MAX_NMSE);
    assert!(
        nmse(&first.y, &second.y) > 0.1,
        "the second run reused the first weights"
    );
}

/// Weights in a buffer whose usage nobody set (as on rpc-server and in test hosts) count as
/// model weights only as graph leaves, with every byte in their fingerprint: a change in the
/// middle of a row — between the 32 bytes a sampled fingerprint reads at each end — between
/// two graphs is seen, and the second result is the new weights'.
#[test]
fn a_leaf_changed_where_the_sample_does_not_look_gives_the_new_result() {
    let (ane, cpu) = (Backend::ane(), Backend::cpu());
    let (m, k, n) = (48, 256, 80);
    let g = MulMat::new(F16, m, k, n, [1, 1], [1, 1], false);
    g.set_weights_usage(host::USAGE_ANY);
    let mut rng = Rng::new(21);
    let x = rng.f16_values(g.x_len());
    g.set_weights(&rng.f16_values((m * k) as usize));
    let first = g.run_sched(&[&ane, &cpu], &x);
    assert!(nmse(&first.y, &first.y_cpu) <= MAX_NMSE);
    // row 5, element 128: byte 256 of a 512-byte row; fp16 100.0
    let offset = 5 * (k as usize) * 2 + 128 * 2;
    g.poke_weights(offset, &half::f16::from_f32(100.0).to_le_bytes());
    let second = g.run_sched(&[&ane, &cpu], &x);
    assert_eq!(second.backend, "ANE");
    assert!(
        nmse(&first.y_cpu, &second.y_cpu) > 1e-4,
        "the poke changed the CPU's result"
    );
    let e = nmse(&second.y, &second.y_cpu);
    assert!(
        e <= MAX_NMSE,
        "the engine reused the old weights: nmse {e:e}"
    );
}

/// The host's abort callback, forwarded to ggml's CPU backend, aborts our graph with ggml's
/// own status (`GGML_STATUS_ABORTED`, 1), not a failure (-1) the host would report as an error.
#[test]
fn the_hosts_abort_is_an_abort() {
    unsafe extern "C" fn abort_now(_: *mut std::ffi::c_void) -> bool {
        true
    }
    let ane = Backend::ane();
    ane.set_abort_callback(abort_now, std::ptr::null_mut());
    let (status, _) = ane.add(&[1.0; 64], &[2.0; 64]);
    assert_eq!(status, 1, "GGML_STATUS_ABORTED");
}

/// An abort callback that calls back into our backend (here: sets its thread count) while
/// ggml's CPU backend is computing for us does not deadlock, and the graph completes.
#[test]
fn an_abort_callback_may_call_back_into_the_backend() {
    unsafe extern "C" fn reenter(data: *mut std::ffi::c_void) -> bool {
        // SAFETY: `data` is the Backend the test keeps alive while it computes.
        let backend = unsafe { &*data.cast::<Backend>() };
        backend.set_n_threads(1);
        false
    }
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ane = Backend::ane();
        let data = (&ane as *const Backend).cast_mut().cast();
        ane.set_abort_callback(reenter, data);
        let result = ane.add(&[1.0; 64], &[2.0; 64]);
        let _ = done.send(result);
    });
    let (status, y) = finished
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the graph did not finish: a lock held across the host's callback");
    assert_eq!(status, 0);
    assert!(y.iter().all(|&v| v == 3.0), "{y:?}");
}

/// Several backend instances computing at once on several threads.
#[test]
fn concurrent_backends_on_threads() {
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..3 {
                    check_case(
                        F16,
                        32 + t,
                        64,
                        16 + i,
                        [1, 1],
                        [2, 1],
                        false,
                        1000 + t as u64 * 10 + i as u64,
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a thread failed");
    }
}

/// llama.cpp's system info reads these through `ggml_backend_get_features`.
#[test]
fn features_name_the_engine_and_its_limits() {
    let f = host::features();
    let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("ENGINE"), Some("reference"), "{f:?}");
    assert_eq!(get("MAX_DIM"), Some("16384"), "{f:?}");
    assert!(get("COMPILE_BUDGET").is_some(), "{f:?}");
    // the defaults (the test script sets none of these)
    assert_eq!(get("KERNELS"), Some("auto"), "{f:?}");
    assert_eq!(get("MIN_TOKENS"), Some("1"), "{f:?}");
    assert_eq!(get("MIN_BATCH"), Some("64"), "{f:?}");
}

/// Of Metal's three buffer types (here the stand-in's), only the mapped one — the mmapped model,
/// host memory on Apple silicon — is accepted; never the private one (GPU addresses), nor the
/// plain shared one while its synchronisation is not shown.
#[test]
fn only_metals_mapped_buffer_type_is_accepted() {
    let standin = support::compile_standin_metal("libstandin-metal-sched.so");
    assert_eq!(
        host::accepts_standin_metal_buffer_types(&standin),
        [false, true, false],
        "MTL0, MTL0_Mapped, MTL0_Private"
    );
    // the stand-in behaves like Metal where a neighbour could notice: results appear only when
    // the backend is synchronised (NaN before), and private buffers have no host address
    let (a, b) = ([1.5f32; 64], [2.0f32; 64]);
    let seen = host::standin_behaviour(&standin, &a, &b);
    assert!(
        seen.before_sync.iter().all(|v| v.is_nan()),
        "{:?}",
        seen.before_sync
    );
    assert!(
        seen.after_sync.iter().all(|&v| v == 3.5),
        "{:?}",
        seen.after_sync
    );
    assert!(seen.private_base < 0x10000, "{:#x}", seen.private_base);
}
