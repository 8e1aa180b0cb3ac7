//! One file per subcommand; each reads like the paragraph of DESIGN.md it implements.

pub mod bench;
pub mod cluster;
pub mod demo;
pub mod eval;
pub mod export;
pub mod import;
pub mod ingest;
pub mod init;
pub mod plot;
pub mod report;
pub mod serve;
pub mod sql;
pub mod stats;
pub mod train;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar with rate and ETA (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} ETA {{eta}} {{msg}}"
        ))
        .unwrap()
        .progress_chars("=> "),
    );
    bar
}

/// Which SAEs a command works on: `--chain`, `--stage` (default all), `--layers` (default all),
/// `--k` (default all).
#[derive(clap::Args, Debug, Clone)]
pub struct SaeSelection {
    /// The chain whose SAEs to work on.
    #[arg(long)]
    pub chain: String,
    /// Only this stage (repeatable; default every stage with an SAE).
    #[arg(long)]
    pub stage: Vec<String>,
    /// Only these layers (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<i32>,
    /// Only SAEs of this k (default all).
    #[arg(long)]
    pub k: Option<i32>,
}

impl SaeSelection {
    /// The selected SAEs in the lake, in stage-step order; anything asked for that matches
    /// nothing is an error naming what exists.
    pub fn keys(&self, lake: &crate::lake::Lake) -> anyhow::Result<Vec<crate::lake::PartitionKey>> {
        use crate::lake::Table;
        let stages = lake.read_stages(&self.chain)?;
        let order = |s: &str| {
            stages
                .iter()
                .position(|r| r.stage == s)
                .unwrap_or(usize::MAX)
        };
        let all: Vec<_> = lake
            .partitions(Table::Saes)?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.chain == self.chain)
            .collect();
        if all.is_empty() {
            let chains: Vec<String> = lake
                .partitions(Table::Saes)?
                .into_iter()
                .map(|(k, _)| k.chain)
                .collect();
            anyhow::bail!(
                "{} (train or import its SAEs first)",
                crate::suggest::unknown(
                    "chain",
                    &self.chain,
                    &format!("the SAEs of {}", lake.location()),
                    &chains
                )
            );
        }
        let list = |v: Vec<String>| {
            let mut v = v;
            v.sort();
            v.dedup();
            v.join(", ")
        };
        for s in &self.stage {
            if !all.iter().any(|k| k.stage.as_deref() == Some(s)) {
                anyhow::bail!(
                    "chain {} has no SAE at stage {s} (stages with SAEs: {})",
                    self.chain,
                    list(all.iter().filter_map(|k| k.stage.clone()).collect())
                );
            }
        }
        for l in &self.layers {
            if !all.iter().any(|k| k.layer == Some(*l)) {
                anyhow::bail!(
                    "chain {} has no SAE at layer {l} (layers: {})",
                    self.chain,
                    list(
                        all.iter()
                            .filter_map(|k| k.layer.map(|l| l.to_string()))
                            .collect()
                    )
                );
            }
        }
        let mut keys: Vec<_> = all
            .into_iter()
            .filter(|k| {
                self.stage.is_empty() || self.stage.iter().any(|s| k.stage.as_deref() == Some(s))
            })
            .filter(|k| self.layers.is_empty() || self.layers.contains(&k.layer.unwrap_or(-1)))
            .filter(|k| self.k.is_none_or(|want| k.k == Some(want)))
            .collect();
        if keys.is_empty() {
            anyhow::bail!("no SAE of chain {} matches k = {:?}", self.chain, self.k);
        }
        keys.sort_by_key(|k| (k.layer, k.k, order(k.stage.as_deref().unwrap_or(""))));
        Ok(keys)
    }
}
