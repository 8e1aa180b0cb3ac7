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

#[derive(Default)]
pub struct Reconstruction {
    rows: u64,
    elems: u64,
    sq_err: f64,
    sum: f64,
    sum_sq: f64,
    l0: u64,
}

impl Reconstruction {
    /// Adds a batch: rows `x`, their reconstructions and each row's number of active latents.
    pub fn add(&mut self, x: &[f32], x_hat: &[f32], l0: &[usize]) {
        for (a, b) in x.iter().zip(x_hat) {
            let (a, b) = (*a as f64, *b as f64);
            self.sq_err += (a - b) * (a - b);
            self.sum += a;
            self.sum_sq += a * a;
        }
        self.rows += l0.len() as u64;
        self.elems += x.len() as u64;
        self.l0 += l0.iter().sum::<usize>() as u64;
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
