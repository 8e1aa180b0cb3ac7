//! Vector helpers on f32 slices.

use rayon::prelude::*;

/// f32 dot product with 16 independent accumulators (lane j sums the products at indices
/// ≡ j mod 16, then the lanes are added in order), so it vectorises and gives the same sum on
/// every instruction set. LLVM does not vectorise this reduction by itself, so the AVX-512 and
/// AVX2 paths spell it out.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let n = a.len().min(b.len());
    let body = n / L * L;
    let mut acc = [0f32; L];
    #[cfg(target_arch = "x86_64")]
    match super::simd::level() {
        // SAFETY: the CPU has the features; the loads stay below `body` ≤ both lengths.
        2 => unsafe { x86::dot16_avx512(a, b, body, &mut acc) },
        // SAFETY: likewise, with AVX2.
        1 => unsafe { x86::dot16_avx2(a, b, body, &mut acc) },
        _ => dot16(a, b, body, &mut acc),
    }
    #[cfg(not(target_arch = "x86_64"))]
    dot16(a, b, body, &mut acc);
    let tail: f32 = a[body..n].iter().zip(&b[body..n]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

fn dot16(a: &[f32], b: &[f32], body: usize, acc: &mut [f32; 16]) {
    for (x, y) in a[..body].chunks_exact(16).zip(b[..body].chunks_exact(16)) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `dot16` with one 16-lane register (separate multiply and add, as the scalar path).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot16_avx512(a: &[f32], b: &[f32], body: usize, acc: &mut [f32; 16]) {
        // SAFETY: the caller checked that the CPU has the feature this function enables;
        // every load and store stays inside its slice (offsets below `body` ≤ the lengths).
        unsafe {
            let mut s = _mm512_setzero_ps();
            let mut i = 0;
            while i < body {
                let p = _mm512_mul_ps(
                    _mm512_loadu_ps(a.as_ptr().add(i)),
                    _mm512_loadu_ps(b.as_ptr().add(i)),
                );
                s = _mm512_add_ps(s, p);
                i += 16;
            }
            _mm512_storeu_ps(acc.as_mut_ptr(), s);
        }
    }

    /// `dots3` with three 16-lane registers.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dots3_avx512(a: &[f32], b: &[f32], body: usize, acc: &mut [[f32; 16]; 3]) {
        // SAFETY: the caller checked that the CPU has the feature this function enables;
        // every load and store stays inside its slice (offsets below `body` ≤ the lengths).
        unsafe {
            let (mut ab, mut aa, mut bb) = (
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
            );
            let mut i = 0;
            while i < body {
                let (x, y) = (
                    _mm512_loadu_ps(a.as_ptr().add(i)),
                    _mm512_loadu_ps(b.as_ptr().add(i)),
                );
                ab = _mm512_add_ps(ab, _mm512_mul_ps(x, y));
                aa = _mm512_add_ps(aa, _mm512_mul_ps(x, x));
                bb = _mm512_add_ps(bb, _mm512_mul_ps(y, y));
                i += 16;
            }
            _mm512_storeu_ps(acc[0].as_mut_ptr(), ab);
            _mm512_storeu_ps(acc[1].as_mut_ptr(), aa);
            _mm512_storeu_ps(acc[2].as_mut_ptr(), bb);
        }
    }

    /// `dot16` with two 8-lane registers (lanes 0–7 and 8–15).
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot16_avx2(a: &[f32], b: &[f32], body: usize, acc: &mut [f32; 16]) {
        // SAFETY: the caller checked that the CPU has the feature this function enables;
        // every load and store stays inside its slice (offsets below `body` ≤ the lengths).
        unsafe {
            let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = 0;
            while i < body {
                let (pa, pb) = (a.as_ptr().add(i), b.as_ptr().add(i));
                lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(pa), _mm256_loadu_ps(pb)));
                hi = _mm256_add_ps(
                    hi,
                    _mm256_mul_ps(_mm256_loadu_ps(pa.add(8)), _mm256_loadu_ps(pb.add(8))),
                );
                i += 16;
            }
            _mm256_storeu_ps(acc.as_mut_ptr(), lo);
            _mm256_storeu_ps(acc.as_mut_ptr().add(8), hi);
        }
    }
}

