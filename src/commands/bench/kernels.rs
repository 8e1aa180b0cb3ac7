//! `saerl bench kernels --device cuda`: each of saerl's device kernels against its CPU
//! reference on fresh random inputs at the study's shape (indices exact, values to a stated
//! relative tolerance), then timed. Fails when any disagrees.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use rand::SeedableRng;

use crate::kernels::device::{
    adam, bincount, gather_dot, sparse_decode, sparse_outer, sum_sq, topk_rows, unit_rows, AdamStep,
};

/// Float agreement: |a − b| ≤ tol·(1 + |b|). Element-wise kernels and sums in the CPU's order
/// agree to TOL; dot products reduced in another order (a warp's tree) to TOL·√d.
const TOL: f32 = 1e-5;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    (0..n).map(|_| crate::rng::normal(&mut rng)).collect()
}

fn compare(what: &str, got: &[f32], want: &[f32], tol: f32) -> Result<f32> {
    if got.len() != want.len() {
        bail!(
            "{what}: {} values on the device, {} on the CPU",
            got.len(),
            want.len()
        );
    }
    let mut worst = 0f32;
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let err = (a - b).abs() / (1.0 + b.abs());
        if err.is_nan() || err > tol {
            bail!("{what}: value {i} is {a} on the device, {b} on the CPU");
        }
        worst = worst.max(err);
    }
    Ok(worst)
}

/// Times `f` on the device: median of a few runs after a warm-up, in milliseconds.
fn time(dev: &Device, mut f: impl FnMut() -> candle_core::Result<()>) -> Result<f64> {
    f()?;
    dev.synchronize()?;
    let mut t = Vec::new();
    for _ in 0..7 {
        let s = Instant::now();
        f()?;
        dev.synchronize()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Compiles the CUDA kernels with NVRTC and reports (no GPU needed).
pub fn compile() -> Result<()> {
    #[cfg(feature = "cuda")]
    {
        crate::kernels::device::compile_cuda_kernels()?;
        println!("saerl's CUDA kernels compile with NVRTC");
        Ok(())
    }
    #[cfg(not(feature = "cuda"))]
    bail!("this saerl was built without CUDA; rebuild with `--features cuda`")
}

/// Checks and times every device kernel; fails at the first that disagrees with the CPU.
pub fn run(device: &str) -> Result<()> {
    let dev = crate::model::device(device)?;
    let (rows, n, d, k) = (512usize, 7168usize, 896usize, 64usize);
    println!(
        "device kernels against their CPU references ({device}; rows {rows}, d_sae {n}, d {d}):"
    );
    // Scores with ties planted (every 97th value appears twice) and a bias.
    let mut zv = random(rows * n, 1);
    for r in 0..rows {
        for j in (0..n).step_by(97) {
            zv[r * n + j + 1] = zv[r * n + j];
        }
    }
    let bv = random(n, 2);
    let scores = Scores {
        z: &zv,
        b: &bv,
        rows,
        n,
    };
    check_topk(&dev, &scores, k)?;
    check_sparse(&dev, &scores, d, k)?;
    check_adam(&dev, n, d)
}

/// A batch's encoder scores (rows × n) and the bias added before the top-k.
struct Scores<'a> {
    z: &'a [f32],
    b: &'a [f32],
    rows: usize,
    n: usize,
}

impl Scores<'_> {
    fn on(&self, dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            up(self.z, (self.rows, self.n), dev)?,
            Tensor::from_slice(self.b, self.n, dev)?,
        ))
    }
}

fn up(v: &[f32], shape: (usize, usize), on: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_slice(v, shape, on)
}

/// top-k at k and at the aux size: the same features exactly, the values within TOL.
fn check_topk(dev: &Device, scores: &Scores, k: usize) -> Result<()> {
    for kk in [k, 16 * k] {
        let (z, b) = scores.on(dev)?;
        let (ig, vg) = topk_rows(&z, &b, kk)?;
        let (zc, bc) = scores.on(&Device::Cpu)?;
        let (iw, vw) = topk_rows(&zc, &bc, kk)?;
        if ig.to_vec2::<u32>()? != iw.to_vec2::<u32>()? {
            bail!("topk_rows k={kk}: the selected features differ from the CPU's");
        }
        let err = compare(
            &format!("topk_rows k={kk}"),
            &vg.flatten_all()?.to_vec1()?,
            &vw.flatten_all()?.to_vec1()?,
            TOL,
        )?;
        let ms = time(dev, || topk_rows(&z, &b, kk).map(|_| ()))?;
        println!("  topk_rows k={kk:<5} indices exact, values within {err:.1e}; {ms:.3} ms");
    }
    Ok(())
}

