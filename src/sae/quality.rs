//! Reconstruction quality of an SAE over rows (DESIGN.md, "Quality metrics"), accumulated a
//! batch at a time: NMSE = Σ(x − x̂)² / n_elements / Var(x) with Var one scalar over all elements
//! (unbiased), or over the second moment E[x²] (`NmseDenom::SecondMoment`, other libraries'
//! convention); mean L0 = non-zero latents per row.

use super::Sae;
use crate::kernels::Encoded;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NmseDenom {
    /// The study's: unbiased variance of all elements.
    Var,
    /// Mean of x² (no centring).
    SecondMoment,
}

impl NmseDenom {
    pub fn name(self) -> &'static str {
        match self {
            NmseDenom::Var => "var",
            NmseDenom::SecondMoment => "second-moment",
        }
    }
}

/// x̂ for every row of `x`.
pub fn reconstruct(sae: &Sae, x: &[f32], enc: &mut Encoded) -> (Vec<f32>, Vec<usize>) {
    let rows = sae.map_pre_activations(x, enc, |_, z| {
        let lat = sae.activate(z);
        let l0 = lat.iter().filter(|(_, v)| *v != 0.0).count();
        (sae.decode(&lat), l0)
    });
    let l0 = rows.iter().map(|r| r.1).collect();
    (rows.into_iter().flat_map(|r| r.0).collect(), l0)
}

/// Each row's squared reconstruction error (rows of `x`, d_model wide).
pub fn row_sq_errors(sae: &Sae, x: &[f32], enc: &mut Encoded) -> Vec<f64> {
    let d = sae.d_model;
    let (x_hat, _) = reconstruct(sae, x, enc);
    x.chunks(d)
        .zip(x_hat.chunks(d))
        .map(|(x, h)| x.iter().zip(h).map(|(a, b)| ((a - b) as f64).powi(2)).sum())
        .collect()
}

/// One row of `evals` (DESIGN.md, "Quality metrics").
#[derive(Debug, Clone)]
pub struct Eval {
    pub nmse: f64,
    /// The conventions used: `NmseDenom::name` and the ablation ("mean" or "zero").
    pub nmse_denom: &'static str,
    pub ablation: &'static str,
    pub mean_l0: f64,
    pub n_val_rows: u64,
    pub core: Core,
    pub ce: Option<Ce>,
}

/// Losses (mean per batch, then over batches) and KL scores on the prompts.
#[derive(Debug, Clone, Default)]
pub struct Ce {
    pub l_base: f64,
    pub l_sae: f64,
    pub l_ablation: f64,
    pub kl_sae: f64,
    pub kl_ablation: f64,
    pub n_prompts: usize,
}

impl Ce {
    pub fn frac_rec(&self) -> f64 {
        (self.l_ablation - self.l_sae) / (self.l_ablation - self.l_base)
    }
    pub fn kl_rec(&self) -> f64 {
        1.0 - self.kl_sae / self.kl_ablation
    }
}

/// Reconstruction quality accumulated over rows: the study's NMSE and L0, and SAEBench's core
/// metrics (variances over the rows, population). `mean` is the rows' mean vector (a first pass),
/// which the legacy per-token explained variance centres each row on.
pub struct Reconstruction {
    rows: u64,
    elems: u64,
    sq_err: f64,
    sum: f64,
    sum_sq: f64,
    l0: u64,
    mean: Vec<f64>,
    dim_sum: Vec<f64>,
    dim_sum_sq: Vec<f64>,
    cos_sum: f64,
    ratio_sum: f64,
    ratio_rows: u64,
    hat_sq: f64,
    dot: f64,
    legacy_sum: f64,
    legacy_rows: u64,
    /// Per feature, rows where it fired (z > 0).
    fires: Vec<u64>,
}

/// SAEBench's core reconstruction and sparsity metrics (its names).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Core {
    /// 1 − E‖x − x̂‖² / Σ_d Var(x_d).
    pub explained_variance: f64,
    /// Mean over rows of 1 − ‖x − x̂‖² / ‖x − mean‖².
    pub explained_variance_legacy: f64,
    /// Mean over rows of cos(x, x̂).
    pub cossim: f64,
    /// Mean over rows of ‖x̂‖ / ‖x‖.
    pub l2_ratio: f64,
    /// E‖x̂‖² / E[x · x̂].
    pub relative_reconstruction_bias: f64,
    /// Features with density > 0, and with density above 1 % and 10 % of the rows (fractions).
    pub frac_alive: f64,
    pub freq_over_1_percent: f64,
    pub freq_over_10_percent: f64,
}

