//! `saerl bench ...`: figures and ratios, not pass/fail. Each benchmark runs saerl's work at the
//! study's shape and, when it can, the reference implementation on the same machine in the same
//! run (PyTorch/transformers scripts from a reference directory, DuckDB), so the ratio compares
//! like with like. Without the references it prints the figures recorded for this machine kind.

mod cluster;
mod flight;
mod gemm;
mod ingest;
mod kernels;
mod matching;
mod serve;
mod sql;
mod stats;
mod study;
mod train;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::commands::args::{Device, DeviceArg};

pub use ingest::BenchIngest;
pub use serve::BenchServe;
pub use sql::BenchSql;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
    /// The PyTorch reference scripts (ref_sae_step.py, ref_ingest.py, gemm_peak.py), run in the
    /// same process tree for a same-run ratio; e.g. ../shared/bench.
    #[arg(long, global = true, env = "SAERL_BENCH_REFS")]
    pub refs: Option<PathBuf>,
    /// The Python that runs the references (with torch, transformers, duckdb).
    #[arg(long, global = true, env = "SAERL_PYTHON", default_value = "python3")]
    pub python: PathBuf,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum BenchWhat {
    /// The shipped GEMM's GFLOP/s at the study's shapes (SAE encoder, model layers).
    Gemm,
    /// saerl's device kernels against their CPU references, then timed (fails on a mismatch).
    Kernels {
        /// The device whose kernels to check and time.
        #[arg(long, value_enum, default_value_t = Device::Cuda)]
        device: Device,
        /// Only compile the CUDA kernels with NVRTC (no GPU needed): checks their source.
        #[arg(long)]
        compile_only: bool,
    },
    /// SAE training steps at the study's shape (d 896, d_sae 7168, k 64, batch 512).
    Train {
        /// Training steps to time.
        #[arg(long, default_value_t = 8)]
        steps: usize,
        /// Time the steps with aux-k on: this many features count as dead (aux-k then picks
        /// min(16·k, N) of them per row, as in an epoch after one that left them dead).
        #[arg(long, default_value_t = 0)]
        dead: usize,
        #[command(flatten)]
        device: DeviceArg,
        /// Instead of timing steps, train a whole SAE (the study's settings) on this many
        /// synthetic rows in memory (the study's full split: 445,744) and time it end to end.
        #[arg(long)]
        rows: Option<usize>,
        /// Epochs of the whole-SAE run.
        #[arg(long, default_value_t = 20)]
        epochs: usize,
    },
    /// Feature statistics over synthetic rows at the study's shape (d 896, d_sae 7168, k 64).
    Stats {
        /// Rows (the study's full train split of one stage and layer: 445,744).
        #[arg(long, default_value_t = 445_744)]
        rows: usize,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Activation collection with a random model of Qwen2.5-0.5B's exact shape.
    Ingest(BenchIngest),
    /// Time decoder_drift.sql over a full-size synthetic chain.
    Sql(BenchSql),
    /// The feature browser over a study-sized lake after `stats`: page latency and RSS.
    Serve(BenchServe),
    /// Every saved query in-process and on a Ballista cluster over the same `--lake`.
    Cluster {
        /// The cluster (`df://HOST:PORT`, see `saerl cluster`).
        #[arg(long)]
        cluster: String,
        /// Runs of each query (the best is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// The drift query through Flight SQL against the same statement in process, and rows/s of
    /// a large SELECT streamed to a Flight SQL client.
    Flight(flight::BenchFlight),
    /// The whole study (3 chains, 17 stages, 74 SAEs at the real shape) through `saerl run` on a
    /// fraction of its data, with each phase extrapolated to the full and the 10 % study.
    Study(study::BenchStudy),
    /// match_features's one-to-one assignment at the study's shape.
    Match {
        /// Features per SAE.
        #[arg(long, default_value_t = 7168)]
        d_sae: usize,
        /// The decoder's width.
        #[arg(long, default_value_t = 896)]
        d_model: usize,
    },
}

pub async fn run(lake: &crate::lake::Lake, a: &BenchArgs) -> Result<()> {
    let refs = References {
        dir: a.refs.clone(),
        python: a.python.clone(),
    };
    match &a.what {
        BenchWhat::Gemm => gemm::run(&refs),
        BenchWhat::Kernels {
            compile_only: true, ..
        } => kernels::compile(),
        BenchWhat::Kernels { device, .. } => kernels::run(device.name()),
        BenchWhat::Train {
            rows: Some(rows),
            epochs,
            device,
            ..
        } => train::whole(*rows, *epochs, device.name()),
        BenchWhat::Train {
            steps,
            dead,
            device,
            ..
        } => train::run(*steps, *dead, device.name(), &refs),
        BenchWhat::Stats { rows, device } => stats::run(*rows, device.name()),
        BenchWhat::Ingest(b) => ingest::run(b, &refs),
        BenchWhat::Sql(b) => sql::run(b, &refs).await,
        BenchWhat::Serve(b) => serve::run(b).await,
        BenchWhat::Study(b) => study::run(b),
        BenchWhat::Flight(b) => flight::run(b).await,
        BenchWhat::Match { d_sae, d_model } => matching::run(*d_sae, *d_model),
        BenchWhat::Cluster { cluster, runs } => cluster::run(lake, cluster, *runs).await,
    }
}

/// The shape of a synthetic chain of SAEs (the study's by default).
#[derive(clap::Args, Debug, Clone)]
pub struct ChainShape {
    /// Stages of the chain.
    #[arg(long, default_value_t = 8)]
    pub stages: usize,
    /// The residual (SAE input) width.
    #[arg(long, default_value_t = 896)]
    pub d_model: usize,
    /// Features per SAE.
    #[arg(long, default_value_t = 7168)]
    pub d_sae: usize,
    /// The SAEs' k.
    #[arg(long, default_value_t = 64)]
    pub k: usize,
}

/// Where the reference implementations are and what runs them.
pub struct References {
    dir: Option<PathBuf>,
    python: PathBuf,
}

impl References {
    /// Runs reference script `name` from the reference directory with `args`; its stdout, or
    /// why it could not run (no directory given, Python or a package missing, ...).
    fn script(&self, name: &str, args: &[&str]) -> Result<String> {
        let dir = self
            .dir
            .as_ref()
            .context("no reference directory (pass --refs DIR or set SAERL_BENCH_REFS)")?;
        let file = dir.join(name);
        if !file.is_file() {
            bail!("{} not found", file.display());
        }
        self.python_run(&[file.to_str().context("a non-UTF-8 path")?], args)
    }

    /// `python -c CODE ARGS` or `python FILE ARGS`: stdout, or the last line of stderr.
    fn python_run(&self, lead: &[&str], args: &[&str]) -> Result<String> {
        let out = Command::new(&self.python)
            .args(lead)
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.python.display()))?;
        if !out.status.success() {
            bail!(
                "{}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("the reference failed")
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The number before `unit` in a reference script's output (e.g. "1806 rows/s").
fn figure_before(text: &str, unit: &str) -> Result<f64> {
    let at = text
        .find(unit)
        .with_context(|| format!("no `{unit}` in the reference's output: {text}"))?;
    text[..at]
        .split_whitespace()
        .last()
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("no number before `{unit}` in: {text}"))
}

/// Peak resident set size of this process, in bytes (Linux).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Restarts peak-RSS accounting from the current RSS (Linux ≥ 4.0), so a figure covers one phase.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// A temporary directory, or `keep` when given (created if needed and kept afterwards).
fn work_dir(keep: &Option<PathBuf>) -> Result<(Option<tempfile::TempDir>, PathBuf)> {
    match keep {
        Some(p) => {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
            Ok((None, p.clone()))
        }
        None => {
            let t = tempfile::tempdir()?;
            let p = t.path().to_path_buf();
            Ok((Some(t), p))
        }
    }
}

/// `figure` against `reference`, as one line: "saerl is 2.41× <what> (target ≥ 4)".
/// `recorded` is the figure noted for this machine kind, used when the reference cannot run here.
fn ratio_line(what: &str, figure: f64, reference: Result<f64>, recorded: Option<f64>, target: f64) {
    match (reference, recorded) {
        (Ok(r), _) => println!(
            "  {what}: {r:.0} in this run → saerl is {:.2}× (target ≥ {target})",
            figure / r
        ),
        (Err(e), Some(rec)) => println!(
            "  {what}: not run here ({e:#}); recorded for this machine kind {rec:.0} → saerl is {:.2}× (target ≥ {target})",
            figure / rec
        ),
        (Err(e), None) => println!("  {what}: not run here ({e:#}); no recorded figure (target ≥ {target})"),
    }
}

/// Questions for the ingest benchmark: `data`, or the built-in GSM8k sample written to `dir`.
fn questions_file(data: &Option<PathBuf>, dir: &Path) -> Result<PathBuf> {
    match data {
        Some(d) => Ok(d.clone()),
        None => {
            let p = dir.join("questions.jsonl");
            std::fs::write(&p, crate::data::SAMPLE_TRAIN)?;
            Ok(p)
        }
    }
}
