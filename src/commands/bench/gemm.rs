//! `saerl bench gemm`: the shipped GEMM (`kernels::gemm`) at the study's shapes, beside the
//! figures recorded for this machine kind in shared/bench/README.md and, with `--refs`,
//! PyTorch's sgemm (`gemm_peak.py`) measured in the same run.

use std::time::Instant;

use anyhow::Result;

use super::References;
use crate::kernels::{gemm, Mat};

/// (what, m, k, n, B transposed): C[m×n] = A[m×k]·B, B stored [n×k] when transposed.
const SHAPES: &[(&str, usize, usize, usize, bool)] = &[
    ("SAE encoder, training batch", 512, 896, 7168, true),
    ("SAE encoder, stats batch", 4096, 896, 7168, true),
    ("model q/o projection", 1024, 896, 896, true),
    ("model gate/up projection", 1024, 896, 4864, true),
    ("model down projection", 1024, 4864, 896, true),
    ("square", 2048, 2048, 2048, false),
];

/// Recorded on this machine kind (2 threads), shared/bench/README.md, at 512×896×7168.
const RECORDED: &[(&str, &str)] = &[
    ("OpenBLAS 0.3.31 (numpy 2.4)", "192–195"),
    ("BLIS 1.0", "194–196"),
    (
        "gemm 0.19 without debug assertions / overflow checks",
        "202–207",
    ),
    ("gemm 0.19 with them (cargo's dev-profile default)", "78"),
    ("MKL (torch 2.15)", "153"),
];

/// GFLOP/s of C = A·B(ᵀ) at one shape: the best of a few timed calls after a warm-up.
pub fn gflops(m: usize, k: usize, n: usize, transposed: bool) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.25).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.5).collect();
    let mut c = vec![0f32; m * n];
    let bm = if transposed {
        Mat::rows(&b, n, k).t()
    } else {
        Mat::rows(&b, k, n)
    };
    let runs = (2e10 / (2.0 * (m * k * n) as f64)).clamp(3.0, 20.0) as usize;
    gemm(Mat::rows(&a, m, k), bm, &mut c, n, false);
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        let t = Instant::now();
        gemm(Mat::rows(&a, m, k), bm, &mut c, n, false);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * k * n) as f64 / best / 1e9
}

pub fn run(refs: &References) -> Result<()> {
    let threads = rayon::current_num_threads();
    println!("saerl GEMM (the `gemm` crate through kernels::gemm, {threads} threads), f32:");
    for &(what, m, k, n, t) in SHAPES {
        let b = if t { "Bᵀ" } else { "B" };
        println!(
            "  {m:>5}×{k:>4}×{n:>4} (A·{b}) {:>7.1} GFLOP/s  {what}",
            gflops(m, k, n, t)
        );
    }
    println!("recorded on this machine kind at 512×896×7168 (shared/bench/README.md):");
    for (what, g) in RECORDED {
        println!("  {g:>9} GFLOP/s  {what}");
    }
    match refs.script("gemm_peak.py", &["--threads", &threads.to_string()]) {
        Ok(out) => {
            println!("PyTorch in this run (gemm_peak.py):");
            out.lines().for_each(|l| println!("  {l}"));
        }
        Err(e) => println!("PyTorch in this run: not measured ({e:#})"),
    }
    Ok(())
}
