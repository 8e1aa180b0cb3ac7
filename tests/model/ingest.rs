//! `saerl ingest` on the fixture model: rows equal the reference residuals, the split is the
//! documented seeded permutation, an interrupted run resumes to the same table, bad input
//! changes nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow::array::AsArray;
use arrow::datatypes::{Float32Type, Int32Type, Int64Type};
use candle_core::Device;
use saerl::lake::{Lake, PartitionKey, Table};

use crate::*;

fn saerl(lake: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_saerl"))
        .arg("--lake")
        .arg(lake)
        .args(args)
        .output()
        .unwrap()
}

pub fn questions_file(dir: &Path) -> PathBuf {
    let path = dir.join("questions.jsonl");
    let lines: Vec<String> = reference_questions()
        .iter()
        .map(|q| serde_json::json!({ "question": q }).to_string())
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

pub fn ingest_args(data: &Path, stage: &str, layers: &str, batch: usize) -> Vec<String> {
    crate::shared::ingest_args(&tiny(), data, stage, layers, max_len(), batch)
}

fn run_ok(lake: &Path, args: &[String]) {
    let o = saerl(lake, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        o.status.success(),
        "saerl {args:?}:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The split as documented: SplitMix64, Fisher–Yates from the end, the first floor(f·n) of the
/// permutation are validation rows. Written out here, independently of the code under test.
fn documented_val_rows(n: usize, frac: f64, seed: u64) -> Vec<bool> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    };
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (((next() >> 32) * (i as u64 + 1)) >> 32) as usize;
        p.swap(i, j);
    }
    let mut val = vec![false; n];
    for &i in p.iter().take((frac * n as f64).floor() as usize) {
        val[i] = true;
    }
    val
}

#[test]
fn activations_equal_the_reference_residuals() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let data = questions_file(dir.path());
    let r =
        candle_core::safetensors::load(tiny().join("reference.safetensors"), &Device::Cpu).unwrap();
    let mask: Vec<Vec<i64>> = r["attention_mask"].to_vec2().unwrap();
    let ids: Vec<Vec<i64>> = r["input_ids"].to_vec2().unwrap();
    let n_blocks = r.keys().filter(|k| k.starts_with("resid.")).count();
    let layers: Vec<String> = (0..n_blocks).map(|i| i.to_string()).collect();
    let batch = reference_json()["args"]["batch"].as_u64().unwrap() as usize;
    run_ok(
        &lake,
        &ingest_args(&data, "instruct_base", &layers.join(","), batch),
    );

    let lake = Lake::open(&lake).unwrap();
    let real: usize = mask.iter().flatten().filter(|&&m| m == 1).count();
    for l in 0..n_blocks {
        let resid: Vec<Vec<Vec<f32>>> = r[&format!("resid.{l}")].to_vec3().unwrap();
        let batches = lake
            .read_partition(
                Table::Activations,
                &PartitionKey::layer("tiny", "instruct_base", l as i32),
            )
            .unwrap();
        let mut flags = Vec::new();
        let mut rows = 0;
        for b in &batches {
            let doc = b
                .column_by_name("doc_id")
                .unwrap()
                .as_primitive::<Int64Type>();
            let pos = b.column_by_name("pos").unwrap().as_primitive::<Int32Type>();
            let tok = b
                .column_by_name("token_id")
                .unwrap()
                .as_primitive::<Int32Type>();
            let split = b.column_by_name("split").unwrap().as_string::<i32>();
            let x = b.column_by_name("x").unwrap().as_fixed_size_list();
            for i in 0..b.num_rows() {
                let (d, p) = (doc.value(i) as usize, pos.value(i) as usize);
                assert_eq!(mask[d][p], 1, "only real tokens are stored");
                assert_eq!(tok.value(i) as i64, ids[d][p]);
                let v = x.value(i);
                let v = v.as_primitive::<Float32Type>();
                for (j, want) in resid[d][p].iter().enumerate() {
                    assert!(
                        (v.value(j) - want).abs() < 1e-4,
                        "block {l} doc {d} pos {p} dim {j}: {} vs {want}",
                        v.value(j)
                    );
                }
                flags.push(split.value(i) == "val");
                rows += 1;
            }
        }
        assert_eq!(rows, real, "block {l}: one row per real token");
        assert_eq!(
            flags,
            documented_val_rows(real, 0.2, 0),
            "block {l}: rows in (doc, pos) order, split by the seeded permutation"
        );
    }
}

