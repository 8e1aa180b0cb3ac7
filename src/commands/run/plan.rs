//! The study's plan: from `saerl.toml`, every step `saerl run` takes — one ingest per stage
//! (all the chain's layers in one pass of the model), one training per SAE (warm-started from
//! the previous stage's), one eval and one stats per stage and k, the report — each as the
//! command line of the individual command that does it, with what it waits for and whether the
//! lake already holds its output.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;

use super::estimate::{Estimate, Sizes};
use crate::commands::{eval::EvalArgs, ingest::Ingest, stats, train::TrainArgs};
use crate::lake::{Lake, PartitionKey, Table};
use crate::project::Project;

/// The phases of a study, in the order their steps are taken.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Ingest,
    Train,
    Eval,
    Stats,
    Report,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Ingest,
        Phase::Train,
        Phase::Eval,
        Phase::Stats,
        Phase::Report,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Ingest => "ingest",
            Phase::Train => "train",
            Phase::Eval => "eval",
            Phase::Stats => "stats",
            Phase::Report => "report",
        }
    }
}

/// What the lake holds of a step's output.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Done,
    ToDo,
    /// Begun by an interrupted run: it resumes (how far it got).
    Resumes(String),
}

/// One step: the individual command that takes it and what it needs first.
#[derive(Debug, Clone)]
pub struct Step {
    pub phase: Phase,
    /// What it works on, e.g. `flexible/ppo_step10 layer 6 k 64`.
    pub target: String,
    /// `saerl` + these words is the individual command (the run executes exactly that).
    pub argv: Vec<String>,
    /// Steps whose output it reads: they must be done (by this run or an earlier one).
    pub needs: Vec<usize>,
    /// Steps it must follow when both are in the run, though it does not read their output
    /// (stats after the other chains' trainings its partners pair with).
    pub after: Vec<usize>,
    pub state: State,
    pub est: Estimate,
}

/// What the run covers: the `--only`, `--chain` and `--layers` of `saerl run`.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub only: Vec<Phase>,
    pub chains: Vec<String>,
    pub layers: Vec<i32>,
    pub device: String,
    pub report_dir: PathBuf,
}

impl Scope {
    pub fn includes(&self, phase: Phase) -> bool {
        self.only.is_empty() || self.only.contains(&phase)
    }
}

/// A project's stages of one chain in step order: (name, step).
fn ordered_stages(project: &Project, chain: &str) -> Result<Vec<(String, i64)>> {
    let c = &project.chains[chain];
    if c.stages.is_empty() {
        bail!("[chains.{chain}] declares no stages: add stages = [{{ name = \"instruct_base\", step = 0, model = \"...\" }}, ...]");
    }
    let mut stages = c
        .stages
        .iter()
        .map(|s| Ok((s.name.clone(), project.step_of(chain, &s.name, s.step)?)))
        .collect::<Result<Vec<_>>>()?;
    stages.sort_by_key(|(_, step)| *step);
    Ok(stages)
}

/// `key = value` settings of a project table as flags (`max_len = 128` → `--max-len 128`,
/// `in_memory = true` → `--in-memory`). Flags the run sets itself are refused.
fn setting_flags(table: &toml::Table, section: &str, reserved: &[&str]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        if reserved.contains(&flag.as_str()) {
            bail!("[{section}] {key}: saerl run sets --{flag} itself (from [chains] and its own flags); remove it");
        }
        match value {
            toml::Value::Boolean(true) => out.push(format!("--{flag}")),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => out.extend([format!("--{flag}"), s.clone()]),
            toml::Value::Integer(i) => out.extend([format!("--{flag}"), i.to_string()]),
            toml::Value::Float(f) => out.extend([format!("--{flag}"), f.to_string()]),
            other => {
                bail!("[{section}] {key} = {other}: a setting is a number, a string or true/false")
            }
        }
    }
    Ok(out)
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

