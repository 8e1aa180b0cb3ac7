//! `saerl bench ingest`: activation collection with a random model of Qwen2.5-0.5B's exact shape
//! over GSM8k questions (blocks 6/12/18/23, batch 16), against transformers (`ref_ingest.py`)
//! on the same questions and tokenizer; peak RSS against the model's f32 weights.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;

use super::References;
use super::{gemm::gflops, gib, peak_rss, questions_file, ratio_line, reset_peak_rss, work_dir};
use crate::commands::ingest::{run as ingest, Ingest};
use crate::data::read_questions;
use crate::lake::{Lake, PartitionKey};
use crate::model::random::{write_model, write_tokenizer, TinyShape};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchIngest {
    /// Questions to run.
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Questions (JSON lines or Parquet; default: the GSM8k sample built into saerl).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A tokenizer.json (default: a byte-level BPE trained on the questions).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Keep (and reuse) the generated model in this directory.
    #[arg(long)]
    pub keep: Option<PathBuf>,
    #[command(flatten)]
    pub device: crate::commands::args::DeviceArg,
    /// The precision the model computes in; with bf16 the benchmark also reports how far bf16
    /// activations are from f32 ones.
    #[arg(long, value_enum, default_value_t = crate::model::ModelDtype::F32)]
    pub dtype: crate::model::ModelDtype,
}

/// Transformers' CPU f32 throughput on this machine kind (shared/bench/README.md).
const TRANSFORMERS_TOKENS_PER_S: f64 = 147.0;

const QWEN_05B: TinyShape = TinyShape {
    hidden: 896,
    layers: 24,
    heads: 14,
    kv_heads: 2,
    intermediate: 4864,
};
const VOCAB: usize = 151_936;

pub fn run(a: &BenchIngest, refs: &References) -> Result<()> {
    let (_tmp, work) = work_dir(&None)?;
    let model_dir = a.keep.clone().unwrap_or_else(|| work.join("model"));
    let data = questions_file(&a.data, &work)?;
    let shape = &QWEN_05B;
    random_qwen(&model_dir, a.tokenizer.as_deref(), || {
        Ok(read_questions(&data, None)?
            .into_iter()
            .map(|d| d.question)
            .collect())
    })?;
    let lake = Lake::new(work.join("lake"));
    reset_peak_rss();
    let t = Instant::now();
    let mut args = Ingest::from_flags([
        "--chain",
        "bench",
        "--stage",
        "instruct_base",
        "--layers",
        "6,12,18,23",
        "--device",
        a.device.name(),
    ])?;
    args.dtype = a.dtype;
    (args.model, args.data, args.limit) = (Some(model_dir.clone()), Some(data.clone()), Some(a.n));
    args.project = crate::commands::args::ProjectArg::new(work.join("saerl.toml"));
    let summary = ingest(&lake, &args)?;
    let tokens = summary.rows;
    // Like the reference, the rate is of collection: the forward passes and the writes, after
    // the model is loaded.
    let secs = summary.forward_seconds;
    println!(
        "  (model load {:.1} s, collection {secs:.1} s, {:.1} s in all)",
        summary.load_seconds,
        t.elapsed().as_secs_f64()
    );
    let rss = peak_rss().unwrap_or(0);
    let (flops_per_token, weights) = cost(shape);
    let tps = tokens as f64 / secs;
    let achieved = tps * flops_per_token / 1e9;
    println!(
        "saerl ingest ({}): {tokens} tokens in {secs:.1} s = {tps:.0} tokens/s; peak RSS {:.2} GiB = f32 weights {:.2} GiB + {:.2} GiB (target ≤ + 0.5)",
        a.device,
        gib(rss),
        weights / (1u64 << 30) as f64,
        (rss as f64 - weights) / (1u64 << 30) as f64
    );
    if *a.device == crate::commands::args::Device::Cpu {
        let gemm = gflops(1024, 896, 4864, true);
        println!(
            "  model linear layers: {achieved:.1} GFLOP/s achieved vs the GEMM at 1024×896×4864: {gemm:.1} GFLOP/s ({:.0}%)",
            100.0 * achieved / gemm
        );
    }
    compare_with_transformers(refs, &data, &model_dir, a.n, tps);
    if a.dtype == crate::model::ModelDtype::Bf16 {
        bf16_difference(&work, &model_dir, &data, a.device.name())?;
    }
    Ok(())
}