#[test]
fn an_interrupted_ingest_resumes_to_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    let data = questions_file(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let mut args = ingest_args(&data, "ppo_step10", &first_and_last_block(), 1);
    args.extend(["--chunk-batches", "1"].map(String::from));
    run_ok(&b, &args);

    let mut stop = args.clone();
    stop.extend(["--stop-after-chunks", "2"].map(String::from));
    let o = saerl(&a, &stop.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("rerun to resume"));
    assert!(
        !a.join("activations").exists(),
        "nothing is published before the end"
    );
    run_ok(&a, &args);
    let strip = |lake: &Path| {
        let mut c = contents(lake);
        c.retain(|t, _| !t.starts_with("stages"));
        c
    };
    assert!(
        strip(&a) == strip(&b),
        "resumed and uninterrupted runs write the same rows"
    );
    assert!(!a.join(".tmp").exists(), "the staging directory is removed");
}

#[test]
fn bad_input_is_refused_and_the_lake_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let data = questions_file(dir.path());
    run_ok(&lake, &ingest_args(&data, "instruct_base", "1", 4));
    let before = snapshot(&lake);
    let check = |args: Vec<String>, needle: &str| {
        let o = saerl(&lake, &args.iter().map(String::as_str).collect::<Vec<_>>());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(
            err.contains(needle),
            "{args:?}: stderr should mention {needle:?}:\n{err}"
        );
        assert_eq!(snapshot(&lake), before, "{args:?} changed the lake");
    };
    let model_copy = |name: &str| -> PathBuf {
        let m = dir.path().join(name);
        std::fs::create_dir_all(&m).unwrap();
        for f in ["config.json", "tokenizer.json"] {
            std::fs::copy(tiny().join(f), m.join(f)).unwrap();
        }
        m
    };
    let with_model = |m: &Path, layers: &str| {
        let mut a = ingest_args(&data, "ppo_step10", layers, 4);
        let i = a.iter().position(|x| x == "--model").unwrap();
        a[i + 1] = m.display().to_string();
        a
    };

    let weights = saerl::model::load::weight_files(&tiny()).unwrap();
    // A sharded checkpoint whose second shard is missing.
    let sharded = model_copy("sharded");
    std::fs::copy(
        &weights[0],
        sharded.join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    let index = serde_json::json!({"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors", "model.norm.weight": "model-00002-of-00002.safetensors"}});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    check(
        with_model(&sharded, "1"),
        "model-00002-of-00002.safetensors",
    );

    // config.json that disagrees with the weights.
    let wrong = model_copy("wrong");
    for f in ["model.safetensors.index.json"]
        .iter()
        .map(|f| tiny().join(f))
        .filter(|f| f.is_file())
        .chain(weights.iter().cloned())
    {
        std::os::unix::fs::symlink(&f, wrong.join(f.file_name().unwrap())).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny().join("config.json")).unwrap())
            .unwrap();
    cfg["intermediate_size"] = serde_json::json!(cfg["intermediate_size"].as_u64().unwrap() + 8);
    std::fs::write(wrong.join("config.json"), cfg.to_string()).unwrap();
    check(with_model(&wrong, "1"), "shape");

    // An unsupported architecture.
    let llama = model_copy("llama");
    cfg["model_type"] = serde_json::json!("llama");
    cfg["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    std::fs::write(llama.join("config.json"), cfg.to_string()).unwrap();
    check(with_model(&llama, "1"), "unsupported architecture");

    // Blocks the model does not have.
    let n = reference_json()["args"]["layers"].as_u64().unwrap();
    check(
        ingest_args(&data, "ppo_step10", &n.to_string(), 4),
        "beyond the model",
    );

    // Empty data, and a line that is not UTF-8.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    check(
        ingest_args(&empty, "ppo_step10", "1", 4),
        "holds no questions",
    );
    let binary = dir.path().join("binary.jsonl");
    std::fs::write(&binary, b"{\"question\": \"ok\"}\n\xff\xfe{\n").unwrap();
    check(
        ingest_args(&binary, "ppo_step10", "1", 4),
        "line 2: not UTF-8",
    );

    // An unreadable Parquet prompt file.
    let bad_parquet = dir.path().join("questions.parquet");
    std::fs::write(&bad_parquet, b"PAR1 not really").unwrap();
    check(
        ingest_args(&bad_parquet, "ppo_step10", "1", 4),
        "questions.parquet",
    );
}

