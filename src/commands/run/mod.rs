//! `saerl run`: the whole study that `saerl.toml` declares, in one command (DESIGN.md, "The
//! whole study"). The plan (`plan.rs`) lists every step as the individual command that takes
//! it; `--dry-run` prints it with what is done, the disk each step adds and its estimated time
//! (`estimate.rs`); otherwise the steps not yet done run, several at once where they are
//! independent (`execute.rs`), under one progress view (`view.rs`), and a summary closes.

mod estimate;
mod execute;
mod plan;
mod view;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};

pub use execute::Finished;
pub use plan::{Phase, State, Step};
pub use view::{duration, Usage};

use crate::lake::Lake;
use crate::project::Project;
use estimate::{Rates, Source};

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub project: crate::commands::args::ProjectArg,
    /// Print the plan (every step, whether it is done, the disk it adds, its estimated time)
    /// and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: also print each step's command (what the run executes).
    #[arg(long)]
    pub commands: bool,
    /// Only the steps of this phase (repeatable); the steps they need must be done already.
    #[arg(long, value_enum)]
    pub only: Vec<Phase>,
    /// Only this chain (repeatable; default every chain of the project).
    #[arg(long)]
    pub chain: Vec<String>,
    /// Only these layers (comma-separated; default every layer a chain's `saes` names).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<i32>,
    #[command(flatten)]
    pub device: crate::commands::args::DeviceArg,
    /// Steps running at once (default: 2 on the CPU, e.g. an ingest beside a training; 16 on a
    /// GPU).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// SAE sequences (chain × layer × k) training at once, each on its own thread and, on a
    /// GPU, its own stream (default: 2 on the CPU, 16 on a GPU).
    #[arg(long)]
    pub train_jobs: Option<usize>,
    /// Where the report goes.
    #[arg(long, default_value = "report")]
    pub report: PathBuf,
}

/// What a run did, for callers that report on it (the demo, `bench study`).
pub struct RunSummary {
    pub steps: Vec<Step>,
    pub finished: Vec<Finished>,
    /// CPU use per set of phases running together.
    pub usage: BTreeMap<String, Usage>,
    pub wall: f64,
}

pub fn run(lake: &Lake, a: &RunArgs) -> Result<()> {
    study(lake, a).map(|_| ())
}

/// Host memory available now (MemAvailable), or 8 GiB when it cannot be read.
fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(8 << 30, |kb| kb * 1024)
}

/// Plans the project's study and, unless `--dry-run`, runs what is not done.
pub fn study(lake: &Lake, a: &RunArgs) -> Result<Option<RunSummary>> {
    if !a.dry_run {
        lake.recover()?;
    }
    a.device.open()?;
    let project = Project::load(&a.project)?;
    let scope = plan::Scope {
        only: a.only.clone(),
        chains: a.chain.clone(),
        layers: a.layers.clone(),
        device: a.device.name().to_string(),
        report_dir: a.report.clone(),
    };
    let steps = plan::build(lake, &project, &a.project, &scope)?;
    let todo: Vec<usize> = (0..steps.len())
        .filter(|&i| scope.includes(steps[i].phase) && steps[i].state != State::Done)
        .collect();
    let mut rates = Rates::load(lake);
    let times: Vec<Option<(f64, Source)>> = steps
        .iter()
        .map(|s| rates.seconds(s.phase, a.device.name(), &s.est))
        .collect();
    if a.dry_run {
        print_plan(lake, a, &steps, &todo, &times);
        return Ok(None);
    }
    for &i in &todo {
        for &d in &steps[i].needs {
            if !todo.contains(&d) && steps[d].state != State::Done {
                bail!(
                    "{} {} needs {} {}, which is not done and not in this run: run it first (`saerl run --only {1}`), or drop --only",
                    steps[i].phase.name(),
                    steps[i].target,
                    steps[d].phase.name(),
                    steps[d].target
                );
            }
        }
    }
    let cpu = *a.device == crate::commands::args::Device::Cpu;
    let jobs = a.jobs.unwrap_or(if cpu { 2 } else { 16 }).max(1);
    let limits = execute::Limits {
        jobs,
        // Two trainings fill each other's gaps (checkpoints, reads) on the CPU: 1.45× at the
        // study's shape on 2 cores.
        train_jobs: a.train_jobs.unwrap_or(if cpu { 2 } else { 16 }).max(1),
        memory: available_memory() / 10 * 8,
    };
    let skipped = steps.len() - todo.len();
    println!(
        "run: {} steps to take, {skipped} done already or outside --only/--chain/--layers ({} at once, {} training at once; `saerl run --dry-run` shows the plan)",
        todo.len(),
        limits.jobs,
        limits.train_jobs
    );
    let est: Vec<Option<f64>> = times.iter().map(|t| t.map(|(s, _)| s)).collect();
    let view = view::View::new(&steps, &todo, est, jobs);
    let started = std::time::Instant::now();
    let result = execute::execute(
        lake,
        &steps,
        &todo,
        &limits,
        a.device.name(),
        &mut rates,
        &view,
    );
    let usage = view.close();
    let summary = RunSummary {
        finished: result.as_ref().map(|f| f.clone()).unwrap_or_default(),
        steps,
        usage,
        wall: started.elapsed().as_secs_f64(),
    };
    print_summary(&summary, skipped);
    result?;
    Ok(Some(summary))
}

