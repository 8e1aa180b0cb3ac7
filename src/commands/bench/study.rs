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
//! "∝ S" is taken as the ratio of tokens per stage, S × 445,744 against the tokens this run
//! ingested: the generated questions are whole, so a stage holds a little more than its share
//! (2.7 % more at S = 0.01), and scaling by S alone would count that surplus ten times over.
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

/// Seconds of one finished step extrapolated to other data: its fixed part as it is, its
/// prompts' part by the ratio of prompts, the rest by `rows`, the ratio of activation rows.
fn extrapolated(f: &run::Finished, rows: f64, prompts: (f64, f64)) -> f64 {
    let o = &f.outcome;
    let data = (f.seconds - o.fixed_seconds - o.prompt_seconds).max(0.0);
    o.fixed_seconds + o.prompt_seconds * prompts.1 / prompts.0 + data * rows
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

/// What the run read and wrote, from the lake.
struct DataSizes {
    /// Tokens ingested (counted at the first layer) and stages ingested.
    tokens: usize,
    stages: usize,
    /// Summed over the SAEs: the train rows each epoch passes over, the val rows eval
    /// reconstructs, and the rows stats reads (the stage's, both splits).
    train_rows: f64,
    val_rows: f64,
    rows: f64,
}

fn data_sizes(lake: &Lake) -> Result<DataSizes> {
    let mut d = DataSizes {
        tokens: 0,
        stages: 0,
        train_rows: 0.0,
        val_rows: 0.0,
        rows: 0.0,
    };
    for (key, _) in lake.partitions(Table::Saes)? {
        let act = PartitionKey::layer(
            &key.chain,
            key.stage.as_deref().unwrap_or(""),
            key.layer.unwrap_or(0),
        );
        let n = lake.activation_count(&act)?;
        let val = (0.2 * n as f64).floor();
        d.train_rows += n as f64 - val;
        d.val_rows += val;
        d.rows += n as f64;
    }
    for (key, _) in lake.partitions(Table::Docs)? {
        let act = PartitionKey::layer(&key.chain, key.stage.as_deref().unwrap_or(""), LAYERS[0]);
        d.tokens += lake.activation_count(&act)?;
        d.stages += 1;
    }
    Ok(d)
}

/// Each phase's time and rate, and its extrapolation to the full and the 10 % study.
fn report(lake: &Lake, s: &RunSummary, a: &BenchStudy, prompts: usize) -> Result<()> {
    let d = data_sizes(lake)?;
    let per_stage = d.tokens as f64 / d.stages.max(1) as f64;
    // The rows' growth from this run to the study at scale `to` (S alone if nothing was ingested).
    let rows = |to: f64| match per_stage > 0.0 {
        true => to * STUDY_TOKENS / per_stage,
        false => to / a.scale,
    };
    let prompt_ratio = |to: f64| (prompts as f64, eval_prompts(to) as f64);
    println!(
        "\nbench study at S = {} on {} ({} cores), {per_stage:.0} tokens per stage:",
        a.scale,
        a.device,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "  {:<7} {:>5} {:>10} {:>10} {:>12} {:>12}  rate (per second of its steps); share of its steps' time that does not grow with the rows",
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
                .map(|f| extrapolated(f, rows(to), prompt_ratio(to)))
                .sum()
        };
        let fixed = mine.iter().map(|f| f.outcome.fixed_seconds).sum::<f64>() / busy;
        let prompted = mine.iter().map(|f| f.outcome.prompt_seconds).sum::<f64>() / busy;
        let rate = match p {
            Phase::Ingest => format!("{:.0} tokens/s", d.tokens as f64 / busy),
            Phase::Train => format!(
                "{:.0} train rows/s over {} epochs",
                a.epochs as f64 * d.train_rows / busy,
                a.epochs
            ),
            Phase::Eval => format!("{:.0} val rows/s", d.val_rows / busy),
            Phase::Stats => format!("{:.0} rows/s", d.rows / busy),
            Phase::Report => String::new(),
        };
        let shares = match prompted > 0.0 {
            true => format!(
                "{:.0} % fixed, {:.0} % CE prompts",
                100.0 * fixed,
                100.0 * prompted
            ),
            false => format!("{:.0} % fixed", 100.0 * fixed),
        };
        println!(
            "  {:<7} {:>5} {:>10} {:>10} {:>12} {:>12}  {}",
            p.name(),
            mine.len(),
            duration(busy),
            duration(span),
            duration(at(0.1)),
            duration(at(1.0)),
            match rate.is_empty() {
                true => shares,
                false => format!("{rate}; {shares}"),
            }
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
