//! The published `.pt` checkpoint format:
//! `{"state_dict": {b_pre [d], encoder.weight [d_sae,d], encoder.bias [d_sae],
//!   decoder.weight [d,d_sae], decoder.bias [d]}, "config": {d_model, d_sae, k, ...}}`
//! saved with `torch.save` (a zip of `data.pkl` plus one raw little-endian file per storage).

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::pickle::{self, StorageRef, StorageType, TensorRef, Value};
use super::zip_store::{ZipStore, ZipWriter};
use super::{Activation, Sae, SaeMeta, Tensors};
use crate::kernels::transpose;

/// A loaded checkpoint: the SAE and its config dict as stored.
pub struct PtCheckpoint {
    pub sae: Sae,
    pub config: Vec<(String, Value)>,
}

/// Reads and validates a `.pt` SAE checkpoint. Errors name the file.
pub fn read(path: &Path) -> Result<PtCheckpoint> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse(bytes).with_context(|| format!("{} is not a valid SAE checkpoint", path.display()))
}

/// Parses a checkpoint held in memory (errors do not name a file).
pub fn parse(bytes: Vec<u8>) -> Result<PtCheckpoint> {
    let zip = ZipStore::parse(bytes)?;
    let archive = Archive::open(&zip)?;
    let root = pickle::load(zip.get(&archive.pickle).unwrap())?;
    let state = root
        .get("state_dict")
        .context("missing key \"state_dict\"")?;
    let config = config_dict(&root)?;
    let cfg_int = |key: &str| -> Result<usize> {
        match lookup(&config, key) {
            Some(Value::Int(v)) if *v > 0 => Ok(*v as usize),
            Some(v) => bail!(
                "config[{key:?}] is a {}, expected a positive int",
                v.type_name()
            ),
            None => bail!("missing config key {key:?}"),
        }
    };
    let (d, n, k) = (cfg_int("d_model")?, cfg_int("d_sae")?, cfg_int("k")?);
    let tensor = |name: &str, shape: &[usize]| archive.tensor(&zip, state, name, shape, (d, n));
    let activation = match lookup(&config, "activation") {
        Some(Value::Str(a)) => Activation::parse(a)?,
        _ => Activation::TopK,
    };
    let sae = Sae {
        d_model: d,
        d_sae: n,
        k,
        activation,
        tensors: Tensors {
            b_pre: tensor("b_pre", &[d])?,
            w_enc: tensor("encoder.weight", &[n, d])?,
            b_enc: tensor("encoder.bias", &[n])?,
            // Stored [d, d_sae]; the SAE keeps decoder columns feature-major.
            w_dec: transpose(&tensor("decoder.weight", &[d, n])?, d, n),
            b_dec: tensor("decoder.bias", &[d])?,
        },
        meta: meta(&config),
    };
    sae.validate()?;
    Ok(PtCheckpoint { sae, config })
}

/// Where a torch.save archive keeps its pickle and storages (`<name>/data.pkl`,
/// `<name>/data/<key>`).
struct Archive {
    pickle: String,
    prefix: String,
}

impl Archive {
    fn open(zip: &ZipStore) -> Result<Self> {
        let pickle = zip
            .names()
            .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
            .context("no data.pkl in the archive")?
            .to_string();
        let prefix = pickle[..pickle.len() - "data.pkl".len()].to_string();
        if let Some(order) = zip.get(&format!("{prefix}byteorder")) {
            if order != b"little" {
                bail!(
                    "byte order {:?} is not supported (only little-endian)",
                    String::from_utf8_lossy(order)
                );
            }
        }
        Ok(Self { pickle, prefix })
    }

