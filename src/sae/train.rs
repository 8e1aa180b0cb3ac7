//! Training a TopK SAE exactly as the study did (DESIGN.md, "SAE semantics"): Adam
//! (β 0.9/0.999, ε 1e-8), cosine annealing per step to lr/10, global grad-norm clip, decoder
//! columns renormalised after every step, aux-k on the features dead in the previous epoch,
//! validation MSE after each epoch and the best epoch's weights kept.
//!
//! The backward pass is written out by hand and is sparse: a row touches only its k selected
//! latents (and its k_aux auxiliary ones) in the decoder, and only their encoder rows.
//! This module trains on rows in memory in a fixed batch order; the `saerl train` command
//! (streaming, shuffling, resampling, checkpoints) builds on it.

use anyhow::{bail, Result};

use super::topk::{dot, top_k};
use super::Sae;

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub epochs: usize,
    pub lr: f64,
    pub batch: usize,
    pub aux_coeff: f32,
    /// A feature is dead when it fired (z ≠ 0 after top-k) on fewer than this fraction of rows.
    pub dead_threshold: f64,
    pub clip_grad_norm: f32,
    /// Resample dead features after every this many epochs (never after the last).
    pub resample_every: Option<usize>,
    /// Shuffle the rows each epoch (seeded); false keeps consecutive batches in order.
    pub shuffle: bool,
    pub seed: u64,
}

impl Default for TrainConfig {
    /// The study's settings.
    fn default() -> Self {
        Self {
            epochs: 20,
            lr: 1e-4,
            batch: 512,
            aux_coeff: 1.0 / 32.0,
            dead_threshold: 1e-4,
            clip_grad_norm: 1.0,
            resample_every: Some(10),
            shuffle: true,
            seed: 0,
        }
    }
}

/// Rows drawn for resampling, as in the study.
const RESAMPLE_ROWS: usize = 8192;

