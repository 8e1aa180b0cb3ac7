//! A bf16 product for screening: C̃ = Ã·B̃ᵀ from both operands rounded to bf16, accumulated in
//! f32 by AVX-512 BF16's `vdpbf16ps` (twice the f32 FMA rate on Zen 4), with a rigorous bound on
//! how far an entry can lie from the f32 dot of the unrounded rows. A caller finds candidates
//! from C̃ and rescores only those exactly, so its answer is the f32 one. x86-64 CPUs with
//! AVX-512 BF16 only: `available()` says, and callers keep their f32 path for the rest.

use rayon::prelude::*;

/// Rows of A per register tile, and B rows (tokens) per panel: a tile is 8 × 32 f32
/// accumulators, 16 of the 32 vector registers.
pub const TILE_ROWS: usize = 8;
pub const PANEL: usize = 32;

/// Whether this CPU runs the kernel (AVX-512 F and BF16), detected once.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A row's Euclidean norm, its bf16 rounding's, and the norm of the difference (all in f64):
/// what the bound needs. Over a set of rows, each is the maximum.
#[derive(Clone, Copy, Debug, Default)]
pub struct Norms {
    pub exact: f64,
    pub rounded: f64,
    pub error: f64,
}

impl Norms {
    fn max(self, o: Norms) -> Norms {
        Norms {
            exact: self.exact.max(o.exact),
            rounded: self.rounded.max(o.rounded),
            error: self.error.max(o.error),
        }
    }
}

/// f32 → bf16, rounded to nearest even, subnormals flushed to zero: the instruction treats a
/// subnormal input as zero, so the rounding the bound sees is the one the product uses.
fn round(x: f32) -> u16 {
    let h = half::bf16::from_f32(x).to_bits();
    match h & 0x7f80 {
        0 => h & 0x8000,
        _ => h,
    }
}

