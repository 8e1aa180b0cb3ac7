//! `saerl stats`: per-feature statistics (`feature_stats`, per split), top activating examples
//! (`top_examples`) and the tables the feature pages read (`Table::PAGES`) of each selected SAE,
//! over its own stage's activations streamed from Parquet and its weights. Tables an SAE already
//! has are kept: a rerun fills in only the missing ones, unless `--overwrite`.

mod pages;

use anyhow::{Context, Result};
use arrow::array::RecordBatch;

use super::SaeSelection;
use crate::lake::{Lake, PartitionKey, Table, Txn};
use crate::sae::batch::BatchEncoder;
use crate::sae::dashboard::{LatentSpill, RowIndex};
use crate::sae::stats::{FeatureStats, RowInfo};
use crate::sae::Sae;
use crate::tables::{feature_stats_batch, read_sae, top_examples_batch};

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "stats")]
pub struct StatsArgs {
    #[command(flatten)]
    pub select: SaeSelection,
    #[command(flatten)]
    pub device: crate::commands::args::DeviceArg,
    #[command(flatten)]
    pub overwrite: crate::commands::args::Overwrite,
}

/// The tables computed from the SAE's activations (the rest come from weights alone).
const FROM_ACTIVATIONS: [Table; 4] = [
    Table::FeatureStats,
    Table::TopExamples,
    Table::FeatureExamples,
    Table::FeatureHistograms,
];

/// The tables `saerl stats` would write for SAE `key`: every one with `overwrite`, else those
/// it lacks (of those that apply: logit effects need the stage's model, partners another chain).
pub fn missing_tables(lake: &Lake, key: &PartitionKey, overwrite: bool) -> Result<Vec<Table>> {
    let mut missing = Vec::new();
    for t in FROM_ACTIVATIONS.into_iter().chain(Table::PAGES) {
        if (overwrite || !lake.has_partition(t, key)?) && pages::applicable(lake, key, t)? {
            missing.push(t);
        }
    }
    Ok(missing)
}

/// Where a stats run's time went beyond the activation pass: reading the SAEs, the tables from
/// weights alone and the commits (every table stats writes has a size fixed by d_sae).
#[derive(Debug, Clone, Copy, Default)]
pub struct StatsSummary {
    pub fixed_seconds: f64,
}

pub fn run(lake: &Lake, a: &StatsArgs) -> Result<StatsSummary> {
    lake.recover()?;
    let dev = a.device.open()?;
    let mut summary = StatsSummary::default();
    for key in a.select.keys(lake)? {
        if !*a.overwrite
            && lake.has_partition(Table::TopExamples, &key)?
            && top_examples_lack_split(lake, &key)?
        {
            crate::commands::say!(
                "{key}: its top_examples were written before their `split` column (SQL reads it as NULL, train and val mixed): rerun `saerl stats --chain {} --overwrite` to separate them",
                key.chain
            );
        }
        let missing = missing_tables(lake, &key, *a.overwrite)?;
        if missing.is_empty() {
            crate::commands::say!("{key}: statistics exist, skipped (--overwrite to recompute)");
            continue;
        }
        let reading = std::time::Instant::now();
        let sae = read_sae(lake, &key)?;
        summary.fixed_seconds += reading.elapsed().as_secs_f64();
        let mut out: Vec<(Table, RecordBatch)> = Vec::new();
        let mut notes = Vec::new();
        if FROM_ACTIVATIONS.iter().any(|t| missing.contains(t)) {
            if lake.has_partition(Table::Activations, &key.activations())? {
                from_activations(lake, &key, &sae, &dev, &missing, &mut out)?;
            } else {
                notes.push(format!(
                    "no activations at layer {} of stage {} (saerl ingest adds them): statistics and examples skipped",
                    key.layer.unwrap_or(0),
                    key.stage.as_deref().unwrap_or("")
                ));
            }
        }
        if !pages::applicable(lake, &key, Table::LogitEffects)? {
            notes.push(format!(
                "no logit effects: stage {} has no model on this machine (`stages.model_path`, which ingest records)",
                key.stage.as_deref().unwrap_or("")
            ));
        }
        let started = std::time::Instant::now();
        pages::from_weights(lake, &key, &sae, &missing, &mut out, &mut notes)?;
        if !out.is_empty() {
            let mut txn = Txn::begin(lake, *a.overwrite)?;
            for (table, batch) in &out {
                txn.write(*table, &key, std::slice::from_ref(batch))?;
            }
            txn.commit()?;
        }
        summary.fixed_seconds += started.elapsed().as_secs_f64();
        let names: Vec<&str> = out.iter().map(|(t, _)| t.name()).collect();
        crate::commands::say!(
            "{key}: wrote {}{}",
            if names.is_empty() {
                "nothing".to_string()
            } else {
                names.join(", ")
            },
            notes.iter().map(|n| format!("; {n}")).collect::<String>()
        );
    }
    Ok(summary)
}

