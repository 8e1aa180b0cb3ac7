//! `saerl import` killed (SIGKILL) at every step of its commit resumes to the tables of an
//! uninterrupted run and SQL sees all of it or none; a reader's statement holds commits off
//! (they wait, then land); concurrent writers of one chain lose no `stages` row.

use std::path::Path;
use std::time::Duration;

use saerl::lake::Lake;

use crate::common::{fixtures, pt_files};
use crate::shared::{crash_matrix_one_commit, sql_csv};

fn visible(lake: &Path) -> String {
    sql_csv(
        lake,
        "SELECT (SELECT count(*) FROM saes) AS saes, (SELECT count(*) FROM features) AS features, \
         (SELECT count(*) FROM stages) AS stages",
    )
}

#[test]
fn import_killed_anywhere_resumes_to_the_uninterrupted_tables() {
    // A tree of three of the fixture's files (their commit has a dozen partitions to kill at).
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    for f in pt_files().iter().take(3) {
        let to = tree.join(&f.rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(fixtures().join("sae-pt").join(&f.rel), to).unwrap();
    }
    let args = ["import", "pt", tree.to_str().unwrap()];
    let kills = crash_matrix_one_commit(
        &[
            "commit.staged",
            "commit.recorded",
            "commit.publish",
            "commit.published",
        ],
        &args,
        "an import",
        &visible,
    );
    println!("kills per point: {kills:?}");
}

/// Imports file `i` of the fixture as stage `ppo_step{i+1}` of chain `c` (a background child).
fn import_one(lake: &Path, i: usize) -> std::process::Child {
    let f = &pt_files()[i];
    std::process::Command::new(env!("CARGO_BIN_EXE_saerl"))
        .arg("--lake")
        .arg(lake)
        .args(["import", "pt"])
        .arg(fixtures().join("sae-pt").join(&f.rel))
        .args(["--chain", "c", "--stage", &format!("ppo_step{}", i + 1)])
        .args(["--layer", &f.layer.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn concurrent_writers_of_one_chain_lose_no_stage_row() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let n = pt_files().len().min(6);
    let children: Vec<_> = (0..n).map(|i| import_one(&lake, i)).collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let want: String = (0..n).map(|i| format!("ppo_step{}\n", i + 1)).collect();
    assert_eq!(
        sql_csv(
            &lake,
            "SELECT stage FROM stages WHERE chain = 'c' ORDER BY step"
        ),
        format!("stage\n{want}")
    );
    assert_eq!(
        sql_csv(&lake, "SELECT count(*) AS n FROM saes"),
        format!("n\n{n}\n")
    );
}

#[test]
fn a_commit_waits_for_a_reading_statement_then_lands() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    let l = Lake::open(&lake).unwrap();
    let reading = l.read_guard().unwrap();
    let child = import_one(&lake, 0);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !lake.join("saes").exists(),
        "a commit published while a statement was reading"
    );
    drop(reading);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("waiting for the lake lock"));
    assert_eq!(sql_csv(&lake, "SELECT count(*) AS n FROM saes"), "n\n1\n");
}
