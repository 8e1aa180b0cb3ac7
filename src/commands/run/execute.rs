//! Taking the plan's steps, several at once where they are independent and the machine has
//! room: each step runs on a thread of its own as its individual command would (so a step's
//! tables are those of that command), under per-phase limits and a memory budget. A step that
//! fails stops the run at once with its error; what finished before is in the lake, and what
//! was under way resumes on the next run (every command stages its work and commits once).

use std::sync::mpsc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use clap::Parser;

use super::estimate::Rates;
use super::plan::{stamp_report, Phase, State, Step};
use super::view::View;
use crate::commands::{eval, ingest, report, stats, train};
use crate::lake::Lake;

/// How much runs at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Steps at once.
    pub jobs: usize,
    /// SAE sequences training at once (each on its own thread, and on a GPU its own stream).
    pub train_jobs: usize,
    /// Host memory the running steps' estimates may add up to (one step always may run).
    pub memory: u64,
}

/// What a finished step reports of its time beyond the total: the part that does not grow
/// with the data (loading a model or an SAE, the weight-only tables of stats, commits of tables
/// whose size d_sae fixes) and the part that grows with the eval prompts rather than the
/// activation rows (for `bench study`'s extrapolation).
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub fixed_seconds: f64,
    pub prompt_seconds: f64,
}

#[derive(Debug, Clone)]
pub struct Finished {
    pub step: usize,
    pub seconds: f64,
    /// Seconds since the run began, at the step's start and end.
    pub began: f64,
    pub ended: f64,
    pub outcome: Outcome,
}

/// Runs one step exactly as `saerl <argv>` would, on this thread.
pub fn run_step(lake: &Lake, step: &Step) -> Result<Outcome> {
    let argv = &step.argv;
    Ok(match step.phase {
        Phase::Ingest => {
            let s = ingest::run(lake, &ingest::Ingest::try_parse_from(argv)?)?;
            Outcome {
                fixed_seconds: s.load_seconds,
                prompt_seconds: 0.0,
            }
        }
        Phase::Train => {
            let s = train::run(lake, &train::TrainArgs::try_parse_from(argv)?)?;
            Outcome {
                fixed_seconds: s.fixed_seconds,
                prompt_seconds: 0.0,
            }
        }
        Phase::Eval => {
            let s = eval::run(lake, &eval::EvalArgs::try_parse_from(argv)?)?;
            Outcome {
                fixed_seconds: s.load_seconds,
                prompt_seconds: s.ce_seconds,
            }
        }
        Phase::Stats => {
            let s = stats::run(lake, &stats::StatsArgs::try_parse_from(argv)?)?;
            Outcome {
                fixed_seconds: s.fixed_seconds,
                prompt_seconds: 0.0,
            }
        }
        Phase::Report => {
            let a = report::ReportArgs::try_parse_from(argv)?;
            let started = Instant::now();
            // The report is async (DataFusion); this thread has no runtime of its own.
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(report::run(lake, &a))?;
            stamp_report(lake, &a.dir)?;
            // The saved queries read the SAEs' weights and statistics, not the activations.
            Outcome {
                fixed_seconds: started.elapsed().as_secs_f64(),
                prompt_seconds: 0.0,
            }
        }
    })
}

/// Whether step `i` may start now beside the running ones.
fn fits(steps: &[Step], i: usize, running: &[usize], limits: &Limits) -> bool {
    if running.is_empty() {
        return true;
    }
    let phase = steps[i].phase;
    let same = running.iter().filter(|&&r| steps[r].phase == phase).count();
    let cap = match phase {
        Phase::Train => limits.train_jobs,
        // One model in memory at a time per kind; the report reads everything.
        _ => 1,
    };
    let memory: u64 = running.iter().map(|&r| steps[r].est.memory).sum();
    running.len() < limits.jobs
        && same < cap
        && memory + steps[i].est.memory <= limits.memory
        && phase != Phase::Report
}

/// Runs step `s` on a thread of its own, which reports its result and seconds on `tx` (a
/// panic as an error, so the run stops with it instead of hanging).
fn spawn(lake: &Lake, s: usize, step: &Step, tx: &mpsc::Sender<Reported>) -> Result<()> {
    let (lake, step, tx) = (lake.clone(), step.clone(), tx.clone());
    std::thread::Builder::new()
        .name(format!("saerl run step {s}"))
        .spawn(move || {
            let t = Instant::now();
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_step(&lake, &step)))
                    .unwrap_or_else(|p| {
                        let what = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        Err(anyhow!("the step panicked: {what}"))
                    });
            let _ = tx.send((s, result, t.elapsed().as_secs_f64()));
        })
        .context("starting a step's thread")?;
    Ok(())
}

/// What a step's thread sends back: the step, its result and its seconds.
type Reported = (usize, Result<Outcome>, f64);

/// Takes the steps `todo` (indices into `steps`, plan order) to completion; steps outside
/// `todo` count as done. Returns each finished step's times.
pub fn execute(
    lake: &Lake,
    steps: &[Step],
    todo: &[usize],
    limits: &Limits,
    device: &str,
    rates: &mut Rates,
    view: &View,
) -> Result<Vec<Finished>> {
    let started = Instant::now();
    let mut finished = vec![true; steps.len()];
    for &i in todo {
        finished[i] = false;
    }
    let mut waiting: Vec<usize> = todo.to_vec();
    let mut running: Vec<usize> = Vec::new();
    let mut began = vec![0f64; steps.len()];
    let mut out = Vec::new();
    let (tx, rx) = mpsc::channel::<Reported>();
    loop {
        let mut i = 0;
        while i < waiting.len() {
            let s = waiting[i];
            let ready = steps[s]
                .needs
                .iter()
                .chain(&steps[s].after)
                .all(|&d| finished[d]);
            if ready && fits(steps, s, &running, limits) {
                waiting.remove(i);
                running.push(s);
                began[s] = started.elapsed().as_secs_f64();
                view.begin(s);
                spawn(lake, s, &steps[s], &tx)?;
            } else {
                i += 1;
            }
        }
        if running.is_empty() {
            if let Some(&s) = waiting.first() {
                // Nothing runs and nothing can start: a dependency outside the run is missing.
                return Err(anyhow!(
                    "{} cannot start: a step it needs is not done",
                    steps[s].target
                ));
            }
            return Ok(out);
        }
        let (s, result, seconds) = rx.recv().context("a step's thread vanished")?;
        running.retain(|&r| r != s);
        let step = &steps[s];
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                view.fail(s, seconds);
                return Err(e.context(format!(
                    "{} {} failed; the steps finished before it are in the lake, and `saerl run` resumes from there",
                    step.phase.name(),
                    step.target
                )));
            }
        };
        finished[s] = true;
        if step.state == State::ToDo {
            // A resumed step's time covers only its rest: it would overstate the rate.
            rates.record(step.phase, device, &step.est, seconds);
            rates.save().ok();
        }
        view.end(s, seconds);
        out.push(Finished {
            step: s,
            seconds,
            began: began[s],
            ended: started.elapsed().as_secs_f64(),
            outcome,
        });
        crate::fault::point("run.step");
    }
}
