//! `saerl ingest`: run one checkpoint over GSM8k questions and store the residual stream of the
//! chosen blocks as `activations` (DESIGN.md, "Activation collection"), with `docs`, `vocab`
//! and the `stages` row.
//!
//! Batches are written as they finish into chunk files in a resumable staging directory
//! (`Lake::ingest_staging`); memory does not grow with the number of tokens. A rerun with the
//! same parameters continues after the last complete chunk and yields the same table; at the end
//! the chunks become the partitions in one commit. Layers whose partitions are already complete
//! are skipped (with a line saying so) unless `--overwrite`.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use crate::data::{read_questions, val_rows, Doc, SplitKind};
use crate::durable::AtomicFile;
use crate::lake::{
    activation_batch, check_name, vocab_batch, writer_properties, IngestStaging, Lake,
    PartitionKey, StageRow, Table, Txn,
};
use crate::model::{load_model_as, ModelDtype, Qwen2, Qwen2Config, TextTokenizer};
use crate::project::{DataSet, Project};
use crate::study::chain_defaults;
use crate::tables::docs_batch;

/// The flags of `saerl ingest` (the demo and benchmarks build it the same way).
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "ingest")]
pub struct Ingest {
    /// The chain the checkpoint belongs to.
    #[arg(long)]
    pub chain: String,
    /// The stage (checkpoint) name, e.g. `instruct_base` or `ppo_step10`.
    #[arg(long)]
    pub stage: String,
    /// The stage's PPO step (default: its step in saerl.toml, else from the name
    /// `instruct_base` / `ppo_stepN`).
    #[arg(long)]
    pub step: Option<i64>,
    /// Hugging Face checkpoint directory (default: the stage's model in saerl.toml).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub project: crate::commands::args::ProjectArg,
    /// Blocks whose output to store (0-based).
    #[arg(long, value_delimiter = ',', default_values_t = crate::study::LAYERS.iter().map(|&l| l as usize).collect::<Vec<_>>())]
    pub layers: Vec<usize>,
    /// Questions: JSON lines or Hugging Face Parquet with a `question` column (raw text, no chat
    /// template). Default: `[data] train` in saerl.toml.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Tokens kept per question (longer ones are truncated).
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    /// Questions per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Fraction of rows in the val split: 0 = all train, 1 = all val (a held-out prompt set).
    #[arg(long, default_value_t = 0.2)]
    pub val_frac: f64,
    /// How val rows are chosen: a seeded random permutation, or the last fraction.
    #[arg(long, value_enum, default_value = "random")]
    pub split: SplitKind,
    /// Seed of the random split.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    #[command(flatten)]
    pub device: crate::commands::args::DeviceArg,
    /// The precision the model computes in: f32 (the reference) or bf16 (faster on a GPU; the
    /// stored activations stay float32).
    #[arg(long, value_enum, default_value_t = ModelDtype::F32)]
    pub dtype: ModelDtype,
    #[command(flatten)]
    pub overwrite: crate::commands::args::Overwrite,
    /// When another saerl is ingesting the same stage into the lake, wait for it instead of
    /// failing.
    #[arg(long)]
    pub wait: bool,
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
    #[serde(default)]
    dtype: ModelDtype,
}

/// What one ingest will do: the questions as token rows, their split, and the blocks to store.
struct Plan {
    project: Project,
    step: i64,
    model_dir: PathBuf,
    data: PathBuf,
    tok: TextTokenizer,
    docs: Vec<Doc>,
    /// Token ids per question (truncated to --max-len).
    rows: Vec<Vec<u32>>,
    /// Per token, in document order: true for the val split.
    val: Vec<bool>,
    /// The blocks to collect now (the requested ones not yet in the lake, or all with
    /// --overwrite), ascending.
    layers: Vec<usize>,
    /// Whether `docs`/`vocab` must be written.
    write_docs: bool,
    d_model: usize,
}

impl Plan {
    fn n_rows(&self) -> usize {
        self.val.len()
    }

    /// Forward batches of `--batch` questions, grouped into chunks of `--chunk-batches`.
    fn chunks(&self, a: &Ingest) -> Vec<Vec<Range<usize>>> {
        let batches: Vec<Range<usize>> = (0..self.docs.len())
            .step_by(a.batch)
            .map(|s| s..(s + a.batch).min(self.docs.len()))
            .collect();
        batches.chunks(a.chunk_batches).map(<[_]>::to_vec).collect()
    }

    fn tokens_in(&self, chunk: &[Range<usize>]) -> u64 {
        chunk
            .iter()
            .flat_map(|r| self.rows[r.clone()].iter())
            .map(|r| r.len() as u64)
            .sum()
    }