/// Writes a random Qwen2.5-0.5B-shaped model into `dir` unless one is there, with `tokenizer`
/// or else a BPE trained on `texts()`.
pub(super) fn random_qwen(
    dir: &Path,
    tokenizer: Option<&Path>,
    texts: impl FnOnce() -> Result<Vec<String>>,
) -> Result<()> {
    if dir.join("model.safetensors").is_file() {
        return Ok(());
    }
    let t = Instant::now();
    write_tokenizer(dir, tokenizer, &texts()?)?;
    write_model(dir, &QWEN_05B, VOCAB, 0, None)?;
    println!(
        "wrote a random Qwen2.5-0.5B-shaped model to {} in {:.1} s",
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// transformers' rate on the same questions, model and thread count (`ref_ingest.py`), beside
/// saerl's `tps`.
fn compare_with_transformers(refs: &References, data: &Path, model_dir: &Path, n: usize, tps: f64) {
    let threads = rayon::current_num_threads().to_string();
    let (data_s, model_s) = (data.display().to_string(), model_dir.display().to_string());
    let n = n.to_string();
    let args: [&str; 6] = [&data_s, &model_s, "--n", &n, "--threads", &threads];
    let reference = refs
        .script("ref_ingest.py", &args)
        .and_then(|out| super::figure_before(&out, "tokens/s"));
    ratio_line(
        "transformers, same questions and tokenizer (tokens/s)",
        tps,
        reference,
        Some(TRANSFORMERS_TOKENS_PER_S),
        1.5,
    );
}

/// A model's forward FLOP per token and its f32 weights' bytes.
fn cost(shape: &TinyShape) -> (f64, f64) {
    let (h, i, kv) = (
        shape.hidden as f64,
        shape.intermediate as f64,
        (shape.kv_heads * shape.hidden / shape.heads) as f64,
    );
    // Linear layers of every block up to the deepest captured one (23 = all 24); attention's
    // T×T products are small next to them at GSM8k lengths and are left out.
    let block = 2.0 * h * h + 2.0 * h * kv + 3.0 * h * i;
    let flops_per_token = shape.layers as f64 * 2.0 * block;
    let weights =
        4.0 * (shape.layers as f64 * (block + 2.0 * h + 2.0 * kv + h) + VOCAB as f64 * h + h);
    (flops_per_token, weights)
}

/// bf16 against f32: 16 questions ingested both ways, the relative RMS difference per layer.
pub(super) fn bf16_difference(work: &Path, model: &Path, train: &Path, device: &str) -> Result<()> {
    let mut rows = Vec::new();
    for dtype in ["f32", "bf16"] {
        let lake = Lake::new(work.join(format!("lake-{dtype}")));
        let mut args = Ingest::from_flags([
            "--chain",
            "check",
            "--stage",
            "instruct_base",
            "--layers",
            "6,12,18,23",
            "--limit",
            "16",
            "--dtype",
            dtype,
            "--device",
            device,
            "--overwrite",
        ])?;
        (args.model, args.data) = (Some(model.to_path_buf()), Some(train.to_path_buf()));
        args.project = crate::commands::args::ProjectArg::new(work.join("none.toml"));
        ingest(&lake, &args)?;
        let mut per_layer = Vec::new();
        for l in crate::study::LAYERS {
            let key = PartitionKey::layer("check", "instruct_base", *l);
            per_layer.push(lake.activation_rows(&key, "train", 1)?.read_all()?);
        }
        rows.push(per_layer);
    }
    println!("  bf16 against f32 activations (16 questions), relative RMS difference per layer:");
    for (l, (a, b)) in crate::study::LAYERS
        .iter()
        .zip(rows[0].iter().zip(&rows[1]))
    {
        let (mut diff, mut norm) = (0f64, 0f64);
        for (x, y) in a.iter().zip(b) {
            diff += ((x - y) as f64).powi(2);
            norm += (*x as f64).powi(2);
        }
        println!(
            "    layer {l}: {:.2e}",
            (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
        );
    }
    Ok(())
}
