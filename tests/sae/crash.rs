//! Crashes and concurrent writers: `train` and `stats` killed (SIGKILL) at every commit step and
//! after every epoch resume to the tables of an uninterrupted run, a reader never sees half of a
//! commit, and a second command training the same SAEs fails clearly or queues (`--wait`).

use std::path::Path;
use std::time::Duration;

use saerl::lake::{Lake, PartitionKey};

use crate::resume::{copy_demo_lake, tiny_train};
use crate::shared::{crash_matrix, run_saerl, sql_csv};

/// The tiny training the crash tests kill, checkpointing after every epoch.
fn train_args() -> Vec<&'static str> {
    tiny_train("2", &["--checkpoint-every", "0"])
}

/// Keys of chain `tiny` present in one table of the pair but not the other: each commit writes
/// both, so any is a torn commit.
fn torn(lake: &Path, a: &str, b: &str) -> String {
    let keys =
        |t: &str| format!("SELECT DISTINCT chain, stage, layer, k FROM {t} WHERE chain = 'tiny'");
    sql_csv(
        lake,
        &format!(
            "SELECT (SELECT count(*) FROM ({} EXCEPT {})) + (SELECT count(*) FROM ({} EXCEPT {})) AS torn",
            keys(a),
            keys(b),
            keys(b),
            keys(a)
        ),
    )
}

#[test]
fn train_killed_anywhere_resumes_to_the_uninterrupted_tables() {
    let kills = crash_matrix(
        &[
            "train.epoch",
            "commit.staged",
            "commit.recorded",
            "commit.publish",
            "commit.published",
        ],
        &train_args(),
        &|lake| copy_demo_lake(lake),
        &|lake| {
            assert_eq!(torn(lake, "saes", "train_log"), "torn\n0\n");
            assert_eq!(torn(lake, "saes", "features"), "torn\n0\n");
        },
    );
    println!("kills per point: {kills:?}");
}

#[test]
fn stats_killed_while_replacing_never_loses_a_partition() {
    let args = ["stats", "--chain", "tiny", "--layers", "2", "--overwrite"];
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    copy_demo_lake(&base);
    let count = |lake: &Path| {
        sql_csv(
            lake,
            "SELECT count(DISTINCT stage || layer || k) AS n FROM feature_stats",
        )
    };
    let before = count(&base);
    let kills = crash_matrix(
        &["commit.recorded", "commit.publish", "commit.published"],
        &args,
        &|lake| copy_demo_lake(lake),
        &|lake| {
            assert_eq!(count(lake), before, "a replaced partition went missing");
            assert_eq!(torn(lake, "feature_stats", "top_examples"), "torn\n0\n");
        },
    );
    println!("kills per point: {kills:?}");
}

#[test]
fn a_second_trainer_of_the_same_saes_fails_clearly_or_waits() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    copy_demo_lake(&lake);
    let l = Lake::open(&lake).unwrap();
    let held = l
        .lock_work(
            &l.train_lock(&PartitionKey::sae("tiny", "", 2, 4)),
            "testing",
        )
        .unwrap();
    let before = crate::shared::snapshot(&lake);
    let o = run_saerl(&lake, &train_args(), None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another saerl is training chain tiny layer 2") && err.contains("--wait"),
        "{err}"
    );
    assert_eq!(
        crate::shared::snapshot(&lake),
        before,
        "the refused command wrote something"
    );

    // With --wait it queues, and runs once the other is done.
    let mut waiting = std::process::Command::new(env!("CARGO_BIN_EXE_saerl"))
        .arg("--lake")
        .arg(&lake)
        .args(train_args())
        .arg("--wait")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(waiting.try_wait().unwrap().is_none(), "--wait did not wait");
    drop(held);
    let out = waiting.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("waiting for it"));
    assert_eq!(torn(&lake, "saes", "train_log"), "torn\n0\n");
    assert!(sql_csv(&lake, "SELECT count(*) AS n FROM saes WHERE k = 4").contains("\n2\n"));
}

#[test]
fn a_checkpoint_is_not_resumed_on_other_activations_of_the_same_shape() {
    use arrow::array::{Array, AsArray, FixedSizeListArray, Float32Array, RecordBatch};
    use saerl::lake::{partition_files, read_parquet, writer_properties, Table};
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    copy_demo_lake(&lake);
    let mut stop = train_args();
    stop.extend(["--stop-after-epochs", "1"]);
    assert_eq!(run_saerl(&lake, &stop, None).status.code(), Some(1));

    // Re-ingested with other values but the same rows: every x scaled, same files, same counts.
    let l = Lake::open(&lake).unwrap();
    let part = l
        .partition_dir(
            Table::Activations,
            &PartitionKey::layer("tiny", "instruct_base", 2),
        )
        .unwrap();
    for f in partition_files(&part).unwrap() {
        let batches = read_parquet(&f).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&f).unwrap(),
            batches[0].schema(),
            Some(writer_properties(Table::Activations)),
        )
        .unwrap();
        for b in batches {
            let x = b.column_by_name("x").unwrap().as_fixed_size_list();
            let scaled: Float32Array = x
                .values()
                .as_primitive::<arrow::datatypes::Float32Type>()
                .unary(|v| v * 1.5);
            let new_x = FixedSizeListArray::new(
                match x.data_type() {
                    arrow::datatypes::DataType::FixedSizeList(item, _) => item.clone(),
                    _ => unreachable!(),
                },
                x.value_length(),
                std::sync::Arc::new(scaled),
                None,
            );
            let i = b.schema().index_of("x").unwrap();
            let mut cols = b.columns().to_vec();
            cols[i] = std::sync::Arc::new(new_x);
            w.write(&RecordBatch::try_new(b.schema(), cols).unwrap())
                .unwrap();
        }
        w.close().unwrap();
    }
    let o = run_saerl(&lake, &train_args(), None);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("made from other activations or settings; starting over"),
        "{out}"
    );
    assert!(!out.contains("resuming"), "{out}");
}
