//! `saerl bench train`: SAE training steps at the study's shape on synthetic rows, against
//! PyTorch's dense step (`ref_sae_step.py`) and the encoder-GEMM bound.

use std::time::Instant;

use anyhow::Result;
use rand::SeedableRng;

use super::{gemm::gflops, gib, peak_rss, ratio_line, reset_peak_rss, References};
use crate::sae::on_device::DeviceTrainer;
use crate::sae::rows::{mean_row, MemRows};
use crate::sae::step::{self, Adam, Scratch};
use crate::sae::train::{cold_start, TrainConfig};

/// PyTorch's dense step on this machine kind (shared/bench/README.md), when it is not run here.
const PYTORCH_ROWS_PER_S: f64 = 1806.0;

pub fn run(steps: usize, dead: usize, device: &str, refs: &References) -> Result<()> {
    let (d, n, k, batch) = (896, 7168, 64, 512);
    anyhow::ensure!(dead <= n, "--dead {dead}: the SAE has {n} features");
    let dead: Vec<u32> = (0..dead as u32).collect();
    let dead = (!dead.is_empty()).then_some(dead.as_slice());
    let dev = crate::model::device(device)?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0);
    // Warm-up steps (first touches of the buffers; kernel compilation on a GPU), then `steps`.
    let warm = if dev.is_cpu() { 1 } else { 3 };
    let rows: Vec<f32> = (0..(steps + warm) * batch * d)
        .map(|_| crate::rng::normal(&mut rng))
        .collect();
    let mut sae = cold_start(mean_row(&MemRows::new(d, &rows[..]))?, n, k, 0);
    let cfg = TrainConfig::default();
    let mut adam = Adam::new(&sae);
    let (mut scratch, mut fired) = (Scratch::default(), vec![0u64; n]);
    let mut device_trainer = match dev.is_cpu() {
        true => None,
        false => Some(DeviceTrainer::new(&sae, &adam, &dev)?),
    };
    let dead_mask = match (&device_trainer, dead) {
        (Some(dt), Some(dd)) => Some(dt.dead_mask(dd)?),
        _ => None,
    };
    reset_peak_rss();
    let mut start = Instant::now();
    for (i, x) in rows.chunks(batch * d).enumerate() {
        if i == warm {
            scratch.reset_phase_times();
            dev.synchronize()?;
            start = Instant::now();
        }
        let outs = match &mut device_trainer {
            // As in training: the losses come back in groups of steps.
            Some(dt) => {
                dt.step(
                    x,
                    dead_mask.as_ref(),
                    cfg.aux_coeff,
                    cfg.clip_grad_norm,
                    cfg.lr,
                )?;
                dt.losses(i + 1 == steps + warm)?
            }
            None => vec![(
                batch,
                step::step(
                    &mut sae,
                    &mut adam,
                    &mut scratch,
                    x,
                    dead,
                    cfg.aux_coeff,
                    cfg.clip_grad_norm,
                    cfg.lr,
                    &mut fired,
                ),
            )],
        };
        for (_, out) in outs {
            anyhow::ensure!(out.recon.is_finite(), "the loss became non-finite");
        }
    }
    dev.synchronize()?;
    let secs = start.elapsed().as_secs_f64();
    let rps = (steps * batch) as f64 / secs;
    let rss = peak_rss().unwrap_or(0);
    let aux = dead.map_or(String::new(), |dd| format!(", aux-k on {} dead", dd.len()));
    println!("saerl train step ({device}; d {d}, d_sae {n}, k {k}, batch {batch}{aux}): {rps:.0} rows/s = {:.3} ms/step over {steps} steps after {warm} warm-up step(s); peak RSS {:.2} GiB", 1e3 * secs / steps as f64, gib(rss));
    match &device_trainer {
        Some(dt) => print_device_profile(dt, steps + warm),
        None => print_cpu_phases(&scratch, steps, rps, (batch, d, n)),
    }
    // PyTorch's reference step has no aux-k term: with --dead, no like-for-like ratio.
    if dead.is_none() {
        compare_with_pytorch(rps, device, dev.is_cpu(), refs);
    }
    Ok(())
}

