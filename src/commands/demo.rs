//! `saerl demo`: the pipeline on a tiny model trained on the spot, then a synthetic study shaped
//! like the published one, every saved query run and drawn into `./saerl-demo/`. It needs
//! nothing beside the binary: the prompts are the GSM8k sample built into saerl.
//!
//! 1. A tiny Qwen2 learns next-token prediction on GSM8k questions ("instruct_base"), a copy
//!    learns a little more on the worked answers ("ppo_step10"); both are written in Hugging
//!    Face layout, declared in `saerl.toml` and ingested over a few hundred questions (chain
//!    `tiny`).
//! 2. SAEs are trained on those activations, the second stage warm-started from the first.
//! 3. The SAEs are evaluated (NMSE, L0, CE loss recovered on GSM8k test questions) and their
//!    feature statistics computed.
//! 4. A synthetic study with the published shape (three chains, their stages and layers, small
//!    SAEs with planted drift) gives the drift queries the whole study to work on.
//! 5. Every saved query is run, drawn and gathered into `report/report.html`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use datafusion::prelude::SessionContext;

use crate::commands::plot::plot_query;
use crate::commands::run::Phase;
use crate::data::{read_questions, SAMPLE_TEST, SAMPLE_TRAIN};
use crate::lake::{Lake, Txn};
use crate::model::lm_train::{train_lm, LmTraining};
use crate::model::random::{write_model, write_tokenizer, TinyShape};
use crate::model::TextTokenizer;
use crate::sql::format::{print_batches, Format};
use crate::sql::saved::{SavedQuery, QUERIES};
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

/// The demo model's shape (that of the fixture in tests/): small enough to train in seconds.
const TINY: TinyShape = TinyShape {
    hidden: D_MODEL,
    layers: 4,
    heads: 4,
    kv_heads: 2,
    intermediate: 160,
};
/// The demo's SAEs (the study's recipe, shorter and at a higher learning rate for the small data).
const SAE_K: usize = 8;
const SAE_D: usize = 256;
const SAE_EPOCHS: usize = 30;
const SAE_LR: f64 = 3e-3;

/// Next-token training: the base model on the questions, the "fine-tuned" stage a little more
/// on the worked answers (another distribution, so the SAEs have something to drift on).
const BASE_STEPS: usize = 300;
const TUNE_STEPS: usize = 60;
const LM_LR: f64 = 3e-3;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Where the models, the lake, the figures and the report go.
    #[arg(long, default_value = "./saerl-demo")]
    pub out: PathBuf,
    /// Questions to train the tiny model on and ingest (JSON lines or Parquet with `question`,
    /// `answer`); default: the GSM8k sample built into saerl.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Held-out questions for CE loss recovered; default: the built-in sample's test questions.
    #[arg(long)]
    pub test_data: Option<PathBuf>,
    /// A tokenizer.json to use; default: a byte-level BPE trained on the questions.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Questions to ingest per stage.
    #[arg(long, default_value_t = 300)]
    pub prompts: usize,
    #[command(flatten)]
    pub device: crate::commands::args::DeviceArg,
}

/// The demo's prompt files: the given ones, or the built-in sample written into `out/data/`.
fn prompt_files(out: &Path, a: &DemoArgs) -> Result<(PathBuf, PathBuf)> {
    let dir = std::path::absolute(out.join("data"))?;
    std::fs::create_dir_all(&dir)?;
    let file = |given: &Option<PathBuf>, name: &str, text: &str| -> Result<PathBuf> {
        match given {
            Some(p) => Ok(std::path::absolute(p)?),
            None => {
                let p = dir.join(name);
                std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
                Ok(p)
            }
        }
    };
    Ok((
        file(&a.data, "train.jsonl", SAMPLE_TRAIN)?,
        file(&a.test_data, "test.jsonl", SAMPLE_TEST)?,
    ))
}

