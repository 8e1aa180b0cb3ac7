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
    #[serde(default)]
    pub data: DataConfig,
    /// Flags `saerl run` passes to every ingest, train and eval it runs (`max_len = 128` is
    /// `--max-len 128`); the commands' own defaults otherwise.
    #[serde(default)]
    pub ingest: toml::Table,
    #[serde(default)]
    pub train: toml::Table,
    #[serde(default)]
    pub eval: toml::Table,
    #[serde(skip)]
    pub dir: PathBuf,
}

/// The prompt sets: JSON lines or Hugging Face Parquet with a `question` column.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Questions `saerl ingest` runs the checkpoints on (GSM8k train).
    pub train: Option<PathBuf>,
    /// Held-out questions `saerl eval` measures CE loss recovered on (GSM8k test).
    pub test: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    pub reward: Option<String>,
    pub kl_coef: Option<f64>,
    /// The SAEs `saerl run` trains along the chain: layer = k, or layer = [k, ...]
    /// (default: the study's layers at k 64).
    pub saes: Option<BTreeMap<String, KList>>,
    #[serde(default)]
    pub stages: Vec<StageConfig>,
}

/// One k or several for a layer.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum KList {
    One(usize),
    Many(Vec<usize>),
}

impl ChainConfig {
    /// The (layer, k) pairs of the chain's SAEs, ascending; every stage has one SAE per pair.
    pub fn sae_grid(&self, chain: &str) -> Result<Vec<(i32, usize)>> {
        let Some(saes) = &self.saes else {
            return Ok(crate::study::LAYERS.iter().map(|&l| (l, 64)).collect());
        };
        let mut grid = Vec::new();
        for (layer, ks) in saes {
            let l: i32 = layer.parse().ok().filter(|l| *l >= 0).with_context(|| {
                format!("[chains.{chain}] saes: {layer:?} is not a layer number (write saes = {{ 6 = 64, 23 = [64, 256] }})")
            })?;
            let ks = match ks {
                KList::One(k) => vec![*k],
                KList::Many(v) => v.clone(),
            };
            if ks.is_empty() || ks.contains(&0) {
                bail!("[chains.{chain}] saes: layer {l} needs at least one k > 0");
            }
            grid.extend(ks.into_iter().map(|k| (l, k)));
        }
        grid.sort();
        grid.dedup();
        Ok(grid)
    }
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

impl Project {
    /// The PPO step of a stage: `flag` (`--step`) when given, else the step this project
    /// declares for it, else the study's naming (`instruct_base` 0, `ppo_stepN` N), else an
    /// error naming the stage and both fixes.
    pub fn step_of(&self, chain: &str, stage: &str, flag: Option<i64>) -> Result<i64> {
        if let Some(s) = flag {
            if s < 0 {
                bail!("--step must be ≥ 0, got {s}");
            }
            return Ok(s);
        }
        if let Some(s) = self.stage(chain, stage).ok().and_then(|(_, s)| s.step) {
            return Ok(s);
        }
        crate::lake::infer_step(stage).map_err(|_| {
            anyhow::anyhow!(
                "cannot tell the step of stage {stage:?} of chain {chain}: pass --step N, or declare it in saerl.toml under [chains.{chain}] as {{ name = \"{stage}\", step = N }} (stages named `instruct_base` or `ppo_stepN` need neither)"
            )
        })
    }
}

/// Which prompt set a command reads.
#[derive(Debug, Clone, Copy)]
pub enum DataSet {
    Train,
    Test,
}

impl Project {
    /// The prompt file: `flag` when given, else the project's `[data]` entry (relative to the
    /// project file), else an error saying how to name one.
    pub fn data_file(&self, flag: Option<&Path>, set: DataSet) -> Result<PathBuf> {
        if let Some(f) = flag {
            return Ok(f.to_path_buf());
        }
        let (entry, key) = match set {
            DataSet::Train => (&self.data.train, "train"),
            DataSet::Test => (&self.data.test, "test"),
        };
        match entry {
            Some(p) => Ok(self.dir.join(p)),
            None => bail!(
                "no prompt file: pass --data FILE (GSM8k {key} as .jsonl or Hugging Face .parquet), or set `{key} = \"...\"` under [data] in saerl.toml (`saerl init` writes one)"
            ),
        }
    }
}

/// The commented template `saerl init` writes: the published study's three chains.
pub const TEMPLATE: &str = r#"# saerl project file: the chains of PPO checkpoints to analyse, and the study's plan.
# A chain is one fine-tuning run (same base model and data, one reward function and KL
# coefficient); its stages are checkpoints, ordered by PPO step. `model` is a Hugging Face
# checkpoint directory (config.json, model.safetensors or shards, tokenizer.json), relative to
# this file. `saerl ingest --chain C --stage S` reads the model from here.
#
# `saerl run` runs the whole plan: every stage ingested once for all the layers its chain's
# `saes` name, the SAEs trained along each chain (warm-started stage to stage), evaluated,
# their statistics computed, then the report. `saerl run --dry-run` shows the plan first.

# The prompts: GSM8k as JSON lines or the Hugging Face Parquet files (columns `question`,
# `answer`), relative to this file. `--data` on a command overrides them.
[data]
train = "data/gsm8k/train.jsonl"   # saerl ingest runs the checkpoints on these questions
test = "data/gsm8k/test.jsonl"     # saerl eval measures CE loss recovered on the first 100

# The settings `saerl run` gives each step: any flag of `saerl ingest`, `saerl train` or
# `saerl eval` (`max_len = 512` is `--max-len 512`, `in_memory = true` is `--in-memory`).
# Omitted, a flag keeps its command's default, which is the study's.
[ingest]
max_len = 512        # tokens kept per question
batch = 16           # questions per forward pass
val_frac = 0.2       # share of rows in the val split (a seeded random permutation)
# limit = 1000       # only the first N questions
# dtype = "bf16"     # compute the model in bf16 (on a GPU; default f32)

[train]
epochs = 20
lr = 1e-4
batch = 512          # rows per optimiser step
# d_sae = 7168       # dictionary size (default 8 × d_model)

[eval]
prompts = 100        # GSM8k test questions for CE loss recovered

# `saes`: the SAEs trained at every stage of the chain, layer = k or layer = [k, ...]
# (default: layers 6, 12, 18 and 23 at k 64).
[chains.flexible]
reward = "flexible"     # 1 if the last number in the response equals the answer
kl_coef = 0.005
saes = { 6 = 64, 12 = 64, 18 = 64, 23 = 256 }
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
saes = { 6 = 64, 12 = 64, 18 = 64, 23 = [64, 256] }
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
saes = { 6 = 64, 12 = 64, 18 = 64, 23 = 64 }
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
        assert!(p.data.train.is_some() && p.data.test.is_some());
    }

    /// The template is the study of `study.rs` (DESIGN.md's table): same chains, rewards, KL
    /// coefficients and steps, so the two cannot drift apart.
    #[test]
    fn template_and_study_agree() {
        let p: super::Project = toml::from_str(super::TEMPLATE).unwrap();
        let names: Vec<&str> = crate::study::CHAINS.iter().map(|c| c.name).collect();
        assert_eq!(p.chains.len(), names.len());
        for c in crate::study::CHAINS {
            let t = &p.chains[c.name];
            assert_eq!(t.reward.as_deref(), Some(c.reward), "{}", c.name);
            assert_eq!(t.kl_coef, Some(c.kl_coef), "{}", c.name);
            let steps: Vec<i64> = t.stages.iter().map(|s| s.step.unwrap()).collect();
            assert_eq!(steps, c.steps, "{}", c.name);
            for s in &t.stages {
                assert_eq!(s.name, crate::study::stage_name(s.step.unwrap()));
            }
        }
        // The study's 74 SAEs: layer 23 at k 256 in flexible, at 64 and 256 in strict.
        let saes: usize = p
            .chains
            .iter()
            .map(|(name, c)| c.sae_grid(name).unwrap().len() * c.stages.len())
            .sum();
        assert_eq!(saes, 74);
        assert_eq!(
            p.chains["strict"].sae_grid("strict").unwrap(),
            [(6, 64), (12, 64), (18, 64), (23, 64), (23, 256)]
        );
    }
}
