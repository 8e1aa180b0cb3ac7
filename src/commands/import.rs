//! `saerl import pt|saelens|sparsify PATH`: SAEs in the study's `.pt` format or in SAELens's or
//! sparsify's directory format into `saes`, `features`, `stages`.
//!
//! PATH is one SAE (a `.pt` file, or a directory holding `cfg.json`), or a tree with chain
//! folders `sae_<chain>/` (optionally with subfolders such as `k64/`) holding
//! `sae_{stage}_layer{N}.pt` or `sae_{stage}_layer{N}/` (the layout `saerl export` writes); k
//! comes from each SAE's config. Everything is staged in one transaction, so a bad file leaves
//! the lake exactly as it was.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use regex::Regex;

use crate::lake::{check_name, Lake, PartitionKey, StageRow, Table, Txn};
use crate::project::Project;
use crate::sae::interop::{self, Library};
use crate::sae::{pt, Sae};
use crate::study::chain_defaults;
use crate::tables::write_sae;

#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub what: ImportWhat,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum ImportWhat {
    /// PyTorch `.pt` checkpoints: a tree of `sae_<chain>/[sub/]sae_{stage}_layer{N}.pt`, or one file.
    Pt(ImportPt),
    /// SAELens TopK SAEs (`cfg.json` + `sae_weights.safetensors`): one directory, or a tree of
    /// `sae_<chain>/[sub/]sae_{stage}_layer{N}/`.
    Saelens(ImportPt),
    /// sparsify SAEs (`cfg.json` + `sae.safetensors`): one directory, or a tree as for saelens.
    Sparsify(ImportPt),
}

/// What a path holds, and how to read one SAE of it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Pt,
    Dir(Library),
}

impl Kind {
    /// Whether `path` is one SAE of this kind (else a tree to search).
    fn is_sae(self, path: &Path) -> bool {
        match self {
            Kind::Pt => path.is_file(),
            Kind::Dir(_) => path.join("cfg.json").is_file(),
        }
    }

    fn read(self, path: &Path) -> Result<Sae> {
        match self {
            Kind::Pt => Ok(pt::read(path)?.sae),
            Kind::Dir(f) => interop::read(path, f),
        }
    }

    /// The name an SAE takes in a tree.
    fn pattern(self) -> &'static str {
        match self {
            Kind::Pt => "sae_{stage}_layer{N}.pt",
            Kind::Dir(_) => "sae_{stage}_layer{N}/",
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ImportPt {
    /// One SAE (a file or directory), or a tree of `sae_<chain>/` folders.
    pub path: PathBuf,
    /// The chain of a single SAE (default: from a `sae_<chain>/` folder above it).
    #[arg(long)]
    pub chain: Option<String>,
    /// The stage of a single SAE (default: from its name `sae_{stage}_layer{N}`).
    #[arg(long)]
    pub stage: Option<String>,
    /// The PPO step of a single SAE's stage (default: saerl.toml's, else from the stage name
    /// `instruct_base` / `ppo_stepN`).
    #[arg(long)]
    pub step: Option<i64>,
    /// The layer of a single SAE (default: from its name).
    #[arg(long)]
    pub layer: Option<i32>,
    #[command(flatten)]
    pub project: crate::commands::args::ProjectArg,
    #[command(flatten)]
    pub overwrite: crate::commands::args::Overwrite,
}

/// One file to import and where it goes (k is read from the file).
#[derive(Debug)]
struct Job {
    file: PathBuf,
    chain: String,
    stage: String,
    layer: i32,
}

/// `sae_{stage}_layer{N}` with the `.pt` extension for files, without for directories.
fn name_re(kind: Kind) -> Regex {
    match kind {
        Kind::Pt => Regex::new(r"^sae_(.+)_layer(\d+)\.pt$").unwrap(),
        Kind::Dir(_) => Regex::new(r"^sae_(.+)_layer(\d+)$").unwrap(),
    }
}

fn chain_of_dir(name: &str) -> Option<&str> {
    name.strip_prefix("sae_").filter(|c| !c.is_empty())
}

/// Finds every SAE under `root`; each must sit below a `sae_<chain>` folder and follow the
/// naming scheme, otherwise the import stops before writing anything.
fn discover(root: &Path, kind: Kind) -> Result<Vec<Job>> {
    let re = name_re(kind);
    let mut jobs = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = e?.path();
            let is_sae = match kind {
                Kind::Pt => path.extension().is_some_and(|x| x == "pt") && path.is_file(),
                Kind::Dir(_) => kind.is_sae(&path),
            };
            if !is_sae {
                if path.is_dir() {
                    stack.push(path);
                }
                continue;
            }
            let chain = path
                .ancestors()
                .skip(1)
                .take_while(|a| a.starts_with(root) || *a == root)
                .filter_map(|a| {
                    a.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(chain_of_dir)
                })
                .last()
                .with_context(|| {
                    format!(
                        "{}: not inside a sae_<chain>/ folder, so its chain is unknown",
                        path.display()
                    )
                })?;
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let caps = re.captures(&name).with_context(|| {
                format!("{}: the name is not {}", path.display(), kind.pattern())
            })?;
            jobs.push(Job {
                chain: chain.to_string(),
                stage: caps[1].to_string(),
                layer: caps[2].parse()?,
                file: path,
            });
        }
    }
    if jobs.is_empty() {
        bail!("no {} under {}", kind.pattern(), root.display());
    }
    Ok(jobs)
}

