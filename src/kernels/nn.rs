//! Row-wise kernels of a transformer's forward pass on f32 slices: RMS norm, rotary embedding,
//! causal softmax and the SwiGLU product.

use super::simd::simd_fn;

simd_fn! {
/// out = x / √(mean(x²) + eps) · w (RMSNorm of one row).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = super::dot(x, x) / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    for ((o, &x), &w) in out.iter_mut().zip(x).zip(w) {
        *o = x * r * w;
    }
}
}

/// Rotate-half rotary embedding of one head vector at position `pos`: for i < d/2,
/// (x_i, x_{i+d/2}) turns by the angle pos·inv_freq_i (angles in f32, as the reference does).
pub fn rope(x: &mut [f32], pos: usize, inv_freq: &[f32]) {
    let half = inv_freq.len();
    let (a, b) = x.split_at_mut(half);
    for ((a, b), &f) in a.iter_mut().zip(b.iter_mut()).zip(inv_freq) {
        let angle = pos as f32 * f;
        let (sin, cos) = angle.sin_cos();
        let (x1, x2) = (*a, *b);
        *a = x1 * cos - x2 * sin;
        *b = x2 * cos + x1 * sin;
    }
}

simd_fn! {
/// Softmax of `row[..=last]` in place (the causal prefix of a score row); the rest become 0.
pub fn causal_softmax(row: &mut [f32], last: usize) {
    let (live, masked) = row.split_at_mut(last + 1);
    let max = live.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let mut sum = 0f32;
    for v in live.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    live.iter_mut().for_each(|v| *v *= inv);
    masked.fill(0.0);
}
}

simd_fn! {
/// g ← silu(g) · u (the SwiGLU gate of an MLP row).
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}
}
