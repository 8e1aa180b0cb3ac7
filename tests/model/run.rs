//! `saerl run` on a project of the fixture model: its tables equal those of the individual
//! commands run one after another (several SAE sequences training at once included), its
//! `--dry-run` knows what is done, and a run killed (SIGKILL) anywhere reruns to the same
//! tables.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::shared::{contents, run_saerl, Contents};
use crate::*;

/// The project's SAEs: d_sae and the two k (small, for speed; not the fixture's).
const D_SAE: usize = 32;
const K: [usize; 2] = [4, 8];

/// The chains of the test project: two, so that partners and concurrent sequences exist.
const CHAINS: [&str; 2] = ["tiny", "other"];
const STAGES: [(&str, i64); 2] = [("instruct_base", 0), ("ppo_step10", 10)];

/// The first `n` questions of the GSM8k file `name` beside the fixtures, as JSON lines.
fn gsm8k(dir: &Path, name: &str, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(fixtures().join("../data/gsm8k").join(name)).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text.lines().take(n).collect::<Vec<_>>().join("\n")).unwrap();
    path
}

/// The layers: block 1 at both k, the fixture's last block at the first.
fn grid() -> Vec<(usize, usize)> {
    vec![(1, K[0]), (1, K[1]), (n_blocks() - 1, K[0])]
}

/// Settings of each command, as `[section]` key = value lines and as the flags they stand for.
fn settings() -> [(&'static str, Vec<(&'static str, String)>); 3] {
    [
        (
            "ingest",
            vec![
                ("max_len", max_len().to_string()),
                ("limit", "12".into()),
                ("batch", "4".into()),
            ],
        ),
        (
            "train",
            vec![
                ("d_sae", D_SAE.to_string()),
                ("epochs", "3".into()),
                ("batch", "64".into()),
                ("resample_every", "2".into()),
                // A checkpoint after every epoch, so the kill below leaves one to resume.
                ("checkpoint_every", "0".into()),
            ],
        ),
        (
            "eval",
            vec![
                // Few and short: the log-softmax over the vocabulary is most of a tiny eval.
                ("prompts", "2".into()),
                ("mean_prompts", "1".into()),
                ("max_len", "32".into()),
            ],
        ),
    ]
}

fn flags(section: &str) -> Vec<String> {
    settings()
        .into_iter()
        .find(|(s, _)| *s == section)
        .unwrap()
        .1
        .into_iter()
        .flat_map(|(k, v)| [format!("--{}", k.replace('_', "-")), v])
        .collect()
}

/// A project directory: saerl.toml (every stage on the fixture model) and its prompt files.
fn project(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let (train, test) = (gsm8k(dir, "train.jsonl", 12), gsm8k(dir, "test.jsonl", 4));
    let mut t = format!("[data]\ntrain = {train:?}\ntest = {test:?}\n");
    for (section, kv) in settings() {
        t += &format!("\n[{section}]\n");
        for (k, v) in kv {
            t += &format!("{k} = {v}\n");
        }
    }
    let mut saes = std::collections::BTreeMap::<usize, Vec<usize>>::new();
    for (l, k) in grid() {
        saes.entry(l).or_default().push(k);
    }
    let saes: Vec<String> = saes.iter().map(|(l, ks)| format!("{l} = {ks:?}")).collect();
    for c in CHAINS {
        t += &format!(
            "\n[chains.{c}]\nsaes = {{ {} }}\nstages = [\n",
            saes.join(", ")
        );
        for (s, step) in STAGES {
            t += &format!(
                "  {{ name = \"{s}\", step = {step}, model = {:?} }},\n",
                tiny()
            );
        }
        t += "]\n";
    }
    let path = dir.join("saerl.toml");
    std::fs::write(&path, t).unwrap();
    path
}

fn ok(lake: &Path, args: &[&str]) -> String {
    let o = run_saerl(lake, args, None);
    assert!(
        o.status.success(),
        "saerl {args:?}:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The study by the individual commands, one after another: ingest every stage, train every
/// SAE sequence, then eval and stats of every chain. Built once per run of this binary.
fn by_hand() -> &'static (tempfile::TempDir, Contents) {
    // Built once, read by every caller: each of them is a fixture reader.
    fixtures();
    static BUILT: OnceLock<(tempfile::TempDir, Contents)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let p = project(&dir.path().join("project"));
        let p = p.to_str().unwrap();
        let lake = dir.path().join("lake");
        let layers: Vec<String> = grid().iter().map(|(l, _)| l.to_string()).collect();
        let mut layers = layers.clone();
        layers.dedup();
        for c in CHAINS {
            for (s, _) in STAGES {
                let mut args = vec!["ingest", "--chain", c, "--stage", s, "--project", p];
                let l = layers.join(",");
                args.extend(["--layers", &l]);
                let f = flags("ingest");
                args.extend(f.iter().map(String::as_str));
                ok(&lake, &args);
            }
        }
        for c in CHAINS {
            for (l, k) in grid() {
                let (l, k) = (l.to_string(), k.to_string());
                let mut args = vec!["train", "--chain", c, "--layers", &l, "--k", &k];
                let f = flags("train");
                args.extend(f.iter().map(String::as_str));
                ok(&lake, &args);
            }
        }
        for c in CHAINS {
            let mut args = vec!["eval", "--chain", c, "--project", p];
            let f = flags("eval");
            args.extend(f.iter().map(String::as_str));
            ok(&lake, &args);
            ok(&lake, &["stats", "--chain", c]);
        }
        let want = contents(&lake);
        (dir, want)
    })
}

