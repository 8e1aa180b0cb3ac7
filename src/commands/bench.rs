//! `saerl bench sql`: the drift query over a full-size synthetic chain (8 stages × layers
//! 6/12/18/23, d_model 896, d_sae 7168), timed, with peak RSS, and DuckDB on the same files
//! when its Python package is installed.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use rand::SeedableRng;

use crate::lake::{Lake, Table, Txn};
use crate::sql::saved::QUERIES;
use crate::sql::{open_session, run_sql};
use crate::study::{stage_name, CHAINS, LAYERS};
use crate::synth::{write_chain, ChainPlan};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum BenchWhat {
    /// SAE training steps at the study's shape (d 896, d_sae 7168, k 64, batch 512).
    Train {
        #[arg(long, default_value_t = 8)]
        steps: usize,
    },
    /// Feature statistics over synthetic rows at the study's shape (d 896, d_sae 7168, k 64).
    Stats {
        /// Rows (the study's full train split of one stage and layer: 445,744).
        #[arg(long, default_value_t = 445_744)]
        rows: usize,
    },
    /// Activation collection with a random model of Qwen2.5-0.5B's exact shape.
    Ingest(BenchIngest),
    /// Time decoder_drift.sql over a full-size synthetic chain.
    Sql(BenchSql),
}

pub async fn run(a: &BenchArgs) -> Result<()> {
    match &a.what {
        BenchWhat::Train { steps } => train(*steps),
        BenchWhat::Stats { rows } => stats(*rows),
        BenchWhat::Ingest(b) => ingest(b),
        BenchWhat::Sql(b) => sql(b).await,
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchSql {
    #[arg(long, default_value_t = 8)]
    pub stages: usize,
    #[arg(long, default_value_t = 896)]
    pub d_model: usize,
    #[arg(long, default_value_t = 7168)]
    pub d_sae: usize,
    #[arg(long, default_value_t = 64)]
    pub k: usize,
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Keep (and reuse) the generated lake in this directory.
    #[arg(long)]
    pub keep: Option<PathBuf>,
}

/// Peak resident set size of this process, in bytes (Linux).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Restarts peak-RSS accounting from the current RSS (Linux ≥ 4.0), so a figure covers one phase.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

pub async fn sql(a: &BenchSql) -> Result<()> {
    let tmp;
    let root = match &a.keep {
        Some(p) => p.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().join("lake")
        }
    };
    let lake = Lake::new(&root);
    // The flexible chain's steps, extended by 40 per stage if more are asked for.
    let flexible = CHAINS[0].steps;
    let steps: Vec<i64> = (0..a.stages)
        .map(|i| {
            flexible.get(i).copied().unwrap_or_else(|| {
                flexible[flexible.len() - 1] + 40 * (i + 1 - flexible.len()) as i64
            })
        })
        .collect();
    let plan = ChainPlan {
        chain: "flexible".into(),
        reward: Some("flexible".into()),
        kl_coef: Some(0.005),
        steps,
        saes: LAYERS.iter().map(|&l| (l, a.k)).collect(),
        d_model: a.d_model,
        d_sae: a.d_sae,
        rate: 1.0,
    };
    if lake.partitions(Table::Features)?.is_empty() {
        let n = (plan.saes.len() * plan.steps.len()) as u64;
        let bar = super::progress(n, "generating SAEs");
        let t = Instant::now();
        let mut txn = Txn::begin(&lake, false)?;
        write_chain(&mut txn, &plan, || bar.inc(1))?;
        txn.commit()?;
        bar.finish_and_clear();
        println!(
            "generated {n} SAEs ({} … {}) in {:.1} s",
            stage_name(plan.steps[0]),
            stage_name(*plan.steps.last().unwrap()),
            t.elapsed().as_secs_f64()
        );
    }
    let bytes: u64 = lake
        .files(Table::Features)?
        .iter()
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum();
    let feature_rows = (plan.saes.len() * plan.steps.len() * a.d_sae) as f64;
    let pairs = (plan.saes.len() * (plan.steps.len() - 1) * a.d_sae) as f64;
    println!(
        "lake {}: features {:.2} GiB, {feature_rows} feature rows, {pairs} feature pairs to compare",
        root.display(),
        gib(bytes)
    );

    let sql = QUERIES
        .iter()
        .find(|(n, _)| *n == "decoder_drift")
        .unwrap()
        .1;
    reset_peak_rss();
    let ctx = open_session(&lake).await?;
    let mut best = f64::INFINITY;
    for run in 1..=a.runs {
        let t = Instant::now();
        let rows: usize = run_sql(&ctx, sql).await?.iter().map(|b| b.num_rows()).sum();
        let s = t.elapsed().as_secs_f64();
        best = best.min(s);
        println!("decoder_drift.sql run {run}: {s:.3} s, {rows} transitions");
    }
    let rss = peak_rss().unwrap_or(0);
    println!("saerl:  best {best:.3} s = {:.0} feature rows/s ({:.0} pairs/s); peak RSS {:.2} GiB (target < 2 GiB)", feature_rows / best, pairs / best, gib(rss));

    match duckdb_seconds(&root, a.runs) {
        Ok(d) => println!(
            "duckdb: best {d:.3} s; saerl is {:.2}× DuckDB's speed (target > 1)",
            d / best
        ),
        Err(e) => println!("duckdb: not measured ({e:#}); `pip install duckdb` to compare"),
    }
    Ok(())
}

fn duckdb_seconds(lake: &std::path::Path, runs: usize) -> Result<f64> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            include_str!("../../bench/duckdb_drift.py"),
            &lake.display().to_string(),
            "--runs",
            &runs.to_string(),
        ])
        .output()
        .context("running python3")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        anyhow::bail!(
            "{}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("python3 failed")
        );
    }
    text.lines()
        .find_map(|l| l.strip_prefix("seconds: "))
        .context("no `seconds:` line from the DuckDB script")?
        .trim()
        .parse()
        .context("parsing DuckDB seconds")
}

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
}