    /// `state[name]` as contiguous f32, checked to have `shape`.
    fn tensor(
        &self,
        zip: &ZipStore,
        state: &Value,
        name: &str,
        shape: &[usize],
        (d, n): (usize, usize),
    ) -> Result<Vec<f32>> {
        let t = match state.get(name) {
            Some(Value::Tensor(t)) => t,
            Some(v) => bail!(
                "state_dict[{name:?}] is a {}, expected a tensor",
                v.type_name()
            ),
            None => bail!("missing state_dict key {name:?}"),
        };
        if t.shape != shape {
            bail!("state_dict[{name:?}] has shape {:?}, but the config (d_model {d}, d_sae {n}) implies {shape:?}", t.shape);
        }
        let data = zip
            .get(&format!("{}data/{}", self.prefix, t.storage.key))
            .with_context(|| {
                format!(
                    "storage {} of {name:?} is missing from the archive",
                    t.storage.key
                )
            })?;
        gather(t, data).with_context(|| format!("reading {name:?}"))
    }
}

/// The `config` dict of the checkpoint, as (key, value) pairs in stored order.
fn config_dict(root: &Value) -> Result<Vec<(String, Value)>> {
    match root.get("config").context("missing key \"config\"")? {
        Value::Dict(items) => items
            .iter()
            .map(|(k, v)| match k {
                Value::Str(k) => Ok((k.clone(), v.clone())),
                _ => bail!("config has a non-string key"),
            })
            .collect(),
        other => bail!("\"config\" is a {}, expected a dict", other.type_name()),
    }
}

fn lookup<'a>(config: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    config.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// The provenance the study's config records.
fn meta(config: &[(String, Value)]) -> SaeMeta {
    let text = |key: &str| match lookup(config, key) {
        Some(Value::Str(s)) => Some(s.clone()),
        _ => None,
    };
    SaeMeta {
        init_from_stage: text("init_from_stage"),
        best_epoch: match lookup(config, "best_epoch") {
            Some(Value::Int(e)) => Some(*e as i32),
            _ => None,
        },
        best_val_mse: match lookup(config, "best_val_loss") {
            Some(Value::Float(v)) => Some(*v),
            Some(Value::Int(v)) => Some(*v as f64),
            _ => None,
        },
        source: text("source"),
    }
}

/// Every size and offset comes from the file, so all arithmetic is checked and the view must
/// lie inside its storage, which must lie inside the archive, before anything is allocated.
fn gather(t: &TensorRef, data: &[u8]) -> Result<Vec<f32>> {
    let size = t.storage.dtype.size();
    let need = t.storage.numel.checked_mul(size);
    if need.is_none_or(|n| data.len() < n) {
        bail!(
            "storage {} holds {} bytes, but its header claims {} elements of {size} bytes",
            t.storage.key,
            data.len(),
            t.storage.numel
        );
    }
    if t.stride.len() != t.shape.len() {
        bail!(
            "tensor has {} dims but {} strides",
            t.shape.len(),
            t.stride.len()
        );
    }
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |a, &s| a.checked_mul(s))
        .context("tensor shape overflows")?;
    // The largest element the view reaches: offset + Σ (shape_i − 1)·stride_i.
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |a, (&n, &s)| {
            a.checked_add(n.saturating_sub(1).checked_mul(s)?)
        });
    if numel > 0 && last.is_none_or(|l| l >= t.storage.numel) {
        bail!(
            "tensor view (offset {}, shape {:?}, strides {:?}) reaches past its storage of {} elements",
            t.offset,
            t.shape,
            t.stride,
            t.storage.numel
        );
    }
    if numel > t.storage.numel {
        bail!(
            "tensor of {numel} elements repeats its storage of {} (broadcast views are not weights)",
            t.storage.numel
        );
    }
    let value = |i: usize| -> f32 {
        let b = &data[i * size..(i + 1) * size];
        match t.storage.dtype {
            StorageType::F32 => f32::from_le_bytes(b.try_into().unwrap()),
            StorageType::F64 => f64::from_le_bytes(b.try_into().unwrap()) as f32,
            StorageType::BF16 => half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32(),
            StorageType::F16 => half::f16::from_le_bytes(b.try_into().unwrap()).to_f32(),
        }
    };
    let mut out = Vec::with_capacity(numel);
    let mut idx = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        // In range: bounded by `last` above.
        let flat = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.push(value(flat));
        for dim in (0..idx.len()).rev() {
            idx[dim] += 1;
            if idx[dim] < t.shape[dim] {
                break;
            }
            idx[dim] = 0;
        }
    }
    Ok(out)
}