/// A project file naming the tiny chain's two checkpoints, the prompt files, the SAEs and the
/// settings of each step, so the demo's study runs as a user's would (`saerl run`).
fn write_project(out: &Path, train: &Path, test: &Path, prompts: usize) -> Result<PathBuf> {
    let path = out.join("saerl.toml");
    let text = format!(
        r#"{DEMO_PROJECT_HEAD}: the tiny chain it trains, ingests and analyses.
# `saerl run --project {path}` reruns its study (nothing, once it is done).
[data]
train = {train:?}
test = {test:?}

# A short recipe for a tiny model (the study's defaults are for Qwen2.5-0.5B).
[ingest]
max_len = 128
limit = {prompts}

[train]
d_sae = {SAE_D}
epochs = {SAE_EPOCHS}
batch = 256
lr = {SAE_LR}

[eval]
prompts = 32
mean_prompts = 16

[chains.tiny]
saes = {{ 1 = {SAE_K}, 2 = {SAE_K}, 3 = {SAE_K} }}
stages = [
  {{ name = "instruct_base", step = 0,  model = "models/instruct_base" }},
  {{ name = "ppo_step10",    step = 10, model = "models/ppo_step10" }},
]
"#,
        path = path.display()
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Trains the tiny chain's checkpoints under `out/models/`: a random Qwen2 taught next-token
/// prediction on the questions ("instruct_base"), then a copy trained further on the answers
/// ("ppo_step10").
fn tiny_models(out: &Path, train: &Path, a: &DemoArgs) -> Result<()> {
    let docs = read_questions(train, None)?;
    let questions: Vec<String> = docs.iter().map(|d| d.question.clone()).collect();
    let answers: Vec<String> = docs.iter().filter_map(|d| d.answer.clone()).collect();
    let base = out.join("models").join("instruct_base");
    let tuned = out.join("models").join("ppo_step10");
    let texts: Vec<String> = questions.iter().chain(&answers).cloned().collect();
    let vocab = write_tokenizer(&base, a.tokenizer.as_deref(), &texts)?;
    write_model(&base, &TINY, vocab, 0, None)?;
    let tok = TextTokenizer::from_file(&base.join("tokenizer.json"))?;
    let encode = |texts: &[String]| -> Result<Vec<Vec<u32>>> {
        texts.iter().map(|t| tok.encode(t, 64)).collect()
    };
    let steps = |dir: &Path, texts: &[Vec<u32>], n: usize, seed: u64, what: &str| -> Result<f32> {
        let bar = super::progress(n as u64, what);
        let t = LmTraining {
            steps: n,
            batch: 16,
            lr: LM_LR,
            seed,
        };
        let losses = train_lm(dir, texts, tok.pad_id(), &t, &mut |_, loss| {
            bar.inc(1);
            bar.set_message(format!("loss {loss:.3}"));
        })?;
        bar.finish_and_clear();
        Ok(*losses.last().unwrap_or(&f32::NAN))
    };
    let loss = steps(
        &base,
        &encode(&questions)?,
        BASE_STEPS,
        0,
        "training the base model",
    )?;
    println!(
        "tiny model instruct_base: {BASE_STEPS} next-token steps on the questions, loss {loss:.3}"
    );
    std::fs::create_dir_all(&tuned)?;
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(base.join(f), tuned.join(f))?;
    }
    let answer_rows = if answers.is_empty() {
        encode(&questions)?
    } else {
        encode(&answers)?
    };
    let loss = steps(
        &tuned,
        &answer_rows,
        TUNE_STEPS,
        1,
        "fine-tuning on the answers",
    )?;
    println!(
        "tiny model ppo_step10: {TUNE_STEPS} more steps on the worked answers, loss {loss:.3}"
    );
    Ok(())
}

/// The file that says a directory is the demo's own, so a rerun may clear what it made.
const DEMO_MARKER: &str = ".saerl-demo";
/// The first line of the project file the demo writes (how a demo directory made before the
/// marker is recognised).
const DEMO_PROJECT_HEAD: &str = "# Written by `saerl demo`";

/// Makes `out` the demo's directory: a new or empty one gets the marker; one a previous demo
/// made has its lake and models cleared; any other directory is refused, as it may hold a
/// user's lake, models or project.
fn claim_out_dir(out: &Path) -> Result<()> {
    let marker = out.join(DEMO_MARKER);
    let made_by_demo = marker.is_file()
        || std::fs::read_to_string(out.join("saerl.toml"))
            .is_ok_and(|t| t.starts_with(DEMO_PROJECT_HEAD));
    if made_by_demo {
        for old in [out.join("lake"), out.join("models")] {
            if old.exists() {
                std::fs::remove_dir_all(&old)
                    .with_context(|| format!("clearing the previous demo's {}", old.display()))?;
            }
        }
    } else if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!(
            "{} is not empty and was not made by `saerl demo` (no {DEMO_MARKER} in it); the demo writes a lake, models and a project there, so give it a new or empty directory with --out",
            out.display()
        );
    } else if out.exists() && !out.is_dir() {
        anyhow::bail!(
            "{} is not a directory: pass --out a new or empty directory",
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    crate::durable::write_atomic(
        &marker,
        b"made by `saerl demo`: a rerun clears its lake and models\n",
    )
}

pub async fn run(a: &DemoArgs) -> Result<()> {
    let out = a.out.as_path();
    claim_out_dir(out)?;
    let lake = Lake::new(out.join("lake"));
    let (train_file, test_file) = prompt_files(out, a)?;
    let project = write_project(out, &train_file, &test_file, a.prompts)?;
    tiny_models(out, &train_file, a)?;
    // The tiny chain's study: both stages ingested, SAEs trained (the second stage warm-started
    // from the first), evaluated, and their statistics computed.
    super::run::study(
        &lake,
        &super::run::RunArgs {
            project: crate::commands::args::ProjectArg::new(&project),
            dry_run: false,
            commands: false,
            only: vec![Phase::Ingest, Phase::Train, Phase::Eval, Phase::Stats],
            chain: vec![],
            layers: vec![],
            device: a.device,
            jobs: None,
            train_jobs: None,
            report: out.join("report"),
        },
    )
    .context("the demo's study of its tiny chain")?;
    write_synthetic_chains(&lake)?;
    let ctx = open_session(&lake).await?;
    let queries = crate::sql::saved::builtin();
    print_findings(&ctx, &queries, out).await?;
    let page = super::report::write_report(
        &lake,
        &out.join("report"),
        &queries,
        &Default::default(),
        None,
    )
    .await?;
    println!(
        "\nFigures and tables are in {}/. Explore further with:\n  saerl sql --lake {}\n\nThe report: {}\nBrowse the features:\n  saerl serve --lake {1}    # then open http://127.0.0.1:8080/",
        out.display(),
        lake.root().display(),
        page.display()
    );
    Ok(())
}

/// The three synthetic chains at the study's shape, in one commit.
fn write_synthetic_chains(lake: &Lake) -> Result<()> {
    let plans = plans();
    let total: usize = plans.iter().map(|p| p.saes.len() * p.steps.len()).sum();
    let bar = super::progress(total as u64, "synthetic SAEs");
    let mut txn = Txn::begin(lake, false)?;
    for plan in &plans {
        write_chain(&mut txn, plan, || bar.inc(1))?;
    }
    txn.commit()?;
    bar.finish_and_clear();
    println!(
        "wrote {total} synthetic SAEs (3 chains, d_model {D_MODEL}, d_sae {D_SAE}) to {}",
        lake.root().display()
    );
    Ok(())
}

/// Prints the tiny chain's activations, runs every saved query into `out` (CSV, SVG, PNG) and
/// prints the KL ratio.
async fn print_findings(ctx: &SessionContext, queries: &[SavedQuery], out: &Path) -> Result<()> {
    let summary = "SELECT stage, layer, count(*) AS tokens, sum(CASE WHEN split = 'val' THEN 1 ELSE 0 END) AS val_tokens \
                   FROM activations GROUP BY stage, layer ORDER BY stage, layer";
    println!("activations of the tiny model (chain `tiny`):");
    print_batches(
        &run_sql(ctx, summary).await?,
        Format::Table,
        &mut std::io::stdout().lock(),
    )?;
    for q in queries {
        let (name, sql) = (q.name.as_str(), q.sql.as_str());
        let params = q.defaults()?;
        let batches = crate::sql::run_sql_with(ctx, sql, &params)
            .await
            .with_context(|| format!("running queries/{name}.sql"))?;
        let csv = out.join(format!("{name}.csv"));
        print_batches(&batches, Format::Csv, &mut std::fs::File::create(&csv)?)?;
        for ext in ["svg", "png"] {
            plot_query(ctx, sql, &params, &out.join(format!("{name}.{ext}")))
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
        ctx,
        QUERIES.iter().find(|(n, _)| *n == "kl_ratio").unwrap().1,
    )
    .await?;
    println!("\nKL ratio (kl0p025 / flexible per-step decoder drift):");
    print_batches(&kl, Format::Table, &mut std::io::stdout().lock())?;
    Ok(())
}
