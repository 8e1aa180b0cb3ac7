//! `saerl train` on a real (demo) lake: streaming equals in-memory, an interrupted run resumes
//! to the same weights, and bad rows stop training without writing anything.

use std::path::Path;
use std::process::{Command, Output};

use saerl::lake::{Lake, PartitionKey};
use saerl::sae::rows::Rows;
use saerl::tables::read_sae;

use crate::shared::copy_dir;

pub fn saerl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_saerl"))
        .args(args)
        .output()
        .unwrap()
}

pub fn ok(args: &[&str]) -> String {
    let o = saerl(args);
    assert!(
        o.status.success(),
        "saerl {args:?}:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A private copy, under `dir`, of a demo lake (tiny model, both stages ingested, its own SAEs
/// trained) that is built once per run of this test binary.
pub fn demo_lake(dir: &Path) -> std::path::PathBuf {
    let lake = dir.join("lake");
    copy_demo_lake(&lake);
    lake
}

/// The demo's directory (project, models, lake), built once per run of this test binary.
pub fn demo_out() -> &'static Path {
    static DEMO: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DEMO.get_or_init(|| {
        let out =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sae-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        ok(&["demo", "--out", out.to_str().unwrap(), "--prompts", "40"]);
        out
    })
}

/// Copies the demo lake to `to`.
pub fn copy_demo_lake(to: &Path) {
    copy_dir(&demo_out().join("lake"), to);
}

/// `saerl train` of the demo's tiny chain at layer 2 with a small SAE, for `epochs` epochs, and
/// `extra` flags.
pub fn tiny_train(epochs: &'static str, extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec![
        "train", "--chain", "tiny", "--layers", "2", "--k", "4", "--d-sae", "48", "--batch", "32",
        "--epochs", epochs,
    ];
    args.extend(extra);
    args
}

fn key(stage: &str) -> PartitionKey {
    PartitionKey::sae("tiny", stage, 2, 4)
}

#[test]
fn streamed_batches_cover_every_row_once_and_match_memory_order() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(demo_lake(dir.path())).unwrap();
    let act = PartitionKey::layer("tiny", "instruct_base", 2);
    let small = lake.activation_rows(&act, "train", 50).unwrap();
    let d = small.d_model();
    let collect = |rows: &dyn Rows, batch: usize, seed: Option<u64>| {
        let mut out: Vec<Vec<f32>> = Vec::new();
        let mut sizes = Vec::new();
        rows.for_each_batch(batch, seed, &mut |b| {
            sizes.push(b.len() / d);
            out.extend(b.chunks(d).map(|r| r.to_vec()));
            Ok(())
        })
        .unwrap();
        (out, sizes)
    };
    let (stored, _) = collect(&small, 7, None);
    assert_eq!(stored.len(), small.len());
    assert!(small.len() > 100, "the demo should give a few hundred rows");
    // The same rows as a plain read of the partition's train split, in file order.
    let mut want = Vec::new();
    for b in lake
        .read_partition(saerl::lake::Table::Activations, &act)
        .unwrap()
    {
        use arrow::array::AsArray;
        let x = b.column_by_name("x").unwrap().as_fixed_size_list();
        let s = b.column_by_name("split").unwrap().as_string::<i32>();
        let v = x
            .values()
            .as_primitive::<arrow::datatypes::Float32Type>()
            .values();
        for i in 0..b.num_rows() {
            if s.value(i) == "train" {
                want.push(v[i * d..(i + 1) * d].to_vec());
            }
        }
    }
    assert_eq!(stored, want);
    let (shuffled, sizes) = collect(&small, 32, Some(3));
    assert!(
        sizes[..sizes.len() - 1].iter().all(|&s| s == 32),
        "{sizes:?}"
    );
    assert_ne!(shuffled, stored, "a seeded shuffle changes the order");
    let bits = |rows: &[Vec<f32>]| {
        let mut v: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| r.iter().map(|x| x.to_bits()).collect())
            .collect();
        v.sort();
        v
    };
    assert_eq!(bits(&shuffled), bits(&stored), "every row exactly once");
    assert_eq!(collect(&small, 32, Some(3)).0, shuffled, "seeded");
    let idx = [0, 5, small.len() - 1];
    let got = small.gather(&idx).unwrap();
    for (j, &i) in idx.iter().enumerate() {
        assert_eq!(&got[j * d..(j + 1) * d], &stored[i][..]);
    }
}

