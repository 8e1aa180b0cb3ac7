//! Next-token scores of one batch against a base distribution: the base model's mean NLL, and for
//! any other logits of the same batch (a splice, an ablation) their mean NLL and mean
//! KL(p_base ‖ p_other) over the real next-token positions.
//!
//! On the CPU (`RowScores`) the logits are rows at those positions only, as the packed forward
//! gives them: the base distribution at each is taken once, then each other score is one pass
//! over its rows. Candle's composite ops (`TensorScores`), for the padded forward on other
//! devices, make several [B,T,V] tensors per score instead: at the study's vocabulary of 151,936
//! that was most of an eval's memory traffic and page faults.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};
use rayon::prelude::*;

use super::{next_token_log_softmax, target_logprobs, PaddedBatch};

/// The next token of every position that has one, sequence after sequence: the targets of
/// `Qwen2::next_token_logits_packed`'s rows.
pub fn next_tokens(rows: &[Vec<u32>]) -> Vec<u32> {
    rows.iter()
        .flat_map(|ids| ids.iter().skip(1).copied())
        .collect()
}

/// The base distribution at the scored positions, a vocabulary row each.
pub struct RowScores {
    vocab: usize,
    /// Per position: its next token.
    targets: Vec<u32>,
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
    /// From the base logits [positions × vocab] at the positions whose next tokens are
    /// `targets`.
    pub fn new(logits: &[f32], vocab: usize, targets: Vec<u32>) -> Result<Self> {
        if targets.is_empty() {
            bail!("a batch of prompts is shorter than two tokens; nothing to score");
        }
        if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
            bail!("next token {t} is outside the vocabulary of {vocab}");
        }
        let mut s = Self {
            vocab,
            targets,
            probs: Vec::new(),
            neg_entropy: Vec::new(),
            nll: 0.0,
        };
        s.check(logits)?;
        s.probs = vec![0f32; logits.len()];
        // Per position: (E_p[a] − lse_a, its NLL).
        let per: Vec<(f64, f64)> = s
            .probs
            .par_chunks_mut(vocab)
            .zip(logits.par_chunks(vocab))
            .zip(&s.targets)
            .map(|((p, a), &target)| {
                let lse = log_sum_exp(a);
                let mut expected = 0f64;
                for (p, &v) in p.iter_mut().zip(a) {
                    *p = (v - lse as f32).exp();
                    expected += *p as f64 * v as f64;
                }
                (expected - lse, lse - a[target as usize] as f64)
            })
            .collect();
        s.nll = per.iter().map(|s| s.1).sum::<f64>() / per.len() as f64;
        s.neg_entropy = per.iter().map(|s| s.0).collect();
        Ok(s)
    }

    /// Logits of this batch's positions, or an error naming the mismatch.
    fn check(&self, logits: &[f32]) -> Result<()> {
        let want = self.targets.len() * self.vocab;
        if logits.len() != want {
            bail!(
                "scoring {} logits against {} positions of a vocabulary of {} ({want})",
                logits.len(),
                self.targets.len(),
                self.vocab
            );
        }
        Ok(())
    }

    /// The base's mean NLL over the positions.
    pub fn nll(&self) -> f64 {
        self.nll
    }

    /// Other logits of the same positions: their mean NLL and mean KL(p_base ‖ p_other), where
    /// NLL = lse_o − o[target] and KL = (E_p[a] − lse_a) − E_p[o] + lse_o.
    pub fn score(&self, other: &[f32]) -> Result<(f64, f64)> {
        self.check(other)?;
        let v = self.vocab;
        let per: Vec<(f64, f64)> = other
            .par_chunks(v)
            .zip(self.probs.par_chunks(v))
            .zip(&self.targets)
            .zip(&self.neg_entropy)
            .map(|(((o, p), &target), &neg_entropy)| {
                let lse = log_sum_exp(o);
                let cross: f64 = p.iter().zip(o).map(|(&p, &o)| p as f64 * o as f64).sum();
                (lse - o[target as usize] as f64, neg_entropy - cross + lse)
            })
            .collect();
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
    /// From the base logits [B,T,V] of batch `b`.
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

    /// The base's mean NLL over the real next tokens.
    pub fn nll(&self) -> f64 {
        self.nll
    }

    fn nll_of(&self, lp: &Tensor) -> Result<f64> {
        let (_, sum, count) = target_logprobs(lp, &self.ids, &self.mask)?;
        Ok(sum / count as f64)
    }

    /// Other logits [B,T,V] of the same batch: their mean NLL and mean KL(p_base ‖ p_other).
    pub fn score(&self, other: &Tensor) -> Result<(f64, f64)> {
        let lp = next_token_log_softmax(other)?;
        if lp.dims() != self.lp.dims() {
            bail!(
                "scoring logits of shape {:?} against a base of {:?}",
                other.dims(),
                self.lp.dims()
            );
        }
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

    /// Random logits of a batch of rows of different lengths: the scores of the rows at the
    /// real positions equal the tensor ops' scores of the padded batch.
    #[test]
    fn row_scores_match_the_tensor_ops() {
        let dev = Device::Cpu;
        let mut rng = crate::rng::SplitMix64::new(7);
        let (n, t, v) = (3, 7, 50);
        let rows: Vec<Vec<u32>> = [5usize, 2, t]
            .iter()
            .map(|&len| (0..len).map(|_| rng.below(v) as u32).collect())
            .collect();
        let b = PaddedBatch::new(rows.clone(), 0, &dev).unwrap();
        let mut logits = |scale: f32| {
            let x: Vec<f32> = (0..n * t * v)
                .map(|_| (rng.below(2001) as f32 - 1000.0) / 1000.0 * scale)
                .collect();
            Tensor::from_vec(x, (n, t, v), &dev).unwrap()
        };
        // The rows of each sequence's positions but its last, as the packed forward gives them.
        let scored = |l: &Tensor| -> Vec<f32> {
            let all: Vec<f32> = l.flatten_all().unwrap().to_vec1().unwrap();
            let (t, v) = (l.dim(1).unwrap(), l.dim(2).unwrap());
            rows.iter()
                .enumerate()
                .flat_map(|(r, ids)| (0..ids.len() - 1).map(move |p| (r * t + p) * v))
                .flat_map(|at| all[at..at + v].to_vec())
                .collect()
        };
        let (base, other) = (logits(6.0), logits(4.0));
        let row = RowScores::new(&scored(&base), v, next_tokens(&rows)).unwrap();
        let tensors = TensorScores::new(base.clone(), &b).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
        assert!(
            close(row.nll(), tensors.nll()),
            "{} {}",
            row.nll(),
            tensors.nll()
        );
        let got = row.score(&scored(&other)).unwrap();
        let want = tensors.score(&other).unwrap();
        assert!(
            close(got.0, want.0) && close(got.1, want.1),
            "{got:?} {want:?}"
        );
        assert!(got.1 > 0.01, "different distributions diverge: {got:?}");
        // A distribution against itself: its own NLL, no divergence.
        let (nll, kl) = row.score(&scored(&base)).unwrap();
        assert!(close(nll, row.nll()) && kl.abs() < 1e-6, "{nll} {kl}");
        // Logits of another batch's shape are refused, not read out of place.
        let shorter = base.narrow(1, 0, t - 1).unwrap();
        assert!(row.score(&scored(&base)[v..]).is_err());
        assert!(tensors.score(&shorter).is_err());
        assert!(TensorScores::new(shorter, &b).is_err());
        assert!(RowScores::new(&[], v, vec![]).is_err());
        assert!(RowScores::new(&scored(&base), 1, next_tokens(&rows)).is_err());
    }
}