fn bytes(b: u64) -> String {
    let b = b as f64;
    match b {
        _ if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        _ if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        _ if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        _ => format!("{b:.0} B"),
    }
}

fn print_plan(
    lake: &Lake,
    a: &RunArgs,
    steps: &[Step],
    todo: &[usize],
    times: &[Option<(f64, Source)>],
) {
    println!(
        "plan of {} over the lake {} (device {}): {} steps, {} to do",
        a.project.display(),
        lake.location(),
        a.device,
        steps.len(),
        todo.len()
    );
    print_table(
        ["#", "phase", "target", "status", "disk", "time (est.)"],
        &plan_rows(steps, todo, times),
    );
    print_totals(lake, steps, todo, times);
    if a.commands {
        println!("commands:");
        for &i in todo {
            println!(
                "  saerl --lake {} {}",
                lake.location(),
                steps[i].argv.join(" ")
            );
        }
    }
}

/// One row per step: number, phase, target, status, disk and time it will take.
fn plan_rows(steps: &[Step], todo: &[usize], times: &[Option<(f64, Source)>]) -> Vec<[String; 6]> {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let status = match (&s.state, todo.contains(&i)) {
                (State::Done, _) => "done".to_string(),
                (_, false) => "not in this run".to_string(),
                (State::ToDo, true) => "to do".to_string(),
                (State::Resumes(how), true) => format!("resumes {how}"),
            };
            let (disk, time) = match s.state {
                State::Done => ("-".into(), "-".into()),
                _ => (
                    s.est.disk.map_or("?".into(), bytes),
                    match times[i] {
                        Some((t, Source::Measured)) => duration(t),
                        Some((t, Source::Calibrated)) => format!("{}*", duration(t)),
                        None => "?".into(),
                    },
                ),
            };
            [
                (i + 1).to_string(),
                s.phase.name().into(),
                s.target.clone(),
                status,
                disk,
                time,
            ]
        })
        .collect()
}

/// The plan's table, columns padded to their widest cell (numbers right-aligned).
fn print_table(head: [&str; 6], rows: &[[String; 6]]) {
    let width: Vec<usize> = (0..6)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([head[c].len()])
                .max()
                .unwrap()
        })
        .collect();
    let line = |r: &[String]| {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, v)| match c {
                0 | 4 | 5 => format!("{v:>w$}", w = width[c]),
                _ => format!("{v:<w$}", w = width[c]),
            })
            .collect();
        println!("  {}", cells.join("  ").trim_end());
    };
    line(&head.map(String::from));
    rows.iter().for_each(|r| line(r));
}

/// Totals of what is to do, per phase and in all, with what the estimates rest on.
fn print_totals(lake: &Lake, steps: &[Step], todo: &[usize], times: &[Option<(f64, Source)>]) {
    let mut unknown = false;
    let mut calibrated = false;
    let mut per_phase = Vec::new();
    for p in Phase::ALL {
        let mine: Vec<usize> = todo
            .iter()
            .copied()
            .filter(|&i| steps[i].phase == p)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let disk: u64 = mine.iter().filter_map(|&i| steps[i].est.disk).sum();
        let time: f64 = mine.iter().filter_map(|&i| times[i].map(|t| t.0)).sum();
        unknown |= mine
            .iter()
            .any(|&i| times[i].is_none() || steps[i].est.disk.is_none() && p != Phase::Report);
        calibrated |= mine
            .iter()
            .any(|&i| matches!(times[i], Some((_, Source::Calibrated))));
        per_phase.push((p, mine.len(), disk, time));
    }
    println!("to do:");
    for (p, n, disk, time) in &per_phase {
        println!(
            "  {:<7} {n:>4} steps  +{:>9}  {:>8}",
            p.name(),
            bytes(*disk),
            duration(*time)
        );
    }
    let (n, disk, time) = per_phase
        .iter()
        .fold((0, 0, 0.0), |(n, d, t), p| (n + p.1, d + p.2, t + p.3));
    println!(
        "  {:<7} {n:>4} steps  +{:>9}  {:>8} of step time (steps overlap when they run; estimates)",
        "total",
        bytes(disk),
        duration(time)
    );
    if calibrated {
        println!("  * estimated from a GEMM calibration: no step of that phase has run on this machine yet (rates are kept in {})", Rates::path(lake).display());
    }
    if unknown {
        println!(
            "  ? unknown: a model directory or prompt file of the project is not on this machine"
        );
    }
}

fn print_summary(s: &RunSummary, skipped: usize) {
    println!(
        "run: {} steps in {} ({skipped} done before or outside the run)",
        s.finished.len(),
        duration(s.wall)
    );
    for p in Phase::ALL {
        let mine: Vec<&Finished> = s
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
        println!(
            "  {:<7} {:>4} steps  {:>8} of step time, {:>8} from its first start to its last end",
            p.name(),
            mine.len(),
            duration(busy),
            duration(span)
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if !s.usage.is_empty() {
        println!("  CPU utilisation ({cores} cores) by what was running:");
        let mut usage: Vec<(&String, &Usage)> = s.usage.iter().collect();
        usage.sort_by(|a, b| b.1.wall.total_cmp(&a.1.wall));
        for (what, u) in usage {
            println!(
                "    {what:<22} {:>8}  {:.2} cores busy ({:.0} %)",
                duration(u.wall),
                u.cpu / u.wall,
                100.0 * u.cpu / u.wall / cores
            );
        }
    }
}
