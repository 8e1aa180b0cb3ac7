//! Tokenisation with the checkpoint's `tokenizer.json`: raw text, no special tokens added, no
//! chat template (as the study collected activations), right padding.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

pub struct TextTokenizer {
    inner: Tokenizer,
}

/// A right-padded batch: ids [B,T] and the mask of real tokens.
pub struct PaddedBatch {
    pub ids: Tensor,
    pub mask: Tensor,
    /// Real length of each row.
    pub lengths: Vec<usize>,
    /// The token ids of each row (real tokens only).
    pub rows: Vec<Vec<u32>>,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("loading {}: {e}", path.display()))?;
        Ok(Self { inner })
    }

    pub fn from_tokenizer(inner: Tokenizer) -> Self {
        Self { inner }
    }

    pub fn encode(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        let mut ids = enc.get_ids().to_vec();
        ids.truncate(max_len);
        Ok(ids)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id used for padding: `<|endoftext|>` when the vocabulary has it, else 0.
    pub fn pad_id(&self) -> u32 {
        self.inner.token_to_id("<|endoftext|>").unwrap_or(0)
    }
}

impl PaddedBatch {
    pub fn new(rows: Vec<Vec<u32>>, pad_id: u32, device: &Device) -> Result<Self> {
        let t = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let b = rows.len();
        let mut ids = vec![pad_id; b * t];
        let mut mask = vec![0u8; b * t];
        for (i, r) in rows.iter().enumerate() {
            ids[i * t..i * t + r.len()].copy_from_slice(r);
            mask[i * t..i * t + r.len()].iter_mut().for_each(|m| *m = 1);
        }
        Ok(Self {
            ids: Tensor::from_vec(ids, (b, t), device).context("building the id tensor")?,
            mask: Tensor::from_vec(mask, (b, t), device)?,
            lengths: rows.iter().map(Vec::len).collect(),
            rows,
        })
    }
}
