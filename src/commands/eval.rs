//! `saerl eval`: the quality of each selected SAE into `evals` (DESIGN.md, "Quality metrics").
//! NMSE and mean L0 on the val split of the SAE's own stage (streamed); CE loss recovered with
//! the SAE's reconstruction spliced into the model at real-token positions, against an
//! ablation (the layer's real-token mean over the first 32 prompts, or zero), plus the KL
//! divergence from the untouched model. An SAE already evaluated is skipped unless `--overwrite`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::array::{Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use candle_core::{DType, Device, Tensor, D};

use super::SaeSelection;
use crate::data::read_questions;
use crate::lake::{read_sae, Lake, PartitionKey, Table, Txn};
use crate::model::{
    device, load_model, next_token_logprobs, replace_real_with, Hooks, PaddedBatch, Qwen2,
    TextTokenizer,
};
use crate::project::Project;
use crate::sae::quality::{reconstruct, NmseDenom, Reconstruction};
use crate::sae::rows::Rows;
use crate::sae::step::Scratch;
use crate::sae::Sae;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ablation {
    /// The layer's real-token mean (the study's).
    Mean,
    /// Zeros.
    Zero,
}

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "eval")]
pub struct EvalArgs {
    #[command(flatten)]
    pub select: SaeSelection,
    /// The model directory (default: the stage's model_path in `stages`, else saerl.toml).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// GSM8k test questions (JSON lines with `question`).
    #[arg(long, default_value = crate::study::GSM8K_TEST)]
    pub data: PathBuf,
    /// Prompts for CE loss recovered (the first N test questions); 0 skips it.
    #[arg(long, default_value_t = 100)]
    pub prompts: usize,
    /// Prompts the mean ablation vector is estimated on (the first of the N).
    #[arg(long, default_value_t = 32)]
    pub mean_prompts: usize,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 256)]
    pub max_len: usize,
    #[arg(long, value_enum, default_value_t = Ablation::Mean)]
    pub ablation: Ablation,
    #[arg(long, value_enum, default_value_t = NmseDenom::Var)]
    pub nmse_denom: NmseDenom,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "saerl.toml")]
    pub project: PathBuf,
    #[arg(long)]
    pub overwrite: bool,
}

/// One row of `evals`.
#[derive(Debug, Clone, Default)]
pub struct Eval {
    pub nmse: f64,
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

pub fn run(lake: &Lake, a: &EvalArgs) -> Result<()> {
    let keys = a.select.keys(lake)?;
    let stages = lake.read_stages(&a.select.chain)?;
    let project = Project::load_or_default(&a.project)?;
    for key in keys {
        if !a.overwrite && lake.has_partition(Table::Evals, &key)? {
            println!("{key}: already evaluated, skipped (--overwrite to redo)");
            continue;
        }
        let stage = key.stage.clone().unwrap_or_default();
        let model_dir = match &a.model {
            Some(m) => Some(m.clone()),
            None if a.prompts == 0 => None,
            None => Some(
                match stages
                    .iter()
                    .find(|s| s.stage == stage)
                    .and_then(|s| s.model_path.clone())
                {
                    Some(p) => PathBuf::from(p),
                    None => project.model_dir(&key.chain, &stage).with_context(|| {
                        format!("{key}: no model for the stage; pass --model DIR")
                    })?,
                },
            ),
        };
        let e = evaluate(lake, &key, model_dir.as_deref(), a)
            .with_context(|| format!("evaluating {key}; nothing was written"))?;
        let mut txn = Txn::begin(lake, a.overwrite)?;
        txn.write(Table::Evals, &key, &[eval_batch(&e, a)?])?;
        txn.commit()?;
        match &e.ce {
            Some(ce) => println!(
                "{key}: nmse {:.4} mean_l0 {:.1} frac_rec {:.4} (L_base {:.4}, L_sae {:.4}, L_{} {:.4}) kl_sae {:.4}",
                e.nmse,
                e.mean_l0,
                ce.frac_rec(),
                ce.l_base,
                ce.l_sae,
                a.ablation.name(),
                ce.l_ablation,
                ce.kl_sae
            ),
            None => println!("{key}: nmse {:.4} mean_l0 {:.1}", e.nmse, e.mean_l0),
        }
    }
    Ok(())
}

impl Ablation {
    pub fn name(self) -> &'static str {
        match self {
            Ablation::Mean => "mean",
            Ablation::Zero => "zero",
        }
    }
}

