//! What a new user hits first: paths and names that panicked or failed for no good reason,
//! errors that repeat or name nothing useful, numbers printed with 17 digits, saved queries
//! that cannot be one's own or take parameters, and the README's examples.

use std::path::Path;
use std::process::Command;

use crate::common::*;

fn sql_csv(lake: &Path, sql: &str) -> String {
    ok(lake, &["sql", "--format", "csv", "-c", sql])
}

#[test]
fn a_saelens_directory_imports_from_dot_and_any_stage_name_takes_a_step() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let sae = fixtures().join("interop/saelens");
    // `import saelens .` from inside the SAE's directory (it panicked on the file name of ".").
    let o = Command::new(env!("CARGO_BIN_EXE_saerl"))
        .current_dir(&sae)
        .args(["--lake", lake.to_str().unwrap(), "import", "saelens", "."])
        .args(["--chain", "c", "--stage", "ppo_step10", "--layer", "3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // A stage outside the study's naming: --step gives its step; without it, the error names
    // the stage and both fixes, after checking the file itself.
    let pt = fixtures().join("sae-pt").join(&pt_files()[0].rel);
    let single = |stage: &str, step: Option<&str>| {
        let mut args = vec![
            "import",
            "pt",
            pt.to_str().unwrap(),
            "--chain",
            "c",
            "--stage",
            stage,
            "--layer",
            "4",
        ];
        if let Some(s) = step {
            args.extend(["--step", s]);
        }
        saerl(&lake, &args)
    };
    let o = single("checkpoint-a", None);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("checkpoint-a") && err.contains("--step") && err.contains("saerl.toml"),
        "{err}"
    );
    let o = single("checkpoint-a", Some("25"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        sql_csv(
            &lake,
            "SELECT step FROM stages WHERE chain = 'c' AND stage = 'checkpoint-a'"
        ),
        "step\n25\n"
    );
    let not_pt = dir.path().join("notes.pt");
    std::fs::write(&not_pt, "not a checkpoint").unwrap();
    let o = saerl(
        &lake,
        &[
            "import",
            "pt",
            not_pt.to_str().unwrap(),
            "--chain",
            "c",
            "--stage",
            "odd",
            "--layer",
            "1",
        ],
    );
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("notes.pt") && !err.contains("step"),
        "{err}"
    );
    // A tree takes steps from the project file when the stage is declared there.
    let tree = dir.path().join("tree/sae_mine");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::copy(&pt, tree.join("sae_late_layer2.pt")).unwrap();
    let project = dir.path().join("saerl.toml");
    std::fs::write(
        &project,
        "[chains.mine]\nstages = [{ name = \"late\", step = 70 }]\n",
    )
    .unwrap();
    let tree_root = dir.path().join("tree");
    ok(
        &lake,
        &[
            "import",
            "pt",
            tree_root.to_str().unwrap(),
            "--project",
            project.to_str().unwrap(),
        ],
    );
    assert_eq!(
        sql_csv(&lake, "SELECT step FROM stages WHERE chain = 'mine'"),
        "step\n70\n"
    );
}

#[test]
fn unknown_names_get_what_exists_and_the_nearest() {
    let (_dir, lake) = imported_lake();
    let chains: Vec<String> = sql_csv(&lake, "SELECT DISTINCT chain FROM saes ORDER BY chain")
        .lines()
        .skip(1)
        .map(String::from)
        .collect();
    let chain = &chains[0];
    // A typo: the last two letters swapped.
    let mut typo: Vec<char> = chain.chars().collect();
    let n = typo.len();
    typo.swap(n - 1, n - 2);
    let typo: String = typo.into_iter().collect();
    let o = saerl(
        &lake,
        &["sql", "-c", &format!("SELECT * FROM best_match('{typo}')")],
    );
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "best_match of an unknown chain answered"
    );
    assert!(err.contains(&format!("did you mean {chain:?}")), "{err}");
    let o = saerl(&lake, &["stats", "--chain", &typo]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        chains.iter().all(|c| err.contains(c.as_str())),
        "the chains are listed: {err}"
    );
    let o = saerl(&lake, &["sql", "-c", "SELECT * FROM featurse"]);
    let err = stderr(&o);
    assert!(err.contains("did you mean \"features\""), "{err}");
    // A function's own message comes first, not after DataFusion's planning wrappers.
    let o = saerl(
        &lake,
        &["sql", "-c", "SELECT topk_encode(1.5, 'a', 'b', 1)"],
    );
    let err = stderr(&o);
    assert!(err.starts_with("error: topk_encode"), "{err}");
    // Each error once: a column typo said "No field named" three times.
    let o = saerl(&lake, &["sql", "-c", "SELECT nosuch FROM saes"]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert_eq!(err.matches("nosuch").count(), 1, "{err}");
}

