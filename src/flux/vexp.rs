//! Softmax row kernels with a vectorised exp, compiled for AVX-512 and AVX2 as well as the
//! baseline and chosen at run time: the scalar `expf` behind candle's softmax was the largest
//! single cost of a CPU forward.

use std::mem::MaybeUninit;

use crate::dispatch::dispatched;

/// Lanes of the running reductions: wide enough for one AVX-512 register, plain arrays so the
/// compiler vectorises them on every target.
const LANES: usize = 16;

/// e^x to about 1 ulp over the f32 range, 0 below -87 (and for -inf, so masked keys weigh
/// nothing): Cody-Waite reduction by ln 2 and Cephes' degree-6 polynomial, branch-free, in fused
/// multiply-adds (one instruction each on the AVX-512 and AVX2+FMA paths; the baseline path of a
/// CPU without FMA gets libm's exact `fmaf`, slower but the same bits).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to the nearest integer, which lands in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LOW: f32 = -87.0;
    let xc = x.clamp(LOW, 88.0);
    let t = xc.mul_add(LOG2E, ROUND);
    let n = t - ROUND;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, xc));
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let e = (p * r).mul_add(r, r) + 1.0;
    let two_n = f32::from_bits(((t.to_bits() as i32 - ROUND.to_bits() as i32 + 127) << 23) as u32);
    if x < LOW {
        0.0
    } else {
        e * two_n
    }
}

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let rest = chunks.remainder().iter().copied();
    lanes
        .into_iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Replaces each x of `row` by e^(x - max) and returns their sum.
#[inline(always)]
fn exp_shifted_sum(row: &mut [f32], max: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, x) in lanes.iter_mut().zip(c) {
            *x = exp(*x - max);
            *s += *x;
        }
    }
    let mut rest = 0.0;
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        rest += *x;
    }
    lanes.iter().sum::<f32>() + rest
}

/// The online-softmax step of one score tile held column-major (key j's scores of the tile's
/// queries at `tile[j * stride..]`; `stride`, a multiple of 16, is at least the query count
/// and the length of `max`, `sum` and `rescale`) for the running maxima `max` and sums `sum`
/// of its queries, after adding `mask` when there is one (key j's entries at
/// `mask.0[j * mask.1..]`): the tile becomes e^(s - new max) and `rescale` gets the factor
/// e^(old max - new max) the queries' accumulated outputs must be multiplied by. A query whose
/// keys are all masked so far stays at weight 0. Queries are the lanes: every reduction runs
/// down a column of keys, none across a register.
#[inline(always)]
fn online_columns(
    tile: &mut [f32],
    stride: usize,
    mask: Option<(&[f32], usize)>,
    max: &mut [f32],
    sum: &mut [f32],
    rescale: &mut [f32],
) {
    let cols = tile.len() / stride;
    let mut r0 = 0;
    while r0 < stride {
        // Four registers of queries at a time keep four independent chains of maxima in flight.
        let lanes = if stride - r0 >= 4 * LANES {
            4 * LANES
        } else {
            LANES
        };
        let block = r0..r0 + lanes;
        let (max, sum, rescale) = (
            &mut max[block.clone()],
            &mut sum[block.clone()],
            &mut rescale[block],
        );
        if lanes == 4 * LANES {
            column_block::<{ 4 * LANES }>(tile, stride, cols, r0, mask, max, sum, rescale);
        } else {
            column_block::<LANES>(tile, stride, cols, r0, mask, max, sum, rescale);
        }
        r0 += lanes;
    }
}

/// [`online_columns`] for the `N` queries from `r0`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn column_block<const N: usize>(
    tile: &mut [f32],
    stride: usize,
    cols: usize,
    r0: usize,
    mask: Option<(&[f32], usize)>,
    max: &mut [f32],
    sum: &mut [f32],
    rescale: &mut [f32],
) {
    let mut tile_max = [f32::NEG_INFINITY; N];
    for j in 0..cols {
        let col: &mut [f32; N] = (&mut tile[j * stride + r0..][..N]).try_into().unwrap();
        if let Some((mask, mask_stride)) = mask {
            let m: &[f32; N] = mask[j * mask_stride + r0..][..N].try_into().unwrap();
            col.iter_mut().zip(m).for_each(|(x, m)| *x += m);
        }
        for (l, &x) in tile_max.iter_mut().zip(col.iter()) {
            *l = if x > *l { x } else { *l };
        }
    }
    let mut shift = [0f32; N];
    for l in 0..N {
        let new_max = max[l].max(tile_max[l]);
        // All keys masked so far: every score is -inf and weighs e^-inf = 0 under a shift of 0.
        (shift[l], rescale[l]) = match new_max == f32::NEG_INFINITY {
            true => (0.0, 1.0),
            false => (new_max, exp(max[l] - new_max)),
        };
        max[l] = new_max;
    }
    let mut tile_sum = [0f32; N];
    for j in 0..cols {
        let col: &mut [f32; N] = (&mut tile[j * stride + r0..][..N]).try_into().unwrap();
        for ((x, s), &shift) in col.iter_mut().zip(&mut tile_sum).zip(&shift) {
            *x = exp(*x - shift);
            *s += *x;
        }
    }
    for l in 0..N {
        sum[l] = sum[l] * rescale[l] + tile_sum[l];
    }
}