#[test]
fn a_split_that_fits_the_buffer_is_read_once_and_gives_the_streamed_batches() {
    let dir = tempfile::tempdir().unwrap();
    let root = demo_lake(dir.path());
    let lake = Lake::open(&root).unwrap();
    let act = PartitionKey::layer("tiny", "instruct_base", 2);
    let n = lake.activation_rows(&act, "train", 1).unwrap().len();
    let kept = lake.activation_rows(&act, "train", n).unwrap();
    let streamed = lake.activation_rows(&act, "train", n).unwrap().streaming();
    let pass =
        |rows: &dyn Rows, batch: usize, seed: Option<u64>| -> Result<Vec<Vec<f32>>, String> {
            let mut out = Vec::new();
            rows.for_each_batch(batch, seed, &mut |b| {
                out.push(b.to_vec());
                Ok(())
            })
            .map_err(|e| format!("{e:#}"))?;
            Ok(out)
        };
    let cases = [(7, None), (32, Some(3)), (32, Some(4)), (n + 5, Some(9))];
    let before: Vec<_> = cases
        .iter()
        .map(|&(batch, seed)| pass(&kept, batch, seed).unwrap())
        .collect();
    for (&(batch, seed), kept_batches) in cases.iter().zip(&before) {
        assert_eq!(
            kept_batches,
            &pass(&streamed, batch, seed).unwrap(),
            "batch {batch}, seed {seed:?}"
        );
    }
    let idx = [0, 3, n / 2, n - 1];
    assert_eq!(kept.gather(&idx).unwrap(), streamed.gather(&idx).unwrap());
    // With the lake's files gone, the kept split still gives the same passes; the streamed
    // one, which reads them on every pass, cannot.
    std::fs::remove_dir_all(&root).unwrap();
    for (&(batch, seed), kept_batches) in cases.iter().zip(&before) {
        assert_eq!(kept_batches, &pass(&kept, batch, seed).unwrap());
    }
    assert!(pass(&streamed, 32, Some(3)).is_err());
}

#[test]
fn sequential_streaming_trains_the_same_weights_as_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let a = demo_lake(dir.path());
    let b = dir.path().join("b");
    copy_dir(&a, &b);
    let run = |lake: &Path, extra: &[&str]| {
        let mut args = vec!["--lake", lake.to_str().unwrap()];
        args.extend(tiny_train("4", &["--resample-every", "2"]));
        args.extend(["--batch-order", "sequential", "--stage", "instruct_base"]);
        args.extend(extra);
        ok(&args);
        read_sae(&Lake::open(lake).unwrap(), &key("instruct_base")).unwrap()
    };
    let streamed = run(&a, &[]);
    let memory = run(&b, &["--in-memory"]);
    assert_eq!(streamed.w_enc, memory.w_enc);
    assert_eq!(streamed.w_dec, memory.w_dec);
    assert_eq!(streamed.b_pre, memory.b_pre);
}

#[test]
fn an_interrupted_chain_resumes_to_the_weights_of_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let a = demo_lake(dir.path());
    let b = dir.path().join("b");
    copy_dir(&a, &b);
    fn with_lake<'a>(lake: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--lake", lake.to_str().unwrap()];
        args.extend(tiny_train("4", &["--resample-every", "2"]));
        args.extend(extra);
        args
    }

    // Uninterrupted: both stages, shuffled batches, resampling after epoch 2.
    ok(&with_lake(&a, &[]));

    // Interrupted after 2 of 4 epochs of the first SAE (just after its resampling): nothing is
    // published, a checkpoint is left under .tmp.
    let before = crate::shared::snapshot(&b.join("saes"));
    let o = saerl(&with_lake(&b, &["--stop-after-epochs", "2"]));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("run the same command again to resume"),
        "{err}"
    );
    assert_eq!(crate::shared::snapshot(&b.join("saes")), before);
    assert!(
        b.join(".tmp").is_dir(),
        "the checkpoint is kept beside the lake"
    );

    let out = ok(&with_lake(&b, &[]));
    assert!(out.contains("resuming after epoch 2"), "{out}");
    assert!(
        !b.join(".tmp").exists(),
        "checkpoints are removed once the SAEs are in the lake"
    );
    for stage in ["instruct_base", "ppo_step10"] {
        let (x, y) = (
            read_sae(&Lake::open(&a).unwrap(), &key(stage)).unwrap(),
            read_sae(&Lake::open(&b).unwrap(), &key(stage)).unwrap(),
        );
        assert_eq!(x, y, "{stage}: resumed weights differ");
    }
    let log = |lake: &Path| {
        ok(&[
            "--lake",
            lake.to_str().unwrap(),
            "sql",
            "-c",
            "SELECT stage, epoch, train_mse, val_mse, n_dead FROM train_log WHERE k = 4 ORDER BY stage, epoch",
            "--format",
            "csv",
        ])
    };
    assert_eq!(log(&a), log(&b));
}

