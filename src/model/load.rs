//! Loading a Hugging Face checkpoint directory: `config.json`, `model.safetensors` or shards
//! listed in `model.safetensors.index.json`; bf16/f16/f32 weights are upcast to f32.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::{Qwen2, Qwen2Config};

/// The safetensors files of a checkpoint, checked to exist.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        bail!(
            "{}: neither model.safetensors nor model.safetensors.index.json found",
            dir.display()
        );
    }
    let text =
        std::fs::read_to_string(&index).with_context(|| format!("reading {}", index.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", index.display()))?;
    let map = v["weight_map"]
        .as_object()
        .with_context(|| format!("{}: no weight_map", index.display()))?;
    let shards: BTreeSet<&str> = map.values().filter_map(|s| s.as_str()).collect();
    let files: Vec<PathBuf> = shards.into_iter().map(|s| dir.join(s)).collect();
    for f in &files {
        if !f.is_file() {
            bail!(
                "shard {} listed in {} is missing",
                f.display(),
                index.display()
            );
        }
    }
    Ok(files)
}

/// Loads the model of a checkpoint directory onto `device` in f32.
pub fn load_model(dir: &Path, device: &Device) -> Result<Qwen2> {
    if !dir.is_dir() {
        bail!("model directory {} does not exist", dir.display());
    }
    let cfg = Qwen2Config::from_file(&dir.join("config.json"))?;
    let files = weight_files(dir)?;
    // SAFETY: the files are memory-mapped read-only and not modified while loaded.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, device) }
        .with_context(|| format!("opening the weights of {}", dir.display()))?;
    Qwen2::new(&cfg, vb).with_context(|| {
        format!(
            "loading {} (do config.json and the weights agree?)",
            dir.display()
        )
    })
}
