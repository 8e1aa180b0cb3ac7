//! The SAE kernels on candle tensors, on whatever device the tensors live: CUDA kernels of our
//! own (`device_kernels.cu`, compiled at run time by NVRTC) where candle has none or only a slow
//! one, each with a CPU implementation built on the slice kernels of this module — the
//! reference the CUDA one is tested against, and what runs when the device path runs on the
//! CPU (the tests). Inputs must be contiguous; indices are u32.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// The k largest of each row of z + bias (z [rows × n], bias [n]) as (indices u32, values f32),
/// both [rows × k], largest first, ties to the lower index.
pub fn topk_rows(z: &Tensor, bias: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    let idx = z.apply_op2_no_bwd(bias, &TopK { k })?;
    let val = (z.gather(&idx, 1)?
        + bias
            .index_select(&idx.flatten_all()?, 0)?
            .reshape(idx.shape())?)?;
    Ok((idx, val))
}

/// Σ_j val[r, j] · w[idx[r, j]] per row r (w feature-major [n × d]): [rows × d].
pub fn sparse_decode(idx: &Tensor, val: &Tensor, w: &Tensor) -> Result<Tensor> {
    idx.apply_op3_no_bwd(val, w, &SparseDecode)
}

/// ⟨w[idx[r, j]], x[r]⟩ per row r and slot j: [rows × k].
pub fn gather_dot(idx: &Tensor, w: &Tensor, x: &Tensor) -> Result<Tensor> {
    idx.apply_op3_no_bwd(w, x, &GatherDot)
}

/// How often each of 0..n occurs in idx: u32 [n].
pub fn bincount(idx: &Tensor, n: usize) -> Result<Tensor> {
    idx.apply_op1_no_bwd(&BinCount { n })
}

/// A weight gradient through the selections only: g[f] = Σ coef[r, j] · y[r] over the rows r
/// whose slot j selected feature f (idx, coef [rows × k], y [rows × d]), rows in order. Flat:
/// [n · d], then with `sums` the n per-feature sums Σ coef[r, j] (a bias gradient).
pub fn sparse_outer(
    idx: &Tensor,
    coef: &Tensor,
    y: &Tensor,
    n: usize,
    sums: bool,
) -> Result<Tensor> {
    idx.apply_op3_no_bwd(coef, y, &SparseOuter { n, sums })
}

/// Σ x² of a contiguous f32 tensor, in f64, as a scalar tensor on its device.
pub fn sum_sq(x: &Tensor) -> Result<Tensor> {
    x.apply_op1_no_bwd(&SumSq)
}

/// Adam's step constants (β₁ 0.9, β₂ 0.999, ε 1e-8), with the gradient-norm bound.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub step: f32,
    pub bc2_sqrt: f32,
    /// Gradients are scaled by min(1, clip_norm / (‖g‖ + 1e-6)) first (torch's clip_grad_norm_).
    pub clip_norm: f32,
}

impl AdamStep {
    fn clip(&self, sq_norm: f64) -> f32 {
        (self.clip_norm / (sq_norm.sqrt() as f32 + 1e-6)).min(1.0)
    }
}

pub const B1: f32 = 0.9;
pub const B2: f32 = 0.999;
pub const EPS: f32 = 1e-8;

/// One Adam update in place of `state` = [p; m; v] (3 × n, contiguous) with gradient g [n],
/// clipped by the squared norm of all gradients `sq_norm` (an f64 scalar on the device, so the
/// step needs no round trip to the host).
pub fn adam(state: &Tensor, g: &Tensor, sq_norm: &Tensor, h: AdamStep) -> Result<()> {
    state.inplace_op3(g, sq_norm, &Adam(h))
}

/// Each row of a contiguous [rows × d] tensor scaled to unit norm (as torch's normalize), in place.
pub fn unit_rows(w: &Tensor) -> Result<()> {
    w.inplace_op1(&UnitRows)
}

fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("expected a contiguous f32 tensor"),
    }
}

fn cpu_u32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::U32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("expected a contiguous u32 tensor"),
    }
}

struct TopK {
    k: usize,
}

