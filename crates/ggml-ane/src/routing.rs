//! Whether the backend takes work on this chip at all: `GGML_ANE_MODE` against the chip table
//! (`ane_runtime::chips`), decided once per process and said once — at warn level where it
//! stays out of the way (an M5-class chip under `auto`), so a user sees why nothing ran on the
//! ANE and what to set instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use ane_runtime::chips::{self, Mode, Route};

use crate::{abi, settings};

/// The decision (computed on first use; logged once, after, with no lock held: the host's log
/// callback may call back into us).
pub(crate) fn route() -> &'static Route {
    static ROUTE: OnceLock<Route> = OnceLock::new();
    static SAID: AtomicBool = AtomicBool::new(false);
    let r = ROUTE.get_or_init(|| {
        let (mode, named) = settings::get()
            .as_ref()
            .map_or((Mode::Auto, None), |c| (c.mode, c.chip.clone()));
        chips::route_here(mode, named.as_deref())
    });
    if !SAID.swap(true, Ordering::Relaxed) {
        let (level, what) = if r.take {
            (abi::GGML_LOG_LEVEL_INFO, "taking work")
        } else {
            (abi::GGML_LOG_LEVEL_WARN, "taking no work")
        };
        abi::log(level, &format!("ggml-ane: {what}: {}", r.reason));
    }
    r
}