#[test]
fn tables_show_six_digits_and_csv_keeps_them_all() {
    let (_dir, lake) = imported_lake();
    let q = "SELECT 1.0 / 3 AS third";
    let table = ok(&lake, &["sql", "-c", q]);
    assert!(
        table.contains("0.333333") && !table.contains("0.3333333"),
        "{table}"
    );
    let three = ok(&lake, &["sql", "--precision", "3", "-c", q]);
    assert!(
        three.contains("0.333") && !three.contains("0.3333"),
        "{three}"
    );
    let csv = sql_csv(&lake, q);
    assert!(csv.contains("0.3333333333"), "{csv}");
}

#[test]
fn saved_queries_take_parameters_and_a_report_runs_ones_own() {
    let (dir, lake) = imported_lake();
    let chains: Vec<String> = sql_csv(&lake, "SELECT DISTINCT chain FROM saes ORDER BY chain")
        .lines()
        .skip(1)
        .map(String::from)
        .collect();
    let (first, second) = (&chains[0], &chains[1]);
    let queries = dir.path().join("my-queries");
    std::fs::create_dir_all(&queries).unwrap();
    let file = queries.join("count.sql");
    std::fs::write(
        &file,
        format!(
            "-- title: SAEs of one chain\n-- chart: bar\n-- x: chain\n-- y: n\n-- param: chain = {first}\n\
             SELECT chain, count(*) AS n FROM saes WHERE chain = $chain GROUP BY chain;\n"
        ),
    )
    .unwrap();
    let count = |c: &str| {
        sql_csv(
            &lake,
            &format!("SELECT chain, count(*) AS n FROM saes WHERE chain = '{c}' GROUP BY chain"),
        )
    };
    let f = file.to_str().unwrap();
    assert_eq!(
        ok(&lake, &["sql", "--format", "csv", "-f", f]),
        count(first)
    );
    let param = format!("chain={second}");
    assert_eq!(
        ok(
            &lake,
            &["sql", "--format", "csv", "-f", f, "--param", &param]
        ),
        count(second)
    );
    let o = saerl(&lake, &["sql", "-f", f, "--param", "layer=6"]);
    assert!(
        !o.status.success() && stderr(&o).contains("no parameter \"layer\""),
        "{}",
        stderr(&o)
    );
    let png = dir.path().join("count.png");
    ok(
        &lake,
        &["plot", f, "-o", png.to_str().unwrap(), "--param", &param],
    );
    assert!(png.is_file());
    // The report runs the directory's queries, not the built-in ones.
    let out = dir.path().join("report");
    ok(
        &lake,
        &[
            "report",
            out.to_str().unwrap(),
            "--queries",
            queries.to_str().unwrap(),
            "--param",
            &param,
        ],
    );
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        page.contains("SAEs of one chain") && !page.contains("class=err"),
        "{page}"
    );
    assert!(
        !page.contains("<section id=\"quality\">"),
        "built-in queries ran too"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("count.csv")).unwrap(),
        count(second)
    );
}

#[test]
fn dot_commands_and_saved_query_text_run_from_dash_c() {
    let (_dir, lake) = imported_lake();
    let tables = ok(&lake, &["sql", "-c", ".tables"]);
    assert!(
        tables.contains("features") && tables.contains("feature_drift"),
        "{tables}"
    );
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries/kl_ratio.sql");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("--"),
        "the saved query starts with its header"
    );
    let by_c = ok(&lake, &["sql", "--format", "csv", "-c", &text]);
    let by_f = ok(
        &lake,
        &["sql", "--format", "csv", "-f", file.to_str().unwrap()],
    );
    assert_eq!(by_c, by_f);
}

