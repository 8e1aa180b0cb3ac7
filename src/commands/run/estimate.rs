//! What each step will cost: the disk it adds to the lake, the memory it holds, and its work in
//! floating-point operations of its dominant products, turned into seconds by the rate this
//! machine reached on earlier steps of the same phase (kept beside the lake, `.run/rates.json`)
//! or, before any, by a second of GEMM calibration times a per-phase efficiency.
//!
//! The work models (each step is dominated by dense products):
//! - ingest: tokens × 2 × (parameters of the blocks up to the deepest layer stored);
//! - train: epochs × (train + val rows) × 2·d·d_sae (the encoder product; the rest is O(k·d));
//! - eval: SAEs × val rows × 2·d·d_sae, plus the CE prompts' tokens × 2 × (all parameters) ×
//!   (1 + 2·SAEs) passes (untouched, spliced and mean-ablated);
//! - stats: SAEs × (rows × 2·d·d_sae + logit effects d_sae·vocab·2d + 4 decoder self- and
//!   cross-products d_sae²·2d).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::plan::Phase;
use crate::commands::{eval::EvalArgs, ingest::Ingest, train::TrainArgs};
use crate::lake::{Lake, PartitionKey};
use crate::model::{Qwen2Config, TextTokenizer};
use crate::project::{DataSet, Project};

/// A step's cost; None where it cannot be told (a model directory not on this machine).
#[derive(Debug, Clone, Default)]
pub struct Estimate {
    /// Bytes the step adds to the lake.
    pub disk: Option<u64>,
    /// Floating-point operations of its dominant products.
    pub flops: Option<f64>,
    /// Peak host memory, for running steps side by side.
    pub memory: u64,
    /// The model's width: rates are kept per width, as small shapes run far below a GEMM's
    /// rate and large ones near it.
    pub width: Option<usize>,
}

/// Rows of one stage's activations (per layer): all of them, and the val split's.
#[derive(Debug, Clone, Copy)]
struct Rows {
    all: usize,
    val: usize,
}

/// The sizes steps depend on, read once: model configs, token counts, rows per stage.
pub struct Sizes<'a> {
    project: &'a Project,
    configs: HashMap<PathBuf, Option<Qwen2Config>>,
    token_counts: HashMap<(u64, PathBuf, Option<usize>, usize), Option<usize>>,
    stages: HashMap<(String, String), (Option<Rows>, Option<Qwen2Config>)>,
    d_sae: Option<usize>,
}

const GIB: u64 = 1 << 30;

/// Parameters of `blocks` blocks of a Qwen2 (their linear layers).
fn block_params(c: &Qwen2Config, blocks: usize) -> f64 {
    let (h, i) = (c.hidden_size as f64, c.intermediate_size as f64);
    let q = (c.num_attention_heads * c.head_dim) as f64;
    let kv = (c.num_key_value_heads * c.head_dim) as f64;
    blocks as f64 * (2.0 * h * q + 2.0 * h * kv + 3.0 * h * i)
}

fn all_params(c: &Qwen2Config) -> f64 {
    block_params(c, c.num_hidden_layers) + (c.vocab_size * c.hidden_size) as f64
}

impl<'a> Sizes<'a> {
    pub fn new(project: &'a Project) -> Self {
        Self {
            project,
            configs: HashMap::new(),
            token_counts: HashMap::new(),
            stages: HashMap::new(),
            d_sae: None,
        }
    }

    fn config(&mut self, model: &Path) -> Option<Qwen2Config> {
        self.configs
            .entry(model.to_path_buf())
            .or_insert_with(|| Qwen2Config::from_file(&model.join("config.json")).ok())
            .clone()
    }

    /// Tokens of the first `limit` questions of `data` with the model's tokenizer, each cut at
    /// `max_len` (what ingest and eval will run); tokenizers equal byte for byte count once.
    fn tokens(
        &mut self,
        model: &Path,
        data: &Path,
        limit: Option<usize>,
        max_len: usize,
    ) -> Option<usize> {
        let bytes = std::fs::read(model.join("tokenizer.json")).ok()?;
        let mut h = twox_hash::XxHash64::with_seed(0);
        h.write(&bytes);
        let key = (h.finish(), data.to_path_buf(), limit, max_len);
        if let Some(n) = self.token_counts.get(&key) {
            return *n;
        }
        let count = || -> Result<usize> {
            let tok = TextTokenizer::from_file(&model.join("tokenizer.json"))?;
            let docs = crate::data::read_questions(data, limit)?;
            docs.iter()
                .map(|d| Ok(tok.encode(&d.question, max_len)?.len()))
                .sum()
        };
        let n = count().ok();
        self.token_counts.insert(key, n);
        n
    }