fn join(layers: &[i32]) -> String {
    layers
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a step's words with its command's own parser, so a bad setting is reported before
/// anything runs, naming the section it came from.
fn parsed<T: Parser>(argv: &[String], section: &str, project: &Path) -> Result<T> {
    T::try_parse_from(argv).map_err(|e| {
        let msg = e.to_string();
        let first = msg
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ");
        anyhow::anyhow!(
            "{}: the [{section}] settings do not suit `saerl {}`: {first}",
            project.display(),
            argv[0]
        )
    })
}

/// Builds the plan of `project` (at `path`) within `scope`, with each step's state in `lake`.
pub fn build(lake: &Lake, project: &Project, path: &Path, scope: &Scope) -> Result<Vec<Step>> {
    check_chains(project, path, scope)?;
    let mut plan = Planner::new(lake, project, path, scope)?;
    let mut layers_seen = BTreeSet::new();
    // Per chain in scope: its SAEs (layer, k), and per SAE the previous stage's training.
    let mut grids = BTreeMap::new();
    let mut stages = Vec::new();
    for (chain, config) in &project.chains {
        if !scope.chains.is_empty() && !scope.chains.contains(chain) {
            continue;
        }
        let grid: Vec<(i32, usize)> = config
            .sae_grid(chain)?
            .into_iter()
            .filter(|(l, _)| scope.layers.is_empty() || scope.layers.contains(l))
            .collect();
        if grid.is_empty() {
            continue;
        }
        layers_seen.extend(grid.iter().map(|&(l, _)| l));
        let prev = vec![None; grid.len()];
        grids.insert(chain.as_str(), (grid, prev));
        for (stage, step) in ordered_stages(project, chain)? {
            stages.push((step, chain.as_str(), stage));
        }
    }
    // The chains' stages side by side in step order (each chain's own order kept), so the
    // stages whose SAEs partner across chains are trained close together and their
    // statistics can start long before the last chain's trainings.
    stages.sort_by_key(|&(step, _, _)| step);
    for (_, chain, stage) in &stages {
        let (grid, prev) = grids.get_mut(chain).expect("a chain in scope");
        plan.stage(chain, stage, grid, prev)?;
    }
    if let Some(l) = scope.layers.iter().find(|l| !layers_seen.contains(l)) {
        bail!(
            "--layers {l}: no chain of {} trains SAEs at layer {l} (their `saes`)",
            path.display()
        );
    }
    // Partners pair each SAE with the other chains' SAEs of its layer and k (at its stage, else
    // their first): a stats step follows those trainings, and only those, so statistics run
    // beside the trainings still to come instead of after all of them.
    for (step, sae) in std::mem::take(&mut plan.stats) {
        plan.steps[step].after = sae.partner_trainings(&plan.trained);
    }
    plan.report()?;
    Ok(plan.steps)
}

/// Fails on a project without chains, or a `--chain` it does not declare.
fn check_chains(project: &Project, path: &Path, scope: &Scope) -> Result<()> {
    if project.chains.is_empty() {
        bail!(
            "{} declares no chains: add [chains.NAME] tables (`saerl init` writes an example)",
            path.display()
        );
    }
    let names: Vec<String> = project.chains.keys().cloned().collect();
    for c in &scope.chains {
        if !project.chains.contains_key(c) {
            bail!(
                "{}",
                crate::suggest::unknown("chain", c, &path.display().to_string(), &names)
            );
        }
    }
    Ok(())
}

/// The plan as it is built: the project's settings as flags, and the steps so far.
struct Planner<'a> {
    lake: &'a Lake,
    path: &'a Path,
    scope: &'a Scope,
    project_arg: String,
    ingest_flags: Vec<String>,
    train_flags: Vec<String>,
    eval_flags: Vec<String>,
    sizes: Sizes<'a>,
    steps: Vec<Step>,
    /// Every training step, with the SAE it trains.
    trained: Vec<(SaeGroup, usize)>,
    /// Every stats step, with the SAEs it covers (one per layer of `SaeGroup::layers`).
    stats: Vec<(usize, SaeGroup)>,
}

/// SAEs of one chain, stage and k, at some layers.
#[derive(Debug, Clone)]
struct SaeGroup {
    chain: String,
    stage: String,
    layers: Vec<i32>,
    k: usize,
}

impl SaeGroup {
    /// The trainings (of `trained`) whose SAEs `saerl stats` pairs these with: per layer and
    /// every other chain training that layer and k, its SAE at this stage when it has the
    /// stage, else its first (as `stats`'s partners choose).
    fn partner_trainings(&self, trained: &[(SaeGroup, usize)]) -> Vec<usize> {
        let mut out = BTreeSet::new();
        for layer in &self.layers {
            let same = |t: &SaeGroup| t.layers == [*layer] && t.k == self.k;
            let chains: BTreeSet<&str> = trained
                .iter()
                .filter(|(t, _)| t.chain != self.chain && same(t))
                .map(|(t, _)| t.chain.as_str())
                .collect();
            for chain in chains {
                // Plan order: a chain's trainings come in stage order, its first stage first.
                let theirs = || trained.iter().filter(|(t, _)| t.chain == chain && same(t));
                let pick = theirs().find(|(t, _)| t.stage == self.stage);
                if let Some((_, i)) = pick.or_else(|| theirs().next()) {
                    out.insert(*i);
                }
            }
        }
        out.into_iter().collect()
    }
}

