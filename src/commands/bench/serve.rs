//! `saerl bench serve`: the feature browser over a study-sized lake — one chain of 8 stages at
//! one layer, d_model 896, 7168 features, activations of 445,744 tokens per stage, a random
//! model of Qwen2.5-0.5B's width for the logit effects — after `stats`. It starts `saerl serve`
//! as its own process and times pages over HTTP: the first feature page after start, warm
//! feature pages (HTML and JSON), the study page, and the server's peak RSS.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};

use super::{gib, work_dir, ChainShape};
use crate::lake::{activation_batch, vocab_batch, Lake, PartitionKey, StageRow, Table, Txn};
use crate::study::{stage_name, CHAINS};
use crate::synth::{write_chain, ChainPlan};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchServe {
    #[command(flatten)]
    pub shape: ChainShape,
    /// Activation rows (tokens) per stage: the study's 445,744.
    #[arg(long, default_value_t = 445_744)]
    pub tokens: usize,
    /// The random model's vocabulary (Qwen2.5's 151,936).
    #[arg(long, default_value_t = 151_936)]
    pub vocab: usize,
    /// Warm requests of each kind timed.
    #[arg(long, default_value_t = 30)]
    pub requests: usize,
    /// Keep (and reuse) the generated lake in this directory.
    #[arg(long)]
    pub keep: Option<PathBuf>,
}

const LAYER: i32 = 18;
const PROMPT: usize = 128;