simd_fn! {
/// y += x
pub fn add(y: &mut [f32], x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += x);
}
}

simd_fn! {
/// y += a·x
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}
}

/// Scales `v` to unit norm as torch's `normalize` does (divides by max(‖v‖, 1e-12)), so a zero
/// vector stays zero.
pub fn unit_norm(v: &mut [f32]) {
    let n = dot(v, v).sqrt().max(1e-12);
    div(v, n);
}

simd_fn! {
/// v /= a
fn div(v: &mut [f32], a: f32) {
    v.iter_mut().for_each(|x| *x /= a);
}
}

/// `unit_norm` on every `d`-wide row of `rows`, in parallel.
pub fn unit_rows(rows: &mut [f32], d: usize) {
    rows.par_chunks_mut(d).for_each(unit_norm);
}

/// Cosine of two vectors; None when either has zero norm. The three sums (a·b, a·a, b·b) run
/// in 16 f32 lanes each, like `dot`, and are combined in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> Option<f64> {
    let n = a.len().min(b.len());
    let body = n / 16 * 16;
    let mut acc = [[0f32; 16]; 3];
    #[cfg(target_arch = "x86_64")]
    match super::simd::level() {
        // SAFETY: the CPU has AVX-512F; the loads stay below `body` ≤ both lengths.
        2 => unsafe { x86::dots3_avx512(a, b, body, &mut acc) },
        _ => dots3(a, b, body, &mut acc),
    }
    #[cfg(not(target_arch = "x86_64"))]
    dots3(a, b, body, &mut acc);
    let lanes = |l: &[f32; 16]| l.iter().map(|&x| x as f64).sum::<f64>();
    let (mut ab, mut aa, mut bb) = (lanes(&acc[0]), lanes(&acc[1]), lanes(&acc[2]));
    for (&x, &y) in a[body..n].iter().zip(&b[body..n]) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    (aa > 0.0 && bb > 0.0).then(|| ab / (aa.sqrt() * bb.sqrt()))
}

simd_fn! {
fn dots3(a: &[f32], b: &[f32], body: usize, acc: &mut [[f32; 16]; 3]) {
    for (x, y) in a[..body].chunks_exact(16).zip(b[..body].chunks_exact(16)) {
        for j in 0..16 {
            acc[0][j] += x[j] * y[j];
            acc[1][j] += x[j] * x[j];
            acc[2][j] += y[j] * y[j];
        }
    }
}
}

/// A row-major [rows × cols] matrix transposed to [cols × rows].
pub fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_norm_leaves_zero_vectors_alone() {
        let mut v = [3.0, 4.0, 0.0];
        unit_norm(&mut v);
        assert_eq!(v, [0.6, 0.8, 0.0]);
        let mut z = [0.0f32; 3];
        unit_norm(&mut z);
        assert_eq!(z, [0.0; 3]);
        assert_eq!(cosine(&z, &v), None);
        assert!((cosine(&v, &[-0.6, -0.8, 0.0]).unwrap() + 1.0).abs() < 1e-12);
    }

    #[test]
    fn dot_handles_tails_and_matches_the_plain_lanes() {
        let a: Vec<f32> = (0..37).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..37).map(|i| (i * i) as f32).sum::<f32>());
        // Whatever the instruction set, the sum is the 16-lane one, bit for bit.
        let mut rng = crate::rng::SplitMix64::new(1);
        let x: Vec<f32> = (0..901)
            .map(|_| rng.below(1000) as f32 / 7.0 - 70.0)
            .collect();
        let y: Vec<f32> = (0..901)
            .map(|_| rng.below(1000) as f32 / 3.0 - 150.0)
            .collect();
        let mut acc = [0f32; 16];
        dot16(&x, &y, 896, &mut acc);
        let want = acc.iter().sum::<f32>() + (896..901).map(|i| x[i] * y[i]).sum::<f32>();
        assert_eq!(dot(&x, &y).to_bits(), want.to_bits());
    }
}