impl<'a> Planner<'a> {
    fn new(lake: &'a Lake, project: &'a Project, path: &'a Path, scope: &'a Scope) -> Result<Self> {
        // Flags the plan sets itself may not come from the project's settings.
        let common = ["chain", "stage", "layers", "device", "overwrite"];
        let reserved = |extra: &[&'static str]| [&common[..], extra].concat();
        Ok(Self {
            lake,
            path,
            scope,
            project_arg: path.display().to_string(),
            ingest_flags: setting_flags(
                &project.ingest,
                "ingest",
                &reserved(&["step", "model", "project"]),
            )?,
            train_flags: setting_flags(&project.train, "train", &reserved(&["k"]))?,
            eval_flags: setting_flags(
                &project.eval,
                "eval",
                &reserved(&["k", "model", "project"]),
            )?,
            sizes: Sizes::new(project),
            steps: Vec::new(),
            trained: Vec::new(),
            stats: Vec::new(),
        })
    }

    fn push(&mut self, step: Step) -> usize {
        self.steps.push(step);
        self.steps.len() - 1
    }

    /// One stage's steps: its ingest and trainings (each SAE warm-started from the previous
    /// stage's, `prev` per SAE of `grid`, updated), then per k an eval and a stats.
    fn stage(
        &mut self,
        chain: &str,
        stage: &str,
        grid: &[(i32, usize)],
        prev: &mut [Option<usize>],
    ) -> Result<()> {
        let layers: Vec<i32> = grid
            .iter()
            .map(|&(l, _)| l)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let ingest = self.ingest(chain, stage, &layers)?;
        let mut trains = Vec::new();
        for (g, &(layer, k)) in grid.iter().enumerate() {
            let needs = std::iter::once(ingest).chain(prev[g]).collect();
            let i = self.train(chain, stage, layer, k, needs)?;
            prev[g] = Some(i);
            trains.push((layer, k, i));
        }
        let ks: BTreeSet<usize> = grid.iter().map(|&(_, k)| k).collect();
        for &k in &ks {
            let mine: Vec<(i32, usize)> = trains
                .iter()
                .filter(|(_, tk, _)| *tk == k)
                .map(|&(l, _, i)| (l, i))
                .collect();
            self.eval_and_stats(chain, stage, k, &mine)?;
        }
        Ok(())
    }

    fn ingest(&mut self, chain: &str, stage: &str, layers: &[i32]) -> Result<usize> {
        let mut argv = words(&["ingest", "--chain", chain, "--stage", stage]);
        argv.extend(words(&[
            "--project",
            &self.project_arg,
            "--layers",
            &join(layers),
        ]));
        argv.extend(words(&["--device", &self.scope.device]));
        argv.extend(self.ingest_flags.iter().cloned());
        let ingest: Ingest = parsed(&argv, "ingest", self.path)?;
        let stage_key = PartitionKey::stage(chain, stage);
        let step = Step {
            phase: Phase::Ingest,
            target: format!("{chain}/{stage} layers {}", join(layers)),
            state: ingest_state(self.lake, &stage_key, layers)?,
            est: self.sizes.ingest(self.lake, chain, stage, &ingest)?,
            argv,
            needs: vec![],
            after: vec![],
        };
        Ok(self.push(step))
    }

    fn train(
        &mut self,
        chain: &str,
        stage: &str,
        layer: i32,
        k: usize,
        needs: Vec<usize>,
    ) -> Result<usize> {
        let mut argv = words(&["train", "--chain", chain, "--stage", stage]);
        argv.extend(words(&[
            "--layers",
            &layer.to_string(),
            "--k",
            &k.to_string(),
        ]));
        argv.extend(words(&["--device", &self.scope.device]));
        argv.extend(self.train_flags.iter().cloned());
        let train: TrainArgs = parsed(&argv, "train", self.path)?;
        let key = PartitionKey::sae(chain, stage, layer, k as i32);
        let step = Step {
            phase: Phase::Train,
            target: format!("{chain}/{stage} layer {layer} k {k}"),
            state: train_state(self.lake, &key)?,
            est: self.sizes.train(self.lake, chain, stage, &train)?,
            argv,
            needs,
            after: vec![],
        };
        let i = self.push(step);
        let sae = SaeGroup {
            chain: chain.to_string(),
            stage: stage.to_string(),
            layers: vec![layer],
            k,
        };
        self.trained.push((sae, i));
        Ok(i)
    }

    /// The eval and the stats of one stage's SAEs of one k (`trained`: layer and training
    /// step of each).
    fn eval_and_stats(
        &mut self,
        chain: &str,
        stage: &str,
        k: usize,
        trained: &[(i32, usize)],
    ) -> Result<()> {
        let ls: Vec<i32> = trained.iter().map(|&(l, _)| l).collect();
        let keys: Vec<PartitionKey> = ls
            .iter()
            .map(|&l| PartitionKey::sae(chain, stage, l, k as i32))
            .collect();
        let needs: Vec<usize> = trained.iter().map(|&(_, i)| i).collect();
        let select = words(&["--chain", chain, "--stage", stage, "--layers", &join(&ls)]);
        let target = format!("{chain}/{stage} layers {} k {k}", join(&ls));
        let mut argv = words(&["eval"]);
        argv.extend(select.iter().cloned());
        argv.extend(words(&[
            "--k",
            &k.to_string(),
            "--project",
            &self.project_arg,
        ]));
        argv.extend(words(&["--device", &self.scope.device]));
        argv.extend(self.eval_flags.iter().cloned());
        let eval: EvalArgs = parsed(&argv, "eval", self.path)?;
        let step = Step {
            phase: Phase::Eval,
            target: target.clone(),
            state: all_have(self.lake, Table::Evals, &keys)?,
            est: self.sizes.eval(self.lake, chain, stage, &eval, ls.len())?,
            argv,
            needs: needs.clone(),
            after: vec![],
        };
        self.push(step);
        let mut argv = words(&["stats"]);
        argv.extend(select);
        argv.extend(words(&[
            "--k",
            &k.to_string(),
            "--device",
            &self.scope.device,
        ]));
        let _: stats::StatsArgs = parsed(&argv, "stats", self.path)?;
        let step = Step {
            phase: Phase::Stats,
            target,
            state: stats_state(self.lake, &keys)?,
            est: self.sizes.stats(self.lake, chain, stage, &keys)?,
            argv,
            needs,
            after: vec![],
        };
        let i = self.push(step);
        let saes = SaeGroup {
            chain: chain.to_string(),
            stage: stage.to_string(),
            layers: ls,
            k,
        };
        self.stats.push((i, saes));
        Ok(())
    }

    /// The report, after every other step of the run.
    fn report(&mut self) -> Result<()> {
        let report_dir = self.scope.report_dir.display().to_string();
        let step = Step {
            phase: Phase::Report,
            target: format!("every saved query into {report_dir}/"),
            state: match report_is_current(self.lake, &self.scope.report_dir)? {
                true => State::Done,
                false => State::ToDo,
            },
            est: self.sizes.report(),
            argv: words(&["report", &report_dir]),
            needs: vec![],
            after: (0..self.steps.len()).collect(),
        };
        self.push(step);
        Ok(())
    }
}

fn ingest_state(lake: &Lake, stage: &PartitionKey, layers: &[i32]) -> Result<State> {
    let (chain, name) = (&stage.chain, stage.stage.as_deref().unwrap_or(""));
    let mut done =
        lake.has_partition(Table::Docs, stage)? && lake.has_partition(Table::Vocab, stage)?;
    for &l in layers {
        done &= lake.has_partition(Table::Activations, &PartitionKey::layer(chain, name, l))?;
    }
    if done {
        return Ok(State::Done);
    }
    // An interrupted ingest left complete chunks in its staging directory.
    let staging = lake.ingest_staging(chain, name);
    if staging.manifest().is_file() {
        let chunks = (0..)
            .take_while(|&c| {
                layers
                    .iter()
                    .all(|&l| staging.chunk(l as usize, c).is_file())
            })
            .count();
        return Ok(State::Resumes(format!("after chunk {chunks}")));
    }
    Ok(State::ToDo)
}

fn train_state(lake: &Lake, key: &PartitionKey) -> Result<State> {
    if lake.has_partition(Table::Saes, key)? {
        Ok(State::Done)
    } else if lake.train_checkpoint(key).is_file() {
        Ok(State::Resumes("from its last checkpoint".into()))
    } else {
        Ok(State::ToDo)
    }
}

fn all_have(lake: &Lake, table: Table, keys: &[PartitionKey]) -> Result<State> {
    for k in keys {
        if !lake.has_partition(table, k)? {
            return Ok(State::ToDo);
        }
    }
    Ok(State::Done)
}

/// Done when `saerl stats` would find nothing missing for any of the SAEs.
fn stats_state(lake: &Lake, keys: &[PartitionKey]) -> Result<State> {
    for k in keys {
        if !lake.has_partition(Table::Saes, k)?
            || !stats::missing_tables(lake, k, false)?.is_empty()
        {
            return Ok(State::ToDo);
        }
    }
    Ok(State::Done)
}

/// Where the run notes which commit of the lake the report in `dir` shows.
pub fn report_stamp(dir: &Path) -> PathBuf {
    dir.join(".saerl-report.json")
}

/// The report of `dir` shows this lake as it is now.
fn report_is_current(lake: &Lake, dir: &Path) -> Result<bool> {
    let Ok(text) = std::fs::read_to_string(report_stamp(dir)) else {
        return Ok(false);
    };
    let stamp: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    Ok(dir.join("report.html").is_file()
        && stamp["lake"].as_str() == Some(&lake.identity())
        && stamp["commits"].as_u64() == Some(lake.generation()?))
}

/// Records that the report in `dir` shows the lake as of now.
pub fn stamp_report(lake: &Lake, dir: &Path) -> Result<()> {
    let stamp = serde_json::json!({ "lake": lake.identity(), "commits": lake.generation()? });
    crate::durable::write_atomic(&report_stamp(dir), stamp.to_string().as_bytes())
        .with_context(|| format!("writing {}", report_stamp(dir).display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_the_commands_flags() {
        let t: toml::Table = toml::from_str(
            "max_len = 128\nin_memory = true\nshuffle = false\nlr = 0.003\nsplit = \"tail\"",
        )
        .unwrap();
        let flags = setting_flags(&t, "train", &[]).unwrap();
        assert_eq!(
            flags,
            [
                "--in-memory",
                "--lr",
                "0.003",
                "--max-len",
                "128",
                "--split",
                "tail"
            ]
        );
        let reserved: toml::Table = toml::from_str("layers = [1]").unwrap();
        let e = setting_flags(&reserved, "train", &["layers"]).unwrap_err();
        assert!(e.to_string().contains("[train] layers"), "{e}");
    }

    /// `saerl init`'s template plans the study: 17 ingests, 74 trainings, an eval and a stats
    /// step per stage and k, the report; everything to do in an empty lake.
    #[test]
    fn the_template_plans_the_whole_study() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("saerl.toml");
        std::fs::write(&path, crate::project::TEMPLATE).unwrap();
        let project = Project::load(&path).unwrap();
        let lake = Lake::new(dir.path().join("lake"));
        let scope = Scope {
            device: "cpu".into(),
            report_dir: dir.path().join("report"),
            ..Default::default()
        };
        let steps = build(&lake, &project, &path, &scope).unwrap();
        let count = |p: Phase| steps.iter().filter(|s| s.phase == p).count();
        assert_eq!(count(Phase::Ingest), 17);
        assert_eq!(count(Phase::Train), 74);
        assert_eq!(count(Phase::Eval), 8 * 2 + 6 * 2 + 3);
        assert_eq!(count(Phase::Stats), count(Phase::Eval));
        assert_eq!(count(Phase::Report), 1);
        assert!(steps.iter().all(|s| s.state == State::ToDo));
        // A training needs its stage's ingest and the previous stage's training.
        let t = steps
            .iter()
            .find(|s| s.target == "strict/ppo_step10 layer 23 k 256")
            .unwrap();
        let needs: Vec<&str> = t.needs.iter().map(|&i| steps[i].target.as_str()).collect();
        assert_eq!(
            needs,
            [
                "strict/ppo_step10 layers 6,12,18,23",
                "strict/instruct_base layer 23 k 256"
            ]
        );
        // Stats follow the trainings their partners pair with: the other chains' SAEs of the
        // layer and k, at the same stage where a chain has it, else at its first.
        let after = |target: &str| -> Vec<&str> {
            let s = steps
                .iter()
                .find(|s| s.phase == Phase::Stats && s.target == target)
                .unwrap();
            s.after.iter().map(|&i| steps[i].target.as_str()).collect()
        };
        assert_eq!(
            after("flexible/ppo_step10 layers 23 k 256"),
            ["strict/ppo_step10 layer 23 k 256"]
        );
        let mut partners = after("strict/ppo_step50 layers 6,12,18,23 k 64");
        partners.sort();
        let mut want: Vec<String> = [6, 12, 18]
            .iter()
            .flat_map(|l| {
                [
                    format!("flexible/instruct_base layer {l} k 64"),
                    format!("kl0p025/instruct_base layer {l} k 64"),
                ]
            })
            .chain(["kl0p025/instruct_base layer 23 k 64".to_string()])
            .collect();
        want.sort();
        assert_eq!(partners, want);
        // Narrowed to a layer no chain trains: an error naming it.
        let scope = Scope {
            layers: vec![7],
            ..scope
        };
        let e = build(&lake, &project, &path, &scope).unwrap_err();
        assert!(e.to_string().contains("--layers 7"), "{e}");
    }
}
