//! Top-k selection over one row of pre-activations.

use std::cmp::Ordering;

/// Lanes compared at once when skipping entries that cannot enter the heap.
const BLOCK: usize = 16;

simd_fn! {
/// Indices and values of the k largest entries, largest first; ties go to the lower index.
/// One pass with a k-element min-heap: after the first few hundred entries almost every value
/// fails the comparison against the heap's minimum, so whole blocks of 16 are tested against it
/// at once (a vector compare) and skipped (inputs are expected to be finite).
pub fn top_k(z: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(z.len());
    if k == 0 {
        return Vec::new();
    }
    // `worse(a, b)`: a ranks below b.
    let worse = |a: (u32, f32), b: (u32, f32)| a.1 < b.1 || (a.1 == b.1 && a.0 > b.0);
    let sift_down = |h: &mut [(u32, f32)], mut i: usize| loop {
        let (l, r) = (2 * i + 1, 2 * i + 2);
        let mut m = i;
        if l < h.len() && worse(h[l], h[m]) {
            m = l;
        }
        if r < h.len() && worse(h[r], h[m]) {
            m = r;
        }
        if m == i {
            break;
        }
        h.swap(i, m);
        i = m;
    };
    let mut heap: Vec<(u32, f32)> = z[..k]
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, v))
        .collect();
    for i in (0..k / 2).rev() {
        sift_down(&mut heap, i);
    }
    // A later index never wins a tie, so only a strictly larger value enters.
    let offer = |heap: &mut Vec<(u32, f32)>, i: usize, v: f32| {
        if v > heap[0].1 {
            heap[0] = (i as u32, v);
            sift_down(heap, 0);
        }
    };
    let rest = &z[k..];
    let blocks = rest.chunks_exact(BLOCK);
    let tail = blocks.remainder();
    for (b, block) in blocks.enumerate() {
        let floor = heap[0].1;
        let mut any = false;
        for &v in block {
            any |= v > floor;
        }
        if any {
            let base = k + b * BLOCK;
            for (j, &v) in block.iter().enumerate() {
                offer(&mut heap, base + j, v);
            }
        }
    }
    let base = z.len() - tail.len();
    for (j, &v) in tail.iter().enumerate() {
        offer(&mut heap, base + j, v);
    }
    heap.sort_unstable_by(|a, b| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(Ordering::Equal)
            .then(a.0.cmp(&b.0))
    });
    heap
}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_largest_first_and_keeps_negatives() {
        let z = [-3.0, -1.0, -2.0, -5.0];
        assert_eq!(top_k(&z, 2), vec![(1, -1.0), (2, -2.0)]);
    }

    #[test]
    fn top_k_matches_a_full_sort_with_ties_to_the_lower_index() {
        let mut rng = crate::rng::SplitMix64::new(7);
        for n in [1usize, 5, 64, 300, 7168] {
            // Few distinct values, so ties are everywhere.
            let z: Vec<f32> = (0..n).map(|_| rng.below(23) as f32 - 11.0).collect();
            for k in [1usize, 3, 64, n] {
                let mut all: Vec<(u32, f32)> =
                    z.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
                all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                all.truncate(k);
                assert_eq!(top_k(&z, k), all, "n {n} k {k}");
            }
        }
    }
}
