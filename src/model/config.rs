//! `config.json` of a Hugging Face Qwen2 checkpoint, in either style: `rope_theta` at the top
//! level (transformers 4.x, as Qwen2.5 ships) or under `rope_parameters` (5.x).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    tie_word_embeddings: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
}

impl Qwen2Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let raw: RawConfig =
            serde_json::from_str(text).context("config.json is not a Qwen2 config")?;
        let arch_ok = raw.model_type.as_deref() == Some("qwen2")
            || raw
                .architectures
                .iter()
                .flatten()
                .any(|a| a == "Qwen2ForCausalLM" || a == "Qwen2Model");
        if !arch_ok {
            bail!(
                "unsupported architecture (model_type {:?}, architectures {:?}): saerl runs Qwen2 models",
                raw.model_type,
                raw.architectures.unwrap_or_default()
            );
        }
        let rope_theta = raw
            .rope_theta
            .or(raw.rope_parameters.and_then(|r| r.rope_theta))
            .context("no rope_theta (neither at the top level nor under rope_parameters)")?;
        let heads = raw.num_attention_heads;
        let kv = raw.num_key_value_heads.unwrap_or(heads);
        if heads == 0
            || kv == 0
            || !heads.is_multiple_of(kv)
            || !raw.hidden_size.is_multiple_of(heads)
        {
            bail!("inconsistent head counts: {heads} attention heads, {kv} key/value heads, hidden size {}", raw.hidden_size);
        }
        Ok(Self {
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: raw.head_dim.unwrap_or(raw.hidden_size / heads),
            vocab_size: raw.vocab_size,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            tie_word_embeddings: raw.tie_word_embeddings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Qwen2Config;

    const V5: &str = r#"{"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 160,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
        "rms_norm_eps": 1e-6, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}}"#;

    #[test]
    fn reads_rope_theta_from_either_place() {
        let c = Qwen2Config::parse(V5).unwrap();
        assert_eq!(
            (c.rope_theta, c.head_dim, c.tie_word_embeddings),
            (10000.0, 16, false)
        );
        let v4 = V5.replace(
            r#""rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}"#,
            r#""rope_theta": 500.0"#,
        );
        assert_eq!(Qwen2Config::parse(&v4).unwrap().rope_theta, 500.0);
        let none = V5.replace(
            r#""rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}"#,
            r#""x": 1"#,
        );
        assert!(Qwen2Config::parse(&none)
            .unwrap_err()
            .to_string()
            .contains("rope_theta"));
    }
}