    fn manifest(&self, a: &Ingest) -> Result<Manifest> {
        Ok(Manifest {
            model: std::path::absolute(&self.model_dir)?,
            data: std::path::absolute(&self.data)?,
            layers: self.layers.clone(),
            max_len: a.max_len,
            batch: a.batch,
            limit: a.limit,
            val_frac: a.val_frac,
            split: a.split,
            split_seed: a.split_seed,
            chunk_batches: a.chunk_batches,
            n_docs: self.docs.len(),
            n_rows: self.n_rows(),
            dtype: a.dtype,
        })
    }
}

/// What an ingest did: activation rows (real tokens) per layer (0 when everything asked for was
/// already in the lake), and the seconds spent loading the model and running it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub rows: usize,
    pub load_seconds: f64,
    pub forward_seconds: f64,
}

pub fn run(lake: &Lake, a: &Ingest) -> Result<Summary> {
    lake.recover()?;
    let staging = lake.ingest_staging(&a.chain, &a.stage);
    let _work = lake.lock_work(
        staging.lock_file(),
        &format!("ingesting chain {} stage {}", a.chain, a.stage),
    )?;
    let Some(plan) = plan(lake, a)? else {
        return Ok(Summary::default());
    };
    let started = std::time::Instant::now();
    // The model loads before anything is staged, so a bad checkpoint leaves the lake untouched.
    let model = match plan.layers.is_empty() {
        true => None,
        false => Some(load_model_as(
            &plan.model_dir,
            &a.device.open()?,
            a.dtype.dtype(),
        )?),
    };
    let load_seconds = started.elapsed().as_secs_f64();
    check_manifest(&staging, &plan.manifest(a)?, a)?;
    let started = std::time::Instant::now();
    let n_chunks = match &model {
        Some(m) => collect(&plan, m, &staging, a)?,
        None => plan.chunks(a).len(),
    };
    let forward_seconds = started.elapsed().as_secs_f64();
    publish(lake, &plan, &staging, n_chunks, a)?;
    super::say!(
        "ingested {} docs, {} tokens ({} val) of {} {} at blocks {:?} into {}",
        plan.docs.len(),
        plan.n_rows(),
        plan.val.iter().filter(|&&v| v).count(),
        a.chain,
        a.stage,
        plan.layers,
        lake.location()
    );
    Ok(Summary {
        rows: plan.n_rows(),
        load_seconds,
        forward_seconds,
    })
}

/// The blocks of `--layers` this run ingests: each checked against the model's `blocks`, those
/// already in the lake skipped (unless --overwrite).
fn layers_to_ingest(
    lake: &Lake,
    a: &Ingest,
    blocks: usize,
    model_dir: &Path,
) -> Result<Vec<usize>> {
    let mut requested = a.layers.clone();
    requested.sort();
    requested.dedup();
    if requested.is_empty() {
        bail!("--layers is empty");
    }
    if let Some(&l) = requested.iter().find(|&&l| l >= blocks) {
        bail!(
            "--layers {l} is beyond the model: {} has blocks 0..{}",
            model_dir.display(),
            blocks - 1
        );
    }
    let mut layers = Vec::new();
    for &l in &requested {
        let key = PartitionKey::layer(&a.chain, &a.stage, l as i32);
        if !*a.overwrite && lake.has_partition(Table::Activations, &key)? {
            super::say!("activations {key}: already ingested, skipped (--overwrite to replace)");
        } else {
            layers.push(l);
        }
    }
    Ok(layers)
}

/// Checks the flags, reads and tokenizes the questions; None when every requested partition is
/// complete already (and --overwrite is not given).
fn plan(lake: &Lake, a: &Ingest) -> Result<Option<Plan>> {
    check_name("chain", &a.chain)?;
    check_name("stage", &a.stage)?;
    if a.batch == 0 || a.max_len == 0 || a.chunk_batches == 0 {
        bail!("--batch and --max-len must be positive");
    }
    if !(0.0..=1.0).contains(&a.val_frac) {
        bail!("--val-frac must be between 0 and 1, got {}", a.val_frac);
    }
    let project = Project::load_or_default(&a.project)?;
    let step = project.step_of(&a.chain, &a.stage, a.step)?;
    let model_dir = match &a.model {
        Some(m) => m.clone(),
        None => project
            .model_dir(&a.chain, &a.stage)
            .context("pass --model DIR or declare the stage in saerl.toml")?,
    };
    let cfg = Qwen2Config::from_file(&model_dir.join("config.json"))?;
    let stage_key = PartitionKey::stage(&a.chain, &a.stage);
    let layers = layers_to_ingest(lake, a, cfg.num_hidden_layers, &model_dir)?;
    let have_docs = lake.has_partition(Table::Docs, &stage_key)?
        && lake.has_partition(Table::Vocab, &stage_key)?;
    if layers.is_empty() && have_docs {
        return Ok(None);
    }
    let data = project.data_file(a.data.as_deref(), DataSet::Train)?;
    let tok = TextTokenizer::from_file(&model_dir.join("tokenizer.json"))?;
    let docs = read_questions(&data, a.limit)?;
    let rows: Vec<Vec<u32>> = docs
        .iter()
        .map(|d| tok.encode(&d.question, a.max_len))
        .collect::<Result<_>>()?;
    let n_rows: usize = rows.iter().map(Vec::len).sum();
    if n_rows == 0 {
        bail!("{}: the questions tokenize to no tokens", data.display());
    }
    let write_docs = *a.overwrite || !have_docs;
    if !write_docs {
        // New layers of a stage already in the lake must come from the same questions.
        let stored: usize = lake
            .read_partition(Table::Docs, &stage_key)?
            .iter()
            .map(|b| b.num_rows())
            .sum();
        if stored != docs.len() {
            bail!(
                "{stage_key} was ingested from {stored} questions, but {} gives {}; use the same --data/--limit, or --overwrite to replace the stage",
                data.display(),
                docs.len()
            );
        }
    }
    Ok(Some(Plan {
        project,
        step,
        model_dir,
        data,
        tok,
        val: val_rows(n_rows, a.val_frac, a.split, a.split_seed)?,
        docs,
        rows,
        layers,
        write_docs,
        d_model: cfg.hidden_size,
    }))
}

