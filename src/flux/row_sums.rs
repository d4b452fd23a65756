//! Sums along a row in sixteen interleaved lanes (one AVX-512 register, four SSE ones), then
//! across the lanes pairwise: the normalisations' reductions vectorise instead of adding one
//! element at a time. The order differs from `Iterator::sum`'s left-to-right one, so a sum differs from
//! candle's in its last bits (a few units in the last place of a row's mean square; the test
//! bounds it). Kernels that call this are compiled per target ([`crate::dispatch`]).

/// Lanes of the running sums.
const LANES: usize = 16;

/// The sum of `f(x)` over the elements x of `row`.
#[inline(always)]
pub fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l += f(x);
        }
    }
    let rest: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    // Across the lanes pairwise, halves onto halves: four vector steps, where adding the lanes
    // one by one was a chain of sixteen scalar additions (as long as a short row's own work).
    let mut width = LANES / 2;
    while width > 0 {
        let (low, high) = lanes.split_at_mut(width);
        low.iter_mut()
            .zip(&high[..width])
            .for_each(|(l, h)| *l += h);
        width /= 2;
    }
    lanes[0] + rest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sums_are_within_rounding_of_the_exact_sum() {
        // Values of mixed magnitudes and signs, rows shorter and longer than the lanes.
        for len in [0usize, 1, 7, 16, 37, 128, 3072] {
            let row: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 10f32.powi(i as i32 % 5 - 2))
                .collect();
            let got = lane_sum(&row, |x| x * x);
            let exact: f64 = row.iter().map(|&x| (x * x) as f64).sum();
            // Each of the len additions rounds by at most half an ulp of a partial sum, and
            // every partial sum of squares is at most the total.
            let bound = len as f64 * f32::EPSILON as f64 * exact;
            assert!(
                (got as f64 - exact).abs() <= bound,
                "len {len}: {got} vs {exact}"
            );
        }
        assert_eq!(lane_sum(&[1.0, 2.0, 3.0], |x| x), 6.0);
    }
}
