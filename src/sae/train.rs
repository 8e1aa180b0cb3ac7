//! Training a TopK SAE exactly as the study did (DESIGN.md, "SAE semantics"): Adam
//! (β 0.9/0.999, ε 1e-8), cosine annealing per step to lr/10, global grad-norm clip, decoder
//! columns renormalised after every step, aux-k on the features dead in the previous epoch,
//! dead-feature resampling, validation MSE after each epoch and the best epoch's weights kept.
//!
//! `Trainer` runs one epoch at a time over any `Rows` (memory or a streamed Parquet partition)
//! and can be checkpointed between epochs (`checkpoint.rs`); the step itself is in `step.rs`.

use anyhow::{bail, Result};

use super::on_device::{DeviceSae, DeviceTrainer};
use super::quality::row_sq_errors;
use super::rows::{MemRows, Rows};
use super::step::{self, Adam, Scratch, StepOut};
use super::{Sae, Tensors};
use crate::kernels::{unit_norm, Encoded};

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

/// The training rows resampling looks at: all when there are at most 8192, else 8192 drawn
/// from the seed (ascending).
pub fn resample_candidates(n: usize, seed: u64) -> Vec<usize> {
    if n <= RESAMPLE_ROWS {
        return (0..n).collect();
    }
    let mut idx: Vec<usize> = crate::rng::permutation(n, seed)
        .into_iter()
        .take(RESAMPLE_ROWS)
        .collect();
    idx.sort_unstable();
    idx
}

/// Re-initialises `dead` features from badly reconstructed rows: among the candidate rows
/// (`resample_candidates` of `rows`), those in the top quartile of reconstruction error; each
/// dead feature gets one of them (drawn without replacement while they last), normalised, as its
/// encoder row and decoder column, and b_enc = 0. b_dec is left untouched.
pub fn resample(sae: &mut Sae, dead: &[u32], rows: &[f32], seed: u64) {
    let d = sae.d_model;
    let n = rows.len() / d;
    if dead.is_empty() || n == 0 {
        return;
    }
    let idx = resample_candidates(n, seed);
    let cand = MemRows::new(d, rows).gather(&idx).expect("in-memory rows");
    resample_from(sae, dead, &cand, seed);
}

/// `resample` on the candidate rows themselves.
fn resample_from(sae: &mut Sae, dead: &[u32], cand: &[f32], seed: u64) {
    let d = sae.d_model;
    let mut rng = crate::rng::SplitMix64::new(seed);
    let mut enc = Encoded::default();
    let mut errs: Vec<(f64, usize)> = cand
        .chunks(512 * d)
        .enumerate()
        .flat_map(|(c, chunk)| {
            row_sq_errors(sae, chunk, &mut enc)
                .into_iter()
                .enumerate()
                .map(move |(r, e)| (e, c * 512 + r))
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
        let mut x = cand[r * d..(r + 1) * d].to_vec();
        unit_norm(&mut x);
        let f = f as usize;
        sae.w_enc[f * d..(f + 1) * d].copy_from_slice(&x);
        sae.w_dec[f * d..(f + 1) * d].copy_from_slice(&x);
        sae.b_enc[f] = 0.0;
    }
}

/// What one epoch's steps add up to.
#[derive(Default)]
struct EpochSteps {
    /// Sums of the steps' reconstruction and aux losses, and the steps with an aux loss.
    recon: f64,
    aux: f64,
    aux_steps: usize,
    /// The last step's learning rate.
    lr: f64,
    /// Per feature, the rows that selected it.
    fired: Vec<u64>,
}

impl EpochSteps {
    /// Adds step `step`'s losses (of epoch `ep`, from 0); a non-finite loss stops training.
    fn add(&mut self, out: &StepOut, ep: usize, step: usize) -> Result<()> {
        if !out.recon.is_finite() || out.aux.is_some_and(|a| !a.is_finite()) {
            bail!("the loss became non-finite at epoch {} step {step}", ep + 1);
        }
        self.recon += out.recon;
        if let Some(a) = out.aux {
            self.aux += a;
            self.aux_steps += 1;
        }
        Ok(())
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
    /// Wall time of the epoch, validation and resampling included.
    pub seconds: f64,
}

pub struct TrainResult {
    /// The weights of the best epoch by validation MSE.
    pub sae: Sae,
    pub best_epoch: usize,
    pub steps: Vec<StepLog>,
    pub epochs: Vec<EpochLog>,
}

/// Cosine annealing from `lr` to `lr/10` over `total` steps, at step `t` (PyTorch's
/// CosineAnnealingLR, closed form).
fn cosine_lr(lr: f64, t: usize, total: usize) -> f64 {
    let min = lr / 10.0;
    min + (lr - min) * (1.0 + (std::f64::consts::PI * t as f64 / total as f64).cos()) / 2.0
}

/// A cold start (PyTorch `nn.Linear` defaults): W_enc, b_enc ~ U(±1/√d), W_dec, b_dec ~
/// U(±1/√d_sae) with W_dec's columns then normalised, and b_pre = the mean training row
/// (`rows::mean_row`).
pub fn cold_start(b_pre: Vec<f32>, d_sae: usize, k: usize, seed: u64) -> Sae {
    let d = b_pre.len();
    let mut rng = crate::rng::SplitMix64::new(seed);
    let mut uniform = |bound: f32, n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound)
            .collect()
    };
    let (be, bd) = (1.0 / (d as f32).sqrt(), 1.0 / (d_sae as f32).sqrt());
    let mut sae = Sae {
        d_model: d,
        d_sae,
        k,
        activation: super::Activation::TopK,
        tensors: Tensors {
            b_pre,
            w_enc: uniform(be, d_sae * d),
            b_enc: uniform(be, d_sae),
            w_dec: uniform(bd, d_sae * d),
            b_dec: uniform(bd, d),
        },
        meta: Default::default(),
    };
    step::normalize_decoder(&mut sae);
    sae
}