/// Transformers' CPU f32 throughput on this machine kind (../shared/bench/README.md,
/// `ref_ingest.py`, 2 threads): the target to meet.
const TRANSFORMERS_TOKENS_PER_S: f64 = 135.0;

/// GFLOP/s of one f32 C = A·Bᵀ of the given shape through the kernels' GEMM, best of a few runs.
fn gemm_gflops(m: usize, k: usize, n: usize) -> Result<f64> {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; n * k];
    let mut c = vec![0f32; m * n];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        crate::kernels::sgemm_nt(m, n, k, &a, &b, &mut c, false);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}

/// `saerl bench ingest`: a random model with Qwen2.5-0.5B's shape over GSM8k questions.
pub fn ingest(a: &BenchIngest) -> Result<()> {
    use crate::commands::ingest::{run, Ingest};
    use crate::data::read_questions;
    use crate::model::random::{write_model, write_tokenizer, TinyShape};

    let tmp = tempfile::tempdir()?;
    let model_dir = a.keep.clone().unwrap_or_else(|| tmp.path().join("model"));
    let shape = TinyShape {
        hidden: 896,
        layers: 24,
        heads: 14,
        kv_heads: 2,
        intermediate: 4864,
    };
    let data = match &a.data {
        Some(d) => d.clone(),
        None => {
            let p = tmp.path().join("questions.jsonl");
            std::fs::write(&p, crate::data::SAMPLE_TRAIN)?;
            p
        }
    };
    if !model_dir.join("model.safetensors").is_file() {
        let texts: Vec<String> = read_questions(&data, None)?
            .into_iter()
            .map(|d| d.question)
            .collect();
        let t = Instant::now();
        write_tokenizer(&model_dir, a.tokenizer.as_deref(), &texts)?;
        write_model(&model_dir, &shape, 151_936, 0, None)?;
        println!(
            "wrote a random Qwen2.5-0.5B-shaped model to {} in {:.1} s",
            model_dir.display(),
            t.elapsed().as_secs_f64()
        );
    }
    let lake = Lake::new(tmp.path().join("lake"));
    reset_peak_rss();
    let t = Instant::now();
    let mut args = Ingest::from_flags([
        "--chain",
        "bench",
        "--stage",
        "instruct_base",
        "--layers",
        "6,12,18,23",
    ])?;
    (args.model, args.data, args.limit) = (Some(model_dir.clone()), Some(data), Some(a.n));
    args.project = tmp.path().join("saerl.toml");
    let tokens = run(&lake, &args)?;
    let secs = t.elapsed().as_secs_f64();
    let rss = peak_rss().unwrap_or(0);
    let (h, i, kv) = (
        shape.hidden as f64,
        shape.intermediate as f64,
        (shape.kv_heads * shape.hidden / shape.heads) as f64,
    );
    // Linear layers of every block up to the deepest captured one (23 = all 24); attention's
    // T×T products are small next to them at GSM8k lengths and are left out.
    let flops_per_token = 24.0 * 2.0 * (2.0 * h * h + 2.0 * h * kv + 3.0 * h * i);
    let tps = tokens as f64 / secs;
    let achieved = tps * flops_per_token / 1e9;
    let gemm = gemm_gflops(1024, 896, 4864)?;
    println!(
        "saerl ingest: {tokens} tokens in {secs:.1} s = {tps:.0} tokens/s; peak RSS {:.2} GiB",
        gib(rss)
    );
    let path = "the kernels' GEMM";
    println!("  model linear layers: {achieved:.1} GFLOP/s achieved vs f32 GEMM 1024×896×4864 at {gemm:.1} GFLOP/s via {path} ({:.0}%)", 100.0 * achieved / gemm);
    println!("  transformers (PyTorch f32, 2 threads, same machine kind): {TRANSFORMERS_TOKENS_PER_S} tokens/s → saerl is {:.2}× (target ≥ 1)", tps / TRANSFORMERS_TOKENS_PER_S);
    Ok(())
}