pub async fn run(a: &BenchServe) -> Result<()> {
    let (_tmp, root) = work_dir(&a.keep)?;
    let lake = Lake::new(root.join("lake"));
    let model = root.join("model");
    let steps: Vec<i64> = CHAINS[0]
        .steps
        .iter()
        .copied()
        .take(a.shape.stages)
        .collect();
    if steps.len() < a.shape.stages {
        bail!(
            "--stages: the study's chains have at most {} stages",
            CHAINS[0].steps.len()
        );
    }
    let t = Instant::now();
    write_model(&model, a)?;
    generate(&lake, &model, &steps, a)?;
    println!(
        "lake {} ready in {:.1} s",
        lake.location(),
        t.elapsed().as_secs_f64()
    );

    page_tables(&lake, a.shape.stages)?;

    let server = Server::start(&lake)?;
    let k = a.shape.k;
    let page = |f: usize| format!("/chain/flexible/layer/{LAYER}/k/{k}/feature/{f}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let first = server.time(&page(rng.random_range(0..a.shape.d_sae)))?;
    let first_study = server.time("/")?;
    let mut html = Vec::new();
    let mut json = Vec::new();
    for _ in 0..a.requests {
        html.push(server.time(&page(rng.random_range(0..a.shape.d_sae)))?);
        json.push(server.time(&format!("/api{}", page(rng.random_range(0..a.shape.d_sae))))?);
    }
    let study: Vec<f64> = (0..5).map(|_| server.time("/")).collect::<Result<_>>()?;
    let steps_tr = (stage_name(steps[0]), stage_name(steps[1]));
    let transition = server.time(&format!(
        "/chain/flexible/layer/{LAYER}/k/{k}/transition/{}/{}",
        steps_tr.0, steps_tr.1
    ))?;
    let rss = server.peak_rss()?;
    let ms = |s: f64| s * 1e3;
    println!(
        "saerl serve over {} stages × {} tokens, d_model {}, d_sae {}:",
        a.shape.stages, a.tokens, a.shape.d_model, a.shape.d_sae
    );
    println!(
        "  first feature page after start: {:.0} ms (target < 1000)",
        ms(first)
    );
    print_latencies("HTML", &html);
    print_latencies("JSON", &json);
    println!(
        "  study page: first {:.0} ms, then median {:.0} ms (target < 1000); a transition page {:.0} ms",
        ms(first_study),
        ms(quantile(&study, 0.5)),
        ms(transition)
    );
    println!("  server peak RSS {:.2} GiB (target < 1 GB)", gib(rss));
    Ok(())
}

/// `saerl stats` over the chain's SAEs: the tables the pages read.
fn page_tables(lake: &Lake, stages: usize) -> Result<()> {
    let t = Instant::now();
    let stats = crate::commands::stats::StatsArgs {
        select: crate::commands::SaeSelection {
            chain: "flexible".into(),
            stage: Vec::new(),
            layers: Vec::new(),
            k: None,
        },
        device: Default::default(),
        overwrite: Default::default(),
    };
    crate::commands::stats::run(lake, &stats)?;
    println!(
        "stats: {:.1} s for {} stages",
        t.elapsed().as_secs_f64(),
        stages
    );
    Ok(())
}

fn print_latencies(what: &str, seconds: &[f64]) {
    println!(
        "  warm feature page, {what}: median {:.0} ms, p95 {:.0} ms, max {:.0} ms (target < 200)",
        1e3 * quantile(seconds, 0.5),
        1e3 * quantile(seconds, 0.95),
        1e3 * quantile(seconds, 1.0)
    );
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// A random model directory of the residual width: config.json and the two tensors the logit
/// effects read (tied embedding, final norm), in bf16 as Qwen2.5 ships.
fn write_model(dir: &Path, a: &BenchServe) -> Result<()> {
    let weights = dir.join("model.safetensors");
    if weights.is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    // Qwen2.5-0.5B's head size (64): 14 heads, 2 of them key/value, at its width.
    let heads = (a.shape.d_model / 64).max(1);
    let kv_heads = if heads.is_multiple_of(2) { 2 } else { 1 };
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": a.shape.d_model, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": a.vocab,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": true,
        "max_position_embeddings": 32768,
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
    let bf16 = |v: f32| half::bf16::from_f32(v).to_le_bytes();
    let embed: Vec<u8> = (0..a.vocab * a.shape.d_model)
        .flat_map(|_| bf16(crate::rng::normal(&mut rng) * 0.02))
        .collect();
    let norm: Vec<u8> = (0..a.shape.d_model)
        .flat_map(|_| bf16(1.0 + 0.1 * crate::rng::normal(&mut rng)))
        .collect();
    use safetensors::tensor::{Dtype, TensorView};
    let views = [
        (
            "model.embed_tokens.weight",
            TensorView::new(Dtype::BF16, vec![a.vocab, a.shape.d_model], &embed)?,
        ),
        (
            "model.norm.weight",
            TensorView::new(Dtype::BF16, vec![a.shape.d_model], &norm)?,
        ),
    ];
    safetensors::serialize_to_file(views, None, &weights)?;
    Ok(())
}

/// The chain's SAEs (drifting along the chain), each stage's activations, vocab and stage row
/// naming the model — whatever the kept lake lacks.
fn generate(lake: &Lake, model: &Path, steps: &[i64], a: &BenchServe) -> Result<()> {
    let plan = ChainPlan {
        chain: "flexible".into(),
        reward: Some("flexible".into()),
        kl_coef: Some(0.005),
        steps: steps.to_vec(),
        saes: vec![(LAYER, a.shape.k)],
        d_model: a.shape.d_model,
        d_sae: a.shape.d_sae,
        rate: 1.0,
    };
    if lake.partitions(Table::Features)?.is_empty() {
        let model_path = std::path::absolute(model)?.display().to_string();
        let mut txn = Txn::begin(lake, false)?;
        write_chain(&mut txn, &plan, || {})?;
        txn.upsert_stages(
            &steps
                .iter()
                .map(|&s| StageRow {
                    chain: plan.chain.clone(),
                    stage: stage_name(s),
                    step: s,
                    reward: plan.reward.clone(),
                    kl_coef: plan.kl_coef,
                    model_path: Some(model_path.clone()),
                })
                .collect::<Vec<_>>(),
        );
        txn.commit()?;
    }
    let tokens: Vec<(u32, String, String)> = (0..a.vocab as u32)
        .map(|t| (t, format!("Ġw{t}"), format!(" w{t}")))
        .collect();
    let bar = crate::commands::progress((steps.len() * a.tokens) as u64, "generating activations");
    for (si, &step) in steps.iter().enumerate() {
        let stage = stage_name(step);
        let key = PartitionKey::layer(&plan.chain, &stage, LAYER);
        if lake.has_partition(Table::Activations, &key)? {
            bar.inc(a.tokens as u64);
            continue;
        }
        let mut txn = Txn::begin(lake, false)?;
        let mut w = txn.partition(
            Table::Activations,
            &key,
            Table::Activations.file_schema(Some(a.shape.d_model as i32)),
        )?;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(100 + si as u64);
        const BATCH: usize = 8192;
        for start in (0..a.tokens).step_by(BATCH) {
            let m = BATCH.min(a.tokens - start);
            let rows = start..start + m;
            let doc: Vec<i64> = rows.clone().map(|r| (r / PROMPT) as i64).collect();
            let val: Vec<bool> = doc.iter().map(|d| d % 10 == 0).collect();
            let x: Vec<f32> = (0..m * a.shape.d_model)
                .map(|_| crate::rng::normal(&mut rng))
                .collect();
            w.write(&activation_batch(
                doc,
                rows.clone().map(|r| (r % PROMPT) as i32).collect(),
                rows.map(|_| rng.random_range(0..a.vocab as i32)).collect(),
                &val,
                x,
                a.shape.d_model,
            )?)?;
            bar.inc(m as u64);
        }
        txn.finish(w)?;
        txn.write(
            Table::Vocab,
            &PartitionKey::stage(&plan.chain, &stage),
            &[vocab_batch(&tokens)?],
        )?;
        txn.commit()?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// `saerl serve` as a child process on a free loopback port.
struct Server {
    child: std::process::Child,
    addr: String,
}

impl Server {
    fn start(lake: &Lake) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--lake", &lake.location(), "serve", "--bind", &addr])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting saerl serve")?;
        // It prints its address once it listens.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        if !line.contains(&addr) {
            let _ = child.kill();
            bail!("saerl serve did not start: {line}");
        }
        Ok(Self { child, addr })
    }

    /// Seconds for one GET of `path`, until the whole body is read (fails unless 200).
    fn time(&self, path: &str) -> Result<f64> {
        let t = Instant::now();
        let mut s = TcpStream::connect(&self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )?;
        let mut body = Vec::new();
        s.read_to_end(&mut body)?;
        let took = t.elapsed().as_secs_f64();
        let head = String::from_utf8_lossy(&body[..body.len().min(64)]).to_string();
        if !head.starts_with("HTTP/1.1 200") {
            bail!(
                "GET {path}: {}",
                String::from_utf8_lossy(&body[..body.len().min(400)])
            );
        }
        Ok(took)
    }

    fn peak_rss(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .context("no VmHWM")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("VmHWM")?
            .parse::<u64>()?
            * 1024)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
