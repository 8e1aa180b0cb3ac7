//! Sessions that trust the lake: a long session sees every commit (tables, transitions, the
//! drift provider and `topk_encode`'s SAEs), results keep the ORDER BY the statement asked
//! for, a directory that is not a lake is refused, and the demo never clears what it did not
//! make.

use std::path::Path;

use crate::common::*;

fn scalar(ctx: &datafusion::prelude::SessionContext, sql: &str) -> String {
    let batches = saerl::sql::blocking::run_sql(ctx, sql).unwrap();
    let mut out = Vec::new();
    saerl::sql::print_batches(&batches, saerl::sql::Format::Csv, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn a_long_session_sees_every_commit() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    let ctx = session(&lake);
    let count = "SELECT count(*) AS n FROM saes";
    assert_eq!(scalar(&ctx, count), "n\n0\n");

    // Two SAEs of the same shape and k, imported in turn at one key.
    let files = pt_files();
    let a = &files[0];
    let b = files
        .iter()
        .find(|f| f.rel != a.rel && f.k == a.k && f.d_sae == a.d_sae)
        .expect("two SAEs of one shape in the fixture");
    let import = |f: &crate::shared::PtFile, overwrite: bool| {
        let path = fixtures().join("sae-pt").join(&f.rel);
        let mut args = vec![
            "import",
            "pt",
            path.to_str().unwrap(),
            "--chain",
            "probe",
            "--stage",
            "instruct_base",
            "--layer",
            "1",
        ];
        if overwrite {
            args.push("--overwrite");
        }
        ok(&lake, &args);
    };
    import(a, false);
    assert_eq!(
        scalar(&ctx, count),
        "n\n1\n",
        "a table empty at start fills"
    );

    // topk_encode's SAE cache follows the lake: the same input encodes with the new weights.
    let encode = "SELECT topk_encode(w_enc, 'probe', 'instruct_base', 1) AS z FROM features \
                  WHERE chain = 'probe' AND feature = 0";
    let before = scalar(&ctx, encode);
    import(b, true);
    let after = scalar(&ctx, encode);
    assert_ne!(before, after, "topk_encode still used the replaced SAE");

    // Transitions and feature_drift see chains imported after the session opened.
    let n_trans = "SELECT count(*) AS n FROM sae_transitions";
    let n_drift = "SELECT count(*) AS n FROM feature_drift";
    assert_eq!(scalar(&ctx, n_trans), "n\n0\n");
    ok(
        &lake,
        &["import", "pt", fixtures().join("sae-pt").to_str().unwrap()],
    );
    assert_ne!(scalar(&ctx, n_trans), "n\n0\n");
    assert_ne!(scalar(&ctx, n_drift), "n\n0\n");
    assert_eq!(scalar(&ctx, count), format!("n\n{}\n", files.len() + 1));
}

#[test]
fn order_by_keys_survive_a_one_to_many_join() {
    let (_dir, lake) = imported_lake();
    let ctx = session(&lake);
    // The reported statement: steps must descend within each chain.
    let sql = "WITH e AS (SELECT chain, min(step) m FROM stages GROUP BY chain) \
               SELECT e.chain, s.stage, s.step, count(*) n FROM e JOIN stages s ON s.chain = e.chain \
               GROUP BY e.chain, s.stage, s.step ORDER BY e.chain, s.step DESC";
    let csv = scalar(&ctx, sql);
    let rows: Vec<(String, i64)> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let v: Vec<&str> = l.split(',').collect();
            (v[0].to_string(), v[2].parse().unwrap())
        })
        .collect();
    assert!(rows.len() > 2, "{csv}");
    for w in rows.windows(2) {
        assert!(
            w[0].0 < w[1].0 || (w[0].0 == w[1].0 && w[0].1 > w[1].1),
            "not ordered by chain, step DESC:\n{csv}"
        );
    }
    let plan = scalar(&ctx, &format!("EXPLAIN {sql}"));
    assert!(
        plan.contains("s.step DESC"),
        "the sort keeps both keys:\n{plan}"
    );
    // Under LIMIT: the top b_enc per chain and stage, against the same computed by hand.
    let top = "SELECT c.chain, f.stage, max(f.b_enc) AS mx FROM (SELECT chain FROM saes GROUP BY chain) c \
               JOIN features f ON f.chain = c.chain GROUP BY c.chain, f.stage ORDER BY c.chain, mx DESC LIMIT 3";
    let all = scalar(
        &ctx,
        "SELECT chain, stage, max(b_enc) AS mx FROM features GROUP BY chain, stage",
    );
    let mut want: Vec<(String, String, f64)> = all
        .lines()
        .skip(1)
        .map(|l| {
            let v: Vec<&str> = l.split(',').collect();
            (v[0].into(), v[1].into(), v[2].parse().unwrap())
        })
        .collect();
    want.sort_by(|a, b| a.0.cmp(&b.0).then(b.2.total_cmp(&a.2)));
    let got: Vec<String> = scalar(&ctx, top)
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().to_string())
        .collect();
    let want: Vec<String> = want.iter().take(3).map(|w| w.1.clone()).collect();
    assert_eq!(got, want);
}

