//! `saerl demo`: the pipeline on a tiny generated model, then a synthetic study shaped like the
//! published one, every saved query run and drawn into `./saerl-demo/`.
//!
//! 1. A tiny random Qwen2 ("instruct_base") and a perturbed copy ("ppo_step10") are written in
//!    Hugging Face layout and ingested over a few hundred GSM8k questions (chain `tiny`).
//! 2. SAEs are trained on those activations, the second stage warm-started from the first.
//! 3. The SAEs are evaluated (NMSE, L0, CE loss recovered on GSM8k test questions) and their
//!    feature statistics computed.
//! 4. A synthetic study with the published shape (three chains, their stages and layers, small
//!    SAEs with planted drift) gives the drift queries the whole study to work on.
//! 5. Every saved query is run, drawn and gathered into `report/report.html`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use clap::Parser;

use crate::commands::ingest;
use crate::commands::plot::plot_query;
use crate::commands::train::TrainArgs;
use crate::data::read_questions;
use crate::lake::{Lake, Txn};
use crate::model::random::{write_model, write_tokenizer, TinyShape};
use crate::sql::format::{print_batches, Format};
use crate::sql::saved::QUERIES;
use crate::sql::{open_session, run_sql};
use crate::study::{CHAINS, LAYERS};
use crate::synth::{write_chain, ChainPlan};

const D_MODEL: usize = 64;
const D_SAE: usize = 512;
const K: usize = 16;
const K_L23: usize = 32;

/// The study's SAE grid: k everywhere, layer 23 at a larger k in flexible, both in strict.
fn plans() -> Vec<ChainPlan> {
    CHAINS
        .iter()
        .map(|c| {
            let mut saes: Vec<(i32, usize)> = LAYERS.iter().map(|&l| (l, K)).collect();
            match c.name {
                "flexible" => saes.last_mut().unwrap().1 = K_L23,
                "strict" => saes.push((23, K_L23)),
                _ => {}
            }
            ChainPlan {
                chain: c.name.into(),
                reward: Some(c.reward.into()),
                kl_coef: Some(c.kl_coef),
                steps: c.steps.to_vec(),
                saes,
                d_model: D_MODEL,
                d_sae: D_SAE,
                // The larger KL budget slows drift a little, far from proportionally.
                rate: if c.kl_coef > 0.01 { 0.8 } else { 1.0 },
            }
        })
        .collect()
}

/// Used when no GSM8k file is at hand, so the demo needs nothing outside the repository.
const BUILTIN_PROMPTS: &[&str] = &[
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. How much more money does Betty need?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
    "Randy has 60 mango trees on his farm. He also has 5 less than half as many coconut trees as mango trees. How many trees does Randy have in all?",
    "Tina makes $18.00 an hour. If she works more than 8 hours per shift, she is eligible for overtime. How much money does she make in 10 hours?",
];

pub struct DemoArgs {
    pub out: PathBuf,
    /// GSM8k train questions (the built-in prompts are used when the file is missing).
    pub data: PathBuf,
    /// The Qwen2.5 tokenizer (a small BPE is trained when the file is missing).
    pub tokenizer: PathBuf,
    pub prompts: usize,
}

/// Generates the two tiny checkpoints and ingests them as chain `tiny`; returns the questions
/// file used.
fn tiny_model_stage(out: &Path, lake: &Lake, a: &DemoArgs) -> Result<PathBuf> {
    let data = if a.data.is_file() {
        a.data.clone()
    } else {
        let p = out.join("prompts.jsonl");
        let lines: Vec<String> = BUILTIN_PROMPTS
            .iter()
            .map(|q| serde_json::json!({ "question": q }).to_string())
            .collect();
        std::fs::write(&p, lines.join("\n"))?;
        println!(
            "{} not found: using {} built-in prompts",
            a.data.display(),
            BUILTIN_PROMPTS.len()
        );
        p
    };
    let texts: Vec<String> = read_questions(&data, Some(a.prompts))?
        .into_iter()
        .map(|d| d.question)
        .collect();
    let shape = TinyShape {
        hidden: D_MODEL,
        layers: 4,
        heads: 4,
        kv_heads: 2,
        intermediate: 160,
    };
    let stages = [
        ("instruct_base", None),
        ("ppo_step10", Some((1u64, 0.05f32))),
    ];
    for (stage, perturb) in stages {
        let dir = out.join("models").join(stage);
        let vocab = write_tokenizer(&dir, Some(&a.tokenizer), &texts)?;
        write_model(&dir, &shape, vocab, 0, perturb)?;
        let flags = [
            "--chain",
            "tiny",
            "--stage",
            stage,
            "--layers",
            "1,2,3",
            "--max-len",
            "128",
        ];
        let mut ingest = ingest::Ingest::from_flags(flags)?;
        (ingest.model, ingest.data, ingest.limit) = (Some(dir), data.clone(), Some(a.prompts));
        ingest.project = out.join("saerl.toml");
        ingest::run(lake, &ingest).with_context(|| format!("ingesting the demo model {stage}"))?;
    }
    Ok(data)
}

