//! Top-k selection over one row of pre-activations.

use std::cmp::Ordering;

/// Lanes compared at once.
const BLOCK: usize = 16;

/// Indices and values of the k largest entries of z + b (an SAE's pre-activations and their
/// bias, added here so the caller need not write the sum back), in no particular order
/// (`by_value` sorts them largest first); ties go to the lower index (inputs are expected to
/// be finite).
///
/// First a floor no top-k entry lies below, from vectorised passes: the entries are dealt into
/// G ≥ 4k columns (entry i to column i mod G) and the k-th largest column maximum is the floor
/// (those k maxima are k distinct entries at or above it, so the k-th largest entry is too).
/// Then the entries at or above the floor, about a hundred of 7,168 at the study's shape, are
/// collected and the k best selected among them.
pub fn top_k(z: &[f32], b: &[f32], k: usize) -> Vec<(u32, f32)> {
    assert_eq!(z.len(), b.len(), "top_k: values and bias differ in length");
    let k = k.min(z.len());
    if k == 0 {
        return Vec::new();
    }
    let g = (4 * k).next_multiple_of(BLOCK);
    if z.len() < 2 * g {
        let values = z.iter().zip(b).map(|(z, b)| z + b);
        return heap_top_k(values.enumerate().map(|(i, v)| (i as u32, v)), k);
    }
    let mut cand = candidates(z, b, floor(z, b, g, k));
    if cand.len() > k {
        cand.select_nth_unstable_by(k - 1, rank);
        cand.truncate(k);
    }
    cand
}

/// Largest value first, ties to the lower index: the order top-k selects by.
fn rank(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.partial_cmp(&a.1)
        .unwrap_or(Ordering::Equal)
        .then(a.0.cmp(&b.0))
}

/// Sorts latents largest first (ties: lower index first), as outputs present them.
pub fn by_value(latents: &mut [(u32, f32)]) {
    latents.sort_unstable_by(rank);
}

simd_fn! {
/// The k-th largest of the maxima of the `g` columns of z + b (entry i in column i mod g).
fn floor(z: &[f32], b: &[f32], g: usize, k: usize) -> f32 {
    let mut maxima = vec![f32::NEG_INFINITY; g];
    for (c, cb) in z.chunks(g).zip(b.chunks(g)) {
        for ((m, &v), &b) in maxima.iter_mut().zip(c).zip(cb) {
            let v = v + b;
            *m = if v > *m { v } else { *m };
        }
    }
    maxima.select_nth_unstable_by(k - 1, |a, b| b.partial_cmp(a).unwrap_or(Ordering::Equal));
    maxima[k - 1]
}
}

/// The entries of z + b at or above `floor`, in index order.
fn candidates(z: &[f32], b: &[f32], floor: f32) -> Vec<(u32, f32)> {
    let mut out = Vec::with_capacity(256);
    #[cfg(target_arch = "x86_64")]
    if super::simd::level() == 2 {
        // SAFETY: the CPU has AVX-512F; `top_k` checked that z and b have the same length.
        unsafe { x86::candidates_avx512(z, b, floor, &mut out) };
        return out;
    }
    candidates_blocks(z, b, floor, &mut out);
    out
}

simd_fn! {
/// `candidates` a block of 16 at a time: one vector compare skips a block below the floor.
fn candidates_blocks(z: &[f32], b: &[f32], floor: f32, out: &mut Vec<(u32, f32)>) {
    for (i, (block, bias)) in z.chunks(BLOCK).zip(b.chunks(BLOCK)).enumerate() {
        let mut any = false;
        for (&v, &b) in block.iter().zip(bias) {
            any |= v + b >= floor;
        }
        if any {
            for (j, (&v, &b)) in block.iter().zip(bias).enumerate() {
                if v + b >= floor {
                    out.push(((i * BLOCK + j) as u32, v + b));
                }
            }
        }
    }
}
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `candidates` with AVX-512's compressing stores: a compare and two stores per 16 entries.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn candidates_avx512(z: &[f32], b: &[f32], floor: f32, out: &mut Vec<(u32, f32)>) {
        // SAFETY: the caller checked that the CPU has the feature this function enables;
        // every load and store stays inside its slice (offsets below `body` ≤ the lengths).
        unsafe {
            let f = _mm512_set1_ps(floor);
            let step = _mm512_set1_epi32(16);
            let mut idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            let (mut vals, mut ids) = ([0f32; 16], [0u32; 16]);
            let body = z.len() / 16 * 16;
            let mut i = 0;
            while i < body {
                let v = _mm512_add_ps(
                    _mm512_loadu_ps(z.as_ptr().add(i)),
                    _mm512_loadu_ps(b.as_ptr().add(i)),
                );
                let m = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, f);
                if m != 0 {
                    _mm512_mask_compressstoreu_ps(vals.as_mut_ptr().cast(), m, v);
                    _mm512_mask_compressstoreu_epi32(ids.as_mut_ptr().cast(), m, idx);
                    let n = m.count_ones() as usize;
                    out.extend(ids[..n].iter().copied().zip(vals[..n].iter().copied()));
                }
                idx = _mm512_add_epi32(idx, step);
                i += 16;
            }
            for (j, (&v, &b)) in z[body..].iter().zip(&b[body..]).enumerate() {
                if v + b >= floor {
                    out.push(((body + j) as u32, v + b));
                }
            }
        }
    }
}

/// The top k of (index, value) pairs given in ascending index order, with a k-element min-heap
/// (for short rows, where a floor would not pay).
fn heap_top_k(mut items: impl Iterator<Item = (u32, f32)>, k: usize) -> Vec<(u32, f32)> {
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
    let mut heap: Vec<(u32, f32)> = items.by_ref().take(k).collect();
    for i in (0..heap.len() / 2).rev() {
        sift_down(&mut heap, i);
    }
    for item in items {
        // A later index never wins a tie, so only a strictly larger value enters.
        if item.1 > heap[0].1 {
            heap[0] = item;
            sift_down(&mut heap, 0);
        }
    }
    heap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_largest_first_and_keeps_negatives() {
        let z = [-3.0, -1.0, -2.0, -5.0];
        let mut top = top_k(&z, &[0.0; 4], 2);
        by_value(&mut top);
        assert_eq!(top, vec![(1, -1.0), (2, -2.0)]);
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
                let mut top = top_k(&z, &vec![0.0; n], k);
                by_value(&mut top);
                assert_eq!(top, all, "n {n} k {k}");
            }
        }
    }
}
