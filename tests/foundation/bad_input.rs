//! Bad input gets a clear error, a non-zero exit and an untouched lake.

use std::path::Path;

use saerl::sae::pickle::Value;
use saerl::sae::pt::write_raw;
use saerl::sae::zip_store::ZipWriter;

use crate::common::*;

/// Runs a command that must fail: non-zero exit, stderr containing every `needles`, lake unchanged.
fn fails(lake: &Path, args: &[&str], needles: &[&str]) {
    let before = snapshot(lake);
    let o = saerl(lake, args);
    let err = stderr(&o);
    assert!(!o.status.success(), "saerl {args:?} should fail");
    for n in needles {
        assert!(
            err.contains(n),
            "saerl {args:?}: stderr should mention {n:?}:\n{err}"
        );
    }
    assert_eq!(snapshot(lake), before, "saerl {args:?} changed the lake");
}

fn single(file: &Path) -> Vec<String> {
    [
        "import",
        "pt",
        file.to_str().unwrap(),
        "--chain",
        "extra",
        "--stage",
        "ppo_step5",
        "--layer",
        "6",
    ]
    .map(String::from)
    .to_vec()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn bad_checkpoints_are_refused_and_nothing_is_written() {
    let (dir, lake) = imported_lake();
    let good = fixtures().join("sae-pt").join(&pt_files()[0].rel);

    // Truncated archive.
    let truncated = dir.path().join("truncated.pt");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    fails(
        &lake,
        &args(&single(&truncated)),
        &["truncated.pt", "truncated"],
    );

    // Shapes that disagree with the config.
    let (d, n) = (4usize, 8usize);
    let wrong = dir.path().join("wrong_shape.pt");
    let z = |len: usize| vec![0.1f32; len];
    let (b_pre, w_enc, b_enc, w_dec, b_dec) = (z(d), z((n - 1) * d), z(n), z(d * n), z(d));
    let config = vec![
        ("d_model".into(), Value::Int(d as i64)),
        ("d_sae".into(), Value::Int(n as i64)),
        ("k".into(), Value::Int(2)),
    ];
    write_raw(
        &wrong,
        &[
            ("b_pre", &b_pre, vec![d]),
            ("encoder.weight", &w_enc, vec![n - 1, d]),
            ("encoder.bias", &b_enc, vec![n]),
            ("decoder.weight", &w_dec, vec![d, n]),
            ("decoder.bias", &b_dec, vec![d]),
        ],
        config.clone(),
    )
    .unwrap();
    fails(
        &lake,
        &args(&single(&wrong)),
        &["wrong_shape.pt", "encoder.weight", "shape"],
    );

    // A missing key.
    let missing = dir.path().join("missing_key.pt");
    write_raw(&missing, &[("b_pre", &b_pre, vec![d])], config).unwrap();
    fails(
        &lake,
        &args(&single(&missing)),
        &["missing_key.pt", "missing state_dict key"],
    );

    // A pickle that would run a shell command if executed.
    let evil = dir.path().join("evil.pt");
    let mut zip = ZipWriter::new();
    zip.add(
        "evil/data.pkl",
        b"\x80\x02cos\nsystem\nX\x05\x00\x00\x00touchR.",
    )
    .unwrap();
    std::fs::write(&evil, zip.finish()).unwrap();
    fails(
        &lake,
        &args(&single(&evil)),
        &["evil.pt", "forbidden global os.system"],
    );

    // Not a .pt at all.
    let text = dir.path().join("notes.pt");
    std::fs::write(&text, "just text").unwrap();
    fails(
        &lake,
        &args(&single(&text)),
        &["notes.pt", "not a zip archive"],
    );

    // A tree with one bad file among good ones: nothing of the tree is written.
    let tree = dir.path().join("tree/sae_newchain");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::copy(&good, tree.join("sae_instruct_base_layer6.pt")).unwrap();
    std::fs::copy(&truncated, tree.join("sae_ppo_step10_layer6.pt")).unwrap();
    fails(
        &lake,
        &["import", "pt", dir.path().join("tree").to_str().unwrap()],
        &["sae_ppo_step10_layer6.pt"],
    );

    // Re-importing an existing partition skips it (and changes nothing) unless --overwrite.
    let before = snapshot(&lake);
    let again = ok(&lake, &["import", "pt", good.to_str().unwrap()]);
    assert!(again.contains("already imported, skipped"), "{again}");
    assert_eq!(snapshot(&lake), before);
    ok(
        &lake,
        &["import", "pt", good.to_str().unwrap(), "--overwrite"],
    );
}

#[test]
fn sql_errors_are_clear_and_exit_non_zero() {
    let (_dir, lake) = imported_lake();
    fails(
        &lake,
        &["sql", "-c", "SELECT * FROM no_such_table"],
        &["no_such_table"],
    );
    fails(
        &lake,
        &["sql", "-c", "SELECT decoder_cosine(1, 'a')"],
        &["decoder_cosine", "Float32"],
    );
    fails(
        &lake,
        &[
            "sql",
            "-c",
            "SELECT topk_encode(w_dec, 1, 'x', 6) FROM features",
        ],
        &["topk_encode", "chain", "string"],
    );
    fails(
        &lake,
        &["sql", "-c", "SELECT effective_count('x')"],
        &["effective_count", "numeric"],
    );
    fails(
        &lake,
        &[
            "sql",
            "-c",
            "SELECT topk_encode(w_dec, 'flexible', 'nope', 6) FROM features LIMIT 1",
        ],
        &["no stage \"nope\"", "flexible", "instruct_base"],
    );
    fails(
        &lake,
        &["sql", "-c", "SELECT 1", "--lake", "/nonexistent/lake"],
        &["no lake at /nonexistent/lake"],
    );
}

#[test]
fn a_corrupt_parquet_file_is_named() {
    let (_dir, lake) = imported_lake();
    let files = pt_files();
    let f = files.last().unwrap();
    let part = format!("stage={}/layer={}/k={}", f.stage, f.layer, f.k);
    let dir = lake.join(format!("features/chain={}/{part}", f.chain));
    let victim = saerl::lake::partition_files(&dir).unwrap().pop().unwrap();
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() - 100]).unwrap();
    fails(
        &lake,
        &["sql", "-c", "SELECT count(*) FROM saes"],
        &["corrupt or truncated Parquet file", &part],
    );
    // The advice in the message works: re-importing the partition with --overwrite repairs it.
    let source = fixtures().join("sae-pt").join(&f.rel);
    ok(
        &lake,
        &["import", "pt", source.to_str().unwrap(), "--overwrite"],
    );
    let total: usize = files.iter().map(|f| f.d_sae).sum();
    let out = ok(
        &lake,
        &[
            "sql",
            "-c",
            "SELECT count(*) AS n FROM features",
            "--format",
            "csv",
        ],
    );
    assert_eq!(out, format!("n\n{total}\n"));
}
