//! Next-token scores of one batch against a base distribution: the base model's mean NLL, and for
//! any other logits of the same batch (a splice, an ablation) their mean NLL and mean
//! KL(p_base ‖ p_other) over the real next-token positions (right padding).
//!
//! On the CPU this runs a vocabulary row at a time: the base distribution at each real position
//! is taken once, then each other score is one pass over its rows. Candle's composite ops, kept
//! for other devices, make several [B,T,V] tensors per score instead: at the study's vocabulary
//! of 151,936 that was most of an eval's memory traffic and page faults.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};
use rayon::prelude::*;

use super::packed::with_values;
use super::{next_token_log_softmax, target_logprobs, PaddedBatch};

/// A batch's base distribution, ready to score other logits against.
pub enum BaseScores {
    Rows(RowScores),
    Tensors(TensorScores),
}

impl BaseScores {
    /// From the base logits [B,T,V] of batch `b`: row by row for f32 logits on the CPU, else
    /// with candle's tensor ops.
    pub fn new(logits: Tensor, b: &PaddedBatch) -> Result<Self> {
        let (rows, t, _) = logits.dims3()?;
        if (rows, t) != b.ids.dims2()? {
            bail!(
                "scoring logits of {rows} × {t} positions against prompts of {:?}",
                b.ids.dims()
            );
        }
        if t < 2 {
            bail!("a batch of prompts is shorter than two tokens; nothing to score");
        }
        Ok(
            match logits.device().is_cpu() && logits.dtype() == DType::F32 {
                true => Self::Rows(RowScores::new(&logits, b)?),
                false => Self::Tensors(TensorScores::new(logits, b)?),
            },
        )
    }

    /// The base's mean NLL over the real next tokens.
    pub fn nll(&self) -> f64 {
        match self {
            Self::Rows(s) => s.nll,
            Self::Tensors(s) => s.nll,
        }
    }

    /// Other logits [B,T,V] of the same batch: their mean NLL and mean KL(p_base ‖ p_other).
    pub fn score(&self, other: &Tensor) -> Result<(f64, f64)> {
        match self {
            Self::Rows(s) => s.score(other),
            Self::Tensors(s) => s.score(other),
        }
    }
}

/// The base distribution at the real positions, a vocabulary row each.
pub struct RowScores {
    /// The logits' shape [B,T,V]; every scored tensor has it.
    dims: (usize, usize, usize),
    /// Per position: its row in the [B·T, V] logits and its target token.
    positions: Vec<(usize, u32)>,
    /// Per position: p_base over the vocabulary.
    probs: Vec<f32>,
    /// Per position: E_p[logit] − log Σ exp(logits).
    neg_entropy: Vec<f64>,
    nll: f64,
}

/// log Σ_v exp(row_v), summed in f64.
fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&v| (v - max).exp() as f64).sum();
    max as f64 + sum.ln()
}

impl RowScores {
    /// From logits whose [B,T] is the batch's (checked by `BaseScores::new`).
    fn new(logits: &Tensor, b: &PaddedBatch) -> Result<Self> {
        let dims = logits.dims3()?;
        let (_, t, vocab) = dims;
        let positions: Vec<(usize, u32)> = b
            .rows
            .iter()
            .enumerate()
            .flat_map(|(r, ids)| (1..ids.len()).map(move |p| (r * t + p - 1, ids[p])))
            .collect();
        let logits = logits.contiguous()?;
        let mut probs = vec![0f32; positions.len() * vocab];
        // Per position: (E_p[a] − lse_a, its NLL).
        let per: Vec<(f64, f64)> = with_values(&logits, |all| {
            probs
                .par_chunks_mut(vocab)
                .zip(&positions)
                .map(|(p, &(row, target))| {
                    let a = &all[row * vocab..(row + 1) * vocab];
                    let lse = log_sum_exp(a);
                    let mut expected = 0f64;
                    for (p, &v) in p.iter_mut().zip(a) {
                        *p = (v - lse as f32).exp();
                        expected += *p as f64 * v as f64;
                    }
                    (expected - lse, lse - a[target as usize] as f64)
                })
                .collect()
        })?;
        Ok(Self {
            dims,
            nll: per.iter().map(|s| s.1).sum::<f64>() / positions.len() as f64,
            positions,
            probs,
            neg_entropy: per.iter().map(|s| s.0).collect(),
        })
    }

