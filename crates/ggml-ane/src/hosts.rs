//! Which ggml hosts the backend works with, by version and layout — a pure decision, no ggml
//! symbols (the registry in `abi` asks it, with what `abi::host` read off the host).

/// What differs, among the ggml versions we know, in what we hand a host and read from it
/// (everything else `abi` mirrors is the same in all of them: `tests/layout_tests.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HostLayout {
    /// `ggml_backend_i` holds `set_tensor_2d_async` and `get_tensor_2d_async` (ggml 0.10.0
    /// on): 16 slots. Before, 14, and every slot after `get_tensor_async` — and the backend's
    /// `device` and `context` — sits 16 bytes earlier.
    pub(crate) backend_2d_slots: bool,
    /// Nodes to compute carry `GGML_TENSOR_FLAG_COMPUTE` (0.9.6 on). Before, ggml's CPU
    /// backend computes every node but NONE, views and empty tensors.
    pub(crate) compute_flag: bool,
}

/// ggml 0.10.0 and later.
pub(crate) const LAYOUT_CURRENT: HostLayout = HostLayout {
    backend_2d_slots: true,
    compute_flag: true,
};

/// ggml 0.9.5 (whisper-rs-sys 0.15.0).
pub(crate) const LAYOUT_0_9_5: HostLayout = HostLayout {
    backend_2d_slots: false,
    compute_flag: false,
};

/// Which public functions the host's ggml exports: each arrived with the layout change it
/// marks (ggml's history: the 2-D async slots and `ggml_backend_tensor_set_2d_async` in one
/// commit, v0.10.0; the COMPUTE flag with `ggml_build_forward_select`, v0.9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HostExports {
    /// `ggml_backend_tensor_set_2d_async`.
    pub(crate) tensor_set_2d_async: bool,
    /// `ggml_build_forward_select`.
    pub(crate) build_forward_select: bool,
}

/// The layout the exports show, or why none can be inferred.
pub(crate) fn layout_from_exports(e: HostExports) -> Result<HostLayout, String> {
    match (e.tensor_set_2d_async, e.build_forward_select) {
        (true, false) => Err(
            "it exports ggml_backend_tensor_set_2d_async but not ggml_build_forward_select, as no ggml we know does: its ggml_backend_i cannot be inferred"
                .into(),
        ),
        (backend_2d_slots, compute_flag) => Ok(HostLayout {
            backend_2d_slots,
            compute_flag,
        }),
    }
}

/// A ggml version without its patch number.
type MajorMinor = (u32, u32);

/// ggml versions (major, minor) the backend is tested against, with their backend API version
/// and layout: each has a test host whose headers the layout test checks — 0.9 (whisper.cpp
/// 1.8.3 from whisper-rs-sys 0.15.0), 0.13 (whisper.cpp 1.8.5 from pywhispercpp 1.5.1), 0.25
/// (the pinned llama.cpp; test-backend-ops passes), 0.26 and 0.28 (v3 hosts; likewise).
/// Others are refused with their version named; `GGML_ANE_ANY_GGML=1` tries anyway, with the
/// layout the host's exports show.
pub(crate) const TESTED_GGML: &[(MajorMinor, i32, HostLayout)] = &[
    ((0, 9), 2, LAYOUT_0_9_5),
    ((0, 13), 2, LAYOUT_CURRENT),
    ((0, 25), 2, LAYOUT_CURRENT),
    ((0, 26), 3, LAYOUT_CURRENT),
    ((0, 28), 3, LAYOUT_CURRENT),
];

