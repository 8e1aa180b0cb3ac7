//! `saerl train`: TopK SAEs along a chain, one per (stage, layer), each stage warm-started from
//! the previous stage's SAE of the same layer and k so that feature indices stay aligned.
//! Writes `saes`, `features` and `train_log`; an SAE already in the lake is skipped (and used as
//! the next stage's parent). Rows stream from Parquet unless `--in-memory`; between epochs the
//! trainer is checkpointed under `<lake>/.tmp/` (at most once per `--checkpoint-every` seconds),
//! and an interrupted SAE resumes from there.

use anyhow::{bail, Context, Result};

use crate::lake::{Lake, PartitionKey, StageRow, Table, Txn};
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
    #[command(flatten)]
    pub device: crate::commands::args::DeviceArg,
    #[command(flatten)]
    pub overwrite: crate::commands::args::Overwrite,
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
    let lake = lake.existing()?;
    let stages = lake.read_stages(&a.chain)?;
    check_stages(&lake, &stages, a)?;
    let mut chain = ChainTraining {
        lake: &lake,
        a,
        cfg: TrainConfig {
            epochs: a.epochs,
            lr: a.lr,
            batch: a.batch,
            shuffle: a.batch_order == "shuffled",
            resample_every: (a.resample_every > 0).then_some(a.resample_every),
            seed: a.seed,
            ..TrainConfig::default()
        },
        dev: a.device.open()?,
        summary: TrainSummary::default(),
    };
    for &layer in &a.layers {
        chain.train_layer(&stages, layer)?;
    }
    Ok(chain.summary)
}

/// The chain has stages, and every `--stage` is one of them.
fn check_stages(lake: &Lake, stages: &[StageRow], a: &TrainArgs) -> Result<()> {
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
    Ok(())
}

/// One `saerl train` over a chain: what every SAE it trains shares.
struct ChainTraining<'a> {
    lake: &'a Lake,
    a: &'a TrainArgs,
    cfg: TrainConfig,
    dev: candle_core::Device,
    summary: TrainSummary,
}

impl ChainTraining<'_> {
    /// Trains the layer's SAEs along the stages, each warm-started from the one before.
    fn train_layer(&mut self, stages: &[StageRow], layer: i32) -> Result<()> {
        let (lake, a) = (self.lake, self.a);
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
            if !wanted || (exists && !*a.overwrite) {
                // Not asked for, or done: it is only the next stage's parent, if it exists.
                parent = None;
                stored_parent = exists.then(|| (st.stage.clone(), key.clone()));
                if wanted {
                    super::say!("{key}: already trained, skipped (--overwrite to retrain)");
                }
                continue;
            }
            if let Some((p, k)) = stored_parent.take() {
                parent = Some((p, read_sae(lake, &k)?));
            }
            let act_key = PartitionKey::layer(&a.chain, &st.stage, layer);
            let train = open_rows(lake, &act_key, "train", a)?;
            let val = open_rows(lake, &act_key, "val", a)?;
            let init = self.initial_sae(&key, parent.as_ref(), si > 0, train.as_ref())?;
            let sae = self.train_one(&key, &init, train.as_ref(), val.as_ref())?;
            parent = Some((st.stage.clone(), sae));
        }
        Ok(())
    }

    /// The parent's weights (with provenance reset), or a cold start for the chain's first stage.
    fn initial_sae(
        &self,
        key: &PartitionKey,
        parent: Option<&(String, Sae)>,
        has_parent_stage: bool,
        train: &dyn Rows,
    ) -> Result<Sae> {
        let (a, d) = (self.a, train.d_model());
        match parent {
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
                Ok(s)
            }
            None if has_parent_stage && !a.stage.is_empty() => {
                bail!("{key}: the parent stage's SAE is not in the lake; train the chain in order")
            }
            None => Ok(cold_start(
                mean_row(train)?,
                a.d_sae.unwrap_or(8 * d),
                a.k,
                a.seed,
            )),
        }
    }

    /// Trains one SAE (resuming from its checkpoint when there is one) and commits it.
    fn train_one(
        &mut self,
        key: &PartitionKey,
        init: &Sae,
        train: &dyn Rows,
        val: &dyn Rows,
    ) -> Result<Sae> {
        let started = std::time::Instant::now();
        let (mut trainer, fingerprint) = self.resume_or_start(key, init, train, val)?;
        self.run_epochs(key, &mut trainer, &fingerprint, train, val)?;
        let committing = std::time::Instant::now();
        let result = trainer.finish()?;
        let mut sae = result.sae;
        let (stage, layer) = (key.stage.as_deref().unwrap_or(""), key.layer.unwrap_or(0));
        sae.meta.source = Some(format!("saerl train {} {stage} layer {layer}", key.chain));
        let mut txn = Txn::begin(self.lake, *self.a.overwrite)?;
        write_sae(&mut txn, key, &sae)?;
        txn.write(Table::TrainLog, key, &[train_log_batch(&result.epochs)?])?;
        txn.commit()?;
        if let Some(dir) = self.lake.train_checkpoint(key).parent() {
            self.lake.clear_staging(dir)?;
        }
        self.summary.fixed_seconds += committing.elapsed().as_secs_f64();
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

    /// The trainer from the SAE's checkpoint when it was made by this same run, or a fresh one;
    /// with the fingerprint a checkpoint of this run carries.
    fn resume_or_start(
        &self,
        key: &PartitionKey,
        init: &Sae,
        train: &dyn Rows,
        val: &dyn Rows,
    ) -> Result<(Trainer, String)> {
        let ckpt = self.lake.train_checkpoint(key);
        let cfg = &self.cfg;
        // Everything the result depends on; a checkpoint of another run is not resumed.
        let fingerprint = format!(
            "{cfg:?} activations {} rows {}/{} d_sae {} k {} parent {:?} init {:016x}",
            self.lake
                .partition_fingerprint(Table::Activations, &key.activations())?,
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
        if !self.dev.is_cpu() {
            trainer = trainer.on_device(&self.dev)?;
        }
        Ok((trainer, fingerprint))
    }

    /// The remaining epochs, with progress and a checkpoint at most every `--checkpoint-every`.
    fn run_epochs(
        &mut self,
        key: &PartitionKey,
        trainer: &mut Trainer,
        fingerprint: &str,
        train: &dyn Rows,
        val: &dyn Rows,
    ) -> Result<()> {
        let (a, epochs) = (self.a, self.cfg.epochs);
        let ckpt = self.lake.train_checkpoint(key);
        let (stage, layer) = (key.stage.as_deref().unwrap_or(""), key.layer.unwrap_or(0));
        let bar = super::progress(
            (epochs * train.len()) as u64,
            &format!("{stage} layer {layer}"),
        );
        bar.set_position((trainer.epochs().len() * train.len()) as u64);
        let mut saved = std::time::Instant::now();
        let mut ran = 0;
        while !trainer.is_done() {
            let epoch = trainer.epochs().len() + 1;
            let e = trainer
                .run_epoch(train, val, &mut |rows, loss| {
                    bar.inc(rows as u64);
                    bar.set_message(format!("epoch {epoch}/{epochs} loss {loss:.4e}"));
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
                trainer.save(&ckpt, fingerprint)?;
                self.summary.fixed_seconds += saving.elapsed().as_secs_f64();
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
        Ok(())
    }
}

/// A cheap fingerprint of the starting weights (FNV-1a over a strided sample of their bits).
fn weights_hash(s: &Sae) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for v in s.tensors.parts() {
        for x in v.iter().step_by(97) {
            h = (h ^ x.to_bits() as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}