    fn model_dir(&self, chain: &str, stage: &str) -> Option<PathBuf> {
        self.project.model_dir(chain, stage).ok()
    }

    pub fn ingest(
        &mut self,
        lake: &Lake,
        chain: &str,
        stage: &str,
        a: &Ingest,
    ) -> Result<Estimate> {
        let model = a.model.clone().or_else(|| self.model_dir(chain, stage));
        let cfg = model.as_deref().and_then(|m| self.config(m));
        let layers = a.layers.len() as u64;
        // Rows: from the lake when a layer is ingested already, else by tokenizing.
        let first = PartitionKey::layer(
            chain,
            stage,
            a.layers.iter().min().copied().unwrap_or(0) as i32,
        );
        let n = match lake.has_partition(crate::lake::Table::Activations, &first)? {
            true => Some(lake.activation_count(&first)?),
            false => {
                let data = self
                    .project
                    .data_file(a.data.as_deref(), DataSet::Train)
                    .ok();
                match (&model, data) {
                    (Some(m), Some(d)) => self.tokens(m, &d, a.limit, a.max_len),
                    _ => None,
                }
            }
        };
        let rows = n.map(|all| Rows {
            all,
            val: (a.val_frac * all as f64).floor() as usize,
        });
        self.stages
            .insert((chain.into(), stage.into()), (rows, cfg.clone()));
        let Some(cfg) = cfg else {
            return Ok(Estimate {
                memory: 2 * GIB,
                ..Default::default()
            });
        };
        let d = cfg.hidden_size as u64;
        let deepest = a.layers.iter().max().map_or(0, |&l| l + 1);
        let vocab = 24 * cfg.vocab_size as u64 + (1 << 20);
        Ok(Estimate {
            width: Some(cfg.hidden_size),
            // x (4·d bytes) and about 16 bytes of doc, position, token and split per row.
            disk: n.map(|n| n as u64 * layers * (4 * d + 16) + vocab),
            flops: n.map(|n| n as f64 * 2.0 * block_params(&cfg, deepest)),
            memory: (4.0 * all_params(&cfg) * 1.1) as u64
                + (a.batch * a.max_len) as u64 * d * 4 * (layers + 8),
        })
    }

    fn stage(&self, chain: &str, stage: &str) -> (Option<Rows>, Option<Qwen2Config>) {
        self.stages
            .get(&(chain.to_string(), stage.to_string()))
            .cloned()
            .unwrap_or((None, None))
    }

    pub fn train(
        &mut self,
        _lake: &Lake,
        chain: &str,
        stage: &str,
        a: &TrainArgs,
    ) -> Result<Estimate> {
        let (rows, cfg) = self.stage(chain, stage);
        self.d_sae = a.d_sae;
        let Some(cfg) = cfg else {
            return Ok(Estimate {
                memory: GIB,
                ..Default::default()
            });
        };
        let d = cfg.hidden_size;
        let n = a.d_sae.unwrap_or(8 * d);
        let weights = (2 * d * n + n + 2 * d) as u64 * 4;
        Ok(Estimate {
            width: Some(d),
            disk: Some(weights + 64 * a.epochs as u64 + 4096),
            flops: rows.map(|r| a.epochs as f64 * r.all as f64 * 2.0 * (d * n) as f64),
            // Weights, Adam's two moments, the best epoch, a checkpoint being written; the
            // shuffle buffer of each split; a batch's pre-activations a few times over.
            memory: 5 * weights
                + 2 * (a.shuffle_buffer * d) as u64 * 4
                + 4 * (a.batch * n) as u64 * 4,
        })
    }