/// The statuses of the dry-run's table, per phase: (done, to do, resumes).
fn statuses(plan: &str) -> std::collections::BTreeMap<String, [usize; 3]> {
    let mut out = std::collections::BTreeMap::new();
    for line in plan.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() < 3 || w[0].parse::<usize>().is_err() {
            continue;
        }
        let e = out.entry(w[1].to_string()).or_insert([0; 3]);
        if line.contains("  done") {
            e[0] += 1;
        } else if line.contains("  to do") {
            e[1] += 1;
        } else if line.contains("  resumes") {
            e[2] += 1;
        }
    }
    out
}

fn assert_same(got: &Contents, want: &Contents, what: &str) {
    let differ: Vec<&String> = want
        .iter()
        .filter(|(part, cols)| got.get(*part) != Some(cols))
        .map(|(part, _)| part)
        .collect();
    assert!(
        differ.is_empty() && got.len() == want.len(),
        "{what}: tables differ from the individual commands' in {differ:?} ({} partitions against {})",
        got.len(),
        want.len()
    );
}

#[test]
fn run_equals_the_individual_commands_and_its_plan_knows_what_is_done() {
    let want = &by_hand().1;
    let dir = tempfile::tempdir().unwrap();
    let p = project(&dir.path().join("project"));
    let p = p.to_str().unwrap();
    let lake = dir.path().join("lake");
    let report = dir.path().join("report");
    let r = report.to_str().unwrap();
    let n_saes = CHAINS.len() * STAGES.len() * grid().len();
    let n_stages = CHAINS.len() * STAGES.len();

    let plan = ok(&lake, &["run", "--project", p, "--report", r, "--dry-run"]);
    let s = statuses(&plan);
    assert_eq!(s["ingest"], [0, n_stages, 0], "{plan}");
    assert_eq!(s["train"], [0, n_saes, 0], "{plan}");
    assert_eq!(s["report"], [0, 1, 0], "{plan}");
    assert!(
        !lake.join("activations").exists(),
        "a dry run wrote to the lake"
    );

    // Only the ingests: the plan then shows them done and the rest to do.
    ok(
        &lake,
        &["run", "--project", p, "--report", r, "--only", "ingest"],
    );
    let s = statuses(&ok(
        &lake,
        &["run", "--project", p, "--report", r, "--dry-run"],
    ));
    assert_eq!(s["ingest"], [n_stages, 0, 0]);
    assert_eq!(s["train"], [0, n_saes, 0]);
    // Training needs nothing more; stats alone would need the SAEs.
    let o = run_saerl(
        &lake,
        &["run", "--project", p, "--report", r, "--only", "stats"],
        None,
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not done and not in this run"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The rest, with every SAE sequence of the project training at once.
    let out = ok(
        &lake,
        &[
            "run",
            "--project",
            p,
            "--report",
            r,
            "--train-jobs",
            "6",
            "--jobs",
            "6",
        ],
    );
    assert!(out.contains("CPU utilisation"), "{out}");
    assert_same(&contents(&lake), want, "saerl run");
    assert!(report.join("report.html").is_file());
    let plan = ok(&lake, &["run", "--project", p, "--report", r, "--dry-run"]);
    for (phase, st) in statuses(&plan) {
        assert_eq!(
            st[1] + st[2],
            0,
            "{phase} left to do after a complete run:\n{plan}"
        );
    }
    // A rerun takes no step and changes nothing.
    let before = crate::shared::snapshot(&lake);
    let out = ok(&lake, &["run", "--project", p, "--report", r]);
    assert!(out.contains("0 steps to take"), "{out}");
    assert_eq!(crate::shared::snapshot(&lake), before);
}

#[test]
fn a_killed_run_reruns_to_the_same_tables() {
    use std::os::unix::process::ExitStatusExt;
    let want = &by_hand().1;
    let dir = tempfile::tempdir().unwrap();
    let p = project(&dir.path().join("project"));
    let p = p.to_str().unwrap();
    let r = dir.path().join("report");
    let r = r.to_str().unwrap();
    // Killed between two steps, and in the middle of a training (its checkpoint left behind).
    for point in ["run.step:5", "train.epoch:4"] {
        let lake = dir.path().join(point.replace(':', "-"));
        let args = ["run", "--project", p, "--report", r];
        let o = run_saerl(&lake, &args, Some(point));
        assert_eq!(
            o.status.signal(),
            Some(9),
            "{point}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let plan = ok(&lake, &["run", "--project", p, "--report", r, "--dry-run"]);
        let s = statuses(&plan);
        assert!(
            s["ingest"][0] > 0,
            "{point}: nothing shows done after the kill:\n{plan}"
        );
        if point.starts_with("train.epoch") {
            assert!(
                s["train"][2] >= 1,
                "{point}: the interrupted training should resume:\n{plan}"
            );
        }
        ok(&lake, &args);
        assert_same(
            &contents(&lake),
            want,
            &format!("rerun after a kill at {point}"),
        );
    }
}
