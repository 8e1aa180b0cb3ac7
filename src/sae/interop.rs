//! The field's other SAE formats, one directory per SAE: SAELens (`cfg.json` +
//! `sae_weights.safetensors`) and EleutherAI sparsify (`cfg.json` + `sae.safetensors`).
//!
//! saerl's SAE computes pre = W_enc (x − b_pre) + b_enc, keeps the top k (then a ReLU for the
//! ReLU conventions), and decodes Σ z_i W_dec[i] + b_dec. The mappings, from the libraries'
//! sources:
//! - SAELens TopK: pre = (x − b_dec·apply_b_dec_to_input) W_enc + b_enc, top-k THEN ReLU
//!   (`topk_relu`); W_enc is stored [d_in, d_sae]. `rescale_acts_by_decoder_norm` multiplies
//!   pre by each decoder row's norm and divides the latents by it before decoding: folded into
//!   W_enc, b_enc and W_dec on import.
//! - sparsify: pre = ReLU((x − b_dec) encoder.weightᵀ + encoder.bias) FIRST, then top-k
//!   (`relu_topk`; the same dense latents as `topk_relu`); encoder.weight is [d_sae, d_in].
//!
//! The formats have no separate pre-bias, so on export b_pre folds into the encoder bias
//! (b_enc − W_enc·b_pre, plus W_enc·b_dec where the format subtracts b_dec). The study's own
//! `topk` (negative top-k values kept) has no ReLU-free counterpart in either library: the export
//! says so and records it in `saerl.json` beside the weights, never silently.

use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use super::{Activation, Sae, SaeMeta, Tensors};
use crate::kernels::transpose;

/// The library whose files an SAE directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Library {
    SaeLens,
    Sparsify,
}

impl Library {
    pub fn name(self) -> &'static str {
        match self {
            Library::SaeLens => "SAELens",
            Library::Sparsify => "sparsify",
        }
    }

    fn weights_file(self) -> &'static str {
        match self {
            Library::SaeLens => "sae_weights.safetensors",
            Library::Sparsify => "sae.safetensors",
        }
    }
}

/// Where the notes of an inexact export go, beside the library's own files.
pub const NOTES_FILE: &str = "saerl.json";