pub async fn run(a: &DemoArgs) -> Result<()> {
    let out = a.out.as_path();
    let lake = Lake::new(out.join("lake"));
    for old in [lake.root().to_path_buf(), out.join("models")] {
        if old.exists() {
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("clearing the previous demo's {}", old.display()))?;
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let data = tiny_model_stage(out, &lake, a)?;
    // Real SAEs on the tiny chain: the base stage cold, the "ppo" stage warm-started from it.
    let train = TrainArgs::parse_from([
        "train", "--chain", "tiny", "--layers", "1,2,3", "--k", "8", "--d-sae", "256", "--epochs",
        "4", "--batch", "256",
    ]);
    super::train::run(&lake, &train)?;
    // Held-out questions for CE loss recovered: GSM8k test beside the train file when present.
    let test = a.data.with_file_name("test.jsonl");
    let test = if test.is_file() { test } else { data };
    let eval = super::eval::EvalArgs::parse_from([
        "eval",
        "--chain",
        "tiny",
        "--prompts",
        "16",
        "--mean-prompts",
        "8",
        "--data",
        test.to_str().context("a non-UTF-8 path")?,
    ]);
    super::eval::run(&lake, &eval)?;
    super::stats::run(
        &lake,
        &super::stats::StatsArgs::parse_from(["stats", "--chain", "tiny"]),
    )?;
    let plans = plans();
    let total: usize = plans.iter().map(|p| p.saes.len() * p.steps.len()).sum();
    let bar = super::progress(total as u64, "synthetic SAEs");
    let mut txn = Txn::begin(&lake, false)?;
    for plan in &plans {
        write_chain(&mut txn, plan, || bar.inc(1))?;
    }
    txn.commit()?;
    bar.finish_and_clear();
    println!(
        "wrote {total} synthetic SAEs (3 chains, d_model {D_MODEL}, d_sae {D_SAE}) to {}",
        lake.root().display()
    );

    let ctx = open_session(&lake).await?;
    let summary = "SELECT stage, layer, count(*) AS tokens, sum(CASE WHEN split = 'val' THEN 1 ELSE 0 END) AS val_tokens \
                   FROM activations GROUP BY stage, layer ORDER BY stage, layer";
    println!("activations of the tiny model (chain `tiny`):");
    print_batches(
        &run_sql(&ctx, summary).await?,
        Format::Table,
        &mut std::io::stdout().lock(),
    )?;
    for (name, sql) in QUERIES {
        let batches = run_sql(&ctx, sql)
            .await
            .with_context(|| format!("running queries/{name}.sql"))?;
        let csv = out.join(format!("{name}.csv"));
        print_batches(&batches, Format::Csv, &mut std::fs::File::create(&csv)?)?;
        for ext in ["svg", "png"] {
            plot_query(&ctx, sql, &out.join(format!("{name}.{ext}")))
                .await
                .with_context(|| format!("plotting {name}"))?;
        }
        println!(
            "  {name}: {} rows -> {}",
            batches.iter().map(|b| b.num_rows()).sum::<usize>(),
            out.join(format!("{name}.{{csv,svg,png}}")).display()
        );
    }
    let kl = run_sql(
        &ctx,
        QUERIES.iter().find(|(n, _)| *n == "kl_ratio").unwrap().1,
    )
    .await?;
    println!("\nKL ratio (kl0p025 / flexible per-step decoder drift):");
    print_batches(&kl, Format::Table, &mut std::io::stdout().lock())?;
    let page = super::report::run(&lake, &out.join("report")).await?;
    println!(
        "\nFigures and tables are in {}/. Explore further with:\n  saerl sql --lake {}\n\nThe report: {}",
        out.display(),
        lake.root().display(),
        page.display()
    );
    Ok(())
}