fn evaluate(
    lake: &Lake,
    key: &PartitionKey,
    model_dir: Option<&std::path::Path>,
    a: &EvalArgs,
) -> Result<Eval> {
    let sae = read_sae(lake, key)?;
    let layer = key.layer.unwrap_or(0);
    let act = PartitionKey::layer(&key.chain, key.stage.as_deref().unwrap_or(""), layer);
    let val = lake.activation_rows(&act, "val", 1)?;
    if val.is_empty() {
        bail!("activations {act} hold no val rows to measure NMSE on");
    }
    if val.d_model() != sae.d_model {
        bail!(
            "activations {act} are {} wide but the SAE expects d_model {}",
            val.d_model(),
            sae.d_model
        );
    }
    let mut rec = Reconstruction::default();
    val.for_each_batch(1024, None, &mut |b| {
        rec.add(&sae, b);
        Ok(())
    })?;
    let ce = match model_dir {
        Some(dir) if a.prompts > 0 => Some(ce_recovered(dir, &sae, layer as usize, a)?),
        _ => None,
    };
    Ok(Eval {
        nmse: rec.nmse(a.nmse_denom),
        mean_l0: rec.mean_l0(),
        n_val_rows: rec.rows(),
        ce,
    })
}

/// Mean over positions whose next token is real of KL(p_base ‖ p_other), per batch.
fn kl(base: &Tensor, other: &Tensor, mask: &Tensor) -> Result<f64> {
    let t = base.dim(1)?;
    let lb = candle_nn::ops::log_softmax(&base.narrow(1, 0, t - 1)?, D::Minus1)?;
    let lo = candle_nn::ops::log_softmax(&other.narrow(1, 0, t - 1)?, D::Minus1)?;
    let per = (lb.exp()? * (&lb - &lo)?)?.sum(D::Minus1)?;
    let real = mask.narrow(1, 1, t - 1)?.to_dtype(DType::F32)?;
    let sum = (per * &real)?.sum_all()?.to_scalar::<f32>()? as f64;
    Ok(sum / real.sum_all()?.to_scalar::<f32>()? as f64)
}

/// The SAE's reconstruction of a block output [B,T,H] at every position.
fn sae_splice(sae: &Sae, h: &Tensor) -> Result<Tensor> {
    let x: Vec<f32> = h
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let (x_hat, _) = reconstruct(sae, &x, &mut Scratch::default());
    Ok(Tensor::from_vec(x_hat, h.shape(), &Device::Cpu)?.to_device(h.device())?)
}

