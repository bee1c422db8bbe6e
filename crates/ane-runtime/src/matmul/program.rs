//! The MIL program for one matmul tile, and how a job is cut into tiles.

use ane_mil::builder::FunctionBuilder;
use ane_mil::ir::{Arg, Literal, Program};
use ane_mil::{DType, ValueType};

/// Tile sizes `(tm, tk, tn)`: each dimension cut into the fewest equal parts within `max_dim`.
pub fn tile_sizes(m: usize, k: usize, n: usize, max_dim: usize) -> (usize, usize, usize) {
    let cut = |d: usize| {
        let parts = d.div_ceil(max_dim.max(1)).max(1);
        d.div_ceil(parts).max(1)
    };
    (cut(m), cut(k), cut(n))
}

/// The distinct tile shapes `(bm, bk, bn)` a job needs (at most two sizes per dimension).
pub(crate) fn tile_shapes(
    m: usize,
    k: usize,
    n: usize,
    tm: usize,
    tk: usize,
    tn: usize,
) -> Vec<(usize, usize, usize)> {
    let sizes = |d: usize, t: usize| {
        let mut v = vec![t.min(d)];
        if d % t != 0 && d > t {
            v.push(d % t);
        }
        v
    };
    let mut out = Vec::new();
    for &bm in &sizes(m, tm) {
        for &bk in &sizes(k, tk) {
            for &bn in &sizes(n, tn) {
                out.push((bm, bk, bn));
            }
        }
    }
    out
}

/// `y[n, m] = a[n, k] · b[m, k]ᵀ` with fp16 inputs `a` (activations) and `b` (weights).
///
/// Input names sort in the order the kernel binds them (`a` then `b`), as the ANE binds
/// inputs alphabetically.
pub fn matmul_program(m: usize, k: usize, n: usize) -> Program {
    let mut f = FunctionBuilder::new("main", "ios18");
    let a = f.input("a", ValueType::tensor(DType::Fp16, [n, k]));
    let b = f.input("b", ValueType::tensor(DType::Fp16, [m, k]));
    let tx = f.constant("tx", Literal::bool(false));
    let ty = f.constant("ty", Literal::bool(true));
    let y = f
        .op(
            "y",
            "matmul",
            &[
                ("transpose_x", Arg::Var(tx)),
                ("transpose_y", Arg::Var(ty)),
                ("x", Arg::Var(a)),
                ("y", Arg::Var(b)),
            ],
        )
        .expect("the tile program is well-typed");
    f.output(&y).expect("y is defined");
    let mut p = Program::new();
    p.functions.push(f.finish());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_stay_within_the_limit_and_cover_the_job() {
        assert_eq!(tile_sizes(32000, 4096, 512, 16384), (16000, 4096, 512));
        assert_eq!(
            tile_shapes(32000, 4096, 512, 16000, 4096, 512),
            vec![(16000, 4096, 512)]
        );
        assert_eq!(tile_sizes(32001, 4096, 512, 16384), (16001, 4096, 512));
        assert_eq!(
            tile_shapes(32001, 4096, 512, 16001, 4096, 512),
            vec![(16001, 4096, 512), (16000, 4096, 512)]
        );
        assert_eq!(tile_sizes(5, 20000, 1, 16384), (5, 10000, 1));
        assert_eq!(tile_shapes(5, 20000, 1, 5, 10000, 1), vec![(5, 10000, 1)]);
        for (d, max) in [(1, 16384), (16385, 16384), (100, 7), (49152, 16384)] {
            let (t, _, _) = tile_sizes(d, 1, 1, max);
            assert!(t <= max && t * d.div_ceil(t) >= d);
        }
    }

    #[test]
    fn the_program_checks() {
        let p = matmul_program(3, 5, 7);
        let f = ane_mil::check_program(&p, None).unwrap();
        assert_eq!(f[0].signature(), "main<ios18>(a: tensor<fp16, [7, 5]>, b: tensor<fp16, [3, 5]>) -> (y: tensor<fp16, [7, 3]>)");
    }
}