#[test]
fn a_directory_that_is_not_a_lake_is_refused_and_left_alone() {
    let (dir, lake) = imported_lake();
    // --lake one level too high: an error naming it and the lake below, and no .locks/ there.
    let parent = dir.path();
    std::fs::write(parent.join("notes.txt"), "mine").unwrap();
    let before = snapshot(parent);
    let o = saerl(parent, &["sql", "-c", "SELECT count(*) FROM saes"]);
    assert!(
        !o.status.success(),
        "a non-lake directory was read as a lake"
    );
    let err = stderr(&o);
    assert!(err.contains("is not a saerl lake"), "{err}");
    assert!(
        err.contains(lake.to_str().unwrap()),
        "the lake below is named: {err}"
    );
    assert!(
        !parent.join(".locks").exists(),
        "a reader created .locks/ outside a lake"
    );
    // Writers refuse it too, before creating anything.
    let pt = fixtures().join("sae-pt").join(&pt_files()[0].rel);
    let import = [
        "import",
        "pt",
        pt.to_str().unwrap(),
        "--chain",
        "c",
        "--stage",
        "instruct_base",
        "--layer",
        "1",
    ];
    let o = saerl(parent, &import);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is not a saerl lake"), "{}", stderr(&o));
    assert_eq!(snapshot(parent), before);
    assert!(!parent.join(".locks").exists() && !parent.join(".tmp").exists());

    // An empty directory reads as an empty lake (a reader adds only the lock file); the first
    // commit marks it.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = saerl(
        &empty,
        &[
            "sql",
            "--format",
            "csv",
            "-c",
            "SELECT count(*) AS n FROM saes",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "n\n0\n");
    let names: Vec<String> = std::fs::read_dir(&empty)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n == ".locks"),
        "a reader wrote {names:?} into an empty directory"
    );
    ok(&empty, &import);
    assert!(empty.join(saerl::lake::MARKER).is_file());
}

#[test]
fn the_demo_refuses_a_directory_it_did_not_make() {
    let (dir, lake) = imported_lake();
    // `--out` a project directory holding a real lake: refused, nothing touched.
    let project = dir.path();
    let before = snapshot(project);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_saerl"))
        .args(["demo", "--out", project.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "the demo ran in a directory it did not make"
    );
    let err = stderr(&o);
    assert!(
        err.contains(project.to_str().unwrap()) && err.contains("not made by `saerl demo`"),
        "{err}"
    );
    assert_eq!(snapshot(project), before, "the demo changed the directory");
    assert!(lake.join(saerl::lake::MARKER).is_file());
    assert_demo_marker_is_what_clears(project);
}

/// A directory with the demo's marker is the demo's: a rerun may clear its lake (checked
/// without running the demo: the marker is what the rule reads).
fn assert_demo_marker_is_what_clears(project: &Path) {
    let other = project.join("other");
    std::fs::create_dir_all(other.join("lake")).unwrap();
    std::fs::write(other.join("lake/keep"), "x").unwrap();
    // The demo with a missing prompt file: it stops after deciding what it may clear.
    let demo = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_saerl"))
            .args(["demo", "--out", other.to_str().unwrap()])
            .args(["--data", "/nonexistent/train.jsonl"])
            .output()
            .unwrap()
    };
    assert!(!demo().status.success());
    assert!(
        other.join("lake/keep").exists(),
        "an unmarked directory was cleared"
    );
    std::fs::write(other.join(".saerl-demo"), "").unwrap();
    assert!(
        !demo().status.success(),
        "the missing prompt file stops the demo"
    );
    assert!(
        !other.join("lake").exists(),
        "a marked directory's lake is the demo's to clear"
    );
}

/// `.help` and error messages know saerl's functions from one list; it must be what a session
/// registers: every entry registered, and nothing saerl registers left out.
#[test]
fn the_function_list_is_what_a_session_registers() {
    let (_dir, lake) = imported_lake();
    let ctx = session(&lake);
    let (ours, plain) = (
        ctx.state(),
        datafusion::prelude::SessionContext::new().state(),
    );
    let mut registered: Vec<String> = Vec::new();
    for name in ours.scalar_functions().keys() {
        if !plain.scalar_functions().contains_key(name) {
            registered.push(name.clone());
        }
    }
    for name in ours.aggregate_functions().keys() {
        if !plain.aggregate_functions().contains_key(name) {
            registered.push(name.clone());
        }
    }
    for name in ours.table_functions().keys() {
        if !plain.table_functions().contains_key(name) {
            registered.push(name.clone());
        }
    }
    let lake_tables: Vec<&str> = saerl::lake::Table::ALL.iter().map(|t| t.name()).collect();
    let schema = ctx.catalog("datafusion").unwrap().schema("public").unwrap();
    for t in schema.table_names() {
        if !lake_tables.contains(&t.as_str()) {
            registered.push(t);
        }
    }
    registered.sort();
    let mut listed: Vec<String> = saerl::sql::FUNCTIONS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    listed.sort();
    assert_eq!(
        listed, registered,
        "saerl::sql::FUNCTIONS and the session differ"
    );
}
