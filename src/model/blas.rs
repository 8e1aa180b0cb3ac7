//! Optional BLAS path for the CPU's heavy products (feature `openblas`, linking the system
//! OpenBLAS, e.g. Debian's libopenblas-dev). candle's own CPU GEMM reaches about 75 GFLOP/s on
//! this machine kind against OpenBLAS's 194; the model's linear layers are where that matters.
//! Without the feature, or for tensors that are not contiguous f32 on the CPU, callers fall back
//! to candle's matmul (the CUDA build always does).

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

/// x · wᵀ for x [m,k] and w [n,k] through BLAS, or None when this path does not apply.
#[cfg(feature = "openblas")]
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
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
    let (a, b) = (
        &xv[xl.start_offset()..xl.start_offset() + m * k],
        &wv[wl.start_offset()..wl.start_offset() + n * k],
    );
    let mut out = vec![0f32; m * n];
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
            0.0,
            out.as_mut_ptr(),
            n as i32,
        );
    }
    Ok(Some(Tensor::from_vec(out, (m, n), x.device())?))
}

#[cfg(not(feature = "openblas"))]
pub fn matmul_t(_x: &Tensor, _w: &Tensor) -> Result<Option<Tensor>> {
    Ok(None)
}

/// x · wᵀ, by BLAS where available, else by candle.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    match matmul_t(x, w)? {
        Some(y) => Ok(y),
        None => Ok(x.matmul(&w.t()?)?),
    }
}
