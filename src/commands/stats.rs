//! `saerl stats`: per-feature statistics (`feature_stats`, per split) and top activating
//! examples (`top_examples`) of each selected SAE over its own stage's activations, streamed
//! from Parquet. A finished SAE is skipped unless `--overwrite`.

use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};

use super::SaeSelection;
use crate::lake::{read_sae, Lake, PartitionKey, Table, Txn};
use crate::sae::stats::{FeatureStats, RowInfo, SplitStats};

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "stats")]
pub struct StatsArgs {
    #[command(flatten)]
    pub select: SaeSelection,
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(lake: &Lake, a: &StatsArgs) -> Result<()> {
    for key in a.select.keys(lake)? {
        if !a.overwrite && lake.has_partition(Table::FeatureStats, &key)? {
            println!("{key}: statistics exist, skipped (--overwrite to recompute)");
            continue;
        }
        let stats = compute(lake, &key)?;
        let mut txn = Txn::begin(lake, a.overwrite)?;
        txn.write(Table::FeatureStats, &key, &[stats_batch(&stats)?])?;
        txn.write(Table::TopExamples, &key, &[examples_batch(&stats)?])?;
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

/// The statistics of SAE `key` over its stage's activations at its layer.
pub fn compute(lake: &Lake, key: &PartitionKey) -> Result<FeatureStats> {
    let sae = read_sae(lake, key)?;
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
        stats.add(&sae, b.x, &info);
        bar.inc(b.val.len() as u64);
        Ok(())
    })
    .with_context(|| format!("statistics of {key}; nothing was written"))?;
    bar.finish_and_clear();
    Ok(stats.finish())
}

fn stats_batch(s: &FeatureStats) -> Result<RecordBatch> {
    let n = s.train.fire_count.len();
    let splits: [(&str, &SplitStats); 2] = [("train", &s.train), ("val", &s.val)];
    let rows = || {
        splits
            .iter()
            .flat_map(|&(name, st)| (0..n).map(move |i| (name, st, i)))
    };
    Ok(RecordBatch::try_new(
        Table::FeatureStats.file_schema(None),
        vec![
            Arc::new(Int32Array::from_iter_values(
                rows().map(|(_, _, i)| i as i32),
            )),
            Arc::new(StringArray::from(
                rows().map(|(s, _, _)| s).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows().map(|(_, st, _)| st.n_tokens as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows().map(|(_, st, i)| st.fire_count[i] as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows().map(|(_, st, i)| st.topk_count[i] as i64),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows().map(|(_, st, i)| st.density(i)),
            )),
            Arc::new(Float64Array::from_iter(
                rows().map(|(_, st, i)| st.mean_act(i)),
            )),
            Arc::new(Float32Array::from_iter(
                rows().map(|(_, st, i)| st.max_act[i]),
            )),
        ],
    )?)
}

fn examples_batch(s: &FeatureStats) -> Result<RecordBatch> {
    let rows: Vec<(usize, usize, &crate::sae::stats::Example)> = s
        .top
        .iter()
        .enumerate()
        .flat_map(|(f, list)| list.iter().enumerate().map(move |(r, e)| (f, r, e)))
        .collect();
    Ok(RecordBatch::try_new(
        Table::TopExamples.file_schema(None),
        vec![
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| r.0 as i32),
            )),
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| r.1 as i32 + 1),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.2.doc_id),
            )),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2.pos))),
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| r.2.token_id),
            )),
            Arc::new(Float32Array::from_iter_values(
                rows.iter().map(|r| r.2.value),
            )),
        ],
    )?)
}