/// Mean squared reconstruction error over all of `rows`.
pub fn mse(sae: &Sae, rows: &dyn Rows) -> Result<f64> {
    let mut enc = Encoded::default();
    let mut sum = 0f64;
    rows.for_each_batch(512, None, &mut |b| {
        sum += row_sq_errors(sae, b, &mut enc).iter().sum::<f64>();
        Ok(())
    })?;
    Ok(sum / (rows.len() * sae.d_model) as f64)
}

/// `mse` with the reconstructions computed on a device.
pub fn device_mse(sae: &DeviceSae, dev: &candle_core::Device, rows: &dyn Rows) -> Result<f64> {
    let d = rows.d_model();
    let mut sum = 0f64;
    rows.for_each_batch(4096, None, &mut |b| {
        let x = candle_core::Tensor::from_slice(b, (b.len() / d, d), dev)?;
        let (x_hat, _) = sae.reconstruct(&x)?;
        let err = (x_hat - &x)?.to_dtype(candle_core::DType::F64)?;
        sum += err.sqr()?.sum_all()?.to_scalar::<f64>()?;
        Ok(())
    })?;
    Ok(sum / (rows.len() * d) as f64)
}

/// Training in progress: the weights, Adam's state and what the finished epochs left behind
/// (everything a checkpoint must hold to continue bit-identically).
pub struct Trainer {
    pub(super) cfg: TrainConfig,
    pub(super) n_rows: usize,
    pub(super) sae: Sae,
    pub(super) adam: Adam,
    /// Features dead in the last finished epoch (aux-k's targets in the next).
    pub(super) prev_dead: Option<Vec<u32>>,
    /// The best epoch so far (1-based) and its weights.
    pub(super) best: Option<(usize, Sae)>,
    pub(super) epochs: Vec<EpochLog>,
    /// Steps of this process only (a resumed run does not have the earlier ones).
    pub steps: Vec<StepLog>,
    backend: Backend,
}

/// Where the steps run: the CPU step (`step.rs`) on the host weights, or a device (`on_device.rs`)
/// holding its own copy that goes back to the host weights after every epoch.
enum Backend {
    Cpu(Box<Scratch>),
    Device(Box<DeviceTrainer>, candle_core::Device),
}

impl Trainer {
    pub fn new(init: &Sae, n_rows: usize, cfg: &TrainConfig) -> Result<Self> {
        init.validate()?;
        if cfg.epochs == 0 || cfg.batch == 0 {
            bail!("epochs and batch size must be positive");
        }
        if n_rows == 0 {
            bail!("there are no training rows");
        }
        Ok(Self::from_parts(cfg, n_rows, init.clone(), Adam::new(init)))
    }

    pub(super) fn from_parts(cfg: &TrainConfig, n_rows: usize, sae: Sae, adam: Adam) -> Self {
        Self {
            cfg: cfg.clone(),
            n_rows,
            sae,
            adam,
            prev_dead: None,
            best: None,
            epochs: Vec::new(),
            steps: Vec::new(),
            backend: Backend::Cpu(Box::default()),
        }
    }

