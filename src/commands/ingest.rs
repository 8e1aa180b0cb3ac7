//! `saerl ingest`: run one checkpoint over GSM8k questions and store the residual stream of the
//! chosen blocks as `activations` (DESIGN.md, "Activation collection"), with `docs`, `vocab`
//! and the `stages` row.
//!
//! Batches are written as they finish into chunk files in a resumable staging directory
//! (`<lake>/.tmp/ingest-<chain>-<stage>/`); memory does not grow with the number of tokens.
//! A rerun with the same parameters continues after the last complete chunk and yields the same
//! table; at the end the chunks become the partitions in one commit.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use crate::data::{read_questions, val_rows, SplitKind};
use crate::lake::{
    activation_batch, check_name, docs_batch, infer_step, vocab_batch, writer_properties, Lake,
    PartitionKey, StageRow, Table, Txn,
};
use crate::model::{device, load_model, Hooks, PaddedBatch, Qwen2Config, TextTokenizer};
use crate::project::Project;
use crate::study::chain_defaults;

/// The flags of `saerl ingest` (the demo and benchmarks build it the same way).
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "ingest")]
pub struct Ingest {
    #[arg(long)]
    pub chain: String,
    #[arg(long)]
    pub stage: String,
    /// Hugging Face checkpoint directory (default: the stage's model in saerl.toml).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Project file declaring chains and stages.
    #[arg(long, default_value = "saerl.toml")]
    pub project: PathBuf,
    /// Blocks whose output to store (0-based).
    #[arg(long, value_delimiter = ',', default_value = "6,12,18,23")]
    pub layers: Vec<usize>,
    /// JSON lines with a "question" field (raw text, no chat template).
    #[arg(long, default_value = crate::study::GSM8K_TRAIN)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 0.2)]
    pub val_frac: f64,
    #[arg(long, value_enum, default_value = "random")]
    pub split: SplitKind,
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Replace partitions that already exist.
    #[arg(long)]
    pub overwrite: bool,
    /// Forward batches per chunk file (the unit of resumption).
    #[arg(long, default_value_t = 32, hide = true)]
    pub chunk_batches: usize,
    /// Stop after this many new chunks, as an interruption would (for tests).
    #[arg(long, hide = true)]
    pub stop_after_chunks: Option<usize>,
}

impl Ingest {
    /// Parses ingest flags given as words, e.g. from the demo.
    pub fn from_flags<I: IntoIterator<Item = S>, S: Into<std::ffi::OsString> + Clone>(
        flags: I,
    ) -> Result<Self> {
        use clap::Parser;
        Ok(Self::try_parse_from(
            std::iter::once("ingest".into()).chain(flags.into_iter().map(Into::into)),
        )?)
    }
}

/// Everything that determines the table; a resumed run must match it exactly.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Manifest {
    model: PathBuf,
    data: PathBuf,
    layers: Vec<usize>,
    max_len: usize,
    batch: usize,
    limit: Option<usize>,
    val_frac: f64,
    split: SplitKind,
    split_seed: u64,
    chunk_batches: usize,
    n_docs: usize,
    n_rows: usize,
}

fn chunk_path(staging: &Path, layer: usize, chunk: usize) -> PathBuf {
    staging
        .join(format!("layer={layer}"))
        .join(format!("part-{chunk:05}.parquet"))
}

