//! The one GEMM: the `gemm` crate (candle's own CPU GEMM), called directly on strided slices so
//! weights are multiplied where they lie, without transposed copies. Built without debug
//! assertions (see Cargo.toml) it runs at the FMA limit of the cores, as fast as OpenBLAS or BLIS
//! here (`saerl bench gemm`).

/// A strided f32 matrix view: element (i, j) is `data[i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, as a view (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Panics unless every element lies inside `data`.
    fn check(&self, what: &str) {
        let last = if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        };
        assert!(
            last <= self.data.len(),
            "gemm: {what} ({}×{}, strides {}/{}) reaches past its {} values",
            self.rows,
            self.cols,
            self.rs,
            self.cs,
            self.data.len()
        );
    }
}

/// C = A·B (+ C when `accumulate`), C row-major with leading dimension `ldc`.
pub fn gemm(a: Mat, b: Mat, c: &mut [f32], ldc: usize, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(
        b.rows, k,
        "gemm: inner dimensions {k} and {} differ",
        b.rows
    );
    a.check("A");
    b.check("B");
    assert!(
        m == 0 || n == 0 || (m - 1) * ldc + n <= c.len(),
        "gemm: C ({m}×{n}, ldc {ldc}) does not fit its {} values",
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.chunks_mut(ldc).take(m).for_each(|r| r[..n].fill(0.0));
        }
        return;
    }
    // Small products (attention heads, tiny models) run on the calling thread.
    let threads = match 2 * m * n * k < 1 << 22 {
        true => 1,
        false => rayon::current_num_threads(),
    };
    // SAFETY: the three views were checked to lie inside their slices, and C is borrowed mutably.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            },
        );
    }
}

/// C[m×n] = A[m×k]·B[n×k]ᵀ (+ C when `accumulate`), all row-major.
pub fn sgemm_nt(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) {
    gemm(Mat::rows(a, m, k), Mat::rows(b, n, k).t(), c, n, accumulate);
}

/// The cosines of every row of `a` with every row of `b` (both row-major, `d` wide): both are
/// unit-normalised, then a block of `a`'s rows at a time is one GEMM against all of `b`, and
/// `f(i, row)` sees row i's cosines with each row of `b` (free to change in place).
pub fn for_each_cosine_row(a: &[f32], b: &[f32], d: usize, mut f: impl FnMut(usize, &mut [f32])) {
    const BLOCK: usize = 512;
    let (mut ua, mut ub) = (a.to_vec(), b.to_vec());
    super::unit_rows(&mut ua, d);
    super::unit_rows(&mut ub, d);
    let (na, nb) = (a.len() / d, b.len() / d);
    let mut c = vec![0f32; BLOCK.min(na.max(1)) * nb];
    for start in (0..na).step_by(BLOCK) {
        let m = BLOCK.min(na - start);
        sgemm_nt(m, nb, d, &ua[start * d..], &ub, &mut c[..m * nb], false);
        for (r, row) in c[..m * nb].chunks_mut(nb.max(1)).enumerate() {
            f(start + r, row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: Mat, b: Mat) -> Vec<f32> {
        let mut c = vec![0f32; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                c[i * b.cols + j] = (0..a.cols)
                    .map(|p| a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs])
                    .sum();
            }
        }
        c
    }

    #[test]
    fn strided_products_match_a_plain_loop() {
        let mut rng = crate::rng::SplitMix64::new(3);
        let v = |n: usize, rng: &mut crate::rng::SplitMix64| -> Vec<f32> {
            (0..n).map(|_| rng.below(17) as f32 - 8.0).collect()
        };
        let (m, k, n) = (37, 29, 41);
        let (a, b) = (v(m * k, &mut rng), v(n * k, &mut rng));
        for (am, bm) in [
            (Mat::rows(&a, m, k), Mat::rows(&b, n, k).t()),
            (Mat::rows(&a, k, m).t(), Mat::rows(&b, k, n)),
        ] {
            let mut c = vec![1f32; m * n];
            gemm(am, bm, &mut c, n, false);
            assert_eq!(c, naive(am, bm));
            let want: Vec<f32> = c.iter().map(|x| 2.0 * x).collect();
            gemm(am, bm, &mut c, n, true);
            assert_eq!(c, want);
        }
    }

    #[test]
    #[should_panic(expected = "reaches past")]
    fn a_view_outside_its_slice_is_refused() {
        let a = vec![0f32; 10];
        let mut c = vec![0f32; 4];
        gemm(Mat::rows(&a, 2, 6), Mat::rows(&a, 6, 2), &mut c, 2, false);
    }
}