impl CustomOp2 for TopK {
    fn name(&self) -> &'static str {
        "saerl-topk"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (z, b) = (cpu_f32(s1, l1)?, cpu_f32(s2, l2)?);
        let (rows, n) = l1.shape().dims2()?;
        let k = self.k.min(n);
        let mut idx = Vec::with_capacity(rows * k);
        for r in z.chunks_exact(n) {
            let mut top = super::top_k(r, b, k);
            super::by_value(&mut top);
            idx.extend(top.iter().map(|t| t.0));
        }
        Ok((CpuStorage::U32(idx), Shape::from((rows, k))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::topk(self.k, s1, l1, s2, l2)
    }
}

struct SparseDecode;

impl CustomOp3 for SparseDecode {
    fn name(&self) -> &'static str {
        "saerl-sparse-decode"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (idx, val, w) = (cpu_u32(s1, l1)?, cpu_f32(s2, l2)?, cpu_f32(s3, l3)?);
        let (rows, k) = l1.shape().dims2()?;
        let d = l3.shape().dims2()?.1;
        let mut out = vec![0f32; rows * d];
        for ((o, i), v) in out
            .chunks_exact_mut(d)
            .zip(idx.chunks_exact(k))
            .zip(val.chunks_exact(k))
        {
            for (&f, &v) in i.iter().zip(v) {
                super::axpy(o, v, &w[f as usize * d..(f as usize + 1) * d]);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::sparse_decode(s1, l1, s2, l2, s3, l3)
    }
}

struct GatherDot;

impl CustomOp3 for GatherDot {
    fn name(&self) -> &'static str {
        "saerl-gather-dot"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (idx, w, x) = (cpu_u32(s1, l1)?, cpu_f32(s2, l2)?, cpu_f32(s3, l3)?);
        let (rows, k) = l1.shape().dims2()?;
        let d = l3.shape().dims2()?.1;
        let mut out = Vec::with_capacity(rows * k);
        for (i, x) in idx.chunks_exact(k).zip(x.chunks_exact(d)) {
            out.extend(
                i.iter()
                    .map(|&f| super::dot(&w[f as usize * d..(f as usize + 1) * d], x)),
            );
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, k))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::gather_dot(s1, l1, s2, l2, s3, l3)
    }
}

struct BinCount {
    n: usize,
}