    /// Runs the steps on `dev` through the device path (candle tensors and saerl's device
    /// kernels; on the CPU too, which is how the tests check that path).
    pub fn on_device(mut self, dev: &candle_core::Device) -> Result<Self> {
        if self.sae.activation.relu() {
            bail!(
                "training an SAE with the {} convention runs on the CPU only (the device step implements the study's topk); drop --device",
                self.sae.activation.name()
            );
        }
        let dt = DeviceTrainer::new(&self.sae, &self.adam, dev)?;
        self.backend = Backend::Device(Box::new(dt), dev.clone());
        Ok(self)
    }

    pub fn epochs(&self) -> &[EpochLog] {
        &self.epochs
    }

    pub fn is_done(&self) -> bool {
        self.epochs.len() >= self.cfg.epochs
    }

    fn steps_per_epoch(&self) -> usize {
        self.n_rows.div_ceil(self.cfg.batch)
    }

    /// Runs the next epoch over `train` (which must hold the `n_rows` rows given at the start),
    /// validates on `val`, and resamples when due. `on_batch` sees each batch's rows and loss.
    pub fn run_epoch(
        &mut self,
        train: &dyn Rows,
        val: &dyn Rows,
        on_batch: &mut dyn FnMut(usize, f64),
    ) -> Result<&EpochLog> {
        let started = std::time::Instant::now();
        let ep = self.epochs.len();
        self.check_rows(train, val)?;
        let steps = self.train_steps(train, on_batch)?;
        let dead: Vec<u32> = (0..self.sae.d_sae as u32)
            .filter(|&i| {
                (steps.fired[i as usize] as f64 / self.n_rows as f64) < self.cfg.dead_threshold
            })
            .collect();
        let val_mse = self.validate(val)?;
        if self
            .best
            .as_ref()
            .is_none_or(|(b, _)| val_mse < self.epochs[b - 1].val_mse)
        {
            self.best = Some((ep + 1, self.sae.clone()));
        }
        let cfg = &self.cfg;
        if cfg
            .resample_every
            .is_some_and(|every| every > 0 && (ep + 1).is_multiple_of(every) && ep + 1 < cfg.epochs)
        {
            self.resample_dead(train, &dead)?;
        }
        self.epochs.push(EpochLog {
            train_mse: steps.recon / self.steps_per_epoch() as f64,
            val_mse,
            n_dead: dead.len(),
            aux_loss: (steps.aux_steps > 0).then(|| steps.aux / steps.aux_steps as f64),
            lr: steps.lr,
            seconds: started.elapsed().as_secs_f64(),
        });
        self.prev_dead = Some(dead);
        Ok(self.epochs.last().unwrap())
    }

    /// The rows are those training started with, and there are validation rows of their width.
    fn check_rows(&self, train: &dyn Rows, val: &dyn Rows) -> Result<()> {
        if train.len() != self.n_rows || train.d_model() != self.sae.d_model {
            bail!(
                "the training rows changed: {} rows of width {} now, {} of width {} when training started",
                train.len(),
                train.d_model(),
                self.n_rows,
                self.sae.d_model
            );
        }
        if val.is_empty() || val.d_model() != self.sae.d_model {
            bail!("validation needs rows of width {}", self.sae.d_model);
        }
        Ok(())
    }

