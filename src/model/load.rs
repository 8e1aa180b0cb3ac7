//! Loading a Hugging Face checkpoint directory: `config.json`, `model.safetensors` or shards
//! listed in `model.safetensors.index.json`; bf16/f16/f32 weights are upcast to f32.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
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
    load_model_as(dir, device, DType::F32)
}

/// Loads the model of a checkpoint directory onto `device`, computing in `dtype` (f32, or bf16
/// for speed on a GPU; the weights are read as f32 and converted once).
pub fn load_model_as(dir: &Path, device: &Device, dtype: DType) -> Result<Qwen2> {
    if !dir.is_dir() {
        bail!("model directory {} does not exist", dir.display());
    }
    let cfg = Qwen2Config::from_file(&dir.join("config.json"))?;
    let mut tensors = HashMap::new();
    for f in weight_files(dir)? {
        read_tensors(&f, device, &mut tensors, &|_| true)?;
    }
    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    Qwen2::new(&cfg, vb).with_context(|| {
        format!(
            "loading {} (do config.json and the weights agree?)",
            dir.display()
        )
    })
}

/// A checkpoint's unembedding [vocab × d] (`lm_head`, or the tied embedding) and its final
/// RMSNorm weight [d], read without the rest of the model.
pub fn load_unembedding(dir: &Path) -> Result<(Vec<f32>, Vec<f32>, usize)> {
    let cfg = Qwen2Config::from_file(&dir.join("config.json"))?;
    let head = if cfg.tie_word_embeddings {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    };
    const NORM: &str = "model.norm.weight";
    let mut tensors = HashMap::new();
    for f in weight_files(dir)? {
        read_tensors(&f, &Device::Cpu, &mut tensors, &|n| n == head || n == NORM)?;
    }
    let take =
        |tensors: &mut HashMap<String, Tensor>, name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = tensors
                .remove(name)
                .with_context(|| format!("{}: no tensor {name}", dir.display()))?;
            if t.dims() != shape {
                bail!(
                    "{}: {name} is {:?}, config.json says {shape:?}",
                    dir.display(),
                    t.dims()
                );
            }
            Ok(t.flatten_all()?.to_vec1::<f32>()?)
        };
    let (v, d) = (cfg.vocab_size, cfg.hidden_size);
    let w = take(&mut tensors, head, &[v, d])?;
    let g = take(&mut tensors, NORM, &[d])?;
    Ok((w, g, d))
}

/// One tensor's entry in a safetensors header.
#[derive(serde::Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// Reads every `wanted` tensor of a safetensors file into f32 tensors on `device`, one at a time: each
/// is read straight into its f32 buffer (bf16/f16 upcast in blocks), so loading needs the
/// model's f32 size and no more (a memory map would add the file's pages on top).
fn read_tensors(
    path: &Path,
    device: &Device,
    out: &mut HashMap<String, Tensor>,
    wanted: &dyn Fn(&str) -> bool,
) -> Result<()> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let bad = || format!("{} is not a valid safetensors file", path.display());
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len() as usize;
    let mut n = [0u8; 8];
    file.read_exact(&mut n).with_context(bad)?;
    let n = u64::from_le_bytes(n) as usize;
    if n > 100 << 20 || 8 + n > size {
        bail!("{}: header of {n} bytes does not fit the file", bad());
    }
    let mut header = vec![0u8; n];
    file.read_exact(&mut header).with_context(bad)?;
    let entries: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).with_context(bad)?;
    for (name, v) in entries {
        if name == "__metadata__" || !wanted(&name) {
            continue;
        }
        let e: Entry =
            serde_json::from_value(v).with_context(|| format!("{}: tensor {name}", bad()))?;
        let numel: usize = e.shape.iter().product();
        let width = match e.dtype.as_str() {
            "F32" => 4,
            "BF16" | "F16" => 2,
            other => bail!(
                "{}: tensor {name} has dtype {other}; saerl reads F32, BF16 and F16 weights",
                path.display()
            ),
        };
        let (a, b) = e.data_offsets;
        if b < a || b - a != numel * width || 8 + n + b > size {
            bail!(
                "{}: tensor {name}'s data does not match its shape {:?} or lies outside the file",
                bad(),
                e.shape
            );
        }
        let at = (8 + n + a) as u64;
        let mut values = vec![0f32; numel];
        if width == 4 {
            file.read_exact_at(bytemuck::cast_slice_mut(&mut values), at)
                .with_context(|| format!("reading {name} from {}", path.display()))?;
            if cfg!(target_endian = "big") {
                values
                    .iter_mut()
                    .for_each(|v| *v = f32::from_bits(v.to_bits().swap_bytes()));
            }
        } else {
            const BLOCK: usize = 1 << 20;
            let mut raw = vec![0u8; BLOCK * 2];
            for (i, chunk) in values.chunks_mut(BLOCK).enumerate() {
                let bytes = &mut raw[..chunk.len() * 2];
                file.read_exact_at(bytes, at + (i * BLOCK * 2) as u64)
                    .with_context(|| format!("reading {name} from {}", path.display()))?;
                for (v, h) in chunk.iter_mut().zip(bytes.chunks_exact(2)) {
                    let h = u16::from_le_bytes([h[0], h[1]]);
                    *v = match e.dtype.as_str() {
                        "BF16" => half::bf16::from_bits(h).to_f32(),
                        _ => half::f16::from_bits(h).to_f32(),
                    };
                }
            }
        }
        let t = Tensor::from_vec(values, e.shape, &Device::Cpu)?;
        out.insert(name, t.to_device(device)?);
    }
    Ok(())
}