/// The dense PyTorch step on this machine kind (../shared/bench/README.md, `ref_sae_step.py`).
const PYTORCH_SAE_ROWS_PER_S: f64 = 1685.0;

/// `saerl bench train`: training steps at the study's shape on synthetic rows.
pub fn train(steps: usize) -> Result<()> {
    use crate::sae::rows::{mean_row, MemRows, Rows};
    use crate::sae::train::{cold_start, TrainConfig, Trainer};
    let (d, n, k, batch) = (896, 7168, 64, 512);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0);
    // One warm-up step (first touches of the gradient and moment buffers), then `steps`.
    let rows: Vec<f32> = (0..(steps + 1) * batch * d)
        .map(|_| crate::rng::normal(&mut rng))
        .collect();
    let (train, val) = (
        MemRows::new(d, &rows[..]),
        MemRows::new(d, &rows[..batch * d]),
    );
    let sae = cold_start(mean_row(&train)?, n, k, 0);
    let cfg = TrainConfig {
        epochs: 1,
        batch,
        shuffle: false,
        resample_every: None,
        ..TrainConfig::default()
    };
    reset_peak_rss();
    let mut trainer = Trainer::new(&sae, train.len(), &cfg)?;
    let mut done = Vec::new();
    trainer.run_epoch(&train, &val, &mut |_, _| done.push(Instant::now()))?;
    let secs = (done[steps] - done[0]).as_secs_f64();
    let rps = (steps * batch) as f64 / secs;
    let gemm = gemm_gflops(batch, d, n)?;
    // The encoder GEMM is the floor: 2·d·d_sae FLOP per row.
    let bound = gemm * 1e9 / (2.0 * (d * n) as f64);
    println!("saerl train step (d 896, d_sae 7168, k 64, batch 512): {rps:.0} rows/s over {steps} steps after a warm-up step; peak RSS {:.2} GiB", gib(peak_rss().unwrap_or(0)));
    println!("  encoder GEMM {gemm:.1} GFLOP/s → GEMM-bound limit {bound:.0} rows/s; saerl reaches {:.0}% of it (target ≥ 50%)", 100.0 * rps / bound);
    println!("  PyTorch dense step (same machine kind): {PYTORCH_SAE_ROWS_PER_S} rows/s → saerl is {:.2}× (target ≥ 2)", rps / PYTORCH_SAE_ROWS_PER_S);
    Ok(())
}

/// `saerl bench stats`: feature statistics (counts, densities, top examples) over `rows`
/// synthetic rows at the study's shape, generated and consumed a batch at a time.
pub fn stats(rows: usize) -> Result<()> {
    use crate::sae::rows::{mean_row, MemRows};
    use crate::sae::stats::{FeatureStats, RowInfo};
    use crate::sae::train::cold_start;
    let (d, n, k, batch) = (896, 7168, 64, 4096);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0);
    let mut gen =
        |m: usize| -> Vec<f32> { (0..m * d).map(|_| crate::rng::normal(&mut rng)).collect() };
    let sample = gen(1024);
    let sae = cold_start(mean_row(&MemRows::new(d, &sample[..]))?, n, k, 0);
    reset_peak_rss();
    let mut acc = FeatureStats::new(n);
    let (mut done, mut busy) = (0, 0f64);
    let bar = super::progress(rows as u64, "stats");
    while done < rows {
        let m = batch.min(rows - done);
        let x = gen(m);
        let ids: Vec<i64> = (done as i64..(done + m) as i64).collect();
        let pos = vec![0i32; m];
        let val: Vec<bool> = (0..m).map(|i| (done + i) % 5 == 0).collect();
        let t = Instant::now();
        acc.add(
            &sae,
            &x,
            &RowInfo {
                doc_id: &ids,
                pos: &pos,
                token_id: &pos,
                val: &val,
            },
        );
        busy += t.elapsed().as_secs_f64();
        done += m;
        bar.inc(m as u64);
    }
    bar.finish_and_clear();
    let acc = acc.finish();
    let rps = rows as f64 / busy;
    let gemm = gemm_gflops(batch, d, n)?;
    let bound = gemm * 1e9 / (2.0 * (d * n) as f64);
    println!(
        "saerl stats (d 896, d_sae 7168, k 64): {rows} rows in {busy:.1} s = {rps:.0} rows/s (row generation excluded); peak RSS {:.2} GiB",
        gib(peak_rss().unwrap_or(0))
    );
    println!(
        "  encoder GEMM {gemm:.1} GFLOP/s → GEMM-bound limit {bound:.0} rows/s; saerl reaches {:.0}% of it",
        100.0 * rps / bound
    );
    println!(
        "  {} train / {} val tokens counted; {} top examples kept",
        acc.train.n_tokens,
        acc.val.n_tokens,
        acc.top.iter().map(Vec::len).sum::<usize>()
    );
    Ok(())
}