    /// One epoch's optimiser steps on the CPU or the device; the host SAE and Adam hold the
    /// result afterwards.
    fn train_steps(
        &mut self,
        train: &dyn Rows,
        on_batch: &mut dyn FnMut(usize, f64),
    ) -> Result<EpochSteps> {
        let (cfg, ep) = (self.cfg.clone(), self.epochs.len());
        let total = cfg.epochs * self.steps_per_epoch();
        let mut t = ep * self.steps_per_epoch();
        let mut sums = EpochSteps {
            fired: vec![0u64; self.sae.d_sae],
            lr: cfg.lr,
            ..Default::default()
        };
        let dead = self
            .prev_dead
            .clone()
            .filter(|dd| !dd.is_empty() && cfg.aux_coeff > 0.0);
        let dead_on_device = match (&self.backend, &dead) {
            (Backend::Device(dt, _), Some(dd)) => Some(dt.dead_mask(dd)?),
            _ => None,
        };
        let shuffle = cfg.shuffle.then(|| cfg.seed.wrapping_add(ep as u64));
        let d = self.sae.d_model;
        // Each step's losses as they become known (the device reports them in groups).
        let steps_log = &mut self.steps;
        let mut record = |sums: &mut EpochSteps, rows: usize, out: StepOut| -> Result<()> {
            sums.add(&out, ep, steps_log.len())?;
            on_batch(rows, out.recon);
            steps_log.push(StepLog {
                recon_loss: out.recon,
                aux_loss: out.aux,
            });
            Ok(())
        };
        train.for_each_batch(cfg.batch, shuffle, &mut |batch| {
            sums.lr = cosine_lr(cfg.lr, t, total);
            t += 1;
            match &mut self.backend {
                Backend::Cpu(scratch) => {
                    let out = step::step(
                        &mut self.sae,
                        &mut self.adam,
                        scratch,
                        batch,
                        dead.as_deref(),
                        cfg.aux_coeff,
                        cfg.clip_grad_norm,
                        sums.lr,
                        &mut sums.fired,
                    );
                    record(&mut sums, batch.len() / d, out)
                }
                Backend::Device(dt, _) => {
                    dt.step(
                        batch,
                        dead_on_device.as_ref(),
                        cfg.aux_coeff,
                        cfg.clip_grad_norm,
                        sums.lr,
                    )?;
                    for (rows, out) in dt.losses(false)? {
                        record(&mut sums, rows, out)?;
                    }
                    Ok(())
                }
            }
        })?;
        if let Backend::Device(dt, _) = &mut self.backend {
            for (rows, out) in dt.losses(true)? {
                record(&mut sums, rows, out)?;
            }
            dt.download(&mut self.sae, &mut self.adam)?;
            sums.fired = dt.take_fired()?;
        }
        Ok(sums)
    }

    /// The MSE over the validation rows with the current weights.
    fn validate(&self, val: &dyn Rows) -> Result<f64> {
        let val_mse = match &self.backend {
            Backend::Cpu(_) => mse(&self.sae, val)?,
            Backend::Device(dt, dev) => device_mse(&dt.sae()?, dev, val)?,
        };
        if !val_mse.is_finite() {
            bail!(
                "the validation MSE is not finite after epoch {}",
                self.epochs.len() + 1
            );
        }
        Ok(val_mse)
    }

    /// Re-initialises the dead features from badly reconstructed training rows (`resample`).
    fn resample_dead(&mut self, train: &dyn Rows, dead: &[u32]) -> Result<()> {
        let seed = self.cfg.seed.wrapping_add(1000 + self.epochs.len() as u64);
        let cand = train.gather(&resample_candidates(self.n_rows, seed))?;
        resample_from(&mut self.sae, dead, &cand, seed);
        if let Backend::Device(dt, dev) = &mut self.backend {
            **dt = DeviceTrainer::new(&self.sae, &self.adam, dev)?;
        }
        Ok(())
    }

    /// The best epoch's weights and the logs.
    pub fn finish(self) -> Result<TrainResult> {
        let Some((best_epoch, mut sae)) = self.best else {
            bail!("no epoch was trained");
        };
        sae.meta.best_epoch = Some(best_epoch as i32);
        sae.meta.best_val_mse = Some(self.epochs[best_epoch - 1].val_mse);
        Ok(TrainResult {
            sae,
            best_epoch,
            steps: self.steps,
            epochs: self.epochs,
        })
    }
}

/// Trains from `init` on in-memory `train` rows, validating on `val` after every epoch;
/// `on_epoch` sees each epoch's log.
pub fn train(
    init: &Sae,
    train: &[f32],
    val: &[f32],
    cfg: &TrainConfig,
    on_epoch: &mut dyn FnMut(&EpochLog),
) -> Result<TrainResult> {
    train_on(init, train, val, cfg, None, on_epoch)
}

/// `train` with the steps on `device` through the device path (None: the CPU step).
pub fn train_on(
    init: &Sae,
    train: &[f32],
    val: &[f32],
    cfg: &TrainConfig,
    device: Option<&candle_core::Device>,
    on_epoch: &mut dyn FnMut(&EpochLog),
) -> Result<TrainResult> {
    let d = init.d_model;
    if !train.len().is_multiple_of(d) || !val.len().is_multiple_of(d) {
        bail!("rows must be multiples of d_model = {d}");
    }
    let (train, val) = (MemRows::new(d, train), MemRows::new(d, val));
    let mut trainer = Trainer::new(init, train.len(), cfg)?;
    if let Some(dev) = device {
        trainer = trainer.on_device(dev)?;
    }
    while !trainer.is_done() {
        on_epoch(trainer.run_epoch(&train, &val, &mut |_, _| {})?);
    }
    trainer.finish()
}
