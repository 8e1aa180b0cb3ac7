//! The CPU's heavy products (the model's linear layers, the SAE encoder). By default they run on
//! the `gemm` crate (candle's own CPU GEMM, ~75 GFLOP/s on this machine kind); the optional
//! feature `openblas` links the system OpenBLAS (e.g. Debian's libopenblas-dev, ~194 GFLOP/s).
//! Tensors that are not contiguous f32 on the CPU go through candle's matmul (the CUDA build
//! always does).

use anyhow::Result;
use candle_core::Tensor;

#[cfg(feature = "openblas")]
mod ffi {
    pub const ROW_MAJOR: i32 = 101;
    pub const NO_TRANS: i32 = 111;
    pub const TRANS: i32 = 112;
    #[link(name = "openblas")]
    unsafe extern "C" {
        #[allow(clippy::too_many_arguments)]
        pub fn cblas_sgemm(
            order: i32,
            trans_a: i32,
            trans_b: i32,
            m: i32,
            n: i32,
            k: i32,
            alpha: f32,
            a: *const f32,
            lda: i32,
            b: *const f32,
            ldb: i32,
            beta: f32,
            c: *mut f32,
            ldc: i32,
        );
    }
}

/// C[m×n] = A[m×k]·B[n×k]ᵀ (+ C when `accumulate`), all row-major f32 slices: OpenBLAS with the
/// `openblas` feature, else the `gemm` crate candle itself uses (called directly, so weights are
/// multiplied in place rather than copied into a tensor first).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_nt(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(
        a.len() >= m * k && b.len() >= n * k && c.len() >= m * n,
        "sgemm_nt: slices too short"
    );
    #[cfg(feature = "openblas")]
    // SAFETY: the slices hold m·k, n·k and m·n values laid out row-major as declared.
    unsafe {
        ffi::cblas_sgemm(
            ffi::ROW_MAJOR,
            ffi::NO_TRANS,
            ffi::TRANS,
            m as i32,
            n as i32,
            k as i32,
            1.0,
            a.as_ptr(),
            k as i32,
            b.as_ptr(),
            k as i32,
            if accumulate { 1.0 } else { 0.0 },
            c.as_mut_ptr(),
            n as i32,
        );
    }
    #[cfg(not(feature = "openblas"))]
    // SAFETY: as above; Bᵀ is read through strides (column stride k, row stride 1).
    unsafe {
        let threads = rayon::current_num_threads();
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
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

/// x · wᵀ for x [m,k] and w [n,k] as contiguous f32 CPU tensors, or None when they are not.
fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    use candle_core::{CpuStorage, Storage};
    let (Ok((m, k)), Ok((n, k2))) = (x.dims2(), w.dims2()) else {
        return Ok(None);
    };
    if k != k2 || !x.is_contiguous() || !w.is_contiguous() {
        return Ok(None);
    }
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(xv)), Storage::Cpu(CpuStorage::F32(wv))) = (&*xs, &*ws)
    else {
        return Ok(None);
    };
    let mut out = vec![0f32; m * n];
    sgemm_nt(
        m,
        n,
        k,
        &xv[xl.start_offset()..xl.start_offset() + m * k],
        &wv[wl.start_offset()..wl.start_offset() + n * k],
        &mut out,
        false,
    );
    Ok(Some(Tensor::from_vec(out, (m, n), x.device())?))
}

/// x · wᵀ: through `sgemm_nt` on the CPU, else (CUDA, other dtypes) candle's matmul.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    match matmul_t(x, w)? {
        Some(y) => Ok(y),
        None => Ok(x.matmul(&w.t()?)?),
    }
}
