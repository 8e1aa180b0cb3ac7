//! `saerl eval`: the quality of each selected SAE into `evals` (DESIGN.md, "Quality metrics").
//! NMSE and mean L0 on the val split of the SAE's own stage (streamed); CE loss recovered with
//! the SAE's reconstruction spliced into the model at real-token positions, against an
//! ablation (the layer's real-token mean over the first 32 prompts, or zero), plus the KL
//! divergence from the untouched model. An SAE already evaluated is skipped unless `--overwrite`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use super::SaeSelection;
use crate::data::read_questions;
use crate::lake::{Lake, PartitionKey, Table, Txn};
use crate::model::scoring::{next_tokens, RowScores, TensorScores};
use crate::model::{
    load_model, replace_real_with, splice_real, Hooks, PaddedBatch, Qwen2, TextTokenizer,
};
use crate::project::{DataSet, Project};
use crate::sae::batch::BatchEncoder;
use crate::sae::quality::{Ce, Eval, NmseDenom, Reconstruction};
use crate::sae::Sae;
use crate::tables::{evals_batch, read_sae};

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
    /// Held-out questions for CE loss recovered: JSON lines or Hugging Face Parquet with a
    /// `question` column (default: `[data] test` in saerl.toml).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Prompts for CE loss recovered (the first N test questions); 0 skips it.
    #[arg(long, default_value_t = 100)]
    pub prompts: usize,
    /// Prompts the mean ablation vector is estimated on (the first of the N).
    #[arg(long, default_value_t = 32)]
    pub mean_prompts: usize,
    /// Prompts per forward pass of the CE loss measurement.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens kept per prompt (longer ones are truncated).
    #[arg(long, default_value_t = 256)]
    pub max_len: usize,
    /// The baseline the SAE is compared with: the layer's real-token mean (the study's) or zero.
    #[arg(long, value_enum, default_value_t = Ablation::Mean)]
    pub ablation: Ablation,
    /// NMSE's denominator: the variance of x (the study's) or its second moment.
    #[arg(long, value_enum, default_value_t = NmseDenom::Var)]
    pub nmse_denom: NmseDenom,
    #[command(flatten)]
    pub device: crate::commands::args::DeviceArg,
    #[command(flatten)]
    pub project: crate::commands::args::ProjectArg,
    #[command(flatten)]
    pub overwrite: crate::commands::args::Overwrite,
}

/// Where an eval's time went: loading models and SAEs (fixed), and the CE prompts (the rest is
/// the val rows).
#[derive(Debug, Clone, Copy, Default)]
pub struct EvalSummary {
    pub load_seconds: f64,
    pub ce_seconds: f64,
}

pub fn run(lake: &Lake, a: &EvalArgs) -> Result<EvalSummary> {
    lake.recover()?;
    let mut summary = EvalSummary::default();
    // One device for the models and the SAEs, so their tensors can meet.
    let dev = a.device.open()?;
    let mut keys = a.select.keys(lake)?;
    if !*a.overwrite {
        keys.retain(|key| match lake.has_partition(Table::Evals, key) {
            Ok(true) => {
                super::say!("{key}: already evaluated, skipped (--overwrite to redo)");
                false
            }
            _ => true,
        });
    }
    let project = Project::load_or_default(&a.project)?;
    // One model per stage: its SAEs share the untouched model's logits.
    let mut by_stage: Vec<(String, Vec<PartitionKey>)> = Vec::new();
    for key in keys {
        let stage = key.stage.clone().unwrap_or_default();
        match by_stage.iter_mut().find(|(s, _)| *s == stage) {
            Some((_, v)) => v.push(key),
            None => by_stage.push((stage, vec![key])),
        }
    }
    for (stage, keys) in by_stage {
        let reading = std::time::Instant::now();
        let saes = keys
            .iter()
            .map(|k| read_sae(lake, k))
            .collect::<Result<Vec<_>>>()?;
        summary.load_seconds += reading.elapsed().as_secs_f64();
        let layers: Vec<usize> = keys.iter().map(|k| k.layer.unwrap_or(0) as usize).collect();
        let ces = match a.prompts {
            0 => vec![None; saes.len()],
            _ => {
                let dir = model_dir(lake, &project, &stage, a)?;
                let started = std::time::Instant::now();
                let (ces, load) = ce_recovered(&dir, &project, &saes, &layers, &dev, a)
                    .with_context(|| format!("CE loss of stage {stage}; nothing was written"))?;
                summary.load_seconds += load;
                summary.ce_seconds += started.elapsed().as_secs_f64() - load;
                ces.into_iter().map(Some).collect()
            }
        };
        for ((key, sae), ce) in keys.iter().zip(&saes).zip(ces) {
            let mut e = reconstruction(lake, key, sae, &dev, a)
                .with_context(|| format!("evaluating {key}; nothing was written"))?;
            e.ce = ce;
            let mut txn = Txn::begin(lake, *a.overwrite)?;
            txn.write(Table::Evals, key, &[evals_batch(&e)?])?;
            txn.commit()?;
            report(key, &e);
        }
    }
    Ok(summary)
}

