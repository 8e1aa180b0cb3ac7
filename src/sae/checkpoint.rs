//! Epoch checkpoints of a training run: one safetensors file with the weights, Adam's moments
//! and the best epoch's weights, plus JSON metadata for the rest of the trainer's state. Written
//! to a temporary name and renamed, so a crash leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::step::Adam;
use super::train::{EpochLog, TrainConfig, Trainer};
use super::{Activation, Sae, Tensors};

#[derive(Serialize, Deserialize)]
struct Meta {
    /// Whatever identifies the run (settings, data, parent); a mismatch discards the checkpoint.
    fingerprint: String,
    n_rows: usize,
    d_model: usize,
    d_sae: usize,
    k: usize,
    activation: String,
    init_from_stage: Option<String>,
    adam_t: i32,
    prev_dead: Option<Vec<u32>>,
    best_epoch: Option<usize>,
}

/// The epoch logs travel as an f64 tensor, one row per epoch, so that a resumed run logs the
/// very same numbers (JSON would round some floats on the way back).
const EPOCH_COLS: usize = 6;

fn epochs_to_f64(epochs: &[EpochLog]) -> Vec<f64> {
    epochs
        .iter()
        .flat_map(|e| {
            [
                e.train_mse,
                e.val_mse,
                e.n_dead as f64,
                e.aux_loss.unwrap_or(f64::NAN),
                e.lr,
                e.seconds,
            ]
        })
        .collect()
}

fn epochs_from_f64(v: &[f64]) -> Vec<EpochLog> {
    v.chunks_exact(EPOCH_COLS)
        .map(|r| EpochLog {
            train_mse: r[0],
            val_mse: r[1],
            n_dead: r[2] as usize,
            aux_loss: (!r[3].is_nan()).then_some(r[3]),
            lr: r[4],
            seconds: r[5],
        })
        .collect()
}

impl Trainer {
    /// Writes the state after the last finished epoch to `path`.
    pub fn save(&self, path: &Path, fingerprint: &str) -> Result<()> {
        let meta = Meta {
            fingerprint: fingerprint.to_string(),
            n_rows: self.n_rows,
            d_model: self.sae.d_model,
            d_sae: self.sae.d_sae,
            k: self.sae.k,
            activation: self.sae.activation.name().to_string(),
            init_from_stage: self.sae.meta.init_from_stage.clone(),
            adam_t: self.adam.t,
            prev_dead: self.prev_dead.clone(),
            best_epoch: self.best.as_ref().map(|b| b.0),
        };
        let epochs = epochs_to_f64(&self.epochs);
        let mut groups = vec![
            ("sae", self.sae.tensors.parts()),
            ("m", self.adam.m.parts()),
            ("v", self.adam.v.parts()),
        ];
        if let Some((_, best)) = &self.best {
            groups.push(("best", best.tensors.parts()));
        }
        let mut views = Vec::new();
        for (prefix, parts) in groups {
            for (name, v) in Tensors::NAMES.iter().zip(parts) {
                let view = TensorView::new(Dtype::F32, vec![v.len()], bytemuck::cast_slice(v))?;
                views.push((format!("{prefix}.{name}"), view));
            }
        }
        views.push((
            "epochs".to_string(),
            TensorView::new(
                Dtype::F64,
                vec![epochs.len()],
                bytemuck::cast_slice(&epochs),
            )?,
        ));
        let info = HashMap::from([("saerl".to_string(), serde_json::to_string(&meta)?)]);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let bytes = safetensors::serialize(views, Some(info))
            .with_context(|| format!("serialising the checkpoint {}", path.display()))?;
        crate::durable::write_atomic(path, &bytes)
    }

    /// The trainer saved at `path`, or None when there is none or it belongs to another run
    /// (other settings, rows or parent), in which case training starts over.
    pub fn load(path: &Path, fingerprint: &str, cfg: &TrainConfig) -> Result<Option<Trainer>> {
        if !path.is_file() {
            return Ok(None);
        }
        let fix = || {
            format!(
                "reading the checkpoint {} (delete it to start this SAE over)",
                path.display()
            )
        };
        let bytes = std::fs::read(path).with_context(fix)?;
        let meta = Meta::read(&bytes).with_context(fix)?;
        if meta.fingerprint != fingerprint {
            return Ok(None);
        }
        let st = SafeTensors::deserialize(&bytes).with_context(fix)?;
        let lens = Tensors::sizes(meta.d_model, meta.d_sae);
        let read = |prefix: &str| -> Result<Tensors> {
            let mut out: [Vec<f32>; 5] = Default::default();
            for (i, name) in Tensors::NAMES.iter().enumerate() {
                out[i] = f32_tensor(&st, &format!("{prefix}.{name}"), lens[i]).with_context(fix)?;
            }
            Ok(Tensors::from_parts(out))
        };
        let adam = Adam {
            m: read("m")?,
            v: read("v")?,
            t: meta.adam_t,
        };
        let mut trainer = Trainer::from_parts(cfg, meta.n_rows, meta.sae(read("sae")?)?, adam);
        if let Some(e) = meta.best_epoch {
            trainer.best = Some((e, meta.sae(read("best")?)?));
        }
        trainer.prev_dead = meta.prev_dead;
        trainer.epochs = epochs_from_f64(&f64_rows(&st, "epochs", EPOCH_COLS).with_context(fix)?);
        Ok(Some(trainer))
    }
}

impl Meta {
    /// The `saerl` entry of a checkpoint's safetensors header.
    fn read(bytes: &[u8]) -> Result<Self> {
        let (_, header) = SafeTensors::read_metadata(bytes)?;
        let text = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("saerl"))
            .context("no saerl metadata")?;
        Ok(serde_json::from_str(text)?)
    }

    /// An SAE of this checkpoint's shape and settings with `tensors`.
    fn sae(&self, tensors: Tensors) -> Result<Sae> {
        let mut sae = Sae {
            d_model: self.d_model,
            d_sae: self.d_sae,
            k: self.k,
            activation: Activation::parse(&self.activation)?,
            tensors,
            meta: Default::default(),
        };
        sae.meta.init_from_stage = self.init_from_stage.clone();
        Ok(sae)
    }
}

/// Tensor `name`, which must be f32 with `len` values.
fn f32_tensor(st: &SafeTensors, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = st.tensor(name)?;
    if t.dtype() != Dtype::F32 || t.data().len() != len * 4 {
        bail!("tensor {name} has the wrong type or size");
    }
    Ok(t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Tensor `name`, which must be f64 with whole rows of `cols` values.
fn f64_rows(st: &SafeTensors, name: &str, cols: usize) -> Result<Vec<f64>> {
    let t = st.tensor(name)?;
    if t.dtype() != Dtype::F64 || t.data().len() % (8 * cols) != 0 {
        bail!("tensor {name} has the wrong type or size");
    }
    Ok(t.data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect())
}
