//! `saerl bench train`: SAE training steps at the study's shape on synthetic rows, against
//! PyTorch's dense step (`ref_sae_step.py`) and the encoder-GEMM bound.

use std::time::Instant;

use anyhow::Result;
use rand::SeedableRng;

use super::{gemm::gflops, gib, peak_rss, ratio_line, reset_peak_rss, References};
use crate::sae::rows::{mean_row, MemRows};
use crate::sae::step::{self, Adam, Scratch};
use crate::sae::train::{cold_start, TrainConfig};

/// PyTorch's dense step on this machine kind (shared/bench/README.md), when it is not run here.
const PYTORCH_ROWS_PER_S: f64 = 1806.0;

pub fn run(steps: usize, refs: &References) -> Result<()> {
    let (d, n, k, batch) = (896, 7168, 64, 512);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0);
    // One warm-up step (first touches of the gradient and moment buffers), then `steps`.
    let rows: Vec<f32> = (0..(steps + 1) * batch * d)
        .map(|_| crate::rng::normal(&mut rng))
        .collect();
    let mut sae = cold_start(mean_row(&MemRows::new(d, &rows[..]))?, n, k, 0);
    let cfg = TrainConfig::default();
    let mut adam = Adam::new(&sae);
    let (mut scratch, mut fired) = (Scratch::default(), vec![0u64; n]);
    reset_peak_rss();
    let mut start = Instant::now();
    for (i, x) in rows.chunks(batch * d).enumerate() {
        if i == 1 {
            scratch.reset_phase_times();
            start = Instant::now();
        }
        let out = step::step(
            &mut sae,
            &mut adam,
            &mut scratch,
            x,
            None,
            cfg.aux_coeff,
            cfg.clip_grad_norm,
            cfg.lr,
            &mut fired,
        );
        anyhow::ensure!(out.recon.is_finite(), "the loss became non-finite");
    }
    let secs = start.elapsed().as_secs_f64();
    let rps = (steps * batch) as f64 / secs;
    let rss = peak_rss().unwrap_or(0);
    let gemm = gflops(batch, d, n, true);
    // The encoder GEMM is the floor: 2·d·d_sae FLOP per row.
    let bound = gemm * 1e9 / (2.0 * (d * n) as f64);
    println!("saerl train step (d {d}, d_sae {n}, k {k}, batch {batch}): {rps:.0} rows/s over {steps} steps after a warm-up step; peak RSS {:.2} GiB", gib(rss));
    let phases: Vec<String> = step::PHASES
        .iter()
        .zip(scratch.phase_times())
        .map(|(p, t)| format!("{p} {:.1} ms", 1e3 * t / steps as f64))
        .collect();
    println!("  per step: {}", phases.join(", "));
    println!(
        "  encoder GEMM {gemm:.1} GFLOP/s → GEMM-bound limit {bound:.0} rows/s; saerl reaches {:.0}% of it",
        100.0 * rps / bound
    );
    let threads = rayon::current_num_threads().to_string();
    let reference = refs
        .script("ref_sae_step.py", &["--threads", &threads])
        .and_then(|out| super::figure_before(&out, "rows/s"));
    ratio_line(
        "PyTorch dense step (rows/s)",
        rps,
        reference,
        PYTORCH_ROWS_PER_S,
        4.0,
    );
    Ok(())
}
