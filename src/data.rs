//! Prompt data (GSM8k-style JSON lines) and the train/val split of activation rows.

use std::path::Path;

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub doc_id: i64,
    pub question: String,
    pub answer: Option<String>,
}

/// Reads `{"question": ..., "answer": ...}` lines; `limit` keeps the first N.
pub fn read_questions(path: &Path, limit: Option<usize>) -> Result<Vec<Doc>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if limit.is_some_and(|n| docs.len() >= n) {
            break;
        }
        let line = std::str::from_utf8(line)
            .with_context(|| format!("{} line {}: not UTF-8 text", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not a JSON object", path.display(), i + 1))?;
        let question = v["question"].as_str().with_context(|| {
            format!("{} line {}: no \"question\" string", path.display(), i + 1)
        })?;
        docs.push(Doc {
            doc_id: docs.len() as i64,
            question: question.to_string(),
            answer: v["answer"].as_str().map(str::to_string),
        });
    }
    if docs.is_empty() {
        bail!("{} holds no questions", path.display());
    }
    Ok(docs)
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SplitKind {
    /// A seeded random permutation of rows.
    Random,
    /// The last fraction of rows.
    Tail,
}

/// SplitMix64: tiny, fully specified, easy to reproduce elsewhere.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (multiply-shift; the bias is below 2^-32 for any n that fits memory).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 32) * n as u64 >> 32) as usize
    }
}

/// The permutation of 0..n by Fisher–Yates (i from n−1 down to 1, swap with j = below(i+1)).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..n).rev() {
        p.swap(i, rng.below(i + 1));
    }
    p
}

/// Which of `n` rows are validation rows: floor(frac·n) of them, either the first
/// floor(frac·n) entries of the seeded permutation, or the last rows.
pub fn val_rows(n: usize, frac: f64, kind: SplitKind, seed: u64) -> Result<Vec<bool>> {
    if !(0.0..1.0).contains(&frac) {
        bail!("--val-frac must be in [0, 1), got {frac}");
    }
    let n_val = (frac * n as f64).floor() as usize;
    let mut val = vec![false; n];
    match kind {
        SplitKind::Tail => val[n - n_val..].iter_mut().for_each(|v| *v = true),
        SplitKind::Random => permutation(n, seed)
            .into_iter()
            .take(n_val)
            .for_each(|i| val[i] = true),
    }
    Ok(val)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sizes_follow_the_study() {
        let v = val_rows(445_744, 0.2, SplitKind::Random, 0).unwrap();
        assert_eq!(v.iter().filter(|&&x| x).count(), 89_148);
        let t = val_rows(10, 0.1, SplitKind::Tail, 0).unwrap();
        assert_eq!(t, [vec![false; 9], vec![true]].concat());
    }

    #[test]
    fn permutation_is_a_seeded_shuffle() {
        let p = permutation(1000, 7);
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_eq!(p, permutation(1000, 7));
        assert_ne!(p, permutation(1000, 8));
    }
}