/// The job for one SAE: flags win, otherwise the path tells.
fn single(a: &ImportPt, kind: Kind) -> Result<Job> {
    let name = a
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let caps = name_re(kind).captures(&name);
    let from_dir = a
        .path
        .ancestors()
        .skip(1)
        .filter_map(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(chain_of_dir)
        })
        .next()
        .map(str::to_string);
    let hint = "pass --chain, --stage and --layer";
    Ok(Job {
        file: a.path.clone(),
        chain: a
            .chain
            .clone()
            .or(from_dir)
            .with_context(|| format!("cannot tell the chain of {}: {hint}", a.path.display()))?,
        stage: a
            .stage
            .clone()
            .or_else(|| caps.as_ref().map(|c| c[1].to_string()))
            .with_context(|| format!("cannot tell the stage of {}: {hint}", a.path.display()))?,
        layer: match (a.layer, &caps) {
            (Some(l), _) => l,
            (None, Some(c)) => c[2].parse()?,
            (None, None) => bail!("cannot tell the layer of {}: {hint}", a.path.display()),
        },
    })
}

pub fn run(lake: &Lake, a: &ImportArgs) -> Result<()> {
    lake.recover()?;
    match &a.what {
        ImportWhat::Pt(args) => import(lake, args, Kind::Pt),
        ImportWhat::Saelens(args) => import(lake, args, Kind::Dir(Library::SaeLens)),
        ImportWhat::Sparsify(args) => import(lake, args, Kind::Dir(Library::Sparsify)),
    }
}

fn import(lake: &Lake, a: &ImportPt, kind: Kind) -> Result<()> {
    if !a.path.exists() {
        bail!("{} does not exist", a.path.display());
    }
    let jobs = if kind.is_sae(&a.path) {
        vec![single(a, kind)?]
    } else if a.path.is_dir() {
        if a.chain.is_some() || a.stage.is_some() || a.layer.is_some() || a.step.is_some() {
            bail!("--chain/--stage/--step/--layer apply to a single SAE; a tree names them by its folders and names (steps from saerl.toml or the stage names)");
        }
        discover(&a.path, kind)?
    } else {
        bail!("{} is not a {} SAE", a.path.display(), kind.pattern());
    };
    for j in &jobs {
        check_name("chain", &j.chain).with_context(|| j.file.display().to_string())?;
        check_name("stage", &j.stage).with_context(|| j.file.display().to_string())?;
    }
    let project = Project::load_or_default(&a.project)?;
    let mut jobs = jobs;
    jobs.sort_by(|a, b| {
        (&a.chain, &a.stage, a.layer, &a.file).cmp(&(&b.chain, &b.stage, b.layer, &b.file))
    });

    let mut txn = Txn::begin(lake, *a.overwrite)?;
    let bar = super::progress(jobs.len() as u64, "import");
    let mut stage_rows: Vec<StageRow> = Vec::new();
    let mut imported = 0;
    for j in &jobs {
        bar.set_message(j.file.display().to_string());
        // The file first: "not a .pt file" says more than a missing step.
        let sae = kind.read(&j.file)?;
        let step = project
            .step_of(&j.chain, &j.stage, a.step)
            .with_context(|| j.file.display().to_string())?;
        let key = PartitionKey::sae(&j.chain, &j.stage, j.layer, sae.k as i32);
        bar.inc(1);
        if !*a.overwrite && lake.has_partition(Table::Saes, &key)? {
            bar.suspend(|| println!("{key}: already imported, skipped (--overwrite to replace)"));
            continue;
        }
        imported += 1;
        write_sae(&mut txn, &key, &sae)
            .with_context(|| format!("importing {}", j.file.display()))?;
        if !stage_rows
            .iter()
            .any(|r| r.chain == j.chain && r.stage == j.stage)
        {
            let (reward, kl_coef) = match project.chains.get(&j.chain) {
                Some(c) => (c.reward.clone(), c.kl_coef),
                None => chain_defaults(&j.chain),
            };
            stage_rows.push(StageRow {
                chain: j.chain.clone(),
                stage: j.stage.clone(),
                step,
                reward,
                kl_coef,
                model_path: None,
            });
        }
    }
    bar.finish_and_clear();
    if imported == 0 {
        return Ok(());
    }
    txn.upsert_stages(&stage_rows);
    txn.commit()?;
    let mut chains: Vec<&str> = stage_rows.iter().map(|r| r.chain.as_str()).collect();
    chains.dedup();
    println!(
        "imported {imported} SAE(s) of chain(s) {} into {}",
        chains.join(", "),
        lake.location()
    );
    Ok(())
}
