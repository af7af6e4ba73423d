//! Row orders of gathered embeddings.
//!
//! A rank embeds `views` views of its `n` images view-major: row `v·n + i`. All-gather
//! returns the ranks' blocks one after another (rank-major). One process training on
//! the whole global batch of `world·n` images would have row `v·world·n + r·n + i` for
//! image `i` of rank `r` in view `v`; these helpers convert between the two orders so a
//! gathered batch is exactly the single-process batch.

/// Rank-major gathered rows (`world` blocks of `views × n` rows of `d` values) in the
/// single-process view-major order.
pub fn to_view_major(gathered: &[f32], world: usize, views: usize, d: usize) -> Vec<f32> {
    permute(gathered, world, views, d, true)
}

/// The inverse of [`to_view_major`].
pub fn to_rank_major(global: &[f32], world: usize, views: usize, d: usize) -> Vec<f32> {
    permute(global, world, views, d, false)
}

fn permute(src: &[f32], world: usize, views: usize, d: usize, forward: bool) -> Vec<f32> {
    let block = src.len() / world.max(1);
    let n = block / (views * d).max(1);
    let mut out = vec![0.0f32; src.len()];
    for r in 0..world {
        for v in 0..views {
            let rank_major = (r * views + v) * n * d;
            let view_major = (v * world + r) * n * d;
            let (from, to) = if forward {
                (rank_major, view_major)
            } else {
                (view_major, rank_major)
            };
            out[to..to + n * d].copy_from_slice(&src[from..from + n * d]);
        }
    }
    out
}

/// The single-process row of each of rank `rank`'s `views × n` rows.
pub fn local_rows(rank: usize, world: usize, views: usize, n: usize) -> Vec<usize> {
    (0..views)
        .flat_map(|v| (0..n).map(move |i| v * world * n + rank * n + i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathered_rows_land_where_one_process_has_them() {
        // 2 ranks, 2 views, 2 images each, 1 feature: value = global row.
        let world = 2;
        let rank_rows: Vec<Vec<usize>> = (0..world).map(|r| local_rows(r, world, 2, 2)).collect();
        assert_eq!(rank_rows[0], vec![0, 1, 4, 5]);
        assert_eq!(rank_rows[1], vec![2, 3, 6, 7]);
        let gathered: Vec<f32> = rank_rows.concat().iter().map(|&x| x as f32).collect();
        let global = to_view_major(&gathered, world, 2, 1);
        assert_eq!(global, (0..8).map(|x| x as f32).collect::<Vec<_>>());
        assert_eq!(to_rank_major(&global, world, 2, 1), gathered);
    }
}
