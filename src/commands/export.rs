//! `saerl export pt|saelens|sparsify OUT_DIR`: every SAE of the lake (or of one chain) as
//! published `.pt` checkpoints or as SAELens/sparsify directories, in the layout `saerl import`
//! reads: `sae_<chain>/[k<K>/]sae_{stage}_layer{N}.pt` (or `.../sae_{stage}_layer{N}/`), the
//! `k<K>/` level only for chains where one layer has SAEs of several k.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::lake::{Lake, Table};
use crate::sae::interop::{self, Library};
use crate::sae::pt;
use crate::tables::read_sae;

#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    #[command(subcommand)]
    pub what: ExportWhat,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum ExportWhat {
    /// The published `.pt` format, as a tree that `saerl import pt` reads back.
    Pt(ExportTo),
    /// SAELens directories (`cfg.json`, `sae_weights.safetensors`), for `SAE.load_from_disk`.
    Saelens(ExportTo),
    /// sparsify directories (`cfg.json`, `sae.safetensors`), for `SparseCoder.load_from_disk`.
    Sparsify(ExportTo),
}

#[derive(clap::Args, Debug, Clone)]
pub struct ExportTo {
    /// The directory to write the tree into (`sae_<chain>/[k<K>/]...`).
    out: PathBuf,
    /// Only this chain.
    #[arg(long)]
    chain: Option<String>,
}

pub fn run(lake: &Lake, a: &ExportArgs) -> Result<()> {
    let (to, format) = match &a.what {
        ExportWhat::Pt(to) => (to, None),
        ExportWhat::Saelens(to) => (to, Some(Library::SaeLens)),
        ExportWhat::Sparsify(to) => (to, Some(Library::Sparsify)),
    };
    export(lake, &to.out, to.chain.as_deref(), format)
}

/// Exports as `.pt` (`format` None) or in another library's format.
fn export(lake: &Lake, out: &Path, chain: Option<&str>, format: Option<Library>) -> Result<()> {
    let lake = lake.existing()?;
    // One consistent view: a commit that replaces SAEs waits until the export is done.
    let _snapshot = lake.read_guard()?;
    let keys: Vec<_> = lake
        .partitions(Table::Saes)?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| chain.is_none_or(|c| k.chain == c))
        .collect();
    if keys.is_empty() {
        anyhow::bail!(
            "no SAEs{} in {}",
            chain.map(|c| format!(" of chain {c}")).unwrap_or_default(),
            lake.location()
        );
    }
    // SAEs per (chain, layer): a chain needs k-folders when any of its layers has several.
    let mut per_layer: BTreeMap<(&str, Option<i32>), BTreeSet<Option<i32>>> = BTreeMap::new();
    for k in &keys {
        per_layer
            .entry((k.chain.as_str(), k.layer))
            .or_default()
            .insert(k.k);
    }
    let split_by_k = |chain: &str| {
        per_layer
            .iter()
            .any(|((c, _), ks)| *c == chain && ks.len() > 1)
    };
    let bar = super::progress(keys.len() as u64, "export");
    for key in &keys {
        let sae = read_sae(&lake, key)?;
        let mut dir = out.join(format!("sae_{}", key.chain));
        if split_by_k(&key.chain) {
            dir.push(format!("k{}", sae.k));
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (stage, layer) = (
            key.stage.as_deref().unwrap_or_default(),
            key.layer.unwrap_or_default(),
        );
        let name = format!("sae_{stage}_layer{layer}");
        match format {
            None => pt::write(&dir.join(format!("{name}.pt")), &sae, &[])?,
            Some(f) => {
                let hook = format!("blocks.{layer}.hook_resid_post");
                for note in interop::write(&dir.join(&name), &sae, f, &hook)? {
                    bar.suspend(|| {
                        eprintln!("{key}: {note} (noted in {name}/{})", interop::NOTES_FILE)
                    });
                }
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!("exported {} SAE(s) to {}", keys.len(), out.display());
    Ok(())
}
