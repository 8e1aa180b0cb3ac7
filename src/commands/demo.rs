//! `saerl demo`: a synthetic study shaped like the published one (three chains, their stages,
//! layers 6/12/18/23, small SAEs with planted drift), written through the lake's writers, then
//! every saved query run and drawn into `./saerl-demo/`.
//! (Until `saerl ingest` and `saerl train` exist, the SAEs are generated, not trained.)

use std::path::Path;

use anyhow::{Context, Result};

use crate::commands::plot::plot_query;
use crate::lake::{Lake, Txn};
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

pub async fn run(out: &Path) -> Result<()> {
    let lake = Lake::new(out.join("lake"));
    if lake.root().exists() {
        std::fs::remove_dir_all(lake.root()).with_context(|| {
            format!("clearing the previous demo lake {}", lake.root().display())
        })?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
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
    println!(
        "\nFigures and tables are in {}/. Explore further with:\n  saerl sql --lake {}",
        out.display(),
        lake.root().display()
    );
    Ok(())
}