/// The device's per-phase times per step (SAERL_PROFILE), when it kept them.
fn print_device_profile(dt: &DeviceTrainer, total_steps: usize) {
    if let Some(profile) = dt.profile() {
        let phases: Vec<String> = profile
            .iter()
            .map(|(p, t)| format!("{p} {:.3} ms", 1e3 * t / total_steps as f64))
            .collect();
        println!(
            "  per step (SAERL_PROFILE, synchronised): {}",
            phases.join(", ")
        );
    }
}

/// The CPU step's phases per step, and how close the rate comes to the encoder GEMM's bound.
fn print_cpu_phases(
    scratch: &Scratch,
    steps: usize,
    rps: f64,
    (batch, d, n): (usize, usize, usize),
) {
    let phases: Vec<String> = step::PHASES
        .iter()
        .zip(scratch.phase_times())
        .map(|(p, t)| format!("{p} {:.1} ms", 1e3 * t / steps as f64))
        .collect();
    println!("  per step: {}", phases.join(", "));
    let gemm = gflops(batch, d, n, true);
    // The encoder GEMM is the floor: 2·d·d_sae FLOP per row.
    let bound = gemm * 1e9 / (2.0 * (d * n) as f64);
    println!(
        "  encoder GEMM {gemm:.1} GFLOP/s → GEMM-bound limit {bound:.0} rows/s; saerl reaches {:.0}% of it",
        100.0 * rps / bound
    );
}

/// The rate against PyTorch's dense step, run now where `refs` has it, else as recorded.
fn compare_with_pytorch(rps: f64, device: &str, cpu: bool, refs: &References) {
    let threads = rayon::current_num_threads().to_string();
    let reference = refs
        .script(
            "ref_sae_step.py",
            &["--threads", &threads, "--device", device],
        )
        .and_then(|out| super::figure_before(&out, "rows/s"));
    let (recorded, target) = match cpu {
        true => (Some(PYTORCH_ROWS_PER_S), 4.0),
        false => (None, 2.0),
    };
    ratio_line(
        "PyTorch dense step (rows/s)",
        rps,
        reference,
        recorded,
        target,
    );
}

/// A whole SAE at the study's shape and settings (20 epochs, batch 512, aux-k, resampling,
/// validation each epoch) on `rows` synthetic rows (a fifth more for validation), timed.
pub fn whole(rows: usize, epochs: usize, device: &str) -> Result<()> {
    use crate::sae::train::Trainer;
    let (d, n, k) = (896, 7168, 64);
    let dev = crate::model::device(device)?;
    let t = Instant::now();
    let val_rows = rows / 4;
    let data: Vec<f32> = {
        use rayon::prelude::*;
        (0..rows + val_rows)
            .into_par_iter()
            .flat_map_iter(|r| {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(r as u64);
                (0..d).map(move |_| crate::rng::normal(&mut rng))
            })
            .collect()
    };
    let (train, val) = (
        MemRows::new(d, &data[..rows * d]),
        MemRows::new(d, &data[rows * d..]),
    );
    println!(
        "generated {rows} + {val_rows} synthetic rows in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let sae = cold_start(mean_row(&train)?, n, k, 0);
    let cfg = TrainConfig {
        epochs,
        ..TrainConfig::default()
    };
    reset_peak_rss();
    let t = Instant::now();
    let mut trainer = Trainer::new(&sae, rows, &cfg)?;
    if !dev.is_cpu() {
        trainer = trainer.on_device(&dev)?;
    }
    while !trainer.is_done() {
        let e = trainer.run_epoch(&train, &val, &mut |_, _| {})?.clone();
        println!(
            "  epoch {:>2}: train_mse {:.4e} val_mse {:.4e} dead {} ({:.1} s)",
            trainer.epochs().len(),
            e.train_mse,
            e.val_mse,
            e.n_dead,
            e.seconds
        );
    }
    let secs = t.elapsed().as_secs_f64();
    let result = trainer.finish()?;
    println!(
        "saerl train, a whole SAE ({device}; d {d}, d_sae {n}, k {k}, {rows} rows, {epochs} epochs): {secs:.1} s = {:.0} rows/s; best epoch {}; peak RSS {:.2} GiB (target on an H100: < 120 s)",
        (rows * epochs) as f64 / secs,
        result.best_epoch,
        gib(peak_rss().unwrap_or(0))
    );
    Ok(())
}
