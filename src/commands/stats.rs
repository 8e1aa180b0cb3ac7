//! `saerl stats`: per-feature statistics (`feature_stats`, per split) and top activating
//! examples (`top_examples`) of each selected SAE over its own stage's activations, streamed
//! from Parquet. A finished SAE is skipped unless `--overwrite`.

use anyhow::{Context, Result};

use super::SaeSelection;
use crate::lake::{
    feature_stats_batch, read_sae, top_examples_batch, Lake, PartitionKey, Table, Txn,
};
use crate::sae::batch::BatchEncoder;
use crate::sae::stats::{FeatureStats, RowInfo};

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "stats")]
pub struct StatsArgs {
    #[command(flatten)]
    pub select: SaeSelection,
    /// `cpu` or `cuda` (the encoder and top-k on the GPU; needs `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Recompute statistics that exist already.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(lake: &Lake, a: &StatsArgs) -> Result<()> {
    lake.recover()?;
    let dev = crate::model::device(&a.device)?;
    for key in a.select.keys(lake)? {
        if !a.overwrite && lake.has_partition(Table::FeatureStats, &key)? {
            if top_examples_lack_split(lake, &key)? {
                println!(
                    "{key}: statistics exist, but its top_examples were written before their `split` column (SQL reads it as NULL, train and val mixed): rerun `saerl stats --chain {} --overwrite` to separate them",
                    key.chain
                );
            } else {
                println!("{key}: statistics exist, skipped (--overwrite to recompute)");
            }
            continue;
        }
        let stats = compute(lake, &key, &dev)?;
        let mut txn = Txn::begin(lake, a.overwrite)?;
        txn.write(Table::FeatureStats, &key, &[feature_stats_batch(&stats)?])?;
        txn.write(Table::TopExamples, &key, &[top_examples_batch(&stats)?])?;
        txn.commit()?;
        println!(
            "{key}: {} train / {} val tokens; {} features alive on val (density > 1e-4)",
            stats.train.n_tokens,
            stats.val.n_tokens,
            (0..stats.val.fire_count.len())
                .filter(|&i| stats.val.density(i) > 1e-4)
                .count()
        );
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

/// The statistics of SAE `key` over its stage's activations at its layer.
pub fn compute(lake: &Lake, key: &PartitionKey, dev: &candle_core::Device) -> Result<FeatureStats> {
    let sae = read_sae(lake, key)?;
    let mut encoder = BatchEncoder::new(&sae, dev)?;
    let act = key.activations();
    let bar = super::progress(lake.activation_count(&act)? as u64, &format!("stats {key}"));
    let mut stats = FeatureStats::new(sae.d_sae);
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
        stats.add(&encoder.latents(b.x, sae.d_model)?, &info);
        bar.inc(b.val.len() as u64);
        Ok(())
    })
    .with_context(|| format!("statistics of {key}; nothing was written"))?;
    bar.finish_and_clear();
    Ok(stats.finish())
}