/// The stage's model: `--model`, else the `stages` table's model_path, else saerl.toml.
fn model_dir(lake: &Lake, project: &Project, stage: &str, a: &EvalArgs) -> Result<PathBuf> {
    if let Some(m) = &a.model {
        return Ok(m.clone());
    }
    let recorded = lake
        .read_stages(&a.select.chain)?
        .into_iter()
        .find(|s| s.stage == stage)
        .and_then(|s| s.model_path);
    match recorded {
        Some(p) => Ok(PathBuf::from(p)),
        None => project
            .model_dir(&a.select.chain, stage)
            .with_context(|| format!("stage {stage}: no model recorded; pass --model DIR")),
    }
}

fn report(key: &PartitionKey, e: &Eval) {
    match &e.ce {
        Some(ce) => super::say!(
            "{key}: nmse {:.4} mean_l0 {:.1} frac_rec {:.4} (L_base {:.4}, L_sae {:.4}, L_{} {:.4}) kl_sae {:.4}",
            e.nmse,
            e.mean_l0,
            ce.frac_rec(),
            ce.l_base,
            ce.l_sae,
            e.ablation,
            ce.l_ablation,
            ce.kl_sae
        ),
        None => super::say!("{key}: nmse {:.4} mean_l0 {:.1}", e.nmse, e.mean_l0),
    }
}

impl Ablation {
    pub fn name(self) -> &'static str {
        match self {
            Ablation::Mean => "mean",
            Ablation::Zero => "zero",
        }
    }
}