fn widen(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// One row rounded and handed to `put` pair by pair (`put(pair, bits)`: two bf16, the even
/// index in the low half; an odd last element is paired with zero), returning its norms.
fn round_row(row: &[f32], mut put: impl FnMut(usize, u32)) -> Norms {
    let (mut e, mut r, mut d) = (0f64, 0f64, 0f64);
    for (p, pair) in row.chunks(2).enumerate() {
        let lo = round(pair[0]);
        let hi = pair.get(1).map_or(0, |&x| round(x));
        put(p, lo as u32 | (hi as u32) << 16);
        for (&x, h) in pair.iter().zip([lo, hi]) {
            let xr = widen(h);
            e += x as f64 * x as f64;
            r += xr as f64 * xr as f64;
            // x − round(x) is exact in f32: the low bits that rounding dropped.
            d += ((x - xr) as f64).powi(2);
        }
    }
    Norms {
        exact: e.sqrt(),
        rounded: r.sqrt(),
        error: d.sqrt(),
    }
}

/// The largest |C̃ᵢⱼ − fl32(aᵢ·bⱼ)| can be, for a row of A and a row of B with these norms, `d`
/// wide, where fl32 is any f32 dot (any order, separate or fused multiply-adds):
/// |ã·b̃ − a·b| ≤ ‖Δa‖‖b‖ + ‖ã‖‖Δb‖, each f32 sum is within γ_{d+2} of its exact value, and
/// flushed subnormals cost at most 2⁻¹²⁶ an operation. `None` when it is not finite (then the
/// caller must not screen).
pub fn bound(a: &Norms, b: &Norms, d: usize) -> Option<f32> {
    let k = (d + 2) as f64 * f64::from(f32::EPSILON) / 2.0;
    let gamma = k / (1.0 - k);
    let e = a.error * b.exact
        + a.rounded * b.error
        + gamma * (a.rounded * b.rounded + a.exact * b.exact)
        + 2.0 * (d + 2) as f64 * f64::from(f32::MIN_POSITIVE);
    // Slack for the caller's f32 arithmetic on values up to ‖ã‖‖b̃‖ (v ± e rounds).
    let e = e * 1.01 + a.rounded * b.rounded * 2f64.powi(-20);
    (e.is_finite() && e < 1e30 && a.exact * b.exact < 1e30).then_some(e as f32)
}

/// A's rows rounded to bf16, in tiles of `TILE_ROWS` rows stored pair by pair (the order the
/// kernel broadcasts them), rows padded with zeros to a whole tile.
pub struct TiledA {
    data: Vec<u32>,
    pairs: usize,
    pub norms: Vec<Norms>,
}

impl TiledA {
    pub fn new(a: &[f32], d: usize) -> Self {
        let rows = a.len() / d;
        let pairs = d.div_ceil(2);
        let tiles = rows.div_ceil(TILE_ROWS);
        let mut data = vec![0u32; tiles * pairs * TILE_ROWS];
        let norms = data
            .par_chunks_mut(pairs * TILE_ROWS)
            .enumerate()
            .flat_map_iter(|(t, tile)| {
                let end = rows.min((t + 1) * TILE_ROWS);
                (t * TILE_ROWS..end)
                    .map(|i| {
                        let r = i % TILE_ROWS;
                        round_row(&a[i * d..(i + 1) * d], |p, v| tile[p * TILE_ROWS + r] = v)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        Self { data, pairs, norms }
    }
}

/// B's rows rounded to bf16 in panels of `PANEL` rows, each stored pair by pair (one vector load
/// holds 16 rows' pair), padded with zero rows to a whole panel; `max` bounds every row.
pub struct PanelB {
    data: Vec<u32>,
    pairs: usize,
    pub rows: usize,
    pub max: Norms,
}

impl PanelB {
    pub fn new(b: &[f32], d: usize) -> Self {
        let rows = b.len() / d;
        let pairs = d.div_ceil(2);
        let mut data = vec![0u32; rows.div_ceil(PANEL) * pairs * PANEL];
        let max = data
            .par_chunks_mut(pairs * PANEL)
            .enumerate()
            .map(|(p, panel)| {
                let end = rows.min((p + 1) * PANEL);
                (p * PANEL..end).fold(Norms::default(), |m, j| {
                    let l = j % PANEL;
                    m.max(round_row(&b[j * d..(j + 1) * d], |q, v| {
                        panel[q * PANEL + l] = v
                    }))
                })
            })
            .reduce(Norms::default, Norms::max);
        Self {
            data,
            pairs,
            rows,
            max,
        }
    }

    pub fn panels(&self) -> usize {
        self.rows.div_ceil(PANEL)
    }
}

/// One tile of C̃: A's rows `8t..8t + 8` against B's panel `p` into `out` (row-major 8 × 32),
/// returning which rows hold a value ≥ `hi[r]` or ≤ `lo[r]` (bit r), so a caller screening
/// for extremes reads only those. Panics unless `available()` (the caller checks).
pub fn tile(
    a: &TiledA,
    t: usize,
    b: &PanelB,
    p: usize,
    out: &mut [f32; TILE_ROWS * PANEL],
    lo: &[f32; TILE_ROWS],
    hi: &[f32; TILE_ROWS],
) -> u8 {
    assert!(available(), "bf16 tile on a CPU without AVX-512 BF16");
    assert_eq!(a.pairs, b.pairs, "bf16 tile: widths differ");
    let (na, nb) = (a.pairs * TILE_ROWS, b.pairs * PANEL);
    let (a, b) = (&a.data[t * na..(t + 1) * na], &b.data[p * nb..(p + 1) * nb]);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `available()` checked the features; the slices have the sizes the kernel reads and
    // writes (pairs × 8, pairs × 32, 8 × 32).
    unsafe {
        x86::tile(a, b, out, lo, hi)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("{:?}", (a.len(), b.len(), out.len(), lo, hi))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PANEL, TILE_ROWS};
    use std::arch::x86_64::*;

    /// One 8 × 32 tile over every pair: per pair, two loads of B (16 rows' pair each), and per
    /// row of A one broadcast pair into two `vdpbf16ps`; then each row's two registers are
    /// compared with its bounds while still in registers.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn tile(
        a: &[u32],
        b: &[u32],
        c: &mut [f32; TILE_ROWS * PANEL],
        lo: &[f32; TILE_ROWS],
        hi: &[f32; TILE_ROWS],
    ) -> u8 {
        let pairs = b.len() / PANEL;
        assert!(a.len() >= pairs * TILE_ROWS);
        // SAFETY: every offset stays below the lengths asserted above or fixed by the types.
        // Pointers advance with `wrapping_add` and B loads masked: `add`, `*p` and the unmasked
        // load's `read_unaligned` carry debug-build checks that stay inside this loop.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); 2 * TILE_ROWS];
            let (mut a, mut b) = (a.as_ptr(), b.as_ptr());
            for _ in 0..pairs {
                let b0: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi32(!0, b.cast()));
                let b1 = _mm512_maskz_loadu_epi32(!0, b.wrapping_add(16).cast());
                let b1: __m512bh = std::mem::transmute(b1);
                for r in 0..TILE_ROWS {
                    let x = _mm512_broadcastss_ps(_mm_load_ss(a.wrapping_add(r).cast()));
                    let x: __m512bh = std::mem::transmute(x);
                    acc[2 * r] = _mm512_dpbf16_ps(acc[2 * r], x, b0);
                    acc[2 * r + 1] = _mm512_dpbf16_ps(acc[2 * r + 1], x, b1);
                }
                (a, b) = (a.wrapping_add(TILE_ROWS), b.wrapping_add(PANEL));
            }
            let mut flags = 0u8;
            for (r, pair) in acc.chunks_exact(2).enumerate() {
                _mm512_storeu_ps(c.as_mut_ptr().wrapping_add(r * PANEL), pair[0]);
                _mm512_storeu_ps(c.as_mut_ptr().wrapping_add(r * PANEL + 16), pair[1]);
                let (l, h) = (_mm512_set1_ps(lo[r]), _mm512_set1_ps(hi[r]));
                let out = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(pair[0], h)
                    | _mm512_cmp_ps_mask::<_CMP_GE_OQ>(pair[1], h)
                    | _mm512_cmp_ps_mask::<_CMP_LE_OQ>(pair[0], l)
                    | _mm512_cmp_ps_mask::<_CMP_LE_OQ>(pair[1], l);
                flags |= ((out != 0) as u8) << r;
            }
            flags
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_product_stays_within_its_bound_of_the_f32_dot() {
        if !available() {
            return;
        }
        let mut rng = crate::rng::SplitMix64::new(11);
        // Odd width (a padded pair), rows that do not fill a tile or a panel, values over
        // several magnitudes and one subnormal.
        let (m, n, d) = (13, 45, 37);
        let mut v = |k: usize| -> Vec<f32> {
            (0..k)
                .map(|_| {
                    ((rng.next_u64() >> 40) as f32 / (1u32 << 24) as f32 - 0.5)
                        * 10f32.powi(rng.below(5) as i32 - 2)
                })
                .collect()
        };
        let (mut a, b) = (v(m * d), v(n * d));
        a[3] = 1e-40;
        let (ta, pb) = (TiledA::new(&a, d), PanelB::new(&b, d));
        let mut worst = 0f32;
        let mut out = [0f32; TILE_ROWS * PANEL];
        for t in 0..m.div_ceil(TILE_ROWS) {
            for p in 0..pb.panels() {
                // Row 0 flags everything, row 1 nothing, row 2 only values ≥ 0.
                let (mut lo, mut hi) = ([f32::NEG_INFINITY; TILE_ROWS], [f32::INFINITY; TILE_ROWS]);
                (lo[0], hi[2]) = (f32::INFINITY, 0.0);
                let flags = tile(&ta, t, &pb, p, &mut out, &lo, &hi);
                assert_eq!(flags & 3, 1);
                let i2 = t * TILE_ROWS + 2;
                let any =
                    (p * PANEL..n.min((p + 1) * PANEL)).any(|j| out[2 * PANEL + j % PANEL] >= 0.0);
                assert!(i2 >= m || flags & 4 != 0 || !any);
                for i in t * TILE_ROWS..m.min((t + 1) * TILE_ROWS) {
                    let e = bound(&ta.norms[i], &pb.max, d).unwrap();
                    for j in p * PANEL..n.min((p + 1) * PANEL) {
                        let (ra, rb) = (&a[i * d..(i + 1) * d], &b[j * d..(j + 1) * d]);
                        let exact = crate::kernels::dot(ra, rb);
                        let got = out[(i % TILE_ROWS) * PANEL + j % PANEL];
                        assert!(
                            (got - exact).abs() <= e,
                            "({i}, {j}): {got} vs {exact}, bound {e}"
                        );
                        worst = worst.max((got - exact).abs() / e);
                    }
                }
            }
        }
        // The bound is not vacuous: some entry uses a visible part of it.
        assert!(worst > 0.01, "largest error only {worst} of the bound");
    }
}
