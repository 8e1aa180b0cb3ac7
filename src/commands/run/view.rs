//! One progress view for a whole run: the steps done and to do with the run's ETA, the running
//! steps' own bars (the commands' bars join this view), a line per finished step; and the CPU
//! this process used, sampled a few times a second and booked to whichever phases were running,
//! for the summary's utilisation per phase.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::plan::{Phase, Step};

/// Wall and CPU seconds while one set of phases was running.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub wall: f64,
    pub cpu: f64,
}

struct Live {
    /// Running steps: index, phase, target, start.
    running: Vec<(usize, Phase, String, Instant)>,
    /// Per set of running phases ("ingest + train").
    usage: BTreeMap<String, Usage>,
    done: usize,
    /// Per phase, seconds taken and estimated by its finished steps that had an estimate.
    taken: BTreeMap<Phase, (f64, f64)>,
    /// Every finished step's seconds.
    busy: f64,
    /// Every step's phase and estimated seconds (None: unknown).
    phase: Vec<Phase>,
    est: Vec<Option<f64>>,
    finished: Vec<bool>,
}

pub struct View {
    multi: MultiProgress,
    overall: ProgressBar,
    live: Arc<Mutex<Live>>,
    stop: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
    started: Instant,
    steps: Vec<(Phase, String)>,
    total: usize,
    jobs: usize,
    tty: bool,
}

/// This process's CPU seconds (user + system, every thread).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `u` outlives the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