#[test]
fn non_finite_activations_stop_training_naming_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let lake_dir = demo_lake(dir.path());
    let lake = Lake::open(&lake_dir).unwrap();
    let d = 4;
    let n = 40;
    let mut x: Vec<f32> = (0..n * d).map(|i| (i as f32).sin()).collect();
    x[17 * d + 1] = f32::NAN;
    let val: Vec<bool> = (0..n).map(|i| i % 5 == 0).collect();
    let batch =
        saerl::lake::activation_batch(vec![0; n], (0..n as i32).collect(), vec![1; n], &val, x, d)
            .unwrap();
    let key = PartitionKey::layer("tiny", "instruct_base", 99);
    let mut txn = saerl::lake::Txn::begin(&lake, false).unwrap();
    txn.write(saerl::lake::Table::Activations, &key, &[batch])
        .unwrap();
    txn.commit().unwrap();
    let before = crate::shared::snapshot(&lake_dir);
    let o = saerl(&[
        "--lake",
        lake_dir.to_str().unwrap(),
        "train",
        "--chain",
        "tiny",
        "--stage",
        "instruct_base",
        "--layers",
        "99",
        "--k",
        "2",
        "--epochs",
        "1",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("non-finite activation in chain=tiny stage=instruct_base layer=99"),
        "{err}"
    );
    assert_eq!(
        crate::shared::snapshot(&lake_dir),
        before,
        "nothing written"
    );
}

/// The demo studies its tiny chain with `saerl run` over the project it writes; the individual
/// commands, given that project's SAEs and settings, make the same tables.
#[test]
fn the_demo_project_run_equals_the_individual_commands() {
    let out = demo_out();
    let path = out.join("saerl.toml");
    let p = saerl::project::Project::load(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake_arg = lake.to_str().unwrap().to_string();
    let project = path.to_str().unwrap().to_string();
    // A project section's settings as flags: `max_len = 128` is `--max-len 128`.
    let flags = |t: &toml::Table| -> Vec<String> {
        t.iter()
            .flat_map(|(k, v)| {
                let v = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                [format!("--{}", k.replace('_', "-")), v]
            })
            .collect()
    };
    let run = |args: Vec<String>| {
        let mut all = vec!["--lake".to_string(), lake_arg.clone()];
        all.extend(args);
        ok(&all.iter().map(String::as_str).collect::<Vec<_>>());
    };
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut chains = Vec::new();
    for (chain, c) in &p.chains {
        chains.push(format!("chain={chain}"));
        let grid = c.sae_grid(chain).unwrap();
        let mut layers: Vec<String> = grid.iter().map(|(l, _)| l.to_string()).collect();
        layers.dedup();
        for s in &c.stages {
            let mut a = words(&["ingest", "--chain", chain, "--stage", &s.name, "--project"]);
            a.extend([project.clone(), "--layers".into(), layers.join(",")]);
            a.extend(flags(&p.ingest));
            run(a);
        }
        for (l, k) in &grid {
            let mut a = words(&["train", "--chain", chain, "--layers", &l.to_string()]);
            a.extend(["--k".into(), k.to_string()]);
            a.extend(flags(&p.train));
            run(a);
        }
        let mut a = words(&["eval", "--chain", chain, "--project", &project]);
        a.extend(flags(&p.eval));
        run(a);
        run(words(&["stats", "--chain", chain]));
    }
    assert!(!chains.is_empty());
    let ours = |lake: &Path| {
        let mut c = crate::shared::contents(lake);
        c.retain(|part, _| {
            part.split(['/', ' '])
                .any(|seg| chains.iter().any(|ch| seg == ch))
        });
        c
    };
    let (want, got) = (ours(&lake), ours(&out.join("lake")));
    assert!(want.len() > 10, "{want:?}");
    let differ: Vec<&String> = want
        .iter()
        .filter(|(part, cols)| got.get(*part) != Some(cols))
        .map(|(part, _)| part)
        .collect();
    assert!(
        differ.is_empty() && got.len() == want.len(),
        "the demo's run and the individual commands differ in {differ:?}"
    );
}
