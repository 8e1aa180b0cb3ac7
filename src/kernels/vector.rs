//! Vector helpers on f32 slices.

use rayon::prelude::*;

/// f32 dot product with independent accumulators so it vectorises.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..L {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// y += a·x
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

/// Scales `v` to unit norm as torch's `normalize` does (divides by max(‖v‖, 1e-12)), so a zero
/// vector stays zero.
pub fn unit_norm(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// `unit_norm` on every `d`-wide row of `rows`, in parallel.
pub fn unit_rows(rows: &mut [f32], d: usize) {
    rows.par_chunks_mut(d).for_each(unit_norm);
}

/// Cosine of two vectors, accumulated in f64; None when either has zero norm.
pub fn cosine(a: &[f32], b: &[f32]) -> Option<f64> {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    (aa > 0.0 && bb > 0.0).then(|| ab / (aa.sqrt() * bb.sqrt()))
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
    fn dot_handles_tails() {
        let a: Vec<f32> = (0..37).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..37).map(|i| (i * i) as f32).sum::<f32>());
    }
}
