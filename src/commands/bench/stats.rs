//! `saerl bench stats`: feature statistics over synthetic rows at the study's shape, against the
//! encoder-GEMM bound (the GEMM is all the dense work; the rest should be noise); then one SAE's
//! logit effects against Qwen2.5-0.5B's unembedding shape, screened in bf16 and every token in
//! f32.

use std::time::Instant;

use anyhow::Result;
use rand::SeedableRng;

use super::{gib, peak_rss, reset_peak_rss};
use crate::kernels::{encode, Encoded};
use crate::sae::batch::BatchEncoder;
use crate::sae::dashboard::logit_effects_with;
use crate::sae::rows::{mean_row, MemRows};
use crate::sae::stats::{FeatureStats, RowInfo};
use crate::sae::train::cold_start;

/// `saerl bench stats`: feature statistics (counts, densities, top examples) over `rows`
/// synthetic rows at the study's shape, generated and consumed a batch at a time.
pub fn run(rows: usize, device: &str) -> Result<()> {
    let dev = crate::model::device(device)?;
    let (d, n, k, batch) = (896, 7168, 64, 4096);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0);
    let mut gen =
        |m: usize| -> Vec<f32> { (0..m * d).map(|_| crate::rng::normal(&mut rng)).collect() };
    let sample = gen(1024);
    let sae = cold_start(mean_row(&MemRows::new(d, &sample[..]))?, n, k, 0);
    reset_peak_rss();
    let mut acc = FeatureStats::new(n);
    let mut encoder = BatchEncoder::new(&sae, &dev)?;
    // The bound is measured batch by batch beside the work (the same encoder GEMM on the same
    // rows, just before), so a busy machine slows both alike.
    let (mut done, mut busy, mut gemm_s) = (0, 0f64, 0f64);
    let mut alone = Encoded::default();
    let bar = crate::commands::progress(rows as u64, "stats");
    while done < rows {
        let m = batch.min(rows - done);
        let x = gen(m);
        let ids: Vec<i64> = (done as i64..(done + m) as i64).collect();
        let pos = vec![0i32; m];
        let val: Vec<bool> = (0..m).map(|i| (done + i) % 5 == 0).collect();
        if dev.is_cpu() {
            let t = Instant::now();
            encode(&x, &sae.b_pre, &sae.w_enc, n, &mut alone);
            gemm_s += t.elapsed().as_secs_f64();
        }
        let t = Instant::now();
        acc.add(
            &encoder.latents(&x, d)?,
            &RowInfo {
                doc_id: &ids,
                pos: &pos,
                token_id: &pos,
                val: &val,
            },
        );
        busy += t.elapsed().as_secs_f64();
        done += m;
        bar.inc(m as u64);
    }
    bar.finish_and_clear();
    let acc = acc.finish();
    let rps = rows as f64 / busy;
    let gemm = 2.0 * (rows * d * n) as f64 / gemm_s / 1e9;
    let bound = rows as f64 / gemm_s;
    println!(
        "saerl stats ({device}; d 896, d_sae 7168, k 64): {rows} rows in {busy:.1} s = {rps:.0} rows/s (row generation excluded); peak RSS {:.2} GiB",
        gib(peak_rss().unwrap_or(0))
    );
    if dev.is_cpu() {
        println!(
            "  the encoder GEMM alone on the same batches: {gemm:.1} GFLOP/s → GEMM-bound limit {bound:.0} rows/s; saerl reaches {:.0}% of it (target ≥ 90%)",
            100.0 * rps / bound
        );
    }
    println!(
        "  {} train / {} val tokens counted; {} top examples kept",
        acc.train.n_tokens,
        acc.val.n_tokens,
        acc.splits()
            .iter()
            .map(|(_, s)| s.top.iter().map(Vec::len).sum::<usize>())
            .sum::<usize>()
    );
    if dev.is_cpu() {
        logit_effects(&sae.w_dec, d)?;
    }
    Ok(())
}

/// One SAE's logit effects (`stats`' largest fixed cost) against a random unembedding of
/// Qwen2.5-0.5B's vocabulary, both ways: the ranks must agree to rounding.
fn logit_effects(w_dec: &[f32], d: usize) -> Result<()> {
    const VOCAB: usize = 151_936;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let unembed: Vec<f32> = (0..VOCAB * d)
        .map(|_| crate::rng::normal(&mut rng) * 0.05)
        .collect();
    let norm = vec![1f32; d];
    let flop = 2.0 * (w_dec.len() * VOCAB) as f64;
    let timed = |screen: bool| {
        let t = Instant::now();
        let out = logit_effects_with(w_dec, d, &unembed, &norm, screen);
        (out, t.elapsed().as_secs_f64())
    };
    let (every, every_s) = timed(false);
    let (screened, screened_s) = timed(true);
    let worst = every
        .iter()
        .zip(&screened)
        .flat_map(|(e, s)| e.0.iter().chain(&e.1).zip(s.0.iter().chain(&s.1)))
        .map(|(a, b)| (a.1 - b.1).abs() / a.1.abs().max(1e-6))
        .fold(0f32, f32::max);
    anyhow::ensure!(
        worst < 1e-4,
        "bench stats: screened logit effects differ from every token's (relative {worst:e})"
    );
    let screen = match crate::kernels::bf16::available() {
        true => "bf16 screen + f32 rescoring",
        false => "no AVX-512 BF16 here: the f32 path both times",
    };
    println!(
        "  logit effects of {} features × {VOCAB} tokens: every token in f32 {every_s:.2} s ({:.0} GFLOP/s); {screen} {screened_s:.2} s ({:.2}× faster; largest relative difference of a ranked value {worst:.1e})",
        w_dec.len() / d,
        flop / every_s / 1e9,
        every_s / screened_s
    );
    Ok(())
}