impl Reconstruction {
    pub fn new(mean: Vec<f64>, d_sae: usize) -> Self {
        let d = mean.len();
        Self {
            rows: 0,
            elems: 0,
            sq_err: 0.0,
            sum: 0.0,
            sum_sq: 0.0,
            l0: 0,
            mean,
            dim_sum: vec![0.0; d],
            dim_sum_sq: vec![0.0; d],
            cos_sum: 0.0,
            ratio_sum: 0.0,
            ratio_rows: 0,
            hat_sq: 0.0,
            dot: 0.0,
            legacy_sum: 0.0,
            legacy_rows: 0,
            fires: vec![0; d_sae],
        }
    }

    /// Adds a batch: rows `x`, their reconstructions, each row's number of active latents and
    /// the features that fired (z > 0) in the batch, one entry per row and feature.
    pub fn add(&mut self, x: &[f32], x_hat: &[f32], l0: &[usize], fired: &[u32]) {
        let d = self.mean.len();
        for (x, h) in x.chunks(d).zip(x_hat.chunks(d)) {
            let (mut err, mut xx, mut hh, mut xh, mut centred) = (0f64, 0f64, 0f64, 0f64, 0f64);
            for j in 0..d {
                let (a, b) = (x[j] as f64, h[j] as f64);
                err += (a - b) * (a - b);
                xx += a * a;
                hh += b * b;
                xh += a * b;
                centred += (a - self.mean[j]).powi(2);
                self.dim_sum[j] += a;
                self.dim_sum_sq[j] += a * a;
            }
            self.sq_err += err;
            self.sum += x.iter().map(|&a| a as f64).sum::<f64>();
            self.sum_sq += xx;
            self.hat_sq += hh;
            self.dot += xh;
            // torch's cosine_similarity: each norm clamped at 1e-8.
            self.cos_sum += xh / (xx.sqrt().max(1e-8) * hh.sqrt().max(1e-8));
            if xx > 0.0 {
                self.ratio_sum += (hh / xx).sqrt();
                self.ratio_rows += 1;
            }
            if centred > 0.0 {
                self.legacy_sum += 1.0 - err / centred;
                self.legacy_rows += 1;
            }
        }
        for &f in fired {
            self.fires[f as usize] += 1;
        }
        self.rows += l0.len() as u64;
        self.elems += x.len() as u64;
        self.l0 += l0.iter().sum::<usize>() as u64;
    }

    pub fn core(&self) -> Core {
        let n = self.rows as f64;
        let total_var: f64 = self
            .dim_sum
            .iter()
            .zip(&self.dim_sum_sq)
            .map(|(s, q)| q / n - (s / n).powi(2))
            .sum();
        let share = |above: f64| {
            self.fires.iter().filter(|&&c| c as f64 / n > above).count() as f64
                / self.fires.len().max(1) as f64
        };
        Core {
            explained_variance: 1.0 - (self.sq_err / n) / total_var,
            explained_variance_legacy: self.legacy_sum / self.legacy_rows as f64,
            cossim: self.cos_sum / n,
            l2_ratio: self.ratio_sum / self.ratio_rows as f64,
            relative_reconstruction_bias: self.hat_sq / self.dot,
            frac_alive: share(0.0),
            freq_over_1_percent: share(0.01),
            freq_over_10_percent: share(0.1),
        }
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn nmse(&self, denom: NmseDenom) -> f64 {
        let n = self.elems as f64;
        let d = match denom {
            NmseDenom::Var => (self.sum_sq - self.sum * self.sum / n) / (n - 1.0),
            NmseDenom::SecondMoment => self.sum_sq / n,
        };
        self.sq_err / n / d
    }

    pub fn mean_l0(&self) -> f64 {
        self.l0 as f64 / self.rows as f64
    }
}