/// Writes `sae` in the published format, readable by `torch.load`.
/// `config` entries (besides d_model, d_sae, k, which always come from the SAE) are kept as given.
pub fn write(path: &Path, sae: &Sae, extra_config: &[(String, Value)]) -> Result<()> {
    let (d, n) = (sae.d_model, sae.d_sae);
    let w_dec_dn = transpose(&sae.w_dec, n, d);
    let tensors: [(&str, &[f32], Vec<usize>); 5] = [
        ("b_pre", &sae.b_pre, vec![d]),
        ("encoder.weight", &sae.w_enc, vec![n, d]),
        ("encoder.bias", &sae.b_enc, vec![n]),
        ("decoder.weight", &w_dec_dn, vec![d, n]),
        ("decoder.bias", &sae.b_dec, vec![d]),
    ];
    write_raw(path, &tensors, sae_config(sae, extra_config))
}

fn sae_config(sae: &Sae, extra: &[(String, Value)]) -> Vec<(String, Value)> {
    let mut cfg = vec![
        ("d_model".to_string(), Value::Int(sae.d_model as i64)),
        ("d_sae".to_string(), Value::Int(sae.d_sae as i64)),
        ("k".to_string(), Value::Int(sae.k as i64)),
    ];
    let meta = &sae.meta;
    let defaults = [
        (
            "source",
            meta.source.clone().map_or(Value::None, Value::Str),
        ),
        (
            "init_from_stage",
            meta.init_from_stage.clone().map_or(Value::None, Value::Str),
        ),
        (
            "best_epoch",
            meta.best_epoch
                .map_or(Value::None, |e| Value::Int(e as i64)),
        ),
        (
            "best_val_loss",
            meta.best_val_mse.map_or(Value::None, Value::Float),
        ),
    ];
    for (k, v) in defaults {
        if !extra.iter().any(|(e, _)| e == k) {
            cfg.push((k.to_string(), v));
        }
    }
    if sae.activation != Activation::TopK {
        cfg.push((
            "activation".into(),
            Value::Str(sae.activation.name().into()),
        ));
    }
    cfg.extend(
        extra
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "d_model" | "d_sae" | "k"))
            .cloned(),
    );
    cfg
}

/// Low-level writer: any named f32 tensors and any config (used to build test inputs too).
pub fn write_raw(
    path: &Path,
    tensors: &[(&str, &[f32], Vec<usize>)],
    config: Vec<(String, Value)>,
) -> Result<()> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("archive")
        .to_string();
    let mut zip = ZipWriter::new();
    let mut state = Vec::new();
    let mut storages = Vec::new();
    for (i, (name, data, shape)) in tensors.iter().enumerate() {
        let mut stride = vec![1usize; shape.len()];
        for dim in (0..shape.len().saturating_sub(1)).rev() {
            stride[dim] = stride[dim + 1] * shape[dim + 1];
        }
        let storage = StorageRef {
            dtype: StorageType::F32,
            key: i.to_string(),
            numel: data.len(),
        };
        state.push((
            Value::Str(name.to_string()),
            Value::Tensor(TensorRef {
                storage,
                offset: 0,
                shape: shape.clone(),
                stride,
            }),
        ));
        storages.push(
            data.iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
    }
    let root = Value::Dict(vec![
        (Value::Str("state_dict".into()), Value::Dict(state)),
        (
            Value::Str("config".into()),
            Value::Dict(
                config
                    .into_iter()
                    .map(|(k, v)| (Value::Str(k), v))
                    .collect(),
            ),
        ),
    ]);
    zip.add(&format!("{stem}/data.pkl"), &pickle::dump(&root))?;
    zip.add(&format!("{stem}/.format_version"), b"1")?;
    zip.add(&format!("{stem}/.storage_alignment"), b"64")?;
    zip.add(&format!("{stem}/byteorder"), b"little")?;
    for (i, bytes) in storages.iter().enumerate() {
        zip.add(&format!("{stem}/data/{i}"), bytes)?;
    }
    zip.add(&format!("{stem}/version"), b"3\n")?;
    crate::durable::write_atomic(path, &zip.finish())
}
