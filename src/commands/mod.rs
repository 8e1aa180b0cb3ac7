//! One file per subcommand; each reads like the paragraph of DESIGN.md it implements.

pub mod args;
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
pub mod run;
pub mod serve;
pub mod sql;
pub mod stats;
pub mod train;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The view of a `saerl run` under way: the bars of the commands it runs join it, and their
/// lines are printed above it.
static VIEW: std::sync::RwLock<Option<MultiProgress>> = std::sync::RwLock::new(None);

pub(crate) fn attach_view(view: Option<MultiProgress>) {
    *VIEW.write().unwrap() = view;
}

/// A progress bar with rate and ETA (hidden when stderr is not a terminal); inside `saerl run`
/// it is drawn in the run's view.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} ETA {{eta}} {{msg}}"
        ))
        .unwrap()
        .progress_chars("=> "),
    );
    match VIEW.read().unwrap().as_ref() {
        Some(view) => view.add(bar),
        None => bar,
    }
}

/// Prints a command's line on stdout, above the run's bars when a run's view is showing.
pub(crate) fn say_line(line: String) {
    match VIEW.read().unwrap().as_ref() {
        Some(view) if !view.is_hidden() => {
            let _ = view.println(line);
        }
        _ => println!("{line}"),
    }
}

/// `println!` for the commands a run may take: their lines stay readable beside its bars.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::commands::say_line(format!($($arg)*))
    };
}
pub(crate) use say;

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