pub fn duration(s: f64) -> String {
    if s < 9.95 {
        return format!("{:.1}s", s.max(0.0));
    }
    let s = s.round() as u64;
    match s {
        10..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

impl Live {
    /// The run's remaining time: the estimates of what is left, each corrected by how its
    /// phase's finished steps compared with theirs, over the parallelism reached so far.
    fn eta(&self, elapsed: f64, jobs: usize) -> Option<f64> {
        let now = Instant::now();
        let mut left = 0.0;
        for (i, e) in self.est.iter().enumerate() {
            if self.finished[i] {
                continue;
            }
            let e = (*e)?;
            let ran = self
                .running
                .iter()
                .find(|r| r.0 == i)
                .map_or(0.0, |r| now.duration_since(r.3).as_secs_f64());
            left += (e * self.correction(self.phase[i]) - ran).max(0.0);
        }
        let running: f64 = self
            .running
            .iter()
            .map(|r| now.duration_since(r.3).as_secs_f64())
            .sum();
        let parallel = match elapsed > 1.0 {
            true => ((self.busy + running) / elapsed).clamp(1.0, jobs.max(1) as f64),
            false => 1.0,
        };
        Some(left / parallel)
    }

    /// Taken over estimated seconds: the phase's own finished steps', else (before any finished)
    /// every phase's. Not the report's: its estimate is seconds already, not operations at a
    /// measured rate, so other phases' ratios say nothing of it.
    fn correction(&self, phase: Phase) -> f64 {
        let ratio = |(taken, est): (f64, f64)| (est > 0.0).then(|| taken / est);
        let all = || {
            let sum = self
                .taken
                .values()
                .fold((0.0, 0.0), |a, t| (a.0 + t.0, a.1 + t.1));
            ratio(sum).filter(|_| phase != Phase::Report)
        };
        self.taken
            .get(&phase)
            .and_then(|t| ratio(*t))
            .or_else(all)
            .unwrap_or(1.0)
    }

    fn phases(&self) -> String {
        let mut p: Vec<Phase> = self.running.iter().map(|r| r.1).collect();
        p.sort();
        p.dedup();
        match p.is_empty() {
            true => "between steps".into(),
            false => p.iter().map(|p| p.name()).collect::<Vec<_>>().join(" + "),
        }
    }
}

impl View {
    /// A view of `todo` (indices into `steps`) with their estimated seconds; the commands'
    /// progress bars join it until `close`.
    pub fn new(steps: &[Step], todo: &[usize], est: Vec<Option<f64>>, jobs: usize) -> Self {
        let multi = MultiProgress::new();
        let tty = !multi.is_hidden();
        let overall = multi.add(ProgressBar::new(todo.len() as u64));
        overall.set_style(
            ProgressStyle::with_template("run [{bar:30}] {pos}/{len} steps · {elapsed} · {msg}")
                .unwrap()
                .progress_chars("=> "),
        );
        let mut finished = vec![true; steps.len()];
        todo.iter().for_each(|&i| finished[i] = false);
        let live = Arc::new(Mutex::new(Live {
            running: Vec::new(),
            usage: BTreeMap::new(),
            done: 0,
            taken: BTreeMap::new(),
            busy: 0.0,
            phase: steps.iter().map(|s| s.phase).collect(),
            est,
            finished,
        }));
        crate::commands::attach_view(Some(multi.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let sampler = {
            let (live, stop, overall) = (live.clone(), stop.clone(), overall.clone());
            std::thread::spawn(move || {
                let (mut t, mut c) = (Instant::now(), cpu_seconds());
                let mut tick = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    let (t2, c2) = (Instant::now(), cpu_seconds());
                    let mut l = live.lock().unwrap();
                    let key = l.phases();
                    let u = l.usage.entry(key).or_default();
                    u.wall += t2.duration_since(t).as_secs_f64();
                    u.cpu += c2 - c;
                    (t, c) = (t2, c2);
                    tick += 1;
                    if tick.is_multiple_of(5) {
                        overall.set_message(message(&l, started.elapsed().as_secs_f64(), jobs));
                    }
                }
            })
        };
        Self {
            multi,
            overall,
            live,
            stop,
            sampler: Some(sampler),
            started,
            steps: steps.iter().map(|s| (s.phase, s.target.clone())).collect(),
            total: todo.len(),
            jobs,
            tty,
        }
    }

    fn line(&self, text: String) {
        match self.tty {
            true => {
                let _ = self.multi.println(text);
            }
            false => println!("{text}"),
        }
    }

    pub fn begin(&self, i: usize) {
        let (phase, target) = &self.steps[i];
        let mut l = self.live.lock().unwrap();
        l.running.push((i, *phase, target.clone(), Instant::now()));
        self.overall
            .set_message(message(&l, self.started.elapsed().as_secs_f64(), self.jobs));
        drop(l);
        if !self.tty {
            println!("run: {} {target} ...", phase.name());
        }
    }

    fn settle(&self, i: usize, seconds: f64) -> (usize, Option<f64>) {
        let mut l = self.live.lock().unwrap();
        l.running.retain(|r| r.0 != i);
        l.finished[i] = true;
        l.done += 1;
        l.busy += seconds;
        if let Some(e) = l.est[i] {
            let phase = l.phase[i];
            let t = l.taken.entry(phase).or_default();
            *t = (t.0 + seconds, t.1 + e);
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        self.overall.set_message(message(&l, elapsed, self.jobs));
        (l.done, l.eta(elapsed, self.jobs))
    }

    pub fn end(&self, i: usize, seconds: f64) {
        let (done, eta) = self.settle(i, seconds);
        self.overall.inc(1);
        let (phase, target) = &self.steps[i];
        let eta = eta.map_or("?".into(), duration);
        self.line(format!(
            "run: [{done}/{}] {} {target}: done in {} (run ETA {eta})",
            self.total,
            phase.name(),
            duration(seconds)
        ));
    }

    pub fn fail(&self, i: usize, seconds: f64) {
        self.settle(i, seconds);
        let (phase, target) = &self.steps[i];
        self.line(format!(
            "run: {} {target}: failed after {}",
            phase.name(),
            duration(seconds)
        ));
    }

    /// Stops sampling and detaches the commands' bars; the CPU use per set of phases.
    pub fn close(mut self) -> BTreeMap<String, Usage> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.sampler.take() {
            let _ = s.join();
        }
        self.overall.finish_and_clear();
        crate::commands::attach_view(None);
        let mut usage = self.live.lock().unwrap().usage.clone();
        usage.retain(|_, u| u.wall > 0.0);
        usage
    }
}

fn message(l: &Live, elapsed: f64, jobs: usize) -> String {
    let eta = l.eta(elapsed, jobs).map_or("?".into(), duration);
    let running: Vec<String> = l
        .running
        .iter()
        .map(|r| format!("{} {}", r.1.name(), r.2))
        .collect();
    format!("ETA {eta} · {}", running.join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trainings that took ten times their estimate say nothing of the report's estimate (in
    /// seconds), and a phase's own ratio wins over every phase's.
    #[test]
    fn each_phase_is_corrected_by_its_own_finished_steps() {
        let phase = vec![Phase::Train, Phase::Train, Phase::Eval, Phase::Report];
        let mut l = Live {
            running: Vec::new(),
            usage: BTreeMap::new(),
            done: 1,
            taken: BTreeMap::from([(Phase::Train, (10.0, 1.0))]),
            busy: 10.0,
            phase,
            est: vec![Some(1.0), Some(1.0), Some(2.0), Some(10.0)],
            finished: vec![true, false, false, false],
        };
        // Train 1 s × 10, eval 2 s × 10 (no eval finished: every phase's ratio), report 10 s.
        let eta = l.eta(10.0, 2).unwrap();
        assert!((eta - 40.0).abs() < 1e-9, "{eta}");
        // An eval that took half its estimate: eval now by its own ratio.
        l.taken.insert(Phase::Eval, (1.0, 2.0));
        l.finished[2] = true;
        l.busy = 11.0;
        l.est.push(Some(4.0));
        l.phase.push(Phase::Eval);
        l.finished.push(false);
        let eta = l.eta(11.0, 2).unwrap();
        assert!((eta - 22.0).abs() < 1e-9, "{eta}");
    }
}
