//! `saerl train`: TopK SAEs along a chain, one per (stage, layer), each stage warm-started from
//! the previous stage's SAE of the same layer and k so that feature indices stay aligned.
//! Writes `saes`, `features` and `train_log`; an SAE already in the lake is skipped (and used as
//! the next stage's parent). Rows stream from Parquet unless `--in-memory`; between epochs the
//! trainer is checkpointed under `<lake>/.tmp/` (at most once per `--checkpoint-every` seconds),
//! and an interrupted SAE resumes from there.

use anyhow::{bail, Context, Result};

use crate::lake::{Lake, PartitionKey, Table, Txn};
use crate::sae::rows::{mean_row, MemRows, Rows};
use crate::sae::train::{cold_start, TrainConfig, Trainer};
use crate::sae::Sae;
use crate::tables::{read_sae, train_log_batch, write_sae};

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "train")]
pub struct TrainArgs {
    /// The chain whose stages to train along (its activations must be ingested).
    #[arg(long)]
    pub chain: String,
    /// Only these stages (their parents must be trained already); default all, in step order.
    #[arg(long)]
    pub stage: Vec<String>,
    /// Layers to train SAEs at (comma-separated; default the study's).
    #[arg(long, value_delimiter = ',', default_values_t = crate::study::LAYERS.to_vec())]
    pub layers: Vec<i32>,
    /// Active latents per row (TopK's k).
    #[arg(long, default_value_t = 64)]
    pub k: usize,
    /// Dictionary size (default 8 × d_model).
    #[arg(long)]
    pub d_sae: Option<usize>,
    /// Passes over the training rows; the best epoch by val MSE is kept.
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    /// Adam learning rate (cosine-annealed per step to a tenth).
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Rows per optimiser step.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// Seed of the cold start, the shuffles and resampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Resample dead features after every this many epochs (never after the last); 0 = never.
    #[arg(long, default_value_t = 10)]
    pub resample_every: usize,
    /// `shuffled` (seeded, per epoch) or `sequential` batches.
    #[arg(long, default_value = "shuffled", value_parser = ["shuffled", "sequential"])]
    pub batch_order: String,
    /// Hold each partition's rows in memory (a full permutation per epoch) instead of streaming
    /// them from Parquet through a shuffle buffer.
    #[arg(long)]
    pub in_memory: bool,
    /// Rows in the streaming shuffle buffer (65,536 rows of width 896 take 235 MB).
    #[arg(long, default_value_t = 65_536)]
    pub shuffle_buffer: usize,
    /// `cpu` (the CPU step) or `cuda` (the device path; needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Retrain SAEs that exist already.
    #[arg(long)]
    pub overwrite: bool,
    /// When another saerl is training the same chain's layer and k, wait for it instead of
    /// failing.
    #[arg(long)]
    pub wait: bool,
    /// Checkpoint an SAE's trainer after an epoch once this many seconds have passed since its
    /// last checkpoint (0 = after every epoch): a killed training loses at most about this much
    /// work. A checkpoint of a study-sized SAE is 205 MB, so one per epoch costs more than short
    /// epochs do.
    #[arg(long, default_value_t = 60.0)]
    pub checkpoint_every: f64,
    /// Stop (with an error) after this many epochs of an SAE, leaving its checkpoint: for the
    /// resume test.
    #[arg(long, hide = true)]
    pub stop_after_epochs: Option<usize>,
}

/// One split of a partition, streamed or (with `--in-memory`) loaded.
fn open_rows(lake: &Lake, key: &PartitionKey, split: &str, a: &TrainArgs) -> Result<Box<dyn Rows>> {
    let rows = lake.activation_rows(key, split, a.shuffle_buffer)?;
    if rows.is_empty() {
        bail!("activations {key} hold no {split} rows; ingest with a validation fraction between 0 and 1");
    }
    if !a.in_memory {
        return Ok(Box::new(rows));
    }
    Ok(Box::new(MemRows::new(rows.d_model(), rows.read_all()?)))
}

/// Where a training's time went beyond the epochs' steps: checkpoints and commits, which do
/// not grow with the rows.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrainSummary {
    pub fixed_seconds: f64,
}

pub fn run(lake: &Lake, a: &TrainArgs) -> Result<TrainSummary> {
    lake.recover()?;
    let mut summary = TrainSummary::default();
    let dev = crate::model::device(&a.device)?;
    let lake = lake.existing()?;
    let stages = lake.read_stages(&a.chain)?;
    if stages.is_empty() {
        bail!(
            "chain {} has no stages in {} (ingest activations first)",
            a.chain,
            lake.location()
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
        resample_every: (a.resample_every > 0).then_some(a.resample_every),
        seed: a.seed,
        ..TrainConfig::default()
    };
    for &layer in &a.layers {
        let _work = lake.lock_work(
            &lake.train_lock(&PartitionKey::sae(&a.chain, "", layer, a.k as i32)),
            &format!("training chain {} layer {layer} k {}", a.chain, a.k),
        )?;
        let mut parent: Option<(String, Sae)> = None;
        // A parent in the lake, read only when a stage after it is trained.
        let mut stored_parent: Option<(String, PartitionKey)> = None;
        for (si, st) in stages.iter().enumerate() {
            let key = PartitionKey::sae(&a.chain, &st.stage, layer, a.k as i32);
            let wanted = a.stage.is_empty() || a.stage.contains(&st.stage);
            let exists = lake.has_partition(Table::Saes, &key)?;
            if !wanted || (exists && !a.overwrite) {
                // Not asked for, or done: it is only the next stage's parent, if it exists.
                parent = None;
                stored_parent = exists.then(|| (st.stage.clone(), key.clone()));
                if wanted {
                    super::say!("{key}: already trained, skipped (--overwrite to retrain)");
                }
                continue;
            }
            if let Some((p, k)) = stored_parent.take() {
                parent = Some((p, read_sae(&lake, &k)?));
            }
            let act_key = PartitionKey::layer(&a.chain, &st.stage, layer);
            let train_rows = open_rows(&lake, &act_key, "train", a)?;
            let val_rows = open_rows(&lake, &act_key, "val", a)?;
            let d = train_rows.d_model();
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
                None => cold_start(
                    mean_row(train_rows.as_ref())?,
                    a.d_sae.unwrap_or(8 * d),
                    a.k,
                    a.seed,
                ),
            };
            let sae = train_one(
                &lake,
                &key,
                &init,
                train_rows.as_ref(),
                val_rows.as_ref(),
                &cfg,
                &dev,
                a,
                &mut summary,
            )?;
            parent = Some((st.stage.clone(), sae));
        }
    }
    Ok(summary)
}