/// A resumed run must have been started with the same parameters; a new one records them.
fn check_manifest(staging: &IngestStaging, manifest: &Manifest, a: &Ingest) -> Result<()> {
    let path = staging.manifest();
    if path.is_file() {
        let old: Option<Manifest> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        match old {
            Some(old) if old == *manifest => return Ok(()),
            Some(_) => bail!(
                "an interrupted ingest of {} {} with other parameters is staged in {}; rerun it with the same flags to resume, or delete that directory",
                a.chain,
                a.stage,
                staging.dir().display()
            ),
            // Unreadable (written before manifests were atomic): start over.
            None => std::fs::remove_dir_all(staging.dir())?,
        }
    }
    staging.write_manifest(&serde_json::to_string_pretty(manifest)?)
}

/// Runs the forward passes, writing each chunk's rows per layer into the staging directory;
/// chunks finished by an earlier run are skipped. Returns the number of chunks.
fn collect(plan: &Plan, model: &Qwen2, staging: &IngestStaging, a: &Ingest) -> Result<usize> {
    let chunks = plan.chunks(a);
    // Row offset of each document, to find its tokens' split flags.
    let offsets: Vec<usize> = plan
        .rows
        .iter()
        .scan(0, |acc, r| Some(std::mem::replace(acc, *acc + r.len())))
        .collect();
    let bar = super::progress(plan.n_rows() as u64, "tokens");
    let mut written = 0;
    for (c, chunk) in chunks.iter().enumerate() {
        if plan.layers.iter().all(|&l| staging.chunk(l, c).is_file()) {
            bar.inc(plan.tokens_in(chunk)); // done by an earlier, interrupted run
            continue;
        }
        if a.stop_after_chunks.is_some_and(|n| written >= n) {
            bail!("stopped after {written} chunk(s) as asked; rerun to resume");
        }
        write_chunk(plan, model, staging, c, chunk, &offsets, a.batch, &|n| {
            bar.inc(n)
        })?;
        written += 1;
    }
    bar.finish_and_clear();
    Ok(chunks.len())
}

/// Forward batches per window of questions sorted by length: the batches of a window hold
/// questions of similar length (less padding on devices that pad), and the window's rows are
/// written back in question order, so the stored table does not depend on it.
const BUCKET_BATCHES: usize = 4;