/// The activation tables `missing` names, from one encoding pass (latents kept in a spill file
/// when the page tables need further passes).
fn from_activations(
    lake: &Lake,
    key: &PartitionKey,
    sae: &Sae,
    dev: &candle_core::Device,
    missing: &[Table],
    out: &mut Vec<(Table, RecordBatch)>,
) -> Result<()> {
    let pages =
        missing.contains(&Table::FeatureExamples) || missing.contains(&Table::FeatureHistograms);
    let mut scan = scan(lake, key, sae, dev, pages)?;
    let stats = &scan.stats;
    crate::commands::say!(
        "{key}: {} train / {} val tokens; {} features alive on val (density > 1e-4)",
        stats.train.n_tokens,
        stats.val.n_tokens,
        (0..stats.val.fire_count.len())
            .filter(|&i| stats.val.density(i) > 1e-4)
            .count()
    );
    if missing.contains(&Table::FeatureStats) {
        out.push((Table::FeatureStats, feature_stats_batch(stats)?));
    }
    if missing.contains(&Table::TopExamples) {
        out.push((Table::TopExamples, top_examples_batch(stats)?));
    }
    if let Some((spill, index)) = scan.latents.as_mut() {
        let (examples, histograms) = pages::examples_and_histograms(&scan.stats, spill, index)
            .with_context(|| format!("examples of {key}; nothing was written"))?;
        for (t, b) in [
            (Table::FeatureExamples, examples),
            (Table::FeatureHistograms, histograms),
        ] {
            if missing.contains(&t) {
                out.push((t, b));
            }
        }
    }
    Ok(())
}

/// Whether SAE `key`'s `top_examples` come from a saerl that mixed the splits.
fn top_examples_lack_split(lake: &Lake, key: &PartitionKey) -> Result<bool> {
    let dir = lake.data_dir(Table::TopExamples, key)?;
    for f in crate::lake::partition_files(&dir)? {
        if crate::lake::check_parquet(&f)?
            .field_with_name("split")
            .is_err()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One pass over an SAE's activations: its statistics and, when asked, every row's latents
/// and where each row is (for the histograms, quantile examples and contexts).
struct Scan {
    stats: FeatureStats,
    latents: Option<(LatentSpill, RowIndex)>,
}

fn scan(
    lake: &Lake,
    key: &PartitionKey,
    sae: &Sae,
    dev: &candle_core::Device,
    keep_latents: bool,
) -> Result<Scan> {
    let mut encoder = BatchEncoder::new(sae, dev)?;
    let act = key.activations();
    let bar = super::progress(lake.activation_count(&act)? as u64, &format!("stats {key}"));
    let mut stats = FeatureStats::new(sae.d_sae);
    let mut latents = match keep_latents {
        true => Some((LatentSpill::new()?, RowIndex::default())),
        false => None,
    };
    lake.scan_activations(&act, &mut |b| {
        if b.x.len() != b.val.len() * sae.d_model {
            anyhow::bail!(
                "activations {act} are {} wide but SAE {key} expects d_model {}",
                b.x.len() / b.val.len().max(1),
                sae.d_model
            );
        }
        let info = RowInfo {
            doc_id: b.doc_id,
            pos: b.pos,
            token_id: b.token_id,
            val: &b.val,
        };
        let lat = encoder.latents(b.x, sae.d_model)?;
        stats.add(&lat, &info);
        if let Some((spill, index)) = latents.as_mut() {
            for (r, l) in lat.iter().enumerate() {
                spill.push(l)?;
                index.push(b.doc_id[r], b.pos[r], b.token_id[r], b.val[r]);
            }
        }
        bar.inc(b.val.len() as u64);
        Ok(())
    })
    .with_context(|| format!("statistics of {key}; nothing was written"))?;
    bar.finish_and_clear();
    Ok(Scan {
        stats: stats.finish(),
        latents,
    })
}