    /// NLL = lse_o − o[target]; KL = (E_p[a] − lse_a) − E_p[o] + lse_o; each averaged.
    fn score(&self, other: &Tensor) -> Result<(f64, f64)> {
        if other.dims3()? != self.dims {
            bail!(
                "scoring logits of shape {:?} against a base of {:?}",
                other.dims(),
                self.dims
            );
        }
        let other = other.contiguous()?;
        let v = self.dims.2;
        let per: Vec<(f64, f64)> = with_values(&other, |all| {
            self.positions
                .par_iter()
                .enumerate()
                .map(|(i, &(row, target))| {
                    let o = &all[row * v..(row + 1) * v];
                    let lse = log_sum_exp(o);
                    let p = &self.probs[i * v..(i + 1) * v];
                    let cross: f64 = p.iter().zip(o).map(|(&p, &o)| p as f64 * o as f64).sum();
                    (
                        lse - o[target as usize] as f64,
                        self.neg_entropy[i] - cross + lse,
                    )
                })
                .collect()
        })?;
        let n = per.len() as f64;
        Ok((
            per.iter().map(|s| s.0).sum::<f64>() / n,
            per.iter().map(|s| s.1).sum::<f64>() / n,
        ))
    }
}

/// The base distribution as candle tensors (any device).
pub struct TensorScores {
    lp: Tensor,
    ids: Tensor,
    mask: Tensor,
    /// 1 at the real next-token positions [B,T-1].
    real: Tensor,
    nll: f64,
}

impl TensorScores {
    fn new(logits: Tensor, b: &PaddedBatch) -> Result<Self> {
        let t = b.ids.dim(1)?;
        let mut s = Self {
            lp: next_token_log_softmax(&logits)?,
            ids: b.ids.clone(),
            mask: b.mask.clone(),
            real: b.mask.narrow(1, 1, t - 1)?.to_dtype(DType::F32)?,
            nll: 0.0,
        };
        s.nll = s.nll_of(&s.lp)?;
        Ok(s)
    }

    fn nll_of(&self, lp: &Tensor) -> Result<f64> {
        let (_, sum, count) = target_logprobs(lp, &self.ids, &self.mask)?;
        Ok(sum / count as f64)
    }

    fn score(&self, other: &Tensor) -> Result<(f64, f64)> {
        let lp = next_token_log_softmax(other)?;
        let per = (self.lp.exp()? * (&self.lp - &lp)?)?.sum(D::Minus1)?;
        let sum = (per * &self.real)?.sum_all()?.to_scalar::<f32>()? as f64;
        let kl = sum / self.real.sum_all()?.to_scalar::<f32>()? as f64;
        Ok((self.nll_of(&lp)?, kl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Random logits of a batch of rows of different lengths: the row-by-row scores equal the
    /// tensor ops' ones.
    #[test]
    fn row_scores_match_the_tensor_ops() {
        let dev = Device::Cpu;
        let mut rng = crate::rng::SplitMix64::new(7);
        let (n, t, v) = (3, 7, 50);
        let rows: Vec<Vec<u32>> = [5usize, 2, t]
            .iter()
            .map(|&len| (0..len).map(|_| rng.below(v) as u32).collect())
            .collect();
        let b = PaddedBatch::new(rows, 0, &dev).unwrap();
        let mut logits = |scale: f32| {
            let x: Vec<f32> = (0..n * t * v)
                .map(|_| (rng.below(2001) as f32 - 1000.0) / 1000.0 * scale)
                .collect();
            Tensor::from_vec(x, (n, t, v), &dev).unwrap()
        };
        let (base, other) = (logits(6.0), logits(4.0));
        let rows = RowScores::new(&base, &b).unwrap();
        let tensors = TensorScores::new(base.clone(), &b).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
        assert!(close(rows.nll, tensors.nll), "{} {}", rows.nll, tensors.nll);
        let (got, want) = (rows.score(&other).unwrap(), tensors.score(&other).unwrap());
        assert!(
            close(got.0, want.0) && close(got.1, want.1),
            "{got:?} {want:?}"
        );
        assert!(got.1 > 0.01, "different distributions diverge: {got:?}");
        // A distribution against itself: its own NLL, no divergence.
        let (nll, kl) = rows.score(&base).unwrap();
        assert!(close(nll, rows.nll) && kl.abs() < 1e-6, "{nll} {kl}");
        // Logits of another batch's shape are refused, not read out of place.
        let shorter = base.narrow(1, 0, t - 1).unwrap();
        assert!(rows.score(&shorter).is_err());
        assert!(BaseScores::new(shorter, &b).is_err());
    }
}
