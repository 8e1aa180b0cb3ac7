//! The lake on the object store: ingest and train give the tables a local lake gets (with two
//! writers racing for the same commits), and a writer killed in the middle of a commit leaves
//! a readable lake that a rerun completes.

use std::path::Path;

use crate::s3::{S3Env, S3Server};
use crate::{fixtures, ok, output, sae_pt, saerl};

/// The fixture model's last block (from its config.json).
fn last_layer() -> String {
    let cfg = crate::shared::read_json(&fixtures().join("tiny-qwen2/config.json"));
    (cfg["num_hidden_layers"].as_u64().unwrap() - 1).to_string()
}

/// A few GSM8k questions.
fn questions(dir: &Path) -> String {
    let src = fixtures().join("../data/gsm8k/test.jsonl");
    let text = std::fs::read_to_string(&src).unwrap();
    let path = dir.join("questions.jsonl");
    std::fs::write(&path, text.lines().take(12).collect::<Vec<_>>().join("\n")).unwrap();
    path.display().to_string()
}

fn ingest(env: &S3Env, lake: &str, data: &str, stage: &str) -> std::process::Command {
    let model = fixtures().join("tiny-qwen2");
    let args = crate::shared::ingest_args(&model, Path::new(data), stage, &last_layer(), 24, 4);
    saerl(
        env,
        lake,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

const CHECKS: &[&str] = &[
    "SELECT chain, stage, step, parent_stage FROM stages ORDER BY chain, stage",
    "SELECT chain, stage, layer, split, count(*) AS n, sum(doc_id) AS docs FROM activations GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    "SELECT chain, stage, layer, k, d_model, d_sae, init_from_stage, best_epoch, best_val_mse, b_dec FROM saes ORDER BY 1, 2, 3, 4",
    "SELECT * EXCLUDE (seconds) FROM train_log ORDER BY chain, stage, layer, k, epoch",
    "SELECT chain, stage, layer, k, feature, w_dec FROM features ORDER BY 1, 2, 3, 4, 5",
];

fn answers(env: &S3Env, lake: &str) -> Vec<String> {
    CHECKS
        .iter()
        .map(|q| ok(saerl(env, lake, &["sql", "--format", "csv", "-c", q])))
        .collect()
}

#[test]
fn ingest_and_train_on_the_object_store_give_the_local_tables() {
    let server = S3Server::start(&["study"]);
    let work = tempfile::tempdir().unwrap();
    let env = server.env(work.path().join("cache"));
    let data = questions(work.path());
    let local = work.path().join("lake").display().to_string();
    let s3 = "s3://study/runs/lake";
    let layer = last_layer();
    let train = [
        "train", "--chain", "tiny", "--layers", &layer, "--k", "4", "--d-sae", "48", "--epochs",
        "2", "--batch", "32",
    ];
    ok(ingest(&env, &local, &data, "instruct_base"));
    ok(ingest(&env, &local, &data, "ppo_step10"));
    ok(saerl(&env, &local, &train));

    // Two machines (two caches) ingest two stages into the bucket at once: both commits land,
    // and the `stages` table (rewritten by each) keeps both rows.
    let mut racers: Vec<_> = ["instruct_base", "ppo_step10"]
        .iter()
        .map(|s| {
            let mut c = ingest(
                &env.with_cache(work.path().join(format!("cache-{s}"))),
                s3,
                &data,
                s,
            );
            c.stdout(std::process::Stdio::null());
            c.stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    for r in racers.drain(..) {
        let o = r.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "a concurrent ingest failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    ok(saerl(&env, s3, &train));
    let (want, got) = (answers(&env, &local), answers(&env, s3));
    for ((q, a), b) in CHECKS.iter().zip(&want).zip(&got) {
        assert!(a.lines().count() > 1, "{q} found nothing on the local lake");
        assert_eq!(
            a, b,
            "{q}: the object-store lake differs from the local one"
        );
    }
    // A third machine with an empty cache reads the same.
    let fresh = env.with_cache(work.path().join("cache-fresh"));
    assert_eq!(answers(&fresh, s3), want);
    // The tables are plain Parquet at the local lake's paths, each file named after the commit
    // that wrote it (`c<N>-part-0.parquet`) on both; commit records live apart. A partition's
    // newest commit is what readers see: on the store, the `stages` files the racers replaced
    // stay a while beside it.
    let bucket = server.root.path().join("study/runs/lake");
    let parquet = |root: &Path| {
        let mut newest = std::collections::BTreeMap::<String, (String, Vec<String>)>::new();
        for p in crate::shared::snapshot(root).into_keys() {
            let p = p.display().to_string();
            if !p.ends_with(".parquet") || p.starts_with(['.', '_']) {
                continue;
            }
            let (dir, name) = p.rsplit_once('/').unwrap();
            let (commit, rest) = name.split_once('-').expect("c<N>-<name>");
            assert!(commit.starts_with('c'), "{p}: not named after its commit");
            let entry = newest.entry(dir.to_string()).or_default();
            if commit > entry.0.as_str() {
                *entry = (commit.to_string(), Vec::new());
            }
            if commit == entry.0 {
                entry.1.push(format!("{dir}/{rest}"));
            }
        }
        let mut v: Vec<String> = newest.into_values().flat_map(|(_, f)| f).collect();
        v.sort();
        v
    };
    assert_eq!(parquet(&bucket), parquet(Path::new(&local)));
    // Nothing is left staged once the writers are done.
    assert!(
        !bucket.join("_saerl/staging").exists()
            || crate::shared::snapshot(&bucket.join("_saerl/staging")).is_empty()
    );
}

#[test]
fn a_commit_killed_on_the_object_store_leaves_a_readable_lake() {
    const POINTS: [(&str, bool); 4] = [
        ("commit.staged", false),
        ("commit.recorded", true),
        ("commit.publish", true),
        ("commit.published", true),
    ];
    // A bucket per lake: the test server lists a bucket by walking all of it.
    let bucket = |point: &str| format!("kill-{}", point.replace('.', "-"));
    let mut buckets: Vec<String> = POINTS.iter().map(|(p, _)| bucket(p)).collect();
    buckets.push("whole".into());
    let server = S3Server::start(&buckets.iter().map(String::as_str).collect::<Vec<_>>());
    let work = tempfile::tempdir().unwrap();
    let env = server.env(work.path().join("cache"));
    let fx = sae_pt();
    let import =
        |env: &S3Env, lake: &str| saerl(env, lake, &["import", "pt", fx.to_str().unwrap()]);
    let keys = "SELECT chain, stage, layer, k, d_sae FROM saes ORDER BY 1, 2, 3, 4";
    let stages = "SELECT chain, stage, step, parent_stage FROM stages ORDER BY 1, 2";
    let read = |env: &S3Env, lake: &str| {
        [keys, stages].map(|q| ok(saerl(env, lake, &["sql", "--format", "csv", "-c", q])))
    };
    ok(import(&env, "s3://whole/lake"));
    let whole = read(&env, "s3://whole/lake");
    assert!(whole[0].lines().count() > 1);
    // Before the record: nothing was committed. From the record on: the commit is rolled
    // forward by the next reader, whatever machine it runs on.
    for (point, committed) in POINTS {
        let lake = format!("s3://{}/lake", bucket(point));
        let mut cmd = import(&env, &lake);
        cmd.env("SAERL_KILL_AT", point);
        let o = output(cmd);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            o.status.signal(),
            Some(9),
            "{point}: not killed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let other = env.with_cache(work.path().join(format!("reader-{point}")));
        let seen = read(&other, &lake);
        if committed {
            assert_eq!(
                seen, whole,
                "{point}: the committed import is not all there"
            );
        } else {
            for s in &seen {
                assert!(
                    s.lines().count() <= 1,
                    "{point}: a reader sees uncommitted rows:\n{s}"
                );
            }
        }
        // The writer's rerun completes the lake, identical to an uninterrupted import.
        ok(import(&env, &lake));
        assert_eq!(read(&other, &lake), whole, "{point}: rerun");
    }
}

#[test]
fn bad_object_store_locations_are_refused_clearly() {
    let server = S3Server::start(&["study"]);
    let work = tempfile::tempdir().unwrap();
    let env = server.env(work.path().join("cache"));
    for (lake, says) in [
        (
            "s3://study/nothing-here",
            "no lake at s3://study/nothing-here",
        ),
        ("s3://no-such-bucket/lake", "no-such-bucket"),
        ("s3:///lake", "no bucket"),
    ] {
        let o = output(saerl(&env, lake, &["sql", "-c", "SELECT 1"]));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{lake}: {err}");
        assert!(err.contains(says), "{lake}: {err}");
    }
}