/// Sparse decode, gather-dot, bincount, the sparse weight gradient and the sum of squares over
/// the selections of a top-k.
fn check_sparse(dev: &Device, scores: &Scores, d: usize, k: usize) -> Result<()> {
    let (cpu, (rows, n)) = (Device::Cpu, (scores.rows, scores.n));
    let (z, b) = scores.on(&cpu)?;
    let (idx, val) = topk_rows(&z, &b, k)?;
    let wv = random(n * d, 3);
    let xv = random(rows * d, 4);
    let on = |t: &Tensor| t.to_device(dev);
    let (w, x) = (up(&wv, (n, d), &cpu)?, up(&xv, (rows, d), &cpu)?);
    let (idx_g, val_g, w_g, x_g) = (on(&idx)?, on(&val)?, on(&w)?, on(&x)?);
    let err = compare(
        "sparse_decode",
        &sparse_decode(&idx_g, &val_g, &w_g)?
            .flatten_all()?
            .to_vec1()?,
        &sparse_decode(&idx, &val, &w)?.flatten_all()?.to_vec1()?,
        TOL,
    )?;
    let ms = time(dev, || sparse_decode(&idx_g, &val_g, &w_g).map(|_| ()))?;
    println!("  sparse_decode     within {err:.1e}; {ms:.3} ms");
    let err = compare(
        "gather_dot",
        &gather_dot(&idx_g, &w_g, &x_g)?.flatten_all()?.to_vec1()?,
        &gather_dot(&idx, &w, &x)?.flatten_all()?.to_vec1()?,
        TOL * (d as f32).sqrt(),
    )?;
    let ms = time(dev, || gather_dot(&idx_g, &w_g, &x_g).map(|_| ()))?;
    println!("  gather_dot        within {err:.1e}; {ms:.3} ms");
    let (cg, cw) = (bincount(&idx_g, n)?, bincount(&idx, n)?);
    if cg.to_vec1::<u32>()? != cw.to_vec1::<u32>()? {
        bail!("bincount: the counts differ from the CPU's");
    }
    println!("  bincount          exact");
    // The sparse weight gradient (rows in the same order on both; the CPU may fuse the
    // multiply-add) and the f64 sum of squares (reduced as a tree on the device).
    let (val_g, x_g) = (&val_g, &x_g);
    let outer = |i: &Tensor, v: &Tensor, x: &Tensor| sparse_outer(i, v, x, n, true);
    let err = compare(
        "sparse_outer",
        &outer(&idx_g, val_g, x_g)?.to_vec1()?,
        &outer(&idx, &val, &x)?.to_vec1()?,
        TOL * (rows as f32).sqrt(),
    )?;
    let ms = time(dev, || outer(&idx_g, val_g, x_g).map(|_| ()))?;
    println!("  sparse_outer      within {err:.1e}; {ms:.3} ms");
    let (sg, sw) = (
        sum_sq(&w_g)?.to_scalar::<f64>()?,
        sum_sq(&w)?.to_scalar::<f64>()?,
    );
    if (sg - sw).abs() > 1e-9 * sw {
        bail!("sum_sq: {sg} on the device, {sw} on the CPU");
    }
    let ms = time(dev, || sum_sq(&w_g).map(|_| ()))?;
    println!(
        "  sum_sq            within {:.1e}; {ms:.3} ms",
        (sg - sw).abs() / sw
    );
    Ok(())
}

/// Adam and the row renormalisation, in place on copies of one state.
fn check_adam(dev: &Device, n: usize, d: usize) -> Result<()> {
    let state_v: Vec<f32> = random(n * d, 5)
        .into_iter()
        .chain(random(n * d, 6).into_iter().map(|v| v * 1e-3))
        .chain(random(n * d, 7).into_iter().map(|v| v * v * 1e-6))
        .collect();
    let gv = random(n * d, 8);
    let h = AdamStep {
        step: 1e-4,
        bc2_sqrt: 0.3,
        clip_norm: 1.0,
    };
    // A gradient norm of 1/0.7: the gradient is clipped to 0.7 of itself.
    let sq_norm = |on: &Device| Tensor::new(1.0 / 0.49f64, on);
    let run_adam = |on: &Device| -> Result<Vec<f32>> {
        let s = up(&state_v, (3, n * d), on)?;
        adam(&s, &Tensor::from_slice(&gv, n * d, on)?, &sq_norm(on)?, h)?;
        unit_rows(&s.narrow(0, 0, 1)?.reshape((n, d))?)?;
        Ok(s.flatten_all()?.to_vec1()?)
    };
    // The norm is a sum of d squares reduced as a tree on the device.
    let err = compare(
        "adam + unit_rows",
        &run_adam(dev)?,
        &run_adam(&Device::Cpu)?,
        TOL * (d as f32).sqrt(),
    )?;
    let s = up(&state_v, (3, n * d), dev)?;
    let (g, sq) = (Tensor::from_slice(&gv, n * d, dev)?, sq_norm(dev)?);
    let ms = time(dev, || adam(&s, &g, &sq, h))?;
    println!(
        "  adam (+unit_rows) within {err:.1e}; adam {ms:.3} ms on {} parameters",
        n * d
    );
    Ok(())
}