impl CustomOp1 for BinCount {
    fn name(&self) -> &'static str {
        "saerl-bincount"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut counts = vec![0u32; self.n];
        for &i in cpu_u32(s, l)? {
            counts[i as usize] += 1;
        }
        Ok((CpuStorage::U32(counts), Shape::from(self.n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::bincount(self.n, s, l)
    }
}

struct SparseOuter {
    n: usize,
    sums: bool,
}

impl CustomOp3 for SparseOuter {
    fn name(&self) -> &'static str {
        "saerl-sparse-outer"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (idx, coef, y) = (cpu_u32(s1, l1)?, cpu_f32(s2, l2)?, cpu_f32(s3, l3)?);
        let (k, d, n) = (l1.shape().dims2()?.1, l3.shape().dims2()?.1, self.n);
        let mut g = vec![0f32; n * d + if self.sums { n } else { 0 }];
        let (rows, sums) = g.split_at_mut(n * d);
        for ((i, c), y) in idx
            .chunks_exact(k)
            .zip(coef.chunks_exact(k))
            .zip(y.chunks_exact(d))
        {
            for (&f, &c) in i.iter().zip(c) {
                let f = f as usize;
                super::axpy(&mut rows[f * d..(f + 1) * d], c, y);
                if let Some(s) = sums.get_mut(f) {
                    *s += c;
                }
            }
        }
        let len = g.len();
        Ok((CpuStorage::F32(g), Shape::from(len)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::sparse_outer(self.n, self.sums, s1, l1, s2, l2, s3, l3)
    }
}

struct SumSq;

impl CustomOp1 for SumSq {
    fn name(&self) -> &'static str {
        "saerl-sum-sq"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let total = cpu_f32(s, l)?
            .iter()
            .map(|&v| v as f64 * v as f64)
            .sum::<f64>();
        Ok((CpuStorage::F64(vec![total]), Shape::from(())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::sum_sq(s, l)
    }
}

struct Adam(AdamStep);

impl candle_core::InplaceOp3 for Adam {
    fn name(&self) -> &'static str {
        "saerl-adam"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let g = cpu_f32(s2, l2)?;
        let sq_norm = match (s3, l3.contiguous_offsets()) {
            (CpuStorage::F64(v), Some((a, b))) if b == a + 1 => v[a],
            _ => candle_core::bail!("adam: the squared norm must be an f64 scalar"),
        };
        let n = g.len();
        let (a, b) = l1
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("adam: state must be contiguous".into()))?;
        let CpuStorage::F32(state) = s1 else {
            candle_core::bail!("adam: state must be f32");
        };
        if b - a != 3 * n {
            candle_core::bail!("adam: state holds {} values, expected 3 × {n}", b - a);
        }
        let (p, rest) = state[a..b].split_at_mut(n);
        let (m, v) = rest.split_at_mut(n);
        let (h, clip) = (self.0, self.0.clip(sq_norm));
        for (((p, m), v), g) in p.iter_mut().zip(m).zip(v).zip(g) {
            let g = g * clip;
            *m = B1 * *m + (1.0 - B1) * g;
            *v = B2 * *v + (1.0 - B2) * g * g;
            *p -= h.step * *m / (v.sqrt() / h.bc2_sqrt + EPS);
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<()> {
        cuda::adam(self.0, s1, l1, s2, l2, s3, l3)
    }
}

struct UnitRows;

impl candle_core::InplaceOp1 for UnitRows {
    fn name(&self) -> &'static str {
        "saerl-unit-rows"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let d = l.shape().dims2()?.1;
        let (a, b) = l.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("unit_rows: tensor must be contiguous".into())
        })?;
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("unit_rows: tensor must be f32");
        };
        super::unit_rows(&mut v[a..b], d);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &mut candle_core::CudaStorage, l: &Layout) -> Result<()> {
        cuda::unit_rows(s, l)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Launches of the kernels in `device_kernels.cu`.

    use std::sync::OnceLock;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::CudaDType;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout, Result, Shape};

    const SOURCE: &str = include_str!("device_kernels.cu");

