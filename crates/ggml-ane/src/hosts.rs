//! Which ggml hosts the backend works with, by version — a pure decision, no ggml symbols (the
//! registry in `abi` asks it).

/// What the backend does in a ggml of some version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HostSupport {
    /// A version the tests check: register, speaking this backend API version.
    Supported(i32),
    /// Newer than the table: stay out (a layout or API change would be a silent mismatch).
    TooNew,
    /// Older than the table: stay out (ggml before 0.10.0 has no `GGML_TENSOR_FLAG_COMPUTE`,
    /// which `graph_compute` needs to tell nodes to compute from the rest).
    TooOld,
    /// Between tested versions, but not one of them (no host checks its headers).
    Between,
}

impl HostSupport {
    /// How an untested version relates to the table, for the log line.
    pub(crate) fn relation(self) -> &'static str {
        match self {
            HostSupport::TooNew => "newer than",
            HostSupport::TooOld => "older than",
            HostSupport::Between | HostSupport::Supported(_) => "not one of",
        }
    }
}

/// The tested versions, for messages: `0.25, 0.26, 0.28`.
pub(crate) fn tested_versions() -> String {
    TESTED_GGML
        .iter()
        .map(|((a, b), _, _)| format!("{a}.{b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A ggml version without its patch number.
type MajorMinor = (u32, u32);

/// ggml versions (major, minor) the backend is tested against, with their backend API version:
/// each has a test host whose headers the layout test checks and in which test-backend-ops
/// passes — 0.25.x (the pinned v2 host; the tiny llama too), 0.26.x and 0.28.x (v3 hosts).
/// Others are refused with their version named; `GGML_ANE_ANY_GGML=1` tries anyway.
pub(crate) const TESTED_GGML: &[(MajorMinor, MajorMinor, i32)] = &[
    ((0, 25), (0, 25), 2),
    ((0, 26), (0, 26), 3),
    ((0, 28), (0, 28), 3),
];

/// `major.minor` of a version string such as `0.26.0`.
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version
        .trim()
        .split('.')
        .map(|p| p.trim().parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// Whether the backend registers in a ggml reporting `version`.
pub(crate) fn host_support(version: &str) -> HostSupport {
    let Some(v) = major_minor(version) else {
        return HostSupport::TooOld;
    };
    for &(from, to, api) in TESTED_GGML {
        if (from..=to).contains(&v) {
            return HostSupport::Supported(api);
        }
    }
    if v > TESTED_GGML.last().map_or((0, 0), |t| t.1) {
        HostSupport::TooNew
    } else if v < TESTED_GGML.first().map_or((0, 0), |t| t.0) {
        HostSupport::TooOld
    } else {
        HostSupport::Between
    }
}

/// The API version to try with `GGML_ANE_ANY_GGML=1` in a ggml the table does not cover: 3 from
/// 0.26 on (the last version we know), 2 before.
pub(crate) fn guessed_api(version: &str) -> i32 {
    match major_minor(version) {
        Some(v) if v >= (0, 26) => 3,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_table_decides() {
        assert_eq!(host_support("0.25.3"), HostSupport::Supported(2));
        assert_eq!(host_support("0.25.0"), HostSupport::Supported(2));
        assert_eq!(host_support("0.26.0"), HostSupport::Supported(3));
        assert_eq!(host_support("0.26.7"), HostSupport::Supported(3));
        assert_eq!(host_support("0.28.0"), HostSupport::Supported(3));
        assert_eq!(host_support("0.29.0"), HostSupport::TooNew);
        assert_eq!(host_support("1.0.0"), HostSupport::TooNew);
        assert_eq!(host_support("0.9.1"), HostSupport::TooOld);
        assert_eq!(host_support("0.24.9"), HostSupport::TooOld);
        // between two tested versions, but no host checks its headers
        assert_eq!(host_support("0.27.0"), HostSupport::Between);
        assert_eq!(tested_versions(), "0.25, 0.26, 0.28");
        assert_eq!(host_support("garbage"), HostSupport::TooOld);
        assert_eq!((guessed_api("0.28.1"), guessed_api("0.12.0")), (3, 2));
    }
}