    pub fn eval(
        &mut self,
        _lake: &Lake,
        chain: &str,
        stage: &str,
        a: &EvalArgs,
        saes: usize,
    ) -> Result<Estimate> {
        let (rows, cfg) = self.stage(chain, stage);
        let Some(cfg) = cfg else {
            return Ok(Estimate {
                memory: 2 * GIB,
                ..Default::default()
            });
        };
        let d = cfg.hidden_size;
        let n = self.d_sae.unwrap_or(8 * d);
        let model = a.model.clone().or_else(|| self.model_dir(chain, stage));
        let ce_tokens = match (a.prompts, model) {
            (0, _) => Some(0),
            (p, Some(m)) => match self.project.data_file(a.data.as_deref(), DataSet::Test) {
                Ok(data) => self.tokens(&m, &data, Some(p), a.max_len),
                Err(_) => None,
            },
            _ => None,
        };
        let recon = rows.map(|r| saes as f64 * r.val as f64 * 2.0 * (d * n) as f64);
        let ce = ce_tokens.map(|t| t as f64 * 2.0 * all_params(&cfg) * (1 + 2 * saes) as f64);
        Ok(Estimate {
            width: Some(d),
            disk: Some(4096 * saes as u64),
            flops: recon.zip(ce).map(|(r, c)| r + c),
            // The model, the SAEs, and over a batch of prompts the base distribution and one
            // splice's logits (`model::scoring`).
            memory: (4.0 * all_params(&cfg) * 1.1) as u64
                + saes as u64 * (2 * d * n) as u64 * 4
                + 2 * (a.batch * a.max_len * cfg.vocab_size) as u64 * 4,
        })
    }

    pub fn stats(
        &mut self,
        _lake: &Lake,
        chain: &str,
        stage: &str,
        keys: &[PartitionKey],
    ) -> Result<Estimate> {
        let (rows, cfg) = self.stage(chain, stage);
        let Some(cfg) = cfg else {
            return Ok(Estimate {
                memory: 2 * GIB,
                ..Default::default()
            });
        };
        let (d, vocab) = (cfg.hidden_size as f64, cfg.vocab_size as f64);
        let n = self.d_sae.unwrap_or(8 * cfg.hidden_size) as f64;
        let saes = keys.len() as f64;
        let weights = saes * (vocab * n * 2.0 * d + 4.0 * n * n * 2.0 * d);
        Ok(Estimate {
            width: Some(cfg.hidden_size),
            // Examples in context dominate: about 10 kB per feature, measured at the study's shape.
            disk: Some((saes * n * 10_000.0) as u64),
            flops: rows.map(|r| saes * r.all as f64 * 2.0 * d * n + weights),
            memory: (4.0 * vocab * d) as u64 + (4.0 * 2.0 * d * n * 3.0) as u64 + GIB / 2,
        })
    }

    pub fn report(&self) -> Estimate {
        Estimate {
            memory: GIB / 2,
            ..Default::default()
        }
    }
}

/// Operations per second one phase reached on this machine, averaged over its steps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Rate {
    flops_per_s: f64,
    steps: u64,
}

/// Rates measured by earlier runs, per machine, device, phase and model width, in
/// `<lake>/.run/rates.json`
/// (for an object-store lake, in this machine's cache of it).
pub struct Rates {
    path: PathBuf,
    entries: BTreeMap<String, Rate>,
    /// GEMM operations per second measured now, when a phase had no rate yet.
    calibrated: Option<f64>,
}

/// Where a rate comes from, for the plan's table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Source {
    Measured,
    Calibrated,
}

/// Efficiency of each phase relative to the plain GEMM, on the CPU and on a GPU (from this
/// project's benchmarks: ingest 300 tokens/s of Qwen2.5-0.5B at 300 GFLOP/s on 2 cores; the
/// SAE step at a third of its encoder GEMM's bound; on an H200 the many small kernels of a
/// step and of a forward pass leave a GPU a fifth busy).
fn efficiency(phase: Phase, device: &str) -> f64 {
    let cpu = device == "cpu";
    match phase {
        Phase::Ingest => {
            if cpu {
                0.7
            } else {
                0.2
            }
        }
        Phase::Train => {
            if cpu {
                0.35
            } else {
                0.25
            }
        }
        Phase::Eval => {
            if cpu {
                0.5
            } else {
                0.15
            }
        }
        Phase::Stats => {
            if cpu {
                0.7
            } else {
                0.3
            }
        }
        Phase::Report => 1.0,
    }
}