/// One chunk: its questions, a window at a time, through the model; every layer's rows into a
/// temporary file, renamed once all are complete (a chunk counts as done when every layer's
/// file has its final name). A second thread encodes each window's rows into Parquet while the
/// model runs the next window, so a GPU is not left idle during the writes.
#[allow(clippy::too_many_arguments)]
fn write_chunk(
    plan: &Plan,
    model: &Qwen2,
    staging: &IngestStaging,
    c: usize,
    chunk: &[Range<usize>],
    offsets: &[usize],
    batch: usize,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let d = plan.d_model;
    let mut writers = Vec::new();
    for &l in &plan.layers {
        let file = AtomicFile::create(&staging.chunk(l, c))?;
        let schema = Table::Activations.file_schema(Some(d as i32));
        writers.push(ArrowWriter::try_new(
            file,
            schema,
            Some(writer_properties(Table::Activations)),
        )?);
    }
    let docs: Vec<usize> = chunk.iter().flat_map(|r| r.clone()).collect();
    std::thread::scope(|scope| -> Result<()> {
        // One window in flight: the model's outputs wait at most one window for the writer.
        let (tx, rx) = std::sync::mpsc::sync_channel::<(&[usize], Vec<Vec<Vec<f32>>>)>(1);
        let writer = scope.spawn(move || -> Result<_> {
            for (window, outputs) in rx {
                write_window(plan, &mut writers, window, &outputs, offsets)?;
            }
            Ok(writers)
        });
        for window in docs.chunks(batch * BUCKET_BATCHES) {
            let mut by_len = window.to_vec();
            by_len.sort_by_key(|&doc| plan.rows[doc].len());
            // Per layer, each document's rows (in `window` order once gathered).
            let mut outputs: Vec<Vec<Vec<f32>>> =
                vec![vec![Vec::new(); window.len()]; plan.layers.len()];
            for group in by_len.chunks(batch) {
                let rows: Vec<Vec<u32>> = group.iter().map(|&doc| plan.rows[doc].clone()).collect();
                let out = model.block_outputs(&rows, &plan.layers, plan.tok.pad_id())?;
                for (li, l) in plan.layers.iter().enumerate() {
                    let mut at = 0;
                    for &doc in group {
                        let len = plan.rows[doc].len() * d;
                        let slot = doc - window[0];
                        outputs[li][slot] = out[l][at..at + len].to_vec();
                        at += len;
                    }
                }
                progress(rows.iter().map(Vec::len).sum::<usize>() as u64);
            }
            if tx.send((window, outputs)).is_err() {
                break; // the writer stopped: its error is returned below
            }
        }
        drop(tx);
        let writers = writer.join().expect("the Parquet writer thread panicked")?;
        for w in writers {
            w.into_inner()?.finish()?;
        }
        Ok(())
    })?;
    crate::fault::point("ingest.chunk");
    Ok(())
}

/// Appends one window's rows (per layer, per document in window order) to each layer's file.
fn write_window(
    plan: &Plan,
    writers: &mut [ArrowWriter<AtomicFile>],
    window: &[usize],
    outputs: &[Vec<Vec<f32>>],
    offsets: &[usize],
) -> Result<()> {
    let d = plan.d_model;
    for ((&l, w), per_doc) in plan.layers.iter().zip(writers.iter_mut()).zip(outputs) {
        let (mut doc_id, mut pos, mut token, mut flags, mut x) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (&doc, h) in window.iter().zip(per_doc) {
            if let Some(i) = h.iter().position(|x| !x.is_finite()) {
                bail!(
                    "non-finite activation at block {l}, doc {doc}, position {}: the checkpoint {} is broken",
                    i / d,
                    plan.model_dir.display()
                );
            }
            for (p, &id) in plan.rows[doc].iter().enumerate() {
                doc_id.push(plan.docs[doc].doc_id);
                pos.push(p as i32);
                token.push(id as i32);
                flags.push(plan.val[offsets[doc] + p]);
            }
            x.extend_from_slice(h);
        }
        w.write(&activation_batch(doc_id, pos, token, &flags, x, d)?)?;
    }
    Ok(())
}

/// Publishes the staged chunks as the layers' partitions, with `docs`, `vocab` and the `stages`
/// row, in one commit; then removes the staging directory.
fn publish(
    lake: &Lake,
    plan: &Plan,
    staging: &IngestStaging,
    n_chunks: usize,
    a: &Ingest,
) -> Result<()> {
    let stage_key = PartitionKey::stage(&a.chain, &a.stage);
    let mut txn = Txn::begin(lake, *a.overwrite)?;
    for &l in &plan.layers {
        let files: Vec<PathBuf> = (0..n_chunks).map(|c| staging.chunk(l, c)).collect();
        txn.adopt(
            Table::Activations,
            &PartitionKey::layer(&a.chain, &a.stage, l as i32),
            &files,
        )?;
    }
    if plan.write_docs {
        let dataset_split = if plan
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
            &[docs_batch(&plan.docs, dataset_split)?],
        )?;
        let vocab: Vec<(u32, String, String)> = (0..plan.tok.vocab_size() as u32)
            .filter_map(|id| {
                plan.tok.id_to_token(id).map(|t| {
                    let text = crate::model::token_text::symbol_text(&t);
                    (id, t, text)
                })
            })
            .collect();
        txn.write(Table::Vocab, &stage_key, &[vocab_batch(&vocab)?])?;
    }
    let declared = plan.project.stage(&a.chain, &a.stage).ok();
    let (reward, kl_coef) = match declared {
        Some((c, _)) => (c.reward.clone(), c.kl_coef),
        None => chain_defaults(&a.chain),
    };
    txn.upsert_stages(&[StageRow {
        chain: a.chain.clone(),
        stage: a.stage.clone(),
        step: plan.step,
        reward,
        kl_coef,
        model_path: Some(std::path::absolute(&plan.model_dir)?.display().to_string()),
    }]);
    txn.commit()?;
    lake.clear_staging(staging.dir())
}