/// Reads the SAE in `dir`. Errors name the directory and what is unsupported.
pub fn read(dir: &Path, format: Library) -> Result<Sae> {
    let ctx = || format!("reading the {} SAE in {}", format.name(), dir.display());
    let cfg_path = dir.join("cfg.json");
    let cfg: Value = serde_json::from_slice(
        &std::fs::read(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", cfg_path.display()))?;
    let weights = dir.join(format.weights_file());
    let bytes =
        std::fs::read(&weights).with_context(|| format!("reading {}", weights.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a safetensors file", weights.display()))?;
    let sae = match format {
        Library::SaeLens => from_saelens(&cfg, &st),
        Library::Sparsify => from_sparsify(&cfg, &st),
    }
    .with_context(ctx)?;
    sae.validate().with_context(ctx)?;
    Ok(sae)
}

fn cfg_usize(cfg: &Value, key: &str) -> Result<usize> {
    cfg.get(key)
        .and_then(Value::as_u64)
        .filter(|&v| v > 0)
        .map(|v| v as usize)
        .with_context(|| format!("cfg.json has no positive integer {key:?}"))
}

fn cfg_bool(cfg: &Value, key: &str, default: bool) -> Result<bool> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => bail!("cfg.json {key:?} is {v}, expected true or false"),
    }
}

/// Tensor `name` as f32 values, checked to have `shape`.
fn tensor(st: &SafeTensors, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let t = st
        .tensor(name)
        .with_context(|| format!("no tensor {name:?}"))?;
    if t.shape() != shape {
        bail!(
            "tensor {name} has shape {:?}, expected {shape:?}",
            t.shape()
        );
    }
    let b = t.data();
    Ok(match t.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => bail!("tensor {name} has dtype {other:?}; expected a float type"),
    })
}

fn from_saelens(cfg: &Value, st: &SafeTensors) -> Result<Sae> {
    match cfg.get("architecture").and_then(Value::as_str) {
        Some("topk") => {}
        other => bail!("architecture {other:?}: only SAELens TopK SAEs (\"topk\") are supported"),
    }
    match cfg.get("normalize_activations").and_then(Value::as_str) {
        None | Some("none") => {}
        Some(n) => bail!("normalize_activations {n:?}: only \"none\" is supported (the normalisation constants are not part of the SAE)"),
    }
    let (d, n, k) = (
        cfg_usize(cfg, "d_in")?,
        cfg_usize(cfg, "d_sae")?,
        cfg_usize(cfg, "k")?,
    );
    let mut w_enc = transpose(&tensor(st, "W_enc", &[d, n])?, d, n);
    let mut b_enc = tensor(st, "b_enc", &[n])?;
    let mut w_dec = tensor(st, "W_dec", &[n, d])?;
    let b_dec = tensor(st, "b_dec", &[d])?;
    if cfg_bool(cfg, "rescale_acts_by_decoder_norm", false)? {
        for i in 0..n {
            let norm = w_dec[i * d..(i + 1) * d]
                .iter()
                .map(|v| (*v as f64).powi(2))
                .sum::<f64>()
                .sqrt() as f32;
            if norm == 0.0 {
                bail!(
                    "decoder row {i} is zero, so rescale_acts_by_decoder_norm cannot be folded in"
                );
            }
            w_enc[i * d..(i + 1) * d]
                .iter_mut()
                .for_each(|v| *v *= norm);
            b_enc[i] *= norm;
            w_dec[i * d..(i + 1) * d]
                .iter_mut()
                .for_each(|v| *v /= norm);
        }
    }
    let b_pre = match cfg_bool(cfg, "apply_b_dec_to_input", true)? {
        true => b_dec.clone(),
        false => vec![0.0; d],
    };
    let source = cfg
        .pointer("/metadata/sae_lens_version")
        .and_then(Value::as_str)
        .map(|v| format!("SAELens {v}"));
    Ok(Sae {
        d_model: d,
        d_sae: n,
        k,
        activation: Activation::TopKRelu,
        tensors: Tensors {
            b_pre,
            w_enc,
            b_enc,
            w_dec,
            b_dec,
        },
        meta: SaeMeta {
            source: source.or(Some("SAELens".into())),
            ..Default::default()
        },
    })
}

fn from_sparsify(cfg: &Value, st: &SafeTensors) -> Result<Sae> {
    match cfg.get("activation").and_then(Value::as_str) {
        None | Some("topk") => {}
        Some(a) => bail!("activation {a:?}: only sparsify's \"topk\" is supported"),
    }
    for flag in ["skip_connection", "transcode"] {
        if cfg_bool(cfg, flag, false)? {
            bail!("{flag} is set: transcoders and skip connections are not SAEs of the residual stream");
        }
    }
    let k = cfg_usize(cfg, "k")?;
    // d_in may be missing from older configs: the decoder's shape tells.
    let dec = st.tensor("W_dec").context("no tensor \"W_dec\"")?;
    let [n, d] = dec.shape() else {
        bail!("W_dec has shape {:?}, expected [d_sae, d_in]", dec.shape());
    };
    let (n, d) = (*n, *d);
    if let Ok(d_in) = cfg_usize(cfg, "d_in") {
        if d_in != d {
            bail!("cfg.json d_in is {d_in} but W_dec is {d} wide");
        }
    }
    let b_dec = tensor(st, "b_dec", &[d])?;
    Ok(Sae {
        d_model: d,
        d_sae: n,
        k,
        activation: Activation::ReluTopK,
        tensors: Tensors {
            b_pre: b_dec.clone(),
            w_enc: tensor(st, "encoder.weight", &[n, d])?,
            b_enc: tensor(st, "encoder.bias", &[n])?,
            w_dec: tensor(st, "W_dec", &[n, d])?,
            b_dec,
        },
        meta: SaeMeta {
            source: Some("sparsify".into()),
            ..Default::default()
        },
    })
}

/// b_enc + W_enc·(shift) in f64, for folding a pre-bias into the encoder bias.
fn shifted_bias(sae: &Sae, shift: &[f32]) -> Vec<f32> {
    (0..sae.d_sae)
        .map(|i| {
            let dot: f64 = sae
                .enc_row(i)
                .iter()
                .zip(shift)
                .map(|(&w, &s)| w as f64 * s as f64)
                .sum();
            (sae.b_enc[i] as f64 + dot) as f32
        })
        .collect()
}

/// A tensor as a library file stores it: name, values, shape.
type NamedTensor = (&'static str, Vec<f32>, Vec<usize>);

/// Writes `sae` into `dir` (created; its files replaced) in `format`. Returns the notes on what
/// the format cannot say exactly (also written to `saerl.json`); empty when the export is exact.
pub fn write(dir: &Path, sae: &Sae, format: Library, hook: &str) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    if sae.activation == Activation::TopK {
        notes.push(format!(
            "saerl's SAE uses the study's `topk` (the k largest pre-activations kept as they are, negative ones included); {} applies a ReLU, so latents whose top-k value is negative read as 0 there",
            format.name()
        ));
    }
    let (apply_b_dec, b_enc) = export_bias(sae, format);
    if b_enc != sae.b_enc {
        notes.push(format!(
            "b_pre differs from b_dec and {} has no separate pre-bias: it is folded into the encoder bias (b_enc − W_enc·b_pre{}), exact up to float32 rounding",
            format.name(),
            if format == Library::Sparsify { " + W_enc·b_dec" } else { "" }
        ));
    }
    let (cfg, tensors) = library_files(sae, format, hook, apply_b_dec, b_enc);
    write_dir(
        dir,
        &cfg,
        &tensors,
        format.weights_file(),
        sae.activation,
        &notes,
    )?;
    Ok(notes)
}

/// Whether the format subtracts b_dec from x before the encoder, and the encoder bias that makes
/// up the rest of saerl's pre-bias.
fn export_bias(sae: &Sae, format: Library) -> (bool, Vec<f32>) {
    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    let zero = sae.b_pre.iter().all(|&v| v == 0.0);
    match format {
        Library::SaeLens if same(&sae.b_pre, &sae.b_dec) => (true, sae.b_enc.clone()),
        Library::SaeLens if zero => (false, sae.b_enc.clone()),
        Library::SaeLens => {
            let minus: Vec<f32> = sae.b_pre.iter().map(|v| -v).collect();
            (false, shifted_bias(sae, &minus))
        }
        Library::Sparsify if same(&sae.b_pre, &sae.b_dec) => (true, sae.b_enc.clone()),
        Library::Sparsify => {
            let shift: Vec<f32> = sae
                .b_dec
                .iter()
                .zip(&sae.b_pre)
                .map(|(d, p)| d - p)
                .collect();
            (true, shifted_bias(sae, &shift))
        }
    }
}

/// The library's `cfg.json` and weight tensors for `sae`.
fn library_files(
    sae: &Sae,
    format: Library,
    hook: &str,
    apply_b_dec: bool,
    b_enc: Vec<f32>,
) -> (Value, Vec<NamedTensor>) {
    let (d, n) = (sae.d_model, sae.d_sae);
    match format {
        Library::SaeLens => (
            json!({
                "d_in": d, "d_sae": n, "dtype": "float32", "device": "cpu",
                "apply_b_dec_to_input": apply_b_dec, "normalize_activations": "none",
                "reshape_activations": "none",
                "metadata": {
                    "hook_name": hook,
                    "saerl_activation": sae.activation.name(),
                    "saerl_source": sae.meta.source,
                },
                "k": sae.k, "rescale_acts_by_decoder_norm": false, "architecture": "topk",
            }),
            vec![
                ("W_enc", transpose(&sae.w_enc, n, d), vec![d, n]),
                ("b_enc", b_enc, vec![n]),
                ("W_dec", sae.w_dec.clone(), vec![n, d]),
                ("b_dec", sae.b_dec.clone(), vec![d]),
            ],
        ),
        Library::Sparsify => (
            json!({
                "activation": "topk", "expansion_factor": n.div_ceil(d),
                "normalize_decoder": true, "num_latents": n, "k": sae.k, "multi_topk": false,
                "skip_connection": false, "transcode": false, "d_in": d,
            }),
            vec![
                ("encoder.weight", sae.w_enc.clone(), vec![n, d]),
                ("encoder.bias", b_enc, vec![n]),
                ("W_dec", sae.w_dec.clone(), vec![n, d]),
                ("b_dec", sae.b_dec.clone(), vec![d]),
            ],
        ),
    }
}

/// Writes the SAE's directory beside `dir`, then renames it over `dir`: a crash leaves the old
/// or the new one. `notes` (an inexact export's) go to `saerl.json`.
fn write_dir(
    dir: &Path,
    cfg: &Value,
    tensors: &[NamedTensor],
    weights_file: &str,
    activation: Activation,
    notes: &[String],
) -> Result<()> {
    let mut tmp = dir.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    std::fs::write(tmp.join("cfg.json"), serde_json::to_vec_pretty(cfg)?)?;
    let views = tensors
        .iter()
        .map(|(name, v, shape)| {
            Ok((
                name.to_string(),
                TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(v))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    // The libraries write no safetensors metadata; neither does saerl.
    safetensors::serialize_to_file(views, None, &tmp.join(weights_file))?;
    if !notes.is_empty() {
        let sidecar = json!({ "activation": activation.name(), "inexact": notes });
        std::fs::write(tmp.join(NOTES_FILE), serde_json::to_vec_pretty(&sidecar)?)?;
    }
    crate::durable::sync_tree(&tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("writing {}", dir.display()))?;
    crate::durable::sync_path(dir.parent().unwrap_or(Path::new(".")))?;
    Ok(())
}