/// Each column of `columns` (column-major, `sums.len()` tall) divided by `sums`, element by
/// element.
#[inline(always)]
fn divide(columns: &mut [f32], sums: &[f32]) {
    for column in columns.chunks_exact_mut(sums.len()) {
        for (x, &s) in column.iter_mut().zip(sums) {
            *x /= s;
        }
    }
}

/// Each row of `rows` (row-major, `row_len` wide) replaced by its softmax.
#[inline(always)]
fn softmax(rows: &mut [f32], row_len: usize) {
    for row in rows.chunks_exact_mut(row_len) {
        let sum = exp_shifted_sum(row, row_max(row));
        for x in row.iter_mut() {
            *x /= sum;
        }
    }
}

/// The tanh approximation of GELU, 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3),
/// written as x / (1 + e^(-2u)), the same function with one exp.
/// Every element of `out` is written (it may start uninitialised).
#[inline(always)]
fn gelu(xs: &[f32], out: &mut [MaybeUninit<f32>]) {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    assert_eq!(xs.len(), out.len());
    for (o, &x) in out.iter_mut().zip(xs) {
        let u = SQRT_TWO_OVER_PI * x * (1.0 + 0.044_715 * x * x);
        o.write(x / (1.0 + exp(-2.0 * u)));
    }
}

dispatched! {
    /// See [`online_columns`].
    pub fn online_softmax_columns(
        tile: &mut [f32],
        stride: usize,
        mask: Option<(&[f32], usize)>,
        max: &mut [f32],
        sum: &mut [f32],
        rescale: &mut [f32]
    ) => online_columns
}

dispatched! {
    /// The accumulated outputs of a score tile's queries (column-major, one column per value
    /// dimension, `sums.len()` query lanes) divided by their softmax sums.
    pub fn divide_columns(columns: &mut [f32], sums: &[f32]) => divide
}

dispatched! {
    /// Each row of `rows` (row-major, `row_len` wide) replaced by its softmax.
    pub fn softmax_rows(rows: &mut [f32], row_len: usize) => softmax
}

dispatched! {
    /// `out` = GELU (tanh approximation) of `xs`, element by element; `out` may start
    /// uninitialised and is written in full (its length must be `xs`'s).
    pub fn gelu_tanh(xs: &[f32], out: &mut [MaybeUninit<f32>]) => gelu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_std_and_zero_below_the_range() {
        let mut worst = 0f32;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let (got, want) = (exp(x), x.exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn gelu_matches_the_tanh_formula() {
        let xs: Vec<f32> = (-4000..4000).map(|i| i as f32 * 3e-3).collect();
        // SAFETY: gelu_tanh writes the whole output.
        let out = unsafe { crate::cpu_slices::written_in_full(xs.len(), |o| gelu_tanh(&xs, o)) };
        for (&x, &y) in xs.iter().zip(&out) {
            let want = 0.5 * x * (1.0 + (0.797_884_6 * x * (1.0 + 0.044_715 * x * x)).tanh());
            assert!(
                (y - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "gelu({x}) = {y}, not {want}"
            );
        }
    }

    #[test]
    fn softmax_rows_match_the_definition() {
        let mut rows: Vec<f32> = (0..3 * 37)
            .map(|i| ((i * 7919) % 101) as f32 * 0.13)
            .collect();
        let want: Vec<f32> = rows
            .chunks(37)
            .flat_map(|r| {
                let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let s: f32 = r.iter().map(|x| (x - m).exp()).sum();
                r.iter().map(move |x| (x - m).exp() / s).collect::<Vec<_>>()
            })
            .collect();
        softmax_rows(&mut rows, 37);
        let diff = rows
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-6, "{diff}");
    }
}
