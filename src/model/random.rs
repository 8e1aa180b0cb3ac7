//! A tiny random Qwen2 checkpoint in Hugging Face layout, for the demo and tests: config.json,
//! model.safetensors (f32) and a tokenizer.json — the real Qwen2.5 tokenizer when one is at
//! hand, otherwise a small byte-level BPE trained on the given texts.

use std::path::Path;

use anyhow::{Context, Result};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::Qwen2Config;
use crate::rng::normal;

pub struct TinyShape {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
}

/// Writes `tokenizer.json` into `dir`: a copy of `real` if it exists, else a BPE trained on `texts`.
pub fn write_tokenizer(dir: &Path, real: Option<&Path>, texts: &[String]) -> Result<usize> {
    std::fs::create_dir_all(dir)?;
    let out = dir.join("tokenizer.json");
    if let Some(real) = real.filter(|p| p.is_file()) {
        std::fs::copy(real, &out).with_context(|| format!("copying {}", real.display()))?;
    } else {
        use tokenizers::models::bpe::{BpeTrainer, BPE};
        use tokenizers::models::TrainerWrapper;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        let mut tok = tokenizers::Tokenizer::new(BPE::default());
        tok.with_pre_tokenizer(Some(ByteLevel::default()));
        tok.with_decoder(Some(ByteLevel::default()));
        let mut trainer: TrainerWrapper = BpeTrainer::builder()
            .vocab_size(2048)
            .show_progress(false)
            .special_tokens(vec![tokenizers::AddedToken::from("<|endoftext|>", true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        tok.train(&mut trainer, texts.iter())
            .map_err(|e| anyhow::anyhow!("training a BPE tokenizer: {e}"))?;
        tok.save(&out, false)
            .map_err(|e| anyhow::anyhow!("saving {}: {e}", out.display()))?;
    }
    let tok = super::TextTokenizer::from_file(&out)?;
    Ok(tok.vocab_size())
}

/// Writes config.json and model.safetensors of a random Qwen2 with tied embeddings.
/// `perturb` = (noise seed, scale) adds relative noise of that scale to the weights drawn from
/// `seed`, giving a "fine-tuned" copy of the same base model.
pub fn write_model(
    dir: &Path,
    shape: &TinyShape,
    vocab: usize,
    seed: u64,
    perturb: Option<(u64, f32)>,
) -> Result<Qwen2Config> {
    std::fs::create_dir_all(dir)?;
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "tie_word_embeddings": true,
        "torch_dtype": "float32",
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let cfg = Qwen2Config::parse(&config.to_string())?;
    let names = tensor_shapes(shape, vocab);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut noise = perturb.map(|(s, scale)| (SmallRng::seed_from_u64(s), scale));
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, shape) in names {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                let base = normal(&mut rng);
                let v = if name.ends_with("norm.weight") {
                    1.0 + 0.2 * base
                } else if name.ends_with(".bias") {
                    0.1 * base
                } else {
                    0.08 * base
                };
                match &mut noise {
                    Some((r, scale)) => v + *scale * 0.08 * normal(r),
                    None => v,
                }
            })
            .collect();
        data.push((
            name,
            shape,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
    }
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))?;
    Ok(cfg)
}

/// Every tensor of a Qwen2 of this shape with tied embeddings: its name and shape.
fn tensor_shapes(shape: &TinyShape, vocab: usize) -> Vec<(String, Vec<usize>)> {
    let (h, i, hd) = (shape.hidden, shape.intermediate, h_dim(shape));
    let kv = shape.kv_heads * hd;
    let mut names: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    for l in 0..shape.layers {
        let p = format!("model.layers.{l}");
        for (n, s) in [
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![h, h]),
            ("self_attn.q_proj.bias", vec![h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.k_proj.bias", vec![kv]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.bias", vec![kv]),
            ("self_attn.o_proj.weight", vec![h, h]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
        ] {
            names.push((format!("{p}.{n}"), s));
        }
    }
    names
}

fn h_dim(shape: &TinyShape) -> usize {
    shape.hidden / shape.heads
}
