//! `saerl bench sql`: the drift query over a full-size synthetic chain (8 stages × layers
//! 6/12/18/23, d_model 896, d_sae 7168), timed, with peak RSS, and DuckDB on the same files
//! when its Python package is installed.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use super::{gib, peak_rss, reset_peak_rss, work_dir, ChainShape, References};
use crate::lake::{Lake, Table, Txn};
use crate::sql::saved::QUERIES;
use crate::sql::{open_session, run_sql};
use crate::study::{stage_name, CHAINS, LAYERS};
use crate::synth::{write_chain, ChainPlan};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchSql {
    #[command(flatten)]
    pub shape: ChainShape,
    /// Runs of the query (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Keep (and reuse) the generated lake in this directory.
    #[arg(long)]
    pub keep: Option<PathBuf>,
}

/// A lake holding one synthetic chain of `shape` (the flexible chain's steps, extended by 40
/// per stage if more are asked for), generated unless `keep` already holds it; with the chain's
/// plan, its directory and the temporary directory to keep alive.
pub(super) fn chain_lake(
    shape: &ChainShape,
    keep: &Option<PathBuf>,
) -> Result<(Option<tempfile::TempDir>, PathBuf, Lake, ChainPlan)> {
    let (tmp, root) = work_dir(keep)?;
    let lake = Lake::new(&root);
    let flexible = CHAINS[0].steps;
    let steps: Vec<i64> = (0..shape.stages)
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
        saes: LAYERS.iter().map(|&l| (l, shape.k)).collect(),
        d_model: shape.d_model,
        d_sae: shape.d_sae,
        rate: 1.0,
    };
    if lake.partitions(Table::Features)?.is_empty() {
        let n = (plan.saes.len() * plan.steps.len()) as u64;
        let bar = crate::commands::progress(n, "generating SAEs");
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
    Ok((tmp, root, lake, plan))
}

pub async fn run(a: &BenchSql, refs: &References) -> Result<()> {
    let (_tmp, root, lake, plan) = chain_lake(&a.shape, &a.keep)?;
    let bytes: u64 = lake
        .files(Table::Features)?
        .iter()
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum();
    let feature_rows = (plan.saes.len() * plan.steps.len() * a.shape.d_sae) as f64;
    let pairs = (plan.saes.len() * (plan.steps.len() - 1) * a.shape.d_sae) as f64;
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
    statement_overhead(&ctx, &lake).await?;
    let rss = peak_rss().unwrap_or(0);
    println!("saerl:  best {best:.3} s = {:.0} feature rows/s ({:.0} pairs/s); peak RSS {:.2} GiB (target ≤ 1 GiB)", feature_rows / best, pairs / best, gib(rss));
    match duckdb_seconds(refs, &root, a.runs) {
        Ok((d, rss)) => println!(
            "duckdb: best {d:.3} s, peak RSS {:.2} GiB; saerl is {:.2}× DuckDB's speed (target ≥ 3)",
            gib(rss),
            d / best
        ),
        Err(e) => println!("duckdb: not measured ({e:#}); `pip install duckdb` to compare"),
    }
    Ok(())
}

/// What a statement pays for seeing the lake as last committed: on an unchanged lake (one small
/// file read, no footers), and the first statement after a commit (every table registered again).
async fn statement_overhead(ctx: &datafusion::prelude::SessionContext, lake: &Lake) -> Result<()> {
    let probe = "SELECT count(*) FROM stages";
    let n = 50;
    let t = Instant::now();
    for _ in 0..n {
        run_sql(ctx, probe).await?;
    }
    let unchanged = t.elapsed().as_secs_f64() / n as f64;
    Txn::begin(lake, false)?.commit()?;
    let t = Instant::now();
    run_sql(ctx, probe).await?;
    let after = t.elapsed().as_secs_f64();
    println!(
        "a small statement: {:.2} ms on an unchanged lake, {:.1} ms as the first after a commit (tables re-registered)",
        unchanged * 1e3,
        after * 1e3
    );
    Ok(())
}

/// DuckDB's best time on the same files and its peak RSS (bench/duckdb_drift.py).
fn duckdb_seconds(refs: &References, lake: &std::path::Path, runs: usize) -> Result<(f64, u64)> {
    let text = refs.python_run(
        &["-c", include_str!("../../../bench/duckdb_drift.py")],
        &[&lake.display().to_string(), "--runs", &runs.to_string()],
    )?;
    let value = |key: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .with_context(|| format!("no `{key}` line from the DuckDB script"))?
            .trim()
            .parse()
            .with_context(|| format!("parsing DuckDB's {key}"))
    };
    Ok((value("seconds: ")?, value("peak_rss_bytes: ")? as u64))
}
