//! Next-token training of a (small) Qwen2 checkpoint on raw text, so that the demo's model has
//! learned something before its residual stream is studied: candle's autograd through the same
//! forward pass (`Qwen2` switches to differentiable ops on tracked tensors), AdamW, and the
//! weights written back to the checkpoint's `model.safetensors`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};

use super::{next_token_logprobs, Hooks, PaddedBatch, Qwen2, Qwen2Config};
use crate::rng::SplitMix64;

pub struct LmTraining {
    pub steps: usize,
    /// Texts per step, drawn at random (seeded) from the corpus.
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
}

/// Trains the checkpoint in `dir` (config.json + model.safetensors, f32) on the token rows
/// `texts` and overwrites its weights; `on_step` sees each step's loss. Returns the losses.
pub fn train_lm(
    dir: &Path,
    texts: &[Vec<u32>],
    pad: u32,
    t: &LmTraining,
    on_step: &mut dyn FnMut(usize, f32),
) -> Result<Vec<f32>> {
    let texts: Vec<&Vec<u32>> = texts.iter().filter(|r| r.len() >= 2).collect();
    if texts.is_empty() || t.batch == 0 {
        bail!("next-token training needs texts of at least two tokens");
    }
    let weights = dir.join("model.safetensors");
    let cfg = Qwen2Config::from_file(&dir.join("config.json"))?;
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    {
        let tensors = candle_core::safetensors::load(&weights, &dev)
            .with_context(|| format!("reading {}", weights.display()))?;
        let mut vars = varmap.data().lock().unwrap();
        for (name, tensor) in tensors {
            vars.insert(name, Var::from_tensor(&tensor.to_dtype(DType::F32)?)?);
        }
    }
    let model = Qwen2::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: t.lr,
            ..Default::default()
        },
    )?;
    let mut rng = SplitMix64::new(t.seed);
    let mut losses = Vec::with_capacity(t.steps);
    for step in 0..t.steps {
        let rows: Vec<Vec<u32>> = (0..t.batch)
            .map(|_| texts[rng.below(texts.len())].clone())
            .collect();
        let b = PaddedBatch::new(rows, pad, &dev)?;
        let hooks = Hooks {
            logits: true,
            ..Default::default()
        };
        let logits = model
            .forward(&b.ids, &b.mask, &hooks)?
            .logits
            .context("no logits")?;
        let (picked, _, count) = next_token_logprobs(&logits, &b.ids, &b.mask)?;
        let loss = (picked.sum_all()?.neg()? / count.max(1) as f64)?;
        opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()?;
        if !l.is_finite() {
            bail!("next-token training diverged at step {step} (loss {l})");
        }
        on_step(step, l);
        losses.push(l);
    }
    // candle writes to a path: the temporary one, then durably into place.
    let file = crate::durable::AtomicFile::create(&weights)?;
    varmap
        .save(file.tmp_path())
        .with_context(|| format!("writing {}", file.tmp_path().display()))?;
    file.finish()?;
    Ok(losses)
}