/// The tested versions, for messages: `0.9, 0.13, 0.25, 0.26, 0.28`.
pub(crate) fn tested_versions() -> String {
    TESTED_GGML
        .iter()
        .map(|((a, b), _, _)| format!("{a}.{b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `major.minor` of a version string such as `0.26.0`.
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version
        .trim()
        .split('.')
        .map(|p| p.trim().parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// The row of the table for `version`: its API version and its test host's layout.
fn tested_row(version: &str) -> Option<(i32, HostLayout)> {
    let v = major_minor(version)?;
    TESTED_GGML
        .iter()
        .find(|(mm, _, _)| *mm == v)
        .map(|&(_, api, layout)| (api, layout))
}

/// How an untested version relates to the table, for the log line.
fn relation(version: &str) -> &'static str {
    match major_minor(version) {
        Some(v) if TESTED_GGML.last().is_some_and(|t| v > t.0) => "newer than",
        Some(v) if TESTED_GGML.first().is_some_and(|t| v < t.0) => "older than",
        _ => "not one of",
    }
}

/// The API version to try with `GGML_ANE_ANY_GGML=1` in a ggml the table does not cover: 3 from
/// 0.26 on (the last version we know), 2 before.
fn guessed_api(version: &str) -> i32 {
    match major_minor(version) {
        Some(v) if v >= (0, 26) => 3,
        _ => 2,
    }
}

/// What the registry does in a host, and the one line it logs about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HostDecision {
    /// The backend API version to announce.
    pub(crate) api: i32,
    /// The layout to speak; `None` when the device is not offered.
    pub(crate) layout: Option<HostLayout>,
    /// `(is_error, text)`; no line when all is as tested.
    pub(crate) log: Option<(bool, String)>,
}

/// Whether to offer the device in a host of `version` whose exports show `layout` and whose
/// tensors read back through our mirror as `tensors` says; `any` is `GGML_ANE_ANY_GGML`,
/// `disable` `GGML_ANE_DISABLE`. A layout that cannot be inferred, or tensors that do not
/// read back, refuse even with `any`: no host is handed a vtable or read through a struct of
/// the wrong layout.
pub(crate) fn decide(
    version: &str,
    layout: Result<HostLayout, String>,
    tensors: Result<(), String>,
    any: bool,
    disable: bool,
) -> HostDecision {
    let row = tested_row(version);
    let api = row.map_or_else(|| guessed_api(version), |(api, _)| api);
    let refuse = |why: String| HostDecision {
        api,
        layout: None,
        log: Some((
            true,
            format!("ggml-ane: ggml {version}: {why}: staying out, no ANE device"),
        )),
    };
    let layout = match (layout, tensors) {
        (Err(why), _) => return refuse(why),
        (_, Err(why)) => {
            return refuse(format!(
                "its tensors do not read back as this build lays them out ({why})"
            ))
        }
        (Ok(l), Ok(())) => l,
    };
    if disable {
        return HostDecision {
            api,
            layout: None,
            log: Some((
                false,
                "ggml-ane: GGML_ANE_DISABLE is set: no ANE device".into(),
            )),
        };
    }
    let tested = tested_versions();
    let untested = match row {
        Some((_, tested_layout)) if tested_layout == layout => None,
        Some(_) => Some(format!(
            "ggml {version} lays out its backend differently from the {version} this build was tested with ({layout:?})"
        )),
        None => Some(format!(
            "ggml {version} is {} the versions this build is tested with ({tested})",
            relation(version)
        )),
    };
    match untested {
        None => HostDecision {
            api,
            layout: Some(layout),
            log: None,
        },
        Some(what) if any => HostDecision {
            api,
            layout: Some(layout),
            log: Some((
                false,
                format!("ggml-ane: {what}; trying anyway with backend API v{api} and the layout its exports show (GGML_ANE_ANY_GGML)"),
            )),
        },
        Some(what) => HostDecision {
            api,
            layout: None,
            log: Some((
                true,
                format!("ggml-ane: {what}: staying out, no ANE device (GGML_ANE_ANY_GGML=1 tries anyway)"),
            )),
        },
    }
}

/// Whether graphs of a host of `version` carry use counts we read: only in tested versions
/// (the layout test checks their `struct ggml_cgraph`).
pub(crate) fn use_counts_readable(version: &str) -> bool {
    tested_row(version).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exports(tensor_set_2d_async: bool, build_forward_select: bool) -> HostExports {
        HostExports {
            tensor_set_2d_async,
            build_forward_select,
        }
    }

    #[test]
    fn the_layout_is_read_off_the_exports_or_refused() {
        assert_eq!(layout_from_exports(exports(true, true)), Ok(LAYOUT_CURRENT));
        assert_eq!(layout_from_exports(exports(false, false)), Ok(LAYOUT_0_9_5));
        // 0.9.6 .. 0.9.x: the flag, not yet the slots
        assert_eq!(
            layout_from_exports(exports(false, true)),
            Ok(HostLayout {
                backend_2d_slots: false,
                compute_flag: true
            })
        );
        assert!(layout_from_exports(exports(true, false)).is_err());
    }

    #[test]
    fn the_version_table_decides_with_the_layout() {
        let ok = |v: &str, l: HostLayout| decide(v, Ok(l), Ok(()), false, false);
        for (v, api, l) in [
            ("0.9.5", 2, LAYOUT_0_9_5),
            ("0.13.1", 2, LAYOUT_CURRENT),
            ("0.25.3", 2, LAYOUT_CURRENT),
            ("0.26.0", 3, LAYOUT_CURRENT),
            ("0.28.1", 3, LAYOUT_CURRENT),
        ] {
            assert_eq!(
                ok(v, l),
                HostDecision {
                    api,
                    layout: Some(l),
                    log: None
                },
                "{v}"
            );
        }
        // a tested minor with another layout (a 0.9.7 with the COMPUTE flag) is not the tested host
        let d = ok(
            "0.9.7",
            HostLayout {
                compute_flag: true,
                ..LAYOUT_0_9_5
            },
        );
        assert_eq!(d.layout, None);
        assert!(d.log.unwrap().1.contains("differently"));
        for (v, rel) in [
            ("0.29.0", "newer than"),
            ("0.8.0", "older than"),
            ("0.27.0", "not one of"),
            ("garbage", "not one of"),
        ] {
            let d = ok(v, LAYOUT_CURRENT);
            assert_eq!(d.layout, None, "{v}");
            let (is_error, line) = d.log.unwrap();
            assert!(
                is_error && line.contains(rel) && line.contains("0.9, 0.13, 0.25, 0.26, 0.28"),
                "{line}"
            );
        }
        // GGML_ANE_ANY_GGML: an untested version speaks the layout its exports show
        let d = decide("0.11.0", Ok(LAYOUT_0_9_5), Ok(()), true, false);
        assert_eq!((d.api, d.layout), (2, Some(LAYOUT_0_9_5)));
        assert_eq!(
            decide("0.31.0", Ok(LAYOUT_CURRENT), Ok(()), true, false).api,
            3
        );
        // but never a layout that cannot be inferred, nor tensors that do not read back
        for d in [
            decide("0.11.0", Err("no".into()), Ok(()), true, false),
            decide("0.25.3", Ok(LAYOUT_CURRENT), Err("ne".into()), true, false),
        ] {
            assert_eq!(d.layout, None);
            assert!(d.log.unwrap().0);
        }
        // GGML_ANE_DISABLE
        let d = decide("0.25.3", Ok(LAYOUT_CURRENT), Ok(()), false, true);
        assert_eq!(d.layout, None);
        assert!(!d.log.unwrap().0);
        assert!(use_counts_readable("0.9.5") && use_counts_readable("0.28.0"));
        assert!(!use_counts_readable("0.27.0"));
    }
}