/// Returns the number of activation rows (real tokens) per layer.
pub fn run(lake: &Lake, a: &Ingest) -> Result<usize> {
    check_name("chain", &a.chain)?;
    check_name("stage", &a.stage)?;
    if a.batch == 0 || a.max_len == 0 || a.chunk_batches == 0 {
        bail!("--batch and --max-len must be positive");
    }
    let project = Project::load_or_default(&a.project)?;
    let model_dir = match &a.model {
        Some(m) => m.clone(),
        None => project
            .model_dir(&a.chain, &a.stage)
            .context("pass --model DIR or declare the stage in saerl.toml")?,
    };
    let cfg = Qwen2Config::from_file(&model_dir.join("config.json"))?;
    let mut layers = a.layers.clone();
    layers.sort();
    layers.dedup();
    if layers.is_empty() {
        bail!("--layers is empty");
    }
    if let Some(&l) = layers.iter().find(|&&l| l >= cfg.num_hidden_layers) {
        bail!(
            "--layers {l} is beyond the model: {} has blocks 0..{}",
            model_dir.display(),
            cfg.num_hidden_layers - 1
        );
    }
    let tok = TextTokenizer::from_file(&model_dir.join("tokenizer.json"))?;
    let dev = device(&a.device)?;
    let model = load_model(&model_dir, &dev)?;
    let docs = read_questions(&a.data, a.limit)?;
    let rows: Vec<Vec<u32>> = docs
        .iter()
        .map(|d| tok.encode(&d.question, a.max_len))
        .collect::<Result<_>>()?;
    let n_rows: usize = rows.iter().map(Vec::len).sum();
    if n_rows == 0 {
        bail!("{}: the questions tokenize to no tokens", a.data.display());
    }
    let val = val_rows(n_rows, a.val_frac, a.split, a.split_seed)?;

    let stage_key = PartitionKey::stage(&a.chain, &a.stage);
    let layer_key = |l: usize| PartitionKey::layer(&a.chain, &a.stage, l as i32);
    let mut txn = Txn::begin(lake, a.overwrite)?;
    for &l in &layers {
        txn.check_free(Table::Activations, &layer_key(l))?;
    }
    txn.check_free(Table::Docs, &stage_key)?;
    txn.check_free(Table::Vocab, &stage_key)?;

    let manifest = Manifest {
        model: std::path::absolute(&model_dir)?,
        data: std::path::absolute(&a.data)?,
        layers: layers.clone(),
        max_len: a.max_len,
        batch: a.batch,
        limit: a.limit,
        val_frac: a.val_frac,
        split: a.split,
        split_seed: a.split_seed,
        chunk_batches: a.chunk_batches,
        n_docs: docs.len(),
        n_rows,
    };
    let staging = lake
        .tmp_root()
        .join(format!("ingest-{}-{}", a.chain, a.stage));
    let manifest_path = staging.join("manifest.json");
    if manifest_path.is_file() {
        let old: Manifest = serde_json::from_str(&std::fs::read_to_string(&manifest_path)?)
            .with_context(|| format!("reading {}", manifest_path.display()))?;
        if old != manifest {
            bail!(
                "an interrupted ingest of {} {} with other parameters is staged in {}; rerun it with the same flags to resume, or delete that directory",
                a.chain,
                a.stage,
                staging.display()
            );
        }
    } else {
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("creating {}", staging.display()))?;
        std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest)?)?;
    }

    let d = cfg.hidden_size;
    let pad = tok.pad_id();
    // Row offset of each document, to find its tokens' split flags.
    let offsets: Vec<usize> = rows
        .iter()
        .scan(0, |acc, r| Some(std::mem::replace(acc, *acc + r.len())))
        .collect();
    let batches: Vec<std::ops::Range<usize>> = (0..docs.len())
        .step_by(a.batch)
        .map(|s| s..(s + a.batch).min(docs.len()))
        .collect();
    let chunks: Vec<&[std::ops::Range<usize>]> = batches.chunks(a.chunk_batches).collect();
    let tokens_of = |c: &[std::ops::Range<usize>]| -> u64 {
        c.iter()
            .flat_map(|r| rows[r.clone()].iter())
            .map(|r| r.len() as u64)
            .sum()
    };

    let bar = super::progress(n_rows as u64, "tokens");
    let mut written = 0;
    for (c, chunk) in chunks.iter().enumerate() {
        if layers.iter().all(|&l| chunk_path(&staging, l, c).is_file()) {
            bar.inc(tokens_of(chunk)); // done by an earlier, interrupted run
            continue;
        }
        if a.stop_after_chunks.is_some_and(|n| written >= n) {
            bail!("stopped after {written} chunk(s) as asked; rerun to resume");
        }
        let mut writers = Vec::new();
        for &l in &layers {
            let path = chunk_path(&staging, l, c);
            std::fs::create_dir_all(path.parent().unwrap())?;
            let tmp = path.with_extension("parquet.tmp");
            let file = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            let schema = Table::Activations.file_schema(Some(d as i32));
            writers.push((
                ArrowWriter::try_new(file, schema, Some(writer_properties(Table::Activations)))?,
                tmp,
                path,
            ));
        }
        for range in chunk.iter() {
            let batch = PaddedBatch::new(rows[range.clone()].to_vec(), pad, &dev)?;
            let out = model.forward(
                &batch.ids,
                &batch.mask,
                &Hooks {
                    capture: &layers,
                    ..Default::default()
                },
            )?;
            for (&l, (w, _, _)) in layers.iter().zip(writers.iter_mut()) {
                let h: Vec<f32> = out.blocks[&l].flatten_all()?.to_vec1()?;
                let t = batch.ids.dim(1)?;
                let (mut doc_id, mut pos, mut token, mut flags, mut x) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for (i, doc) in range.clone().enumerate() {
                    for (p, &id) in rows[doc].iter().enumerate() {
                        let v = &h[(i * t + p) * d..(i * t + p + 1) * d];
                        if v.iter().any(|x| !x.is_finite()) {
                            bail!("non-finite activation at block {l}, doc {doc}, position {p}: the checkpoint {} is broken", model_dir.display());
                        }
                        doc_id.push(docs[doc].doc_id);
                        pos.push(p as i32);
                        token.push(id as i32);
                        flags.push(val[offsets[doc] + p]);
                        x.extend_from_slice(v);
                    }
                }
                w.write(&activation_batch(doc_id, pos, token, &flags, x, d)?)?;
            }
            bar.inc(batch.lengths.iter().sum::<usize>() as u64);
        }
        // A chunk counts as complete once every layer's file has its final name.
        for (w, tmp, path) in writers {
            w.close()?;
            std::fs::rename(&tmp, &path)?;
        }
        written += 1;
    }
    bar.finish_and_clear();

    for &l in &layers {
        let files: Vec<PathBuf> = (0..chunks.len())
            .map(|c| chunk_path(&staging, l, c))
            .collect();
        txn.adopt(Table::Activations, &layer_key(l), &files)?;
    }
    let dataset_split = if a
        .data
        .file_stem()
        .is_some_and(|s| s.to_string_lossy().contains("test"))
    {
        "test"
    } else {
        "train"
    };
    txn.write(
        Table::Docs,
        &stage_key,
        &[docs_batch(&docs, dataset_split)?],
    )?;
    let vocab: Vec<(u32, String)> = (0..tok.vocab_size() as u32)
        .filter_map(|id| tok.id_to_token(id).map(|t| (id, t)))
        .collect();
    txn.write(Table::Vocab, &stage_key, &[vocab_batch(&vocab)?])?;
    let (reward, kl_coef) = match project.stage(&a.chain, &a.stage) {
        Ok((c, _)) => (c.reward.clone(), c.kl_coef),
        Err(_) => chain_defaults(&a.chain),
    };
    let step = project
        .stage(&a.chain, &a.stage)
        .ok()
        .and_then(|(_, s)| s.step)
        .map_or_else(|| infer_step(&a.stage), Ok)?;
    txn.upsert_stages(&[StageRow {
        chain: a.chain.clone(),
        stage: a.stage.clone(),
        step,
        reward,
        kl_coef,
        model_path: Some(manifest.model.display().to_string()),
    }])?;
    txn.commit()?;
    std::fs::remove_dir_all(&staging).ok();
    let _ = std::fs::remove_dir(lake.tmp_root()); // only if no other staging is in progress
    println!(
        "ingested {} docs, {n_rows} tokens ({} val) of {} {} at blocks {:?} into {}",
        docs.len(),
        val.iter().filter(|&&v| v).count(),
        a.chain,
        a.stage,
        layers,
        lake.root().display()
    );
    Ok(n_rows)
}