/// A report's seconds before any was measured.
const REPORT_SECONDS: f64 = 10.0;

fn machine() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "this machine".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{host} ({cores} cores)")
}

fn rate_key(phase: Phase, device: &str, est: &Estimate) -> String {
    let width = est.width.map_or(String::new(), |w| format!(" width {w}"));
    format!("{} {device} {}{width}", machine(), phase.name())
}

impl Rates {
    pub fn path(lake: &Lake) -> PathBuf {
        lake.root().join(crate::lake::RUN_DIR).join("rates.json")
    }

    pub fn load(lake: &Lake) -> Self {
        let path = Self::path(lake);
        let entries = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Self {
            path,
            entries,
            calibrated: None,
        }
    }

    /// Seconds of a step of `phase` with estimate `est` on `device`, and where the rate came
    /// from; calibrates (about a second of GEMMs) when the phase has no measured rate.
    pub fn seconds(&mut self, phase: Phase, device: &str, est: &Estimate) -> Option<(f64, Source)> {
        let measured = self.entries.get(&rate_key(phase, device, est)).copied();
        if phase == Phase::Report {
            return Some(match measured {
                Some(r) => (r.flops_per_s, Source::Measured),
                None => (REPORT_SECONDS, Source::Calibrated),
            });
        }
        let flops = est.flops?;
        if let Some(r) = measured {
            return Some((flops / r.flops_per_s, Source::Measured));
        }
        let gemm = match self.calibrated {
            Some(g) => g,
            None => {
                let g = calibrate(device).unwrap_or(50e9);
                self.calibrated = Some(g);
                g
            }
        };
        Some((
            flops / (gemm * efficiency(phase, device)),
            Source::Calibrated,
        ))
    }

    /// Adds a finished step's rate to the phase's average (a report's rate is its seconds).
    pub fn record(&mut self, phase: Phase, device: &str, est: &Estimate, seconds: f64) {
        let value = match (phase, est.flops) {
            (Phase::Report, _) => seconds,
            (_, Some(f)) if seconds > 0.0 => f / seconds,
            _ => return,
        };
        let e = self
            .entries
            .entry(rate_key(phase, device, est))
            .or_insert(Rate {
                flops_per_s: value,
                steps: 0,
            });
        // The mean of the last few steps: rates move with the shapes and the machine's load.
        let n = (e.steps as f64).min(4.0);
        e.flops_per_s = (e.flops_per_s * n + value) / (n + 1.0);
        e.steps += 1;
    }

    pub fn save(&self) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::durable::write_atomic(
            &self.path,
            serde_json::to_string_pretty(&self.entries)?.as_bytes(),
        )
    }
}

/// The GEMM's floating-point operations per second on `device`, over about a second.
fn calibrate(device: &str) -> Result<f64> {
    let started = std::time::Instant::now();
    if device == "cpu" {
        let (m, n, k) = (512, 2048, 896);
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; n * k];
        let mut c = vec![0f32; m * n];
        let mut reps = 0u32;
        while started.elapsed().as_secs_f64() < 0.5 || reps < 2 {
            crate::kernels::sgemm_nt(m, n, k, &a, &b, &mut c, false);
            reps += 1;
        }
        return Ok(reps as f64 * 2.0 * (m * n * k) as f64 / started.elapsed().as_secs_f64());
    }
    let dev = crate::model::device(device)?;
    let n = 4096;
    let a = candle_core::Tensor::ones((n, n), candle_core::DType::F32, &dev)?;
    let _ = a.matmul(&a)?.sum_all()?.to_scalar::<f32>()?; // warm-up
    let t = std::time::Instant::now();
    let mut reps = 0u32;
    while t.elapsed().as_secs_f64() < 0.5 || reps < 2 {
        let _ = a.matmul(&a)?.sum_all()?.to_scalar::<f32>()?;
        reps += 1;
    }
    Ok(reps as f64 * 2.0 * (n * n * n) as f64 / t.elapsed().as_secs_f64())
}
