//! `saerl train`: TopK SAEs along a chain, one per (stage, layer), each stage warm-started from
//! the previous stage's SAE of the same layer and k so that feature indices stay aligned.
//! Writes `saes`, `features` and `train_log`; an SAE already in the lake is skipped (and used as
//! the next stage's parent).
//!
//! Not yet done (issue 4): streaming epochs from Parquet (rows are read into memory here),
//! epoch checkpoints for resuming inside one SAE, and the GEMM/top-k speed work.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use arrow::array::AsArray;
use arrow::datatypes::Float32Type;

use crate::lake::{read_sae, train_log_batch, write_sae, Lake, PartitionKey, Table, Txn};
use crate::sae::train::{cold_start, train, TrainConfig};
use crate::sae::Sae;

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "train")]
pub struct TrainArgs {
    #[arg(long)]
    pub chain: String,
    /// Only these stages (their parents must be trained already); default all, in step order.
    #[arg(long)]
    pub stage: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "6,12,18,23")]
    pub layers: Vec<i32>,
    #[arg(long, default_value_t = 64)]
    pub k: usize,
    /// Dictionary size (default 8 × d_model).
    #[arg(long)]
    pub d_sae: Option<usize>,
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `shuffled` (seeded, per epoch) or `sequential` batches.
    #[arg(long, default_value = "shuffled", value_parser = ["shuffled", "sequential"])]
    pub batch_order: String,
    #[arg(long)]
    pub overwrite: bool,
}

/// The train and val rows of one activation partition.
fn read_rows(lake: &Lake, key: &PartitionKey) -> Result<(usize, Vec<f32>, Vec<f32>)> {
    let (mut train_rows, mut val_rows, mut d) = (Vec::new(), Vec::new(), 0);
    for b in lake.read_partition(Table::Activations, key)? {
        let x = b
            .column_by_name("x")
            .context("activations without x")?
            .as_fixed_size_list();
        let split = b
            .column_by_name("split")
            .context("activations without split")?
            .as_string::<i32>();
        d = x.value_length() as usize;
        let values = x.values().as_primitive::<Float32Type>().values();
        for i in 0..b.num_rows() {
            let row = &values[i * d..(i + 1) * d];
            if row.iter().any(|v| !v.is_finite()) {
                bail!("non-finite activation in {key} (row {i}); re-ingest that partition");
            }
            if split.value(i) == "val" {
                &mut val_rows
            } else {
                &mut train_rows
            }
            .extend_from_slice(row);
        }
    }
    if train_rows.is_empty() {
        bail!("activations {key} hold no training rows");
    }
    Ok((d, train_rows, val_rows))
}

pub fn run(lake: &Lake, a: &TrainArgs) -> Result<()> {
    let lake = Lake::open(lake.root())?;
    let stages = lake.read_stages(&a.chain)?;
    if stages.is_empty() {
        bail!(
            "chain {} has no stages in {} (ingest activations first)",
            a.chain,
            lake.root().display()
        );
    }
    for s in &a.stage {
        if !stages.iter().any(|r| &r.stage == s) {
            bail!(
                "stage {s} is not a stage of chain {} (stages: {})",
                a.chain,
                stages
                    .iter()
                    .map(|r| r.stage.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let cfg = TrainConfig {
        epochs: a.epochs,
        lr: a.lr,
        batch: a.batch,
        shuffle: a.batch_order == "shuffled",
        seed: a.seed,
        ..TrainConfig::default()
    };
    for &layer in &a.layers {
        let mut parent: Option<(String, Sae)> = None;
        for (si, st) in stages.iter().enumerate() {
            let key = PartitionKey::sae(&a.chain, &st.stage, layer, a.k as i32);
            let wanted = a.stage.is_empty() || a.stage.contains(&st.stage);
            if !wanted || (lake.has_partition(Table::Saes, &key)? && !a.overwrite) {
                // Not asked for, or done: it is only the next stage's parent, if it exists.
                parent = match lake.has_partition(Table::Saes, &key)? {
                    true => Some((st.stage.clone(), read_sae(&lake, &key)?)),
                    false => None,
                };
                if wanted {
                    println!("{key}: already trained, skipped (--overwrite to retrain)");
                }
                continue;
            }
            let act_key = PartitionKey::layer(&a.chain, &st.stage, layer);
            let (d, train_rows, val_rows) = read_rows(&lake, &act_key)?;
            let init = match &parent {
                Some((p, sae)) => {
                    if sae.d_model != d {
                        bail!(
                            "{key}: parent {p} has d_model {} but the activations have {d}",
                            sae.d_model
                        );
                    }
                    let mut s = sae.clone();
                    s.meta = Default::default();
                    s.meta.init_from_stage = Some(p.clone());
                    s
                }
                None if si > 0 && !a.stage.is_empty() => {
                    bail!("{key}: the parent stage's SAE is not in the lake; train the chain in order")
                }
                None => cold_start(&train_rows, d, a.d_sae.unwrap_or(8 * d), a.k, a.seed),
            };
            let bar = super::progress(cfg.epochs as u64, &format!("{} layer {layer}", st.stage));
            let rows = train_rows.len() / d;
            let (start, mut seconds, mut last) = (Instant::now(), Vec::new(), Instant::now());
            let result = train(&init, &train_rows, &val_rows, &cfg, &mut |e| {
                seconds.push(last.elapsed().as_secs_f64());
                last = Instant::now();
                bar.set_message(format!(
                    "val_mse {:.4e} dead {} ({:.0} rows/s)",
                    e.val_mse,
                    e.n_dead,
                    rows as f64 / seconds.last().unwrap()
                ));
                bar.inc(1);
            })
            .with_context(|| format!("training {key}"))?;
            bar.finish_and_clear();
            let mut sae = result.sae;
            sae.meta.source = Some(format!(
                "saerl train {} {} layer {layer}",
                a.chain, st.stage
            ));
            let mut txn = Txn::begin(&lake, a.overwrite)?;
            write_sae(&mut txn, &key, &sae)?;
            txn.write(
                Table::TrainLog,
                &key,
                &[train_log_batch(&result.epochs, &seconds)?],
            )?;
            txn.commit()?;
            println!(
                "{key}: best epoch {} val_mse {:.4e} ({} train / {} val rows, {:.1} s)",
                result.best_epoch,
                sae.meta.best_val_mse.unwrap_or(f64::NAN),
                rows,
                val_rows.len() / d,
                start.elapsed().as_secs_f64()
            );
            parent = Some((st.stage.clone(), sae));
        }
    }
    Ok(())
}