/// Re-initialises `dead` features from badly reconstructed rows: among up to 8192 random
/// training rows, those in the top quartile of reconstruction error; each dead feature gets one
/// of them (drawn without replacement while they last), normalised, as its encoder row and
/// decoder column, and b_enc = 0. b_dec is left untouched.
pub fn resample(sae: &mut Sae, dead: &[u32], rows: &[f32], seed: u64) {
    let d = sae.d_model;
    let n = rows.len() / d;
    if dead.is_empty() || n == 0 {
        return;
    }
    let mut rng = crate::data::SplitMix64::new(seed);
    let sample: Vec<usize> = if n <= RESAMPLE_ROWS {
        (0..n).collect()
    } else {
        crate::data::permutation(n, seed)
            .into_iter()
            .take(RESAMPLE_ROWS)
            .collect()
    };
    let mut errs: Vec<(f64, usize)> = sample
        .iter()
        .map(|&r| {
            let x = &rows[r * d..(r + 1) * d];
            let x_hat = sae.decode(&sae.encode(x));
            (
                x.iter()
                    .zip(&x_hat)
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum(),
                r,
            )
        })
        .collect();
    errs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let top: Vec<usize> = errs[..errs.len().div_ceil(4)]
        .iter()
        .map(|&(_, r)| r)
        .collect();
    let mut pool = top.clone();
    for &f in dead {
        if pool.is_empty() {
            pool = top.clone();
        }
        let r = pool.swap_remove(rng.below(pool.len()));
        let x = &rows[r * d..(r + 1) * d];
        let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        let f = f as usize;
        for j in 0..d {
            sae.w_enc[f * d + j] = x[j] / norm;
            sae.w_dec[f * d + j] = x[j] / norm;
        }
        sae.b_enc[f] = 0.0;
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepLog {
    pub recon_loss: f64,
    pub aux_loss: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EpochLog {
    /// Mean of the epoch's per-batch reconstruction losses.
    pub train_mse: f64,
    pub val_mse: f64,
    pub n_dead: usize,
    /// Mean aux loss over the batches that had an aux term.
    pub aux_loss: Option<f64>,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
}

pub struct TrainResult {
    /// The weights of the best epoch by validation MSE.
    pub sae: Sae,
    pub best_epoch: usize,
    pub steps: Vec<StepLog>,
    pub epochs: Vec<EpochLog>,
}

/// Gradients (and Adam moments) in the SAE's own layout.
#[derive(Clone)]
struct Params {
    b_pre: Vec<f32>,
    w_enc: Vec<f32>,
    b_enc: Vec<f32>,
    w_dec: Vec<f32>,
    b_dec: Vec<f32>,
}

impl Params {
    fn zeros(s: &Sae) -> Self {
        let (d, n) = (s.d_model, s.d_sae);
        Self {
            b_pre: vec![0.0; d],
            w_enc: vec![0.0; n * d],
            b_enc: vec![0.0; n],
            w_dec: vec![0.0; n * d],
            b_dec: vec![0.0; d],
        }
    }

    fn parts(&mut self) -> [&mut Vec<f32>; 5] {
        [
            &mut self.b_pre,
            &mut self.w_enc,
            &mut self.b_enc,
            &mut self.w_dec,
            &mut self.b_dec,
        ]
    }
}

fn sae_parts(s: &mut Sae) -> [&mut Vec<f32>; 5] {
    [
        &mut s.b_pre,
        &mut s.w_enc,
        &mut s.b_enc,
        &mut s.w_dec,
        &mut s.b_dec,
    ]
}

/// Pre-activations of a batch, Z = (X − b_pre)·W_encᵀ + b_enc [rows × d_sae], as one GEMM
/// (the dominant cost of a step; OpenBLAS with the `openblas` feature, else candle's GEMM).
pub fn encode_batch(sae: &Sae, x: &[f32]) -> Result<Vec<f32>> {
    use candle_core::{Device, Tensor};
    let (d, n) = (sae.d_model, sae.d_sae);
    let rows = x.len() / d;
    let xc: Vec<f32> = x
        .chunks_exact(d)
        .flat_map(|r| r.iter().zip(&sae.b_pre).map(|(a, b)| a - b))
        .collect();
    let xt = Tensor::from_vec(xc, (rows, d), &Device::Cpu)?;
    let w = Tensor::from_slice(&sae.w_enc, (n, d), &Device::Cpu)?;
    let mut z: Vec<f32> = crate::model::blas::linear(&xt, &w)?
        .flatten_all()?
        .to_vec1()?;
    for row in z.chunks_exact_mut(n) {
        row.iter_mut().zip(&sae.b_enc).for_each(|(v, b)| *v += b);
    }
    Ok(z)
}

/// Mean squared reconstruction error of `rows` (row-major, d_model wide).
pub fn mse(sae: &Sae, rows: &[f32]) -> Result<f64> {
    let (d, n) = (sae.d_model, sae.d_sae);
    let mut sum = 0f64;
    for chunk in rows.chunks(512 * d) {
        let z = encode_batch(sae, chunk)?;
        for (x, z) in chunk.chunks_exact(d).zip(z.chunks_exact(n)) {
            let x_hat = sae.decode(&sae.activate(z));
            sum += x
                .iter()
                .zip(&x_hat)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>();
        }
    }
    Ok(sum / rows.len() as f64)
}

/// Cosine annealing from `lr` to `lr/10` over `total` steps, at step `t` (PyTorch's
/// CosineAnnealingLR, closed form).
fn cosine_lr(lr: f64, t: usize, total: usize) -> f64 {
    let min = lr / 10.0;
    min + (lr - min) * (1.0 + (std::f64::consts::PI * t as f64 / total as f64).cos()) / 2.0
}

struct Adam {
    m: Params,
    v: Params,
    t: i32,
}

impl Adam {
    fn step(&mut self, sae: &mut Sae, g: &mut Params, lr: f64) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        const EPS: f32 = 1e-8;
        self.t += 1;
        let bc1 = 1.0 - B1.powi(self.t);
        let bc2_sqrt = (1.0 - B2.powi(self.t)).sqrt();
        let step = lr as f32 / bc1;
        for (((p, g), m), v) in sae_parts(sae)
            .into_iter()
            .zip(g.parts())
            .zip(self.m.parts())
            .zip(self.v.parts())
        {
            for i in 0..p.len() {
                m[i] = B1 * m[i] + (1.0 - B1) * g[i];
                v[i] = B2 * v[i] + (1.0 - B2) * g[i] * g[i];
                p[i] -= step * m[i] / (v[i].sqrt() / bc2_sqrt + EPS);
            }
        }
    }
}

fn normalize_decoder(sae: &mut Sae) {
    for col in sae.w_dec.chunks_mut(sae.d_model) {
        let n = col.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        col.iter_mut().for_each(|x| *x /= n);
    }
}

/// One batch: forward, losses, and the sparse backward into `g` (zeroed here).
/// Returns (recon, aux) and adds each feature's firing count to `fired`.
fn batch_grads(
    sae: &Sae,
    x: &[f32],
    dead: Option<&[u32]>,
    cfg: &TrainConfig,
    g: &mut Params,
    fired: &mut [u64],
) -> Result<(f64, Option<f64>)> {
    let (d, n) = (sae.d_model, sae.d_sae);
    let rows = x.len() / d;
    let z_all = encode_batch(sae, x)?;
    for p in g.parts() {
        p.iter_mut().for_each(|v| *v = 0.0);
    }
    let elems = (rows * d) as f32;
    let k_aux = dead.map_or(0, |dd| (16 * sae.k).min(dd.len()));
    let (mut recon, mut aux) = (0f64, 0f64);
    let mut xc = vec![0f32; d];
    for (x, z) in x.chunks_exact(d).zip(z_all.chunks_exact(n)) {
        for j in 0..d {
            xc[j] = x[j] - sae.b_pre[j];
        }
        let top = top_k(z, sae.k);
        // (feature, value, dL/dx̂ of the reconstruction it contributes to)
        let mut terms: Vec<(u32, f32, usize)> = Vec::with_capacity(sae.k + k_aux);
        let mut x_hats: Vec<Vec<f32>> = Vec::with_capacity(2);
        let x_hat = sae.decode(&top);
        terms.extend(top.iter().map(|&(i, v)| (i, v, 0)));
        for &(i, _) in &top {
            fired[i as usize] += 1;
        }
        x_hats.push(x_hat);
        if let (Some(dead), true) = (dead, k_aux > 0) {
            let zd: Vec<f32> = dead.iter().map(|&i| z[i as usize]).collect();
            let picked: Vec<(u32, f32)> = top_k(&zd, k_aux)
                .into_iter()
                .map(|(j, v)| (dead[j as usize], v))
                .collect();
            x_hats.push(sae.decode(&picked));
            terms.extend(picked.iter().map(|&(i, v)| (i, v, 1)));
        }
        // dL/dx̂ for the reconstruction (term 0) and the aux reconstruction (term 1).
        let mut dx: Vec<Vec<f32>> = Vec::with_capacity(2);
        for (t, x_hat) in x_hats.iter().enumerate() {
            let scale = if t == 0 {
                2.0 / elems
            } else {
                cfg.aux_coeff * 2.0 / elems
            };
            let mut err = 0f64;
            let grad: Vec<f32> = x_hat
                .iter()
                .zip(x)
                .map(|(h, xv)| {
                    let r = h - xv;
                    err += (r as f64) * (r as f64);
                    scale * r
                })
                .collect();
            if t == 0 {
                recon += err
            } else {
                aux += err
            }
            for j in 0..d {
                g.b_dec[j] += grad[j];
            }
            dx.push(grad);
        }
        let mut dxc = vec![0f32; d];
        for &(i, v, t) in &terms {
            let i = i as usize;
            let col = sae.dec_col(i);
            let gcol = &mut g.w_dec[i * d..(i + 1) * d];
            for j in 0..d {
                gcol[j] += v * dx[t][j];
            }
            let dz = dot(col, &dx[t]);
            g.b_enc[i] += dz;
            let row = sae.enc_row(i);
            let grow = &mut g.w_enc[i * d..(i + 1) * d];
            for j in 0..d {
                grow[j] += dz * xc[j];
                dxc[j] += dz * row[j];
            }
        }
        for j in 0..d {
            g.b_pre[j] -= dxc[j];
        }
    }
    let aux = (k_aux > 0).then_some(aux / elems as f64);
    Ok((recon / elems as f64, aux))
}

/// Scales the gradients so their global L2 norm is at most `max` (PyTorch's clip_grad_norm_).
fn clip(g: &mut Params, max: f32) {
    let total = g
        .parts()
        .iter()
        .map(|p| p.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>())
        .sum::<f64>()
        .sqrt() as f32;
    let coef = (max / (total + 1e-6)).min(1.0);
    if coef < 1.0 {
        for p in g.parts() {
            p.iter_mut().for_each(|v| *v *= coef);
        }
    }
}

/// A cold start (PyTorch `nn.Linear` defaults): W_enc, b_enc ~ U(±1/√d), W_dec, b_dec ~
/// U(±1/√d_sae) with W_dec's columns then normalised, and b_pre = the mean training row.
pub fn cold_start(train: &[f32], d: usize, d_sae: usize, k: usize, seed: u64) -> Sae {
    let mut rng = crate::data::SplitMix64::new(seed);
    let mut uniform = |bound: f32, n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound)
            .collect()
    };
    let (be, bd) = (1.0 / (d as f32).sqrt(), 1.0 / (d_sae as f32).sqrt());
    let rows = (train.len() / d).max(1);
    let mut b_pre = vec![0f64; d];
    for x in train.chunks_exact(d) {
        b_pre.iter_mut().zip(x).for_each(|(m, v)| *m += *v as f64);
    }
    let mut sae = Sae {
        d_model: d,
        d_sae,
        k,
        activation: super::Activation::TopK,
        b_pre: b_pre.iter().map(|m| (m / rows as f64) as f32).collect(),
        w_enc: uniform(be, d_sae * d),
        b_enc: uniform(be, d_sae),
        w_dec: uniform(bd, d_sae * d),
        b_dec: uniform(bd, d),
        meta: Default::default(),
    };
    normalize_decoder(&mut sae);
    sae
}

