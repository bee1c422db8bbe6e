//! The self-probe: before an engine takes work, one small job in each kernel form it may use,
//! through the whole matmul path (staging with padded rows and tokens, evaluation,
//! write-back), compared with an f64 result. A form that fails is not used; the caller turns the
//! results into the policy it can serve ([`usable_policy`]) and reports them.
//!
//! The probe's compiles count against the engine's budget, like any other.

use std::fmt;

use super::policy::{KernelKind, KernelPolicy, WeightId};
use super::{
    engine_matmul, DenseRows, DenseSink, KernelCache, MatmulJob, MatmulShape, Scratch, Stats,
};
use crate::engine::Engine;

/// The probe's job: 40 output features, 72 inputs (rows of 144 bytes, padded), 33 tokens (a
/// bucket of 64, padded).
pub const PROBE_SHAPE: (usize, usize, usize) = (40, 72, 33);

/// Largest NMSE against f64 a form may show (fp16 operands give ~1e-7 on this data).
const MAX_PROBE_NMSE: f64 = 1e-4;

/// What the probe found for one form.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ProbeResult {
    /// The form probed.
    pub form: KernelKind,
    /// The NMSE against f64 when the form ran, or why it did not.
    pub outcome: Result<f64, String>,
    /// Compiles it spent.
    pub compiles: u64,
}

impl ProbeResult {
    /// Whether the form works.
    pub fn passed(&self) -> bool {
        self.outcome.is_ok()
    }
}

impl fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Ok(nmse) => write!(f, "{} ok (NMSE {nmse:.1e})", self.form),
            Err(why) => write!(f, "{} failed: {why}", self.form),
        }
    }
}

/// The forms a policy may use, in the order to probe them.
pub fn forms_for(policy: KernelPolicy) -> Vec<KernelKind> {
    match policy {
        KernelPolicy::Auto | KernelPolicy::Baked => vec![KernelKind::Baked, KernelKind::Streamed],
        KernelPolicy::Streamed => vec![KernelKind::Streamed],
        KernelPolicy::TwoInput => vec![KernelKind::TwoInput, KernelKind::Streamed],
    }
}

/// Runs the probe job once per form on `engine`.
pub fn probe(engine: &dyn Engine, forms: &[KernelKind]) -> Vec<ProbeResult> {
    forms.iter().map(|&form| probe_form(engine, form)).collect()
}

/// `n` values in [-1, 1) on an fp16-exact grid of 1/64, from `seed`: inputs whose only
/// rounding is the engine's accumulation, for probes that compare with f64.
pub fn grid_values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            // splitmix-style bits to [-1, 1), on an fp16-exact grid of 1/64
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) % 128) as f32 / 64.0 - 1.0
        })
        .collect()
}

fn probe_form(engine: &dyn Engine, form: KernelKind) -> ProbeResult {
    let (m, k, n) = PROBE_SHAPE;
    let shape = MatmulShape::new(m, k, n);
    let (w, a) = (
        DenseRows::new(m, k, grid_values(m * k, 1)),
        DenseRows::new(n, k, grid_values(n * k, 2)),
    );
    let policy = match form {
        KernelKind::Baked => KernelPolicy::Baked,
        KernelKind::TwoInput => KernelPolicy::TwoInput,
        _ => KernelPolicy::Streamed,
    };
    let cache = KernelCache::new().with_policy(policy);
    let (stats, out) = (Stats::default(), DenseSink::for_shape(shape));
    let job = MatmulJob {
        shape,
        weights: &w,
        acts: &a,
        dst: &out,
        weight_id: Some(WeightId {
            key: u64::MAX,
            fingerprint: 0,
        }),
    };
    let ran = engine_matmul(engine, &cache, &job, &mut Scratch::default(), &stats);
    let compiles = stats.snapshot().compiles;
    let outcome = match ran {
        Err(reason) => Err(reason.to_string()),
        Ok(kind) if kind != form => Err(format!("ran as {kind} instead")),
        Ok(_) => {
            let got = out.values();
            let (mut err, mut norm) = (0.0, 0.0);
            for t in 0..n {
                for o in 0..m {
                    let want: f64 = (0..k)
                        .map(|i| f64::from(a.data[t * k + i]) * f64::from(w.data[o * k + i]))
                        .sum();
                    err += (f64::from(got[t * m + o]) - want).powi(2);
                    norm += want * want;
                }
            }
            let nmse = err / norm.max(f64::MIN_POSITIVE);
            if nmse <= MAX_PROBE_NMSE {
                Ok(nmse)
            } else {
                Err(format!("wrong result: NMSE {nmse:.1e} against f64"))
            }
        }
    };
    ProbeResult {
        form,
        outcome,
        compiles,
    }
}

/// The policy an engine can serve after its probe, for the one asked for; `Err` (with the
/// probe's findings) when no form it needs works.
pub fn usable_policy(
    requested: KernelPolicy,
    results: &[ProbeResult],
) -> Result<KernelPolicy, String> {
    let works = |form| results.iter().any(|r| r.form == form && r.passed());
    let (baked, streamed, two) = (
        works(KernelKind::Baked),
        works(KernelKind::Streamed),
        works(KernelKind::TwoInput),
    );
    let policy = match requested {
        KernelPolicy::Auto if baked && streamed => Some(KernelPolicy::Auto),
        KernelPolicy::Auto | KernelPolicy::Baked if baked => Some(KernelPolicy::Baked),
        KernelPolicy::TwoInput if two => Some(KernelPolicy::TwoInput),
        _ if streamed => Some(KernelPolicy::Streamed),
        _ => None,
    };
    policy.ok_or_else(|| {
        let found: Vec<String> = results.iter().map(ToString::to_string).collect();
        format!("no kernel form works: {}", found.join("; "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(form: KernelKind, ok: bool) -> ProbeResult {
        ProbeResult {
            form,
            outcome: if ok {
                Ok(1e-8)
            } else {
                Err("eval failed".into())
            },
            compiles: 1,
        }
    }

    #[test]
    fn the_usable_policy_keeps_to_the_forms_that_work() {
        use KernelKind::{Baked, Streamed, TwoInput};
        let both = [result(Baked, true), result(Streamed, true)];
        assert_eq!(
            usable_policy(KernelPolicy::Auto, &both),
            Ok(KernelPolicy::Auto)
        );
        let no_baked = [result(Baked, false), result(Streamed, true)];
        assert_eq!(
            usable_policy(KernelPolicy::Auto, &no_baked),
            Ok(KernelPolicy::Streamed)
        );
        let no_streamed = [result(Baked, true), result(Streamed, false)];
        assert_eq!(
            usable_policy(KernelPolicy::Auto, &no_streamed),
            Ok(KernelPolicy::Baked)
        );
        let none = [result(Baked, false), result(Streamed, false)];
        let err = usable_policy(KernelPolicy::Auto, &none).unwrap_err();
        assert!(err.contains("baked failed: eval failed"), "{err}");
        let no_two = [result(TwoInput, false), result(Streamed, true)];
        assert_eq!(
            usable_policy(KernelPolicy::TwoInput, &no_two),
            Ok(KernelPolicy::Streamed)
        );
        assert!(usable_policy(KernelPolicy::Streamed, &no_streamed).is_err());
    }
}
