//! `saerl.toml`: the chains of a study, their reward, KL coefficient and stages (step and
//! model directory). Model paths are relative to the file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    #[serde(default)]
    pub chains: BTreeMap<String, ChainConfig>,
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    pub reward: Option<String>,
    pub kl_coef: Option<f64>,
    #[serde(default)]
    pub stages: Vec<StageConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    pub name: String,
    pub step: Option<i64>,
    pub model: Option<PathBuf>,
}

impl Project {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("reading {} (create one with `saerl init`)", path.display())
        })?;
        let mut p: Project =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        p.dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(p)
    }

    /// Loads `path` if it exists; an absent project file is an empty project.
    pub fn load_or_default(path: &Path) -> Result<Self> {
        if path.exists() {
            Self::load(path)
        } else {
            Ok(Self::default())
        }
    }

    pub fn stage(&self, chain: &str, stage: &str) -> Result<(&ChainConfig, &StageConfig)> {
        let c = self.chains.get(chain).with_context(|| {
            format!(
                "chain {chain:?} is not in saerl.toml (chains: {})",
                self.chains.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        let s = c.stages.iter().find(|s| s.name == stage).with_context(|| {
            format!(
                "stage {stage:?} is not a stage of chain {chain} in saerl.toml (stages: {})",
                c.stages
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        Ok((c, s))
    }

    /// The model directory of a stage, resolved against the project file's directory.
    pub fn model_dir(&self, chain: &str, stage: &str) -> Result<PathBuf> {
        let (_, s) = self.stage(chain, stage)?;
        match &s.model {
            Some(m) => Ok(self.dir.join(m)),
            None => bail!("stage {stage} of chain {chain} has no `model` in saerl.toml; add one or pass --model"),
        }
    }
}

/// The commented template `saerl init` writes: the published study's three chains.
pub const TEMPLATE: &str = r#"# saerl project file: the chains of PPO checkpoints to analyse.
# A chain is one fine-tuning run (same base model and data, one reward function and KL
# coefficient); its stages are checkpoints, ordered by PPO step. `model` is a Hugging Face
# checkpoint directory (config.json, model.safetensors or shards, tokenizer.json), relative to
# this file. `saerl ingest --chain C --stage S` reads the model from here.

[chains.flexible]
reward = "flexible"     # 1 if the last number in the response equals the answer
kl_coef = 0.005
stages = [
  { name = "instruct_base", step = 0,   model = "models/Qwen2.5-0.5B-Instruct" },
  { name = "ppo_step10",    step = 10,  model = "checkpoints/flexible/global_step_10" },
  { name = "ppo_step30",    step = 30,  model = "checkpoints/flexible/global_step_30" },
  { name = "ppo_step60",    step = 60,  model = "checkpoints/flexible/global_step_60" },
  { name = "ppo_step100",   step = 100, model = "checkpoints/flexible/global_step_100" },
  { name = "ppo_step140",   step = 140, model = "checkpoints/flexible/global_step_140" },
  { name = "ppo_step180",   step = 180, model = "checkpoints/flexible/global_step_180" },
  { name = "ppo_step200",   step = 200, model = "checkpoints/flexible/global_step_200" },
]

[chains.strict]
reward = "strict"       # verl's GSM8k scorer: `#### N` in the last 300 characters
kl_coef = 0.005
stages = [
  { name = "instruct_base", step = 0,   model = "models/Qwen2.5-0.5B-Instruct" },
  { name = "ppo_step10",    step = 10,  model = "checkpoints/strict/global_step_10" },
  { name = "ppo_step30",    step = 30,  model = "checkpoints/strict/global_step_30" },
  { name = "ppo_step50",    step = 50,  model = "checkpoints/strict/global_step_50" },
  { name = "ppo_step80",    step = 80,  model = "checkpoints/strict/global_step_80" },
  { name = "ppo_step116",   step = 116, model = "checkpoints/strict/global_step_116" },
]

[chains.kl0p025]
reward = "flexible"
kl_coef = 0.025         # five times the KL budget of `flexible`
stages = [
  { name = "instruct_base", step = 0,  model = "models/Qwen2.5-0.5B-Instruct" },
  { name = "ppo_step10",    step = 10, model = "checkpoints/kl0p025/global_step_10" },
  { name = "ppo_step30",    step = 30, model = "checkpoints/kl0p025/global_step_30" },
]
"#;

#[cfg(test)]
mod tests {
    #[test]
    fn template_parses_into_the_study() {
        let p: super::Project = toml::from_str(super::TEMPLATE).unwrap();
        assert_eq!(p.chains.len(), 3);
        assert_eq!(p.chains["flexible"].stages.len(), 8);
        assert_eq!(p.chains["kl0p025"].kl_coef, Some(0.025));
    }
}