/// Trains one SAE (resuming from its checkpoint when there is one) and commits it.
fn train_one(
    lake: &Lake,
    key: &PartitionKey,
    init: &Sae,
    train: &dyn Rows,
    val: &dyn Rows,
    cfg: &TrainConfig,
    dev: &candle_core::Device,
    a: &TrainArgs,
    summary: &mut TrainSummary,
) -> Result<Sae> {
    let ckpt = lake.train_checkpoint(key);
    // Everything the result depends on; a checkpoint of another run is not resumed.
    let fingerprint = format!(
        "{cfg:?} activations {} rows {}/{} d_sae {} k {} parent {:?} init {:016x}",
        lake.partition_fingerprint(Table::Activations, &key.activations())?,
        train.len(),
        val.len(),
        init.d_sae,
        init.k,
        init.meta.init_from_stage,
        weights_hash(init)
    );
    let mut trainer = match Trainer::load(&ckpt, &fingerprint, cfg)? {
        Some(t) => {
            super::say!(
                "{key}: resuming after epoch {} from {}",
                t.epochs().len(),
                ckpt.display()
            );
            t
        }
        None => {
            if ckpt.is_file() {
                super::say!(
                    "{key}: the checkpoint {} was made from other activations or settings; starting over",
                    ckpt.display()
                );
            }
            Trainer::new(init, train.len(), cfg)?
        }
    };
    if !dev.is_cpu() {
        trainer = trainer.on_device(dev)?;
    }
    let stage = key.stage.as_deref().unwrap_or("");
    let layer = key.layer.unwrap_or(0);
    let bar = super::progress(
        (cfg.epochs * train.len()) as u64,
        &format!("{stage} layer {layer}"),
    );
    bar.set_position((trainer.epochs().len() * train.len()) as u64);
    let started = std::time::Instant::now();
    let mut saved = std::time::Instant::now();
    let mut ran = 0;
    while !trainer.is_done() {
        let epoch = trainer.epochs().len() + 1;
        let e = trainer
            .run_epoch(train, val, &mut |rows, loss| {
                bar.inc(rows as u64);
                bar.set_message(format!("epoch {epoch}/{} loss {loss:.4e}", cfg.epochs));
            })
            .with_context(|| format!("training {key}; nothing was written"))?;
        bar.println(format!(
            "{key} epoch {epoch}: train_mse {:.4e} val_mse {:.4e} dead {} ({:.1} s)",
            e.train_mse, e.val_mse, e.n_dead, e.seconds
        ));
        ran += 1;
        let stopping = a.stop_after_epochs == Some(ran) && !trainer.is_done();
        // After the last epoch the commit follows at once; a checkpoint would only be removed.
        let due = saved.elapsed().as_secs_f64() >= a.checkpoint_every && !trainer.is_done();
        if due || stopping {
            let saving = std::time::Instant::now();
            trainer.save(&ckpt, &fingerprint)?;
            summary.fixed_seconds += saving.elapsed().as_secs_f64();
            saved = std::time::Instant::now();
        }
        crate::fault::point("train.epoch");
        if stopping {
            bail!(
                "{key}: stopped after {ran} epochs as asked; run the same command again to resume from {}",
                ckpt.display()
            );
        }
    }
    bar.finish_and_clear();
    let committing = std::time::Instant::now();
    let result = trainer.finish()?;
    let mut sae = result.sae;
    sae.meta.source = Some(format!("saerl train {} {stage} layer {layer}", key.chain));
    let mut txn = Txn::begin(lake, a.overwrite)?;
    write_sae(&mut txn, key, &sae)?;
    txn.write(Table::TrainLog, key, &[train_log_batch(&result.epochs)?])?;
    txn.commit()?;
    if let Some(dir) = ckpt.parent() {
        lake.clear_staging(dir)?;
    }
    summary.fixed_seconds += committing.elapsed().as_secs_f64();
    super::say!(
        "{key}: best epoch {} val_mse {:.4e} ({} train / {} val rows, {:.1} s)",
        result.best_epoch,
        sae.meta.best_val_mse.unwrap_or(f64::NAN),
        train.len(),
        val.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(sae)
}

/// A cheap fingerprint of the starting weights (FNV-1a over a strided sample of their bits).
fn weights_hash(s: &Sae) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for v in [&s.b_pre, &s.w_enc, &s.b_enc, &s.w_dec, &s.b_dec] {
        for x in v.iter().step_by(97) {
            h = (h ^ x.to_bits() as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}