#[test]
fn a_complete_ingest_is_skipped_and_new_layers_are_added() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let data = questions_file(dir.path());
    run_ok(&lake, &ingest_args(&data, "instruct_base", "1", 4));
    let before = snapshot(&lake);
    let o = saerl(
        &lake,
        &ingest_args(&data, "instruct_base", "1", 4)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("already ingested, skipped"), "{out}");
    assert_eq!(snapshot(&lake), before, "a complete ingest changes nothing");
    // A block not yet stored is added beside the existing one, which stays as it was.
    let last = n_blocks() - 1;
    run_ok(
        &lake,
        &ingest_args(&data, "instruct_base", &format!("1,{last}"), 4),
    );
    let after = snapshot(&lake);
    for (path, hash) in &before {
        // `stages` is rewritten by every ingest, and the commit log grows.
        if !path.starts_with("stages") && !path.starts_with("_saerl") {
            assert_eq!(after.get(path), Some(hash), "{} kept", path.display());
        }
    }
    assert!(after.keys().any(|p| p.starts_with(format!(
        "activations/chain=tiny/stage=instruct_base/layer={last}"
    ))));
    // --overwrite redoes it.
    let mut again = ingest_args(&data, "instruct_base", "1", 4);
    again.push("--overwrite".into());
    run_ok(&lake, &again);
}

/// The split flags of a partition, in stored (doc, pos) order.
fn split_flags(lake: &Path, stage: &str) -> Vec<bool> {
    let lake = Lake::open(lake).unwrap();
    let mut flags = Vec::new();
    for b in lake
        .read_partition(Table::Activations, &PartitionKey::layer("tiny", stage, 1))
        .unwrap()
    {
        let s = b.column_by_name("split").unwrap().as_string::<i32>();
        flags.extend((0..b.num_rows()).map(|i| s.value(i) == "val"));
    }
    flags
}

#[test]
fn val_fractions_zero_and_one_give_all_train_and_all_val() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let data = questions_file(dir.path());
    for (stage, frac, want_val) in [("ppo_step10", "0.0", false), ("ppo_step20", "1.0", true)] {
        let mut args = ingest_args(&data, stage, "1", 4);
        args.extend(["--val-frac".to_string(), frac.to_string()]);
        run_ok(&lake, &args);
        let flags = split_flags(&lake, stage);
        assert!(!flags.is_empty());
        assert!(flags.iter().all(|&v| v == want_val), "--val-frac {frac}");
    }
    let mut bad = ingest_args(&data, "ppo_step30", "1", 4);
    bad.extend(["--val-frac".to_string(), "1.5".to_string()]);
    let o = saerl(&lake, &bad.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--val-frac"));
}