/// Trains from `init` on `train` rows (consecutive batches, the last one short; shuffled per
/// epoch when asked), validating on `val` after every epoch; `on_epoch` sees each epoch's log.
pub fn train(
    init: &Sae,
    train: &[f32],
    val: &[f32],
    cfg: &TrainConfig,
    on_epoch: &mut dyn FnMut(&EpochLog),
) -> Result<TrainResult> {
    let d = init.d_model;
    if cfg.epochs == 0 || cfg.batch == 0 {
        bail!("epochs and batch size must be positive");
    }
    if train.is_empty() || train.len() % d != 0 || val.len() % d != 0 {
        bail!("training rows must be non-empty multiples of d_model = {d}");
    }
    let n_rows = train.len() / d;
    let steps_per_epoch = n_rows.div_ceil(cfg.batch);
    let total = cfg.epochs * steps_per_epoch;
    let mut sae = init.clone();
    let mut g = Params::zeros(&sae);
    let mut adam = Adam {
        m: Params::zeros(&sae),
        v: Params::zeros(&sae),
        t: 0,
    };
    let mut prev_dead: Option<Vec<u32>> = None;
    let (mut steps, mut epochs) = (Vec::new(), Vec::new());
    let (mut best, mut best_epoch) = (None::<(f64, Sae)>, 0);
    let mut t = 0;
    for ep in 0..cfg.epochs {
        let mut fired = vec![0u64; sae.d_sae];
        let (mut tot, mut aux_tot, mut aux_n) = (0f64, 0f64, 0usize);
        let mut lr = cfg.lr;
        let order: Option<Vec<f32>> = cfg.shuffle.then(|| {
            crate::data::permutation(n_rows, cfg.seed.wrapping_add(ep as u64))
                .into_iter()
                .flat_map(|r| train[r * d..(r + 1) * d].iter().copied())
                .collect()
        });
        for batch in order.as_deref().unwrap_or(train).chunks(cfg.batch * d) {
            let dead = prev_dead
                .as_deref()
                .filter(|dd| !dd.is_empty() && cfg.aux_coeff > 0.0);
            let (recon, aux) = batch_grads(&sae, batch, dead, cfg, &mut g, &mut fired)?;
            if !recon.is_finite() || aux.is_some_and(|a| !a.is_finite()) {
                bail!("the loss became non-finite at epoch {} step {t}", ep + 1);
            }
            clip(&mut g, cfg.clip_grad_norm);
            lr = cosine_lr(cfg.lr, t, total);
            adam.step(&mut sae, &mut g, lr);
            normalize_decoder(&mut sae);
            t += 1;
            tot += recon;
            if let Some(a) = aux {
                aux_tot += a;
                aux_n += 1;
            }
            steps.push(StepLog {
                recon_loss: recon,
                aux_loss: aux,
            });
        }
        let dead: Vec<u32> = (0..sae.d_sae as u32)
            .filter(|&i| (fired[i as usize] as f64 / n_rows as f64) < cfg.dead_threshold)
            .collect();
        let val_mse = mse(&sae, val)?;
        epochs.push(EpochLog {
            train_mse: tot / steps_per_epoch as f64,
            val_mse,
            n_dead: dead.len(),
            aux_loss: (aux_n > 0).then(|| aux_tot / aux_n as f64),
            lr,
        });
        on_epoch(epochs.last().unwrap());
        if best.as_ref().is_none_or(|(b, _)| val_mse < *b) {
            best = Some((val_mse, sae.clone()));
            best_epoch = ep + 1;
        }
        if cfg
            .resample_every
            .is_some_and(|every| every > 0 && (ep + 1) % every == 0 && ep + 1 < cfg.epochs)
        {
            resample(
                &mut sae,
                &dead,
                train,
                cfg.seed.wrapping_add(1000 + ep as u64),
            );
        }
        prev_dead = Some(dead);
    }
    let (_, mut best_sae) = best.expect("at least one epoch");
    best_sae.meta.best_epoch = Some(best_epoch as i32);
    best_sae.meta.best_val_mse = epochs.get(best_epoch - 1).map(|e| e.val_mse);
    Ok(TrainResult {
        sae: best_sae,
        best_epoch,
        steps,
        epochs,
    })
}
