//! The stats table when the process is stopped by SIGINT or SIGTERM: ggml's rpc-server never
//! frees its backends and is stopped with a signal, so without this its table never appears.
//!
//! The handler only writes the signal's number into a pipe (async-signal-safe); a thread
//! reading the pipe prints the table, puts back the handler that was there before, raises the
//! signal again so that handler (or the default action) runs, and then installs ours again.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};

/// The pipe's write end (-1 before it exists).
static PIPE: AtomicI32 = AtomicI32::new(-1);

/// The actions that were installed before ours, for SIGINT and SIGTERM.
static PREVIOUS: Mutex<Vec<(c_int, libc::sigaction)>> = Mutex::new(Vec::new());

const SIGNALS: [c_int; 2] = [libc::SIGINT, libc::SIGTERM];

extern "C" fn on_signal(sig: c_int) {
    let fd = PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = sig as u8;
        // SAFETY: write(2) is async-signal-safe; one byte from a live stack variable.
        unsafe { libc::write(fd, (&byte as *const u8).cast::<c_void>(), 1) };
    }
}

/// Installs our handler for `sig`, keeping the one that was there.
fn install(sig: c_int) {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value to fill in.
    let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
    ours.sa_sigaction = on_signal as extern "C" fn(c_int) as usize;
    // interrupted system calls resume (rpc-server treats an interrupted accept as fatal and
    // would exit before the table is printed)
    ours.sa_flags = libc::SA_RESTART;
    // SAFETY: an empty mask, then sigaction with valid pointers; the old action is read back.
    let old = unsafe {
        libc::sigemptyset(&mut ours.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        (libc::sigaction(sig, &ours, &mut old) == 0).then_some(old)
    };
    if let Some(old) = old {
        let mut prev = PREVIOUS.lock().unwrap_or_else(|e| e.into_inner());
        prev.retain(|(s, _)| *s != sig);
        prev.push((sig, old));
    }
}

/// From now on SIGINT and SIGTERM print the table first (once per process to set up).
pub(crate) fn print_stats_on_signal(table: fn() -> String) {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let mut fds = [0 as c_int; 2];
        // SAFETY: pipe(2) fills two descriptors.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return;
        }
        PIPE.store(fds[1], Ordering::Relaxed);
        let read_fd = fds[0];
        let spawned = std::thread::Builder::new()
            .name("ggml-ane-signals".into())
            .spawn(move || loop {
                let mut byte = 0u8;
                // SAFETY: reads one byte into a live variable from our pipe.
                let n = unsafe { libc::read(read_fd, (&mut byte as *mut u8).cast::<c_void>(), 1) };
                if n != 1 {
                    return;
                }
                let sig = c_int::from(byte);
                eprint!("ggml-ane: signal {sig}\n{}", table());
                let previous = PREVIOUS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .find(|(s, _)| *s == sig)
                    .map(|(_, a)| *a);
                if let Some(old) = previous {
                    // SAFETY: the action that was installed before ours, put back and raised:
                    // the process does what it would have done without us.
                    unsafe {
                        libc::sigaction(sig, &old, std::ptr::null_mut());
                        libc::raise(sig);
                    }
                    // still running (the previous handler returned): ours again
                    install(sig);
                }
            });
        if spawned.is_ok() {
            for sig in SIGNALS {
                install(sig);
            }
        }
    });
}