/// NMSE and mean L0 on the val rows of the SAE's own stage and layer.
fn reconstruction(
    lake: &Lake,
    key: &PartitionKey,
    sae: &Sae,
    dev: &Device,
    a: &EvalArgs,
) -> Result<Eval> {
    let act = key.activations();
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
    // The rows' mean first: the legacy explained variance centres each row on it.
    let mut mean = vec![0f64; sae.d_model];
    val.for_each_batch(4096, None, &mut |b| {
        for row in b.chunks(sae.d_model) {
            mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v as f64);
        }
        Ok(())
    })?;
    mean.iter_mut().for_each(|m| *m /= val.len() as f64);
    let mut rec = Reconstruction::new(mean, sae.d_sae);
    let mut encoder = BatchEncoder::new(sae, dev)?;
    let bar = super::progress(val.len() as u64, &format!("NMSE {key}"));
    val.for_each_batch(1024, None, &mut |b| {
        let (x_hat, l0, fired) = encoder.reconstruct_firing(b, sae.d_model)?;
        rec.add(b, &x_hat, &l0, &fired);
        bar.inc((b.len() / sae.d_model) as u64);
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok(Eval {
        nmse: rec.nmse(a.nmse_denom),
        nmse_denom: a.nmse_denom.name(),
        ablation: a.ablation.name(),
        mean_l0: rec.mean_l0(),
        n_val_rows: rec.rows(),
        core: rec.core(),
        ce: None,
    })
}

/// L_base, L_sae and the ablation's loss (and KL scores) on the first `a.prompts` held-out
/// questions, for each SAE (spliced at its layer) of one stage's model; and the seconds the
/// model took to load.
fn ce_recovered(
    dir: &Path,
    project: &Project,
    saes: &[Sae],
    layers: &[usize],
    dev: &Device,
    a: &EvalArgs,
) -> Result<(Vec<Ce>, f64)> {
    let tok = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
    let started = std::time::Instant::now();
    let model = load_model(dir, dev)?;
    let load = started.elapsed().as_secs_f64();
    let hidden = model.config().hidden_size;
    if let Some(s) = saes.iter().find(|s| s.d_model != hidden) {
        bail!(
            "an SAE has d_model {} but {} has hidden size {hidden}",
            s.d_model,
            dir.display()
        );
    }
    let data = project.data_file(a.data.as_deref(), DataSet::Test)?;
    let rows = prompt_rows(&tok, &data, a)?;
    let batches: Vec<&[Vec<u32>]> = rows.chunks(a.batch.max(1)).collect();
    // On the packed path the mean is taken from the first batches' base passes, kept for their
    // scores: the mean's prompts are the first of the scored ones, so no pass of its own.
    let (ablations, kept) = match (model.packs(), a.ablation) {
        (true, Ablation::Mean) => kept_means(&model, &batches, layers, a.mean_prompts)?,
        _ => (
            ablation_vectors(&model, &rows, layers, tok.pad_id(), a)?,
            Vec::new(),
        ),
    };
    let mut kept = kept.into_iter();
    let mut encoders = saes
        .iter()
        .map(|s| BatchEncoder::new(s, dev))
        .collect::<Result<Vec<_>>>()?;
    let bar = super::progress(batches.len() as u64, "CE loss recovered");
    // Per SAE: Σ over batches of (L_base, L_sae, L_ablation, KL_sae, KL_ablation).
    let mut sums = vec![[0f64; 5]; saes.len()];
    for rows in &batches {
        let scores = match model.packs() {
            true => {
                let out = match kept.next() {
                    Some(out) => out,
                    None => base_pass(&model, rows, layers)?,
                };
                score_packed(&model, rows, &out, &mut encoders, layers, &ablations)?
            }
            false => {
                let b = PaddedBatch::new(rows.to_vec(), tok.pad_id(), dev)?;
                score_padded(&model, &b, &encoders, layers, &ablations)?
            }
        };
        for (s, batch) in sums.iter_mut().zip(scores) {
            s.iter_mut().zip(batch).for_each(|(s, v)| *s += v);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n = batches.len() as f64;
    let ces = sums
        .iter()
        .map(|s| Ce {
            l_base: s[0] / n,
            l_sae: s[1] / n,
            l_ablation: s[2] / n,
            kl_sae: s[3] / n,
            kl_ablation: s[4] / n,
            n_prompts: rows.len(),
        })
        .collect();
    Ok((ces, load))
}

/// The first `a.prompts` questions of `data`, tokenized (raw text, at most `a.max_len` tokens).
fn prompt_rows(tok: &TextTokenizer, data: &Path, a: &EvalArgs) -> Result<Vec<Vec<u32>>> {
    let docs = read_questions(data, Some(a.prompts))?;
    if docs.len() < a.prompts {
        eprintln!(
            "note: {} has only {} questions; using them all",
            data.display(),
            docs.len()
        );
    }
    docs.iter()
        .map(|d| tok.encode(&d.question, a.max_len))
        .collect()
}

/// Per SAE, the vector its layer's real-token outputs are replaced by in the ablation: the
/// layer's real-token mean over the first `--mean-prompts` prompts (a pass of their own), or
/// zeros.
fn ablation_vectors(
    model: &Qwen2,
    rows: &[Vec<u32>],
    layers: &[usize],
    pad: u32,
    a: &EvalArgs,
) -> Result<Vec<Vec<f32>>> {
    match a.ablation {
        Ablation::Mean => {
            let mut means = Means::new(layers, model.config().hidden_size);
            let head = &rows[..a.mean_prompts.clamp(1, rows.len())];
            for chunk in head.chunks(a.batch.max(1)) {
                let tokens = chunk.iter().map(Vec::len).sum();
                means.add(&model.block_outputs(chunk, &means.layers, pad)?, tokens);
            }
            means.vectors(layers)
        }
        Ablation::Zero => Ok(vec![vec![0.0; model.config().hidden_size]; layers.len()]),
    }
}

/// The mean ablation's vectors on the packed path, from the base passes of the batches that
/// hold the first `mean_prompts` prompts (clamped to 1..all), with those passes to score them.
fn kept_means(
    model: &Qwen2,
    batches: &[&[Vec<u32>]],
    layers: &[usize],
    mean_prompts: usize,
) -> Result<(Vec<Vec<f32>>, Vec<Outputs>)> {
    let total: usize = batches.iter().map(|b| b.len()).sum();
    let mut left = mean_prompts.clamp(1, total.max(1));
    let mut means = Means::new(layers, model.config().hidden_size);
    let mut kept = Vec::new();
    for rows in batches {
        if left == 0 {
            break;
        }
        let out = base_pass(model, rows, layers)?;
        let head = left.min(rows.len());
        means.add(&out, rows[..head].iter().map(Vec::len).sum());
        left -= head;
        kept.push(out);
    }
    Ok((means.vectors(layers)?, kept))
}

/// Blocks' outputs at the real tokens of a batch, packed (`Qwen2::forward_packed`), by block.
type Outputs = BTreeMap<usize, Vec<f32>>;

/// Real-token sums of blocks' outputs, accumulated in f64, for the mean ablation.
struct Means {
    /// The distinct layers, ascending.
    layers: Vec<usize>,
    sums: Vec<Vec<f64>>,
    tokens: usize,
}

impl Means {
    fn new(layers: &[usize], hidden: usize) -> Self {
        let mut distinct = layers.to_vec();
        distinct.sort();
        distinct.dedup();
        let sums = vec![vec![0f64; hidden]; distinct.len()];
        Self {
            layers: distinct,
            sums,
            tokens: 0,
        }
    }

    /// Adds the first `tokens` packed tokens of each layer's outputs in `out`.
    fn add(&mut self, out: &Outputs, tokens: usize) {
        for (sum, layer) in self.sums.iter_mut().zip(&self.layers) {
            let h = sum.len();
            for row in out[layer][..tokens * h].chunks_exact(h) {
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += *v as f64);
            }
        }
        self.tokens += tokens;
    }

    /// The mean of each of `layers` (in their order, repeats allowed).
    fn vectors(&self, layers: &[usize]) -> Result<Vec<Vec<f32>>> {
        if self.tokens == 0 {
            bail!("no tokens to estimate the mean activation on");
        }
        let n = self.tokens as f64;
        Ok(layers
            .iter()
            .map(|l| {
                let sum = &self.sums[self.layers.binary_search(l).unwrap()];
                sum.iter().map(|v| (v / n) as f32).collect()
            })
            .collect())
    }
}

/// One batch's base pass on the packed CPU forward: every SAE's layer and the last block.
fn base_pass(model: &Qwen2, rows: &[Vec<u32>], layers: &[usize]) -> Result<Outputs> {
    let last = model.config().num_hidden_layers - 1;
    let capture: Vec<usize> = layers.iter().copied().chain([last]).collect();
    model.forward_packed(rows, &capture)
}

/// One batch of prompts through the packed CPU forward (real tokens only, the head only where a
/// next token is scored), given its `base_pass`: per SAE, (L_base, L_sae, L_ablation, KL_sae,
/// KL_ablation). The base pass captured every SAE's layer; each splice runs only the blocks
/// after it.
fn score_packed(
    model: &Qwen2,
    rows: &[Vec<u32>],
    out: &Outputs,
    encoders: &mut [BatchEncoder],
    layers: &[usize],
    ablations: &[Vec<f32>],
) -> Result<Vec<[f64; 5]>> {
    let cfg = model.config();
    let (d, last) = (cfg.hidden_size, cfg.num_hidden_layers - 1);
    let lens: Vec<usize> = rows.iter().map(Vec::len).collect();
    let after = |layer: usize, h: &[f32]| model.next_token_logits_packed(layer, h, &lens);
    let base = RowScores::new(
        &after(last, &out[&last])?,
        cfg.vocab_size,
        next_tokens(rows),
    )?;
    encoders
        .iter_mut()
        .zip(layers)
        .zip(ablations)
        .map(|((encoder, &layer), ablation)| {
            let h = &out[&layer];
            let (l_sae, kl_sae) = base.score(&after(layer, &encoder.reconstruct(h, d)?.0)?)?;
            let (l_abl, kl_abl) = base.score(&after(layer, &ablation.repeat(h.len() / d))?)?;
            Ok([base.nll(), l_sae, l_abl, kl_sae, kl_abl])
        })
        .collect()
}

/// `score_packed` on the padded forward, for models on other devices.
fn score_padded(
    model: &Qwen2,
    b: &PaddedBatch,
    encoders: &[BatchEncoder],
    layers: &[usize],
    ablations: &[Vec<f32>],
) -> Result<Vec<[f64; 5]>> {
    let mut out = model.forward(
        &b.ids,
        &b.mask,
        &Hooks {
            capture: layers,
            replace: None,
            logits: true,
        },
    )?;
    let base = TensorScores::new(out.logits.take().context("no logits")?, b)?;
    let after = |layer: usize, h: Tensor| -> Result<(f64, f64)> {
        base.score(&model.logits_after(layer, &h, &b.mask)?)
    };
    encoders
        .iter()
        .zip(layers)
        .zip(ablations)
        .map(|((encoder, &layer), ablation)| {
            let h = &out.blocks[&layer];
            let (l_sae, kl_sae) = after(
                layer,
                splice_real(h, &b.mask, &encoder.reconstruct_tensor(h)?)?,
            )?;
            let ablation = Tensor::from_slice(ablation, ablation.len(), h.device())?;
            let ablated = replace_real_with(h, &b.mask, &ablation.to_dtype(h.dtype())?)?;
            let (l_abl, kl_abl) = after(layer, ablated)?;
            Ok([base.nll(), l_sae, l_abl, kl_sae, kl_abl])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::random::{write_model, TinyShape};

    /// On a random model, the packed forward's scores (real tokens, the head at the scored
    /// positions) equal the padded forward's (the path of other devices) for sequences of
    /// different lengths, and a splice and an ablation move them.
    #[test]
    fn packed_scores_match_the_padded_forward() {
        let dir = tempfile::tempdir().unwrap();
        let shape = TinyShape {
            hidden: 32,
            layers: 3,
            heads: 4,
            kv_heads: 2,
            intermediate: 48,
        };
        let vocab = 61;
        write_model(dir.path(), &shape, vocab, 5, None).unwrap();
        let model = crate::model::load_model(dir.path(), &Device::Cpu).unwrap();
        assert!(model.packs());
        let mut rng = crate::rng::SplitMix64::new(3);
        let rows: Vec<Vec<u32>> = [6usize, 2, 9]
            .iter()
            .map(|&len| (0..len).map(|_| rng.below(vocab) as u32).collect())
            .collect();
        let layers = [0, 2];
        let saes: Vec<Sae> = (0..layers.len() as u64)
            .map(|seed| crate::sae::train::cold_start(vec![0.1; shape.hidden], 64, 4, seed))
            .collect();
        let mut encoders: Vec<BatchEncoder> = saes
            .iter()
            .map(|s| BatchEncoder::new(s, &Device::Cpu).unwrap())
            .collect();
        // The means from kept base passes (batches of 2, the first 3 prompts) are those of a
        // pass of their own.
        let batches: Vec<&[Vec<u32>]> = rows.chunks(2).collect();
        let (ablations, kept) = kept_means(&model, &batches, &layers, 3).unwrap();
        assert_eq!(kept.len(), 2);
        let args = [
            "eval",
            "--chain",
            "c",
            "--mean-prompts",
            "3",
            "--batch",
            "2",
        ];
        let args = <EvalArgs as clap::Parser>::try_parse_from(args).unwrap();
        let own = ablation_vectors(&model, &rows, &layers, 0, &args).unwrap();
        for (k, o) in ablations.iter().zip(&own) {
            k.iter()
                .zip(o)
                .for_each(|(k, o)| assert!((k - o).abs() <= 1e-6, "{k} vs {o}"));
        }
        assert_ne!(ablations[0], ablations[1]);
        let out = base_pass(&model, &rows, &layers).unwrap();
        let packed = score_packed(&model, &rows, &out, &mut encoders, &layers, &ablations).unwrap();
        let b = PaddedBatch::new(rows.clone(), 0, &Device::Cpu).unwrap();
        let padded = score_padded(&model, &b, &encoders, &layers, &ablations).unwrap();
        for (p, q) in packed.iter().zip(&padded) {
            for (a, b) in p.iter().zip(q) {
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{p:?} {q:?}");
            }
            assert!(p[1] != p[0] && p[2] != p[0] && p[3] > 0.0, "{p:?}");
        }
    }
}
