//! `saerl ingest` killed (SIGKILL) after any chunk or at any step of its commit resumes to the
//! tables of an uninterrupted run, SQL meanwhile sees all of the ingest or none of it, and two
//! ingests into one lake at once both land (the `stages` rows included).

use std::path::Path;

use crate::ingest::{ingest_args, questions_file};
use crate::shared::{crash_matrix_one_commit, sql_csv};
use crate::*;

/// What a reader sees of the ingest: layers, stage rows, documents.
fn visible(lake: &Path) -> String {
    sql_csv(
        lake,
        "SELECT (SELECT count(DISTINCT layer) FROM activations) AS layers, \
         (SELECT count(*) FROM activations) AS rows_, \
         (SELECT count(*) FROM stages) AS stages, (SELECT count(*) FROM docs) AS docs",
    )
}

#[test]
fn ingest_killed_anywhere_resumes_to_the_uninterrupted_tables() {
    let dir = tempfile::tempdir().unwrap();
    let data = questions_file(dir.path());
    let mut args = ingest_args(&data, "ppo_step10", &first_and_last_block(), 1);
    args.extend(["--chunk-batches", "1"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let kills = crash_matrix_one_commit(
        &[
            "ingest.chunk",
            "commit.staged",
            "commit.recorded",
            "commit.publish",
            "commit.published",
        ],
        &args,
        "an ingest",
        &visible,
    );
    println!("kills per point: {kills:?}");
}

#[test]
fn two_ingests_into_one_lake_at_once_both_land() {
    let dir = tempfile::tempdir().unwrap();
    let data = questions_file(dir.path());
    let lake = dir.path().join("lake");
    let children: Vec<_> = ["instruct_base", "ppo_step10", "ppo_step20"]
        .iter()
        .map(|stage| {
            std::process::Command::new(env!("CARGO_BIN_EXE_saerl"))
                .arg("--lake")
                .arg(&lake)
                .args(ingest_args(&data, stage, "1", 4))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(
        sql_csv(&lake, "SELECT stage, step FROM stages ORDER BY step"),
        "stage,step\ninstruct_base,0\nppo_step10,10\nppo_step20,20\n"
    );
    assert_eq!(
        sql_csv(&lake, "SELECT count(DISTINCT stage) AS n FROM activations"),
        "n\n3\n"
    );
}