/// L_base, L_sae and the ablation's loss (and KL scores) on the first `a.prompts` questions.
fn ce_recovered(dir: &std::path::Path, sae: &Sae, layer: usize, a: &EvalArgs) -> Result<Ce> {
    let tok = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
    let dev = device(&a.device)?;
    let model = load_model(dir, &dev)?;
    if sae.d_model != model.config().hidden_size {
        bail!(
            "the SAE has d_model {} but {} has hidden size {}",
            sae.d_model,
            dir.display(),
            model.config().hidden_size
        );
    }
    let docs = read_questions(&a.data, Some(a.prompts))?;
    if docs.len() < a.prompts {
        eprintln!(
            "note: {} has only {} questions; using them all",
            a.data.display(),
            docs.len()
        );
    }
    let rows: Vec<Vec<u32>> = docs
        .iter()
        .map(|d| tok.encode(&d.question, a.max_len))
        .collect::<Result<_>>()?;
    let batches: Vec<&[Vec<u32>]> = rows.chunks(a.batch.max(1)).collect();
    let pad = tok.pad_id();
    let ablation = match a.ablation {
        Ablation::Mean => mean_output(&model, &rows[..a.mean_prompts.min(rows.len())], layer, pad, a.batch, &dev)?,
        Ablation::Zero => Tensor::zeros(sae.d_model, DType::F32, &dev)?,
    };
    let bar = super::progress(batches.len() as u64, &format!("CE loss, layer {layer}"));
    let mut sums = [0f64; 5];
    for rows in &batches {
        let b = PaddedBatch::new(rows.to_vec(), pad, &dev)?;
        let logits = |replace: Option<crate::model::Replace>| -> Result<Tensor> {
            let hooks = Hooks {
                capture: &[],
                replace: replace.map(|r| (layer, r)),
                logits: true,
            };
            model.forward(&b.ids, &b.mask, &hooks)?.logits.context("no logits")
        };
        let splice_sae = |h: &Tensor, m: &Tensor| -> Result<Tensor> {
            let r = sae_splice(sae, h)?;
            let m = m.to_dtype(DType::U8)?.unsqueeze(D::Minus1)?.broadcast_as(h.shape())?;
            Ok(m.where_cond(&r, h)?)
        };
        let splice_abl = |h: &Tensor, m: &Tensor| replace_real_with(h, m, &ablation);
        let base = logits(None)?;
        let with_sae = logits(Some(&splice_sae))?;
        let with_abl = logits(Some(&splice_abl))?;
        let loss = |l: &Tensor| -> Result<f64> {
            let (_, sum, count) = next_token_logprobs(l, &b.ids, &b.mask)?;
            Ok(sum / count as f64)
        };
        sums[0] += loss(&base)?;
        sums[1] += loss(&with_sae)?;
        sums[2] += loss(&with_abl)?;
        sums[3] += kl(&base, &with_sae, &b.mask)?;
        sums[4] += kl(&base, &with_abl, &b.mask)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n = batches.len() as f64;
    Ok(Ce {
        l_base: sums[0] / n,
        l_sae: sums[1] / n,
        l_ablation: sums[2] / n,
        kl_sae: sums[3] / n,
        kl_ablation: sums[4] / n,
        n_prompts: rows.len(),
    })
}

/// The real-token mean of block `layer`'s output over `rows`, accumulated in f64.
pub fn mean_output(
    model: &Qwen2,
    rows: &[Vec<u32>],
    layer: usize,
    pad: u32,
    batch: usize,
    dev: &Device,
) -> Result<Tensor> {
    let h = model.config().hidden_size;
    let (mut sum, mut count) = (vec![0f64; h], 0usize);
    for chunk in rows.chunks(batch.max(1)) {
        let b = PaddedBatch::new(chunk.to_vec(), pad, dev)?;
        let hooks = Hooks {
            capture: &[layer],
            replace: None,
            logits: false,
        };
        let out = model.forward(&b.ids, &b.mask, &hooks)?;
        let x: Vec<f32> = out.blocks[&layer].flatten_all()?.to_vec1()?;
        let t = b.ids.dim(1)?;
        for (r, len) in b.lengths.iter().enumerate() {
            for p in 0..*len {
                let row = &x[(r * t + p) * h..(r * t + p + 1) * h];
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += *v as f64);
                count += 1;
            }
        }
    }
    if count == 0 {
        bail!("no tokens to estimate the mean activation on");
    }
    let mean: Vec<f32> = sum.iter().map(|s| (s / count as f64) as f32).collect();
    Ok(Tensor::from_vec(mean, h, dev)?)
}

fn eval_batch(e: &Eval, a: &EvalArgs) -> Result<RecordBatch> {
    let ce = e.ce.as_ref();
    let f = |v: Option<f64>| Arc::new(Float64Array::from(vec![v]));
    Ok(RecordBatch::try_new(
        Table::Evals.file_schema(None),
        vec![
            f(Some(e.nmse)),
            f(Some(e.mean_l0)),
            f(ce.map(|c| c.l_base)),
            f(ce.map(|c| c.l_sae)),
            f(ce.map(|c| c.l_ablation)),
            f(ce.map(Ce::frac_rec)),
            Arc::new(Int64Array::from(vec![e.n_val_rows as i64])),
            Arc::new(Int32Array::from(vec![ce.map(|c| c.n_prompts as i32)])),
            Arc::new(StringArray::from(vec![a.nmse_denom.name()])),
            Arc::new(StringArray::from(vec![a.ablation.name()])),
            f(ce.map(|c| c.kl_sae)),
            f(ce.map(|c| c.kl_ablation)),
            f(ce.map(Ce::kl_rec)),
        ],
    )?)
}
