//! Sums of short rows, each added up left to right exactly as `Iterator::sum` adds it (so the
//! normalisations built on them keep candle's bits), several rows at a time so that their chains
//! of dependent additions overlap instead of waiting on each other.

/// Rows summed side by side: enough independent chains to keep the adders busy.
pub const ROWS: usize = 8;

/// For each row `j` of `rows` (all of one length), the left-to-right sum of `f(j, x)` over its
/// elements x.
#[inline(always)]
pub fn ordered_sums<const R: usize>(rows: [&[f32]; R], f: impl Fn(usize, f32) -> f32) -> [f32; R] {
    let len = rows[0].len();
    debug_assert!(rows.iter().all(|r| r.len() == len));
    let mut acc = [0f32; R];
    if len == 0 {
        return acc;
    }
    for (j, (a, row)) in acc.iter_mut().zip(&rows).enumerate() {
        *a = f(j, row[0]);
    }
    for i in 1..len {
        for (j, (a, row)) in acc.iter_mut().zip(&rows).enumerate() {
            *a += f(j, row[i]);
        }
    }
    acc
}

/// [`ordered_sums`] of the rows of `group` (`width` wide, at most [`ROWS`] of them): side by side
/// when there are [`ROWS`], one by one otherwise. Entries past the group's rows are 0.
#[inline(always)]
pub fn group_sums(
    group: &[f32],
    width: usize,
    f: impl Fn(usize, f32) -> f32 + Copy,
) -> [f32; ROWS] {
    let row = |j: usize| &group[j * width..][..width];
    let rows = group.len() / width.max(1);
    debug_assert!(rows <= ROWS);
    if rows == ROWS {
        return ordered_sums(std::array::from_fn(row), f);
    }
    let mut sums = [0f32; ROWS];
    for (j, s) in sums.iter_mut().enumerate().take(rows) {
        *s = ordered_sums([row(j)], |_, x| f(j, x))[0];
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sum_is_iterator_sum_to_the_bit() {
        // Values of mixed magnitudes, where the order of additions shows in the last bits.
        let data: Vec<f32> = (0..13 * 21)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 10f32.powi(i % 5 - 2))
            .collect();
        let shift = |j: usize| j as f32 * 0.37;
        // A full group side by side, then a group of five one by one.
        for (g, group) in data.chunks(ROWS * 21).enumerate() {
            let sums = group_sums(group, 21, |j, x| (x - shift(j)) * x);
            for (j, row) in group.chunks(21).enumerate() {
                let want: f32 = row.iter().map(|&x| (x - shift(j)) * x).sum();
                assert_eq!(sums[j].to_bits(), want.to_bits(), "group {g}, row {j}");
            }
            assert!(sums[group.len() / 21..].iter().all(|&s| s == 0.0));
        }
    }
}