/// The README's SQL examples run on a lake of the study's shape, and results that list
/// transitions list them in step order (not `ppo_step100` before `ppo_step30`).
#[test]
fn the_readme_examples_run_and_order_stages_by_step() {
    let (_dir, lake) = imported_lake();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut rest = readme.as_str();
    while let Some(start) = rest.find("```sql\n") {
        let body = &rest[start + 7..];
        let end = body.find("```").unwrap();
        blocks.push(body[..end].to_string());
        rest = &body[end..];
    }
    assert!(!blocks.is_empty(), "the README has SQL examples");
    let steps: std::collections::HashMap<(String, String), i64> =
        sql_csv(&lake, "SELECT chain, stage, step FROM stages")
            .lines()
            .skip(1)
            .map(|l| {
                let v: Vec<&str> = l.split(',').collect();
                ((v[0].to_string(), v[1].to_string()), v[2].parse().unwrap())
            })
            .collect();
    let mut checked = 0;
    for block in &blocks {
        for statement in block.split(';').map(str::trim).filter(|s| {
            s.lines()
                .any(|l| !l.trim_start().starts_with("--") && !l.trim().is_empty())
        }) {
            let csv = sql_csv(&lake, statement);
            let mut lines = csv.lines();
            let Some(first) = lines.next() else {
                continue; // no rows, no header
            };
            let head: Vec<&str> = first.split(',').collect();
            let (Some(c), Some(s)) = (
                head.iter().position(|h| *h == "chain"),
                head.iter().position(|h| *h == "stage_from"),
            ) else {
                continue;
            };
            let rows: Vec<(String, i64)> = lines
                .map(|l| {
                    let v: Vec<&str> = l.split(',').collect();
                    let key = (v[c].to_string(), v[s].to_string());
                    (key.0.clone(), steps[&key])
                })
                .collect();
            for w in rows.windows(2) {
                assert!(
                    w[0].0 != w[1].0 || w[0].1 <= w[1].1,
                    "not in step order: {statement}\n{csv}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "no README example lists transitions");
}

/// Top examples are kept per split; a lake written before the `split` column reads it as NULL
/// and `stats` says how to fix it.
#[test]
fn top_examples_say_which_split_they_come_from() {
    let (_dir, lake) = fixture_lake_copy();
    let per_split = sql_csv(
        &lake,
        "SELECT split, count(*) AS n FROM top_examples GROUP BY split ORDER BY split",
    );
    let splits: Vec<&str> = per_split
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(splits, ["train", "val"], "{per_split}");
    // A feature's val examples are val rows: each joins to a val activation.
    let wrong = sql_csv(
        &lake,
        "SELECT count(*) AS n FROM top_examples t JOIN activations a ON a.chain = t.chain AND a.stage = t.stage \
         AND a.layer = t.layer AND a.doc_id = t.doc_id AND a.pos = t.pos WHERE t.split <> a.split",
    );
    assert_eq!(wrong, "n\n0\n");
    // A top_examples file of an older saerl (no split column) reads with split NULL.
    let l = saerl::lake::Lake::open(&lake).unwrap();
    let (key, dir) = l
        .partitions(saerl::lake::Table::TopExamples)
        .unwrap()
        .remove(0);
    let file = saerl::lake::partition_files(&dir).unwrap().remove(0);
    let batches = saerl::lake::read_parquet(&file).unwrap();
    let old: Vec<arrow::array::RecordBatch> = batches
        .iter()
        .map(|b| {
            let keep: Vec<usize> = (0..b.num_columns())
                .filter(|&i| b.schema().field(i).name() != "split")
                .collect();
            b.project(&keep).unwrap()
        })
        .collect();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&file).unwrap(),
        old[0].schema(),
        None,
    )
    .unwrap();
    for b in &old {
        w.write(b).unwrap();
    }
    w.close().unwrap();
    let nulls = sql_csv(
        &lake,
        &format!(
            "SELECT count(*) AS n FROM top_examples WHERE split IS NULL AND chain = '{}'",
            key.chain
        ),
    );
    assert_ne!(nulls, "n\n0\n", "{nulls}");
    let out = ok(&lake, &["stats", "--chain", &key.chain]);
    assert!(
        out.contains("--overwrite") && out.contains("split"),
        "{out}"
    );
}

/// Files saerl keeps are written through `durable` (a unique temporary name, fsync, rename);
/// no module hand-rolls a write-then-rename with a fixed temporary name.
#[test]
fn no_hand_rolled_write_then_rename() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    // The durable module renames by design; the export and the object-store cache rename
    // whole directories and downloads they made durable first.
    let allowed = ["durable.rs", "lake/store.rs", "sae/interop.rs"];
    let mut offenders = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if allowed.contains(&rel.as_str()) || p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            if text.contains("fs::rename(") || text.contains("with_extension(\"tmp\")") {
                offenders.push(rel);
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "hand-rolled write-then-rename in {offenders:?}: use saerl::durable"
    );
}