    /// The kernels' PTX, compiled once per process (no fused multiply-add, so results follow
    /// the CPU references' rounding).
    fn ptx() -> Result<&'static str> {
        static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
        let compiled = PTX.get_or_init(|| {
            use candle_core::cuda_backend::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
            let opts = CompileOptions {
                fmad: Some(false),
                ..Default::default()
            };
            compile_ptx_with_opts(SOURCE, opts)
                .map(|p| p.to_src())
                .map_err(|e| format!("compiling saerl's CUDA kernels with NVRTC: {e}"))
        });
        compiled
            .as_deref()
            .map_err(|e| candle_core::Error::Msg(e.clone()))
    }

    /// A kernel of the module, loaded into `dev` once (its type is not nameable outside candle).
    macro_rules! func {
        ($dev:expr, $name:expr) => {
            $dev.get_or_load_custom_func($name, "saerl_kernels", ptx()?)?
        };
    }

    /// Launches kernel `$name` on `$dev` with `$cfg` and the kernel's arguments in its order.
    macro_rules! launch {
        ($dev:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
            let f = func!($dev, $name);
            let mut launch = f.builder();
            $(launch.arg($arg);)+
            // SAFETY: every caller passes the arguments in the order and types of the kernel's
            // signature in device_kernels.cu, with buffers of the sizes the kernel indexes.
            unsafe { launch.launch($cfg) }.w()?;
        }};
    }

    /// A kernel's input: the storage's values from the layout's start (which must be contiguous).
    fn input<'a, T: CudaDType>(
        s: &'a CudaStorage,
        l: &Layout,
        what: &str,
    ) -> Result<CudaView<'a, T>> {
        Ok(s.as_cuda_slice::<T>()?.slice(contiguous(l, what)?..))
    }

    fn contiguous(l: &Layout, what: &str) -> Result<usize> {
        match l.contiguous_offsets() {
            Some((a, _)) => Ok(a),
            None => candle_core::bail!("{what}: input must be contiguous"),
        }
    }

    fn cfg(grid: u32, block: u32, shared: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (grid.max(1), 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: shared,
        }
    }

    pub fn topk(
        k: usize,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device();
        let (rows, n) = l1.shape().dims2()?;
        let k = k.min(n);
        let p2 = k.next_power_of_two();
        let z = input::<f32>(s1, l1, "topk")?;
        let b = input::<f32>(s2, l2, "topk")?;
        let out_idx = dev.alloc_zeros::<u32>(rows * k)?;
        let out_val = dev.alloc_zeros::<f32>(rows * k)?;
        let (n32, k32, p232) = (n as u32, k as u32, p2 as u32);
        launch!(
            dev,
            "topk_rows",
            cfg(rows as u32, 256, (p2 * 8) as u32),
            &z,
            &b,
            &n32,
            &k32,
            &p232,
            &out_idx,
            &out_val
        );
        Ok((
            CudaStorage::wrap_cuda_slice(out_idx, dev.clone()),
            Shape::from((rows, k)),
        ))
    }

    pub fn sparse_decode(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device();
        let (rows, k) = l1.shape().dims2()?;
        let d = l3.shape().dims2()?.1;
        let idx = input::<u32>(s1, l1, "sparse_decode")?;
        let val = input::<f32>(s2, l2, "sparse_decode")?;
        let w = input::<f32>(s3, l3, "sparse_decode")?;
        let zero = dev.alloc_zeros::<f32>(d)?;
        let out = dev.alloc_zeros::<f32>(rows * d)?;
        let (k32, d32) = (k as u32, d as u32);
        launch!(
            dev,
            "sparse_decode",
            cfg(rows as u32, 256, 0),
            &idx,
            &val,
            &k32,
            &w,
            &zero,
            &d32,
            &out
        );
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((rows, d)),
        ))
    }

    pub fn gather_dot(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device();
        let (rows, k) = l1.shape().dims2()?;
        let d = l3.shape().dims2()?.1;
        let idx = input::<u32>(s1, l1, "gather_dot")?;
        let w = input::<f32>(s2, l2, "gather_dot")?;
        let x = input::<f32>(s3, l3, "gather_dot")?;
        let out = dev.alloc_zeros::<f32>(rows * k)?;
        let (k32, d32) = (k as u32, d as u32);
        launch!(
            dev,
            "gather_dot",
            cfg(rows as u32, 256, 0),
            &idx,
            &k32,
            &w,
            &x,
            &d32,
            &out
        );
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((rows, k)),
        ))
    }

    pub fn bincount(n: usize, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = s.device();
        let len = l.shape().elem_count();
        let idx = input::<u32>(s, l, "bincount")?;
        let counts = dev.alloc_zeros::<u32>(n)?;
        let len64 = len as u64;
        launch!(
            dev,
            "bincount",
            cfg(len.div_ceil(256).min(1024) as u32, 256, 0),
            &idx,
            &len64,
            &counts
        );
        Ok((
            CudaStorage::wrap_cuda_slice(counts, dev.clone()),
            Shape::from(n),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn sparse_outer(
        n: usize,
        sums: bool,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device();
        let (rows, k) = l1.shape().dims2()?;
        let d = l3.shape().dims2()?.1;
        let idx = input::<u32>(s1, l1, "sparse_outer")?;
        let coef = input::<f32>(s2, l2, "sparse_outer")?;
        let y = input::<f32>(s3, l3, "sparse_outer")?;
        let hits = dev.alloc_zeros::<u32>(n * rows)?;
        let (rows32, k32, d32, n32) = (rows as u32, k as u32, d as u32, n as u32);
        launch!(
            dev,
            "mark_hits",
            cfg((rows * k).div_ceil(256).min(4096) as u32, 256, 0),
            &idx,
            &rows32,
            &k32,
            &hits
        );
        let len = n * d + if sums { n } else { 0 };
        // SAFETY: every value is written by the kernel below.
        let g = unsafe { dev.alloc::<f32>(len)? };
        let sums32 = sums as i32;
        launch!(
            dev,
            "sparse_outer",
            cfg(n as u32, 256, 0),
            &hits,
            &rows32,
            &coef,
            &k32,
            &y,
            &d32,
            &n32,
            &sums32,
            &g
        );
        Ok((
            CudaStorage::wrap_cuda_slice(g, dev.clone()),
            Shape::from(len),
        ))
    }

    pub fn sum_sq(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = s.device();
        let len = l.shape().elem_count();
        let x = input::<f32>(s, l, "sum_sq")?;
        let blocks = len.div_ceil(256).clamp(1, 256);
        // SAFETY: each is written in full by the kernel that fills it.
        let (partial, out) = unsafe { (dev.alloc::<f64>(blocks)?, dev.alloc::<f64>(1)?) };
        let (len64, m32) = (len as u64, blocks as u32);
        launch!(
            dev,
            "sum_sq_partial",
            cfg(blocks as u32, 256, 0),
            &x,
            &len64,
            &partial
        );
        launch!(dev, "sum_partials", cfg(1, 256, 0), &partial, &m32, &out);
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from(()),
        ))
    }

    pub fn adam(
        h: super::AdamStep,
        s1: &mut CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<()> {
        let dev = s1.device().clone();
        let n = l2.shape().elem_count();
        let (a, b) = l1
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("adam: state must be contiguous".into()))?;
        if b - a != 3 * n {
            candle_core::bail!("adam: state holds {} values, expected 3 × {n}", b - a);
        }
        let g = input::<f32>(s2, l2, "adam")?;
        let sq = input::<f64>(s3, l3, "adam")?;
        let state = s1.as_cuda_slice_mut::<f32>()?;
        let mut state = state.slice_mut(a..b);
        let n64 = n as u64;
        let (b1, b2, eps) = (super::B1, super::B2, super::EPS);
        launch!(
            dev,
            "adam",
            cfg(n.div_ceil(256).min(4096) as u32, 256, 0),
            &mut state,
            &g,
            &n64,
            &h.step,
            &h.bc2_sqrt,
            &sq,
            &h.clip_norm,
            &b1,
            &b2,
            &eps
        );
        Ok(())
    }

    pub fn unit_rows(s: &mut CudaStorage, l: &Layout) -> Result<()> {
        let dev = s.device().clone();
        let (rows, d) = l.shape().dims2()?;
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("unit_rows: must be contiguous".into()))?;
        let w = s.as_cuda_slice_mut::<f32>()?;
        let mut w = w.slice_mut(a..b);
        let d32 = d as u32;
        launch!(dev, "unit_rows", cfg(rows as u32, 256, 0), &mut w, &d32);
        Ok(())
    }

    /// Compiles the kernels (no GPU needed): the test that the CUDA source is valid.
    pub fn compile() -> Result<()> {
        ptx().map(|_| ())
    }

    /// Settings for saerl's use of a device, made once when it is opened: one stream, so
    /// candle's per-buffer event tracking is not needed; and the memory pool keeps freed memory
    /// (by default it returns it at every synchronisation, and each step's buffers would be
    /// mapped afresh).
    pub fn tune(dev: &candle_core::CudaDevice) -> Result<()> {
        use candle_core::cuda_backend::cudarc::driver::sys;
        // SAFETY: saerl runs all its work on this device's one stream.
        unsafe { dev.disable_event_tracking() };
        let cu_dev = dev.cuda_stream().context().cu_device();
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        let keep: u64 = u64::MAX;
        // SAFETY: plain driver calls on a valid device handle; `keep` outlives the call.
        unsafe {
            if sys::cuDeviceGetMemPool(&mut pool, cu_dev) != sys::CUresult::CUDA_SUCCESS {
                return Ok(()); // no pool (no async allocation): nothing to tune
            }
            let r = sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &keep as *const u64 as *mut std::ffi::c_void,
            );
            if r != sys::CUresult::CUDA_SUCCESS {
                candle_core::bail!("setting the CUDA memory pool's release threshold: {r:?}");
            }
        }
        Ok(())
    }
}

#[cfg(feature = "cuda")]
pub use cuda::{compile as compile_cuda_kernels, tune as tune_cuda_device};
