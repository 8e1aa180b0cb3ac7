//! `saerl bench study --scale S`: the whole study at its real shape and a fraction S of its
//! data, through `saerl run`. A random model of Qwen2.5-0.5B's exact shape stands for every
//! checkpoint; the project declares the study's 3 chains, 17 stages, layers 6/12/18/23 and 74
//! SAEs (d_sae 7168, k 64, layer 23 at k 256 in flexible and at both k in strict), with
//! S × 445,744 tokens per stage and S × 100 eval prompts (at least 4). It prints each phase's
//! time, tokens/s and rows/s, and each phase extrapolated to S = 1 and S = 0.1:
//! - ingest: its time grows with the rows (∝ S), past the model loads (fixed);
//! - train: the epochs ∝ S, the checkpoints and the commit fixed;
//! - eval: the val rows' reconstruction ∝ S, the CE prompts ∝ their number (max(4, 100·S)),
//!   the model and SAE loads fixed;
//! - stats: the activation pass ∝ S; the SAE's load, the weight-only tables (logit effects
//!   through a 151,936-token unembedding, nearest features, transitions, partners) and the
//!   commit of tables whose size d_sae fixes, fixed;
//! - report: fixed.
//!
//! Steps overlap as they ran here (the ratio of each phase's span to its steps' summed time is
//! kept), so the whole run extrapolates as the sum of its steps' extrapolated time over the
//! parallelism reached.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{ingest::random_qwen, work_dir};
use crate::commands::run::{self, duration, Phase, RunArgs, RunSummary};
use crate::data::{read_questions, SAMPLE_TEST, SAMPLE_TRAIN};
use crate::lake::{Lake, PartitionKey, Table};
use crate::model::{ModelDtype, TextTokenizer};
use crate::study::{stage_name, CHAINS, LAYERS};

/// Tokens per stage of the study (GSM8k train, max 512 tokens per question).
const STUDY_TOKENS: f64 = 445_744.0;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchStudy {
    /// The fraction of the study's data: S × 445,744 tokens per stage, S × 100 eval prompts
    /// (at least 4).
    #[arg(long, default_value_t = 0.01)]
    pub scale: f64,
    #[command(flatten)]
    pub device: crate::commands::args::DeviceArg,
    /// The precision ingest computes the model in; with bf16 the benchmark also reports how far
    /// bf16 activations are from f32 ones.
    #[arg(long, value_enum, default_value_t = ModelDtype::F32)]
    pub dtype: ModelDtype,
    /// Epochs per SAE (the study's 20).
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    /// `saerl run --jobs` (default: its own).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// `saerl run --train-jobs` (default: its own).
    #[arg(long)]
    pub train_jobs: Option<usize>,
    /// Keep the generated study (model, prompts, project, lake) here; a rerun reuses the model
    /// and resumes the run.
    #[arg(long)]
    pub keep: Option<PathBuf>,
}

/// The study's chains with every stage on `model`, its SAE grid and the settings of a run at
/// scale S.
fn project_text(model: &Path, train: &Path, test: &Path, prompts: usize, a: &BenchStudy) -> String {
    let mut t = format!(
        "# saerl bench study --scale {}: the study's shape on a random Qwen2.5-0.5B-shaped model.\n\
         [data]\ntrain = {train:?}\ntest = {test:?}\n\n[ingest]\ndtype = \"{}\"\n\n\
         [train]\nepochs = {}\n\n[eval]\nprompts = {prompts}\nmean_prompts = {}\n",
        a.scale,
        match a.dtype {
            ModelDtype::F32 => "f32",
            ModelDtype::Bf16 => "bf16",
        },
        a.epochs,
        prompts.min(32)
    );
    for c in CHAINS {
        let saes = match c.name {
            "flexible" => "{ 6 = 64, 12 = 64, 18 = 64, 23 = 256 }",
            "strict" => "{ 6 = 64, 12 = 64, 18 = 64, 23 = [64, 256] }",
            _ => "{ 6 = 64, 12 = 64, 18 = 64, 23 = 64 }",
        };
        t += &format!(
            "\n[chains.{}]\nreward = \"{}\"\nkl_coef = {}\nsaes = {saes}\nstages = [\n",
            c.name, c.reward, c.kl_coef
        );
        for s in c.steps {
            t += &format!(
                "  {{ name = \"{}\", step = {s}, model = {model:?} }},\n",
                stage_name(*s)
            );
        }
        t += "]\n";
    }
    t
}

/// Questions from the built-in GSM8k sample, cycled, until they hold `tokens` tokens (each cut
/// at 512, as ingest does).
fn questions(tok: &TextTokenizer, tokens: usize) -> Result<String> {
    let docs = crate::data::sample_questions(SAMPLE_TRAIN, None);
    let mut out = String::new();
    let mut n = 0;
    for d in docs.iter().cycle() {
        if n >= tokens {
            break;
        }
        n += tok.encode(&d.question, 512)?.len();
        out += &serde_json::json!({ "question": d.question, "answer": d.answer }).to_string();
        out.push('\n');
    }
    Ok(out)
}

/// Seconds of one finished step extrapolated from scale `s` to `to`: its fixed part as it is,
/// its prompts' part by the ratio of prompts, the rest (its rows) by the ratio of scales.
fn extrapolated(f: &run::Finished, s: f64, to: f64, prompts: (f64, f64)) -> f64 {
    let o = &f.outcome;
    let data = (f.seconds - o.fixed_seconds - o.prompt_seconds).max(0.0);
    o.fixed_seconds + o.prompt_seconds * prompts.1 / prompts.0 + data * to / s
}