#[test]
fn questions_from_hugging_face_parquet_ingest_like_json_lines() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let jsonl = questions_file(dir.path());
    let questions = reference_questions();
    // The Hugging Face layout: `question` and `answer` string columns.
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("question", arrow::datatypes::DataType::Utf8, false),
        arrow::datatypes::Field::new("answer", arrow::datatypes::DataType::Utf8, false),
    ]));
    let batch = arrow::array::RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(arrow::array::StringArray::from(questions.clone())),
            Arc::new(arrow::array::StringArray::from(vec![
                "#### 1";
                questions.len()
            ])),
        ],
    )
    .unwrap();
    let parquet = dir.path().join("train-00000-of-00001.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&parquet).unwrap(),
        schema,
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run_ok(&a, &ingest_args(&jsonl, "instruct_base", "1", 4));
    run_ok(&b, &ingest_args(&parquet, "instruct_base", "1", 4));
    let acts = |lake: &Path| {
        let mut c = contents(lake);
        c.retain(|t, _| t.starts_with("activations"));
        c
    };
    assert!(acts(&a) == acts(&b), "the same rows from either format");
}

#[test]
fn init_writes_a_template_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saerl.toml");
    let args = ["init", "--path", path.to_str().unwrap()];
    let o = saerl(&dir.path().join("lake"), &args);
    assert!(o.status.success());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("[chains.kl0p025]") && text.contains("kl_coef = 0.025"));
    let o = saerl(&dir.path().join("lake"), &args);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--force"));
    // A stage named in the project file but without a model directory on disk.
    let data = questions_file(dir.path());
    let o = saerl(
        &dir.path().join("lake"),
        &[
            "ingest",
            "--project",
            path.to_str().unwrap(),
            "--chain",
            "flexible",
            "--stage",
            "ppo_step10",
            "--data",
            data.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("checkpoints/flexible/global_step_10"),
        "{err}"
    );
}

/// `--dtype bf16` computes the model in bf16: its activations are within bf16 rounding of the
/// reference residuals (transformers, f32), and not the f32 pass's.
#[test]
fn bf16_activations_are_close_to_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let data = questions_file(dir.path());
    let r =
        candle_core::safetensors::load(tiny().join("reference.safetensors"), &Device::Cpu).unwrap();
    let layer = n_blocks() - 1;
    let batch = reference_json()["args"]["batch"].as_u64().unwrap() as usize;
    let mut args = ingest_args(&data, "instruct_base", &layer.to_string(), batch);
    args.extend(["--dtype", "bf16"].map(String::from));
    run_ok(&lake, &args);
    let resid: Vec<Vec<Vec<f32>>> = r[&format!("resid.{layer}")].to_vec3().unwrap();
    let lake = Lake::open(&lake).unwrap();
    let (mut diff, mut norm) = (0f64, 0f64);
    for b in lake
        .read_partition(
            Table::Activations,
            &PartitionKey::layer("tiny", "instruct_base", layer as i32),
        )
        .unwrap()
    {
        let doc = b
            .column_by_name("doc_id")
            .unwrap()
            .as_primitive::<Int64Type>();
        let pos = b.column_by_name("pos").unwrap().as_primitive::<Int32Type>();
        let x = b.column_by_name("x").unwrap().as_fixed_size_list();
        for i in 0..b.num_rows() {
            let want = &resid[doc.value(i) as usize][pos.value(i) as usize];
            let v = x.value(i);
            for (g, w) in v.as_primitive::<Float32Type>().values().iter().zip(want) {
                diff += ((g - w) as f64).powi(2);
                norm += (*w as f64).powi(2);
            }
        }
    }
    let rel = (diff / norm).sqrt();
    assert!(
        rel < 0.05,
        "bf16 activations are {rel:.3e} (relative RMS) from the reference"
    );
    assert!(
        rel > 1e-5,
        "bf16 activations equal f32 ones ({rel:.3e}): was bf16 used?"
    );
}