fn eval_prompts(scale: f64) -> usize {
    ((100.0 * scale).round() as usize).max(4)
}

pub fn run(a: &BenchStudy) -> Result<()> {
    let (_tmp, work) = work_dir(&a.keep)?;
    let model = work.join("model");
    let (train, test) = (work.join("train.jsonl"), work.join("test.jsonl"));
    random_qwen(&model, None, || {
        Ok(crate::data::sample_questions(SAMPLE_TRAIN, None)
            .into_iter()
            .map(|d| d.question)
            .collect())
    })?;
    let tok = TextTokenizer::from_file(&model.join("tokenizer.json"))?;
    let tokens = (a.scale * STUDY_TOKENS).round() as usize;
    std::fs::write(&train, questions(&tok, tokens)?)?;
    std::fs::write(&test, SAMPLE_TEST)?;
    let prompts = eval_prompts(a.scale);
    let project = work.join("saerl.toml");
    std::fs::write(&project, project_text(&model, &train, &test, prompts, a))?;
    let lake = Lake::new(work.join("lake"));
    println!(
        "saerl bench study --scale {} ({}, {:?}): 3 chains, 17 stages, layers {LAYERS:?}, 74 SAEs (d_sae 7168), {} epochs, ≈{tokens} tokens per stage ({} questions), {prompts} eval prompts; in {}",
        a.scale,
        a.device,
        a.dtype,
        a.epochs,
        read_questions(&train, None)?.len(),
        work.display()
    );
    let args = RunArgs {
        project: crate::commands::args::ProjectArg::new(&project),
        dry_run: false,
        commands: false,
        only: vec![],
        chain: vec![],
        layers: vec![],
        device: a.device,
        jobs: a.jobs,
        train_jobs: a.train_jobs,
        report: work.join("report"),
    };
    let summary = run::study(&lake, &args)?.context("the run planned nothing")?;
    report(&lake, &summary, a, prompts)?;
    if a.dtype == ModelDtype::Bf16 {
        super::ingest::bf16_difference(&work, &model, &train, a.device.name())?;
    }
    Ok(())
}

/// From the lake: the tokens ingested (counted at the first layer) and the train rows each
/// epoch of every SAE passes over.
fn data_sizes(lake: &Lake) -> Result<(usize, f64)> {
    let mut tokens = 0usize;
    let mut train_rows = 0f64;
    for (key, _) in lake.partitions(Table::Saes)? {
        let act = PartitionKey::layer(
            &key.chain,
            key.stage.as_deref().unwrap_or(""),
            key.layer.unwrap_or(0),
        );
        let n = lake.activation_count(&act)?;
        train_rows += (n - (0.2 * n as f64).floor() as usize) as f64;
    }
    for (key, _) in lake.partitions(Table::Docs)? {
        let act = PartitionKey::layer(&key.chain, key.stage.as_deref().unwrap_or(""), LAYERS[0]);
        tokens += lake.activation_count(&act)?;
    }
    Ok((tokens, train_rows))
}

/// Each phase's time and rate, and its extrapolation to the full and the 10 % study.
fn report(lake: &Lake, s: &RunSummary, a: &BenchStudy, prompts: usize) -> Result<()> {
    let (tokens, train_rows) = data_sizes(lake)?;
    let prompt_ratio = |to: f64| (prompts as f64, eval_prompts(to) as f64);
    println!(
        "\nbench study at S = {} on {} ({} cores):",
        a.scale,
        a.device,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "  {:<7} {:>5} {:>10} {:>10} {:>12} {:>12}  rate (per second of its steps)",
        "phase", "steps", "step time", "span", "S = 0.1", "S = 1"
    );
    let mut whole = (0.0, 0.0, 0.0);
    for p in Phase::ALL {
        let mine: Vec<&run::Finished> = s
            .finished
            .iter()
            .filter(|f| s.steps[f.step].phase == p)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let busy: f64 = mine.iter().map(|f| f.seconds).sum();
        let span = mine.iter().map(|f| f.ended).fold(0.0, f64::max)
            - mine.iter().map(|f| f.began).fold(f64::INFINITY, f64::min);
        let at = |to: f64| -> f64 {
            mine.iter()
                .map(|f| extrapolated(f, a.scale, to, prompt_ratio(to)))
                .sum()
        };
        let rate = match p {
            Phase::Ingest => format!("{:.0} tokens/s", tokens as f64 / busy),
            Phase::Train => format!(
                "{:.0} train rows/s over {} epochs",
                a.epochs as f64 * train_rows / busy,
                a.epochs
            ),
            _ => String::new(),
        };
        println!(
            "  {:<7} {:>5} {:>10} {:>10} {:>12} {:>12}  {rate}",
            p.name(),
            mine.len(),
            duration(busy),
            duration(span),
            duration(at(0.1)),
            duration(at(1.0))
        );
        whole = (whole.0 + busy, whole.1 + at(0.1), whole.2 + at(1.0));
    }
    // Steps overlapped: the run's wall time was its steps' summed time over this factor.
    let parallel = whole.0 / s.wall;
    println!(
        "  {:<7} {:>5} {:>10} {:>10} {:>12} {:>12}  wall time, steps overlapping {parallel:.2}× (kept in the extrapolations)",
        "whole",
        s.finished.len(),
        duration(s.wall),
        "",
        duration(whole.1 / parallel),
        duration(whole.2 / parallel)
    );
    let target = if *a.device == crate::commands::args::Device::Cpu {
        "under 4 h for S = 0.1 on 2 cores"
    } else {
        "under 15 min for S = 1 on one GPU"
    };
    println!("  target: {target}");
    Ok(())
}
