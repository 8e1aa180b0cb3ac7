//! Hostile files: `.pt` archives built to overflow offsets, exhaust memory or the stack, views
//! that leave their storage, mutated fixture files, and lake Parquet files written by other
//! engines or damaged. Every one gives an error naming the file, never a panic or a huge
//! allocation.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringViewArray};
use arrow::datatypes::{Field, Schema};
use saerl::lake::{partition_files, Lake, Table};
use saerl::rng::SplitMix64;
use saerl::sae::pickle::{self, Value};
use saerl::sae::pt;
use saerl::sae::zip_store::{ZipStore, ZipWriter};
use saerl::tables::read_sae;

use crate::common::{fixtures, imported_lake, pt_files, saerl, stderr};

/// Parses `bytes` as a checkpoint; a panic fails the test, an error is the expected outcome.
fn parse_no_panic(what: &str, bytes: Vec<u8>) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| pt::parse(bytes))) {
        Ok(r) => r.map(|_| ()).map_err(|e| format!("{e:#}")),
        Err(_) => panic!("{what}: the .pt reader panicked"),
    }
}

/// The minimised crashers in tests/corpus/pt (and any a fuzzer adds there): each is refused,
/// by the library and by `saerl import`, with the file named.
#[test]
fn the_crasher_corpus_is_refused_without_a_panic() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/pt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "the corpus is missing from {}",
        corpus.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let err = parse_no_panic(&name, std::fs::read(f).unwrap()).expect_err(&name);
        println!("{name}: {err}");
        let o = saerl(
            &lake,
            &[
                "import",
                "pt",
                f.to_str().unwrap(),
                "--chain",
                "c",
                "--stage",
                "instruct_base",
                "--layer",
                "0",
            ],
        );
        assert_eq!(o.status.code(), Some(1), "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains(&name), "{name}: {}", stderr(&o));
    }
    assert!(!lake.join("saes").exists());
}

/// A valid checkpoint (written by saerl) with one tensor's view or storage rewritten.
fn with_tensor(edit: &dyn Fn(&mut pickle::TensorRef)) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.pt");
    let (d, n) = (4usize, 8usize);
    let w = vec![0.5f32; n * d];
    let small = vec![0.0f32; d];
    let nb = vec![0.0f32; n];
    let cfg = |k: &str, v: i64| (k.to_string(), Value::Int(v));
    pt::write_raw(
        &path,
        &[
            ("b_pre", &small, vec![d]),
            ("encoder.weight", &w, vec![n, d]),
            ("encoder.bias", &nb, vec![n]),
            ("decoder.weight", &w, vec![d, n]),
            ("decoder.bias", &small, vec![d]),
        ],
        vec![
            cfg("d_model", d as i64),
            cfg("d_sae", n as i64),
            cfg("k", 2),
        ],
    )
    .unwrap();
    let zip = ZipStore::parse(std::fs::read(&path).unwrap()).unwrap();
    let pkl = zip
        .names()
        .find(|n| n.ends_with("data.pkl"))
        .unwrap()
        .to_string();
    let mut root = pickle::load(zip.get(&pkl).unwrap()).unwrap();
    let Value::Dict(items) = &mut root else {
        panic!()
    };
    let Value::Dict(state) = &mut items[0].1 else {
        panic!()
    };
    let Value::Tensor(t) = &mut state[1].1 else {
        panic!()
    };
    edit(t);
    let mut out = ZipWriter::new();
    let names: Vec<String> = zip.names().map(String::from).collect();
    for name in names {
        let bytes = match name == pkl {
            true => pickle::dump(&root),
            false => zip.get(&name).unwrap().to_vec(),
        };
        out.add(&name, &bytes).unwrap();
    }
    out.finish()
}

#[test]
fn tensor_views_must_fit_their_storage() {
    assert!(parse_no_panic("unedited", with_tensor(&|_| {})).is_ok());
    // (what, the edit, the error it must give)
    type Case = (
        &'static str,
        Box<dyn Fn(&mut pickle::TensorRef)>,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "huge stride",
            Box::new(|t| t.stride[0] = usize::MAX / 2),
            "reaches past its storage",
        ),
        (
            "offset overflow",
            Box::new(|t| t.offset = i64::MAX as usize - 1),
            "reaches past its storage",
        ),
        (
            "offset past the end",
            Box::new(|t| t.offset = 1),
            "reaches past its storage",
        ),
        (
            "numel overflow",
            Box::new(|t| t.storage.numel = usize::MAX / 2),
            "holds",
        ),
        (
            "numel past the data",
            Box::new(|t| t.storage.numel = 1 << 40),
            "holds",
        ),
        (
            "strides missing",
            Box::new(|t| t.stride.pop().map(|_| ()).unwrap()),
            "strides",
        ),
    ];
    for (what, edit, needle) in cases {
        let err = parse_no_panic(what, with_tensor(&*edit)).expect_err(what);
        assert!(err.contains(needle), "{what}: {err}");
    }
}

/// Deterministic mutations of every fixture checkpoint: truncations, byte flips and extreme
/// values over header fields. Any outcome but a panic is acceptable (the CRC catches most).
#[test]
fn mutated_fixture_checkpoints_never_panic() {
    let mut rng = SplitMix64::new(12345);
    let mut refused = 0;
    let files = pt_files();
    let per_file = 1200 / files.len().max(1);
    for f in &files {
        let orig = std::fs::read(fixtures().join("sae-pt").join(&f.rel)).unwrap();
        let len = orig.len();
        // Headers sit at both ends of the archive: aim half the mutations there.
        let pick = |r: u64| -> usize {
            let x = r as usize;
            match r % 4 {
                0 => x % 256.min(len),
                1 => len - 1 - x % 1024.min(len),
                _ => x % len,
            }
        };
        for i in 0..per_file {
            let mut b = orig.clone();
            let r = rng.next_u64();
            match i % 4 {
                0 => b.truncate(pick(r)),
                1 => b[pick(r)] ^= 1 << (r >> 61),
                2 => {
                    let at = pick(r).min(len - 4);
                    b[at..at + 4].copy_from_slice(&[0xFF; 4]);
                }
                _ => {
                    let at = pick(r).min(len - 8);
                    b[at..at + 8].copy_from_slice(&(rng.next_u64() >> (r % 64)).to_le_bytes());
                }
            }
            if parse_no_panic(&format!("{} mutation {i}", f.rel), b).is_err() {
                refused += 1;
            }
        }
    }
    println!("{refused} of {} mutants refused", per_file * files.len());
    assert!(refused > 0);
}

/// Rewrites the single file of a partition with `edit` applied to its batch.
fn rewrite(dir: &Path, edit: &dyn Fn(RecordBatch) -> RecordBatch) -> PathBuf {
    let file = partition_files(dir).unwrap().remove(0);
    let batches = saerl::lake::read_parquet(&file).unwrap();
    let batch = edit(arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap());
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&file).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    file
}

fn replace_column(b: RecordBatch, name: &str, col: Option<ArrayRef>) -> RecordBatch {
    let schema = b.schema();
    let mut fields = Vec::new();
    let mut cols = Vec::new();
    for (f, c) in schema.fields().iter().zip(b.columns()) {
        if f.name() != name {
            fields.push(f.as_ref().clone());
            cols.push(c.clone());
        } else if let Some(new) = &col {
            fields.push(Field::new(name, new.data_type().clone(), true));
            cols.push(new.clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

#[test]
fn tables_written_by_other_engines_read_or_fail_clearly() {
    let (_dir, lake_dir) = imported_lake();
    let lake = Lake::open(&lake_dir).unwrap();
    let (key, sae_dir) = lake.partitions(Table::Saes).unwrap().remove(0);
    let want = read_sae(&lake, &key).unwrap();

    // Utf8View strings and Int64 integers (as DuckDB or Polars may write): read as saerl's types.
    rewrite(&sae_dir, &|b| {
        let act = b
            .column_by_name("activation")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let d = b
            .column_by_name("d_model")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int32Type>()
            .clone();
        let b = replace_column(
            b,
            "activation",
            Some(Arc::new(StringViewArray::from_iter(act.iter()))),
        );
        replace_column(
            b,
            "d_model",
            Some(Arc::new(Int64Array::from_iter(
                d.iter().map(|v| v.map(i64::from)),
            ))),
        )
    });
    assert_eq!(read_sae(&lake, &key).unwrap(), want);
    // The same for a projected read (vectors page by page, the rest conformed).
    let features = lake.partition_dir(Table::Features, &key).unwrap();
    rewrite(&features, &|b| {
        let f = b
            .column_by_name("feature")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int32Type>()
            .clone();
        replace_column(
            b,
            "feature",
            Some(Arc::new(Int64Array::from_iter(
                f.iter().map(|v| v.map(i64::from)),
            ))),
        )
    });
    let cols = lake
        .read_columns(Table::Features, &key, &["feature", "w_dec"])
        .unwrap();
    assert_eq!(
        cols.schema().field(0).data_type(),
        &arrow::datatypes::DataType::Int32
    );
    assert_eq!(read_sae(&lake, &key).unwrap(), want);

    // An integer that does not fit, a string where a number belongs, a missing column: errors
    // naming the file and the column.
    let file = rewrite(&sae_dir, &|b| {
        replace_column(
            b,
            "d_model",
            Some(Arc::new(Int64Array::from(vec![1i64 << 40]))),
        )
    });
    let err = format!("{:#}", read_sae(&lake, &key).unwrap_err());
    assert!(
        err.contains(&file.display().to_string()) && err.contains("d_model"),
        "{err}"
    );
    rewrite(&sae_dir, &|b| {
        let s: ArrayRef = Arc::new(arrow::array::StringArray::from(vec!["x"]));
        replace_column(b, "d_model", Some(s))
    });
    let err = format!("{:#}", read_sae(&lake, &key).unwrap_err());
    assert!(err.contains("d_model") && err.contains("Utf8"), "{err}");
    rewrite(&sae_dir, &|b| replace_column(b, "d_model", None));
    let err = format!("{:#}", read_sae(&lake, &key).unwrap_err());
    assert!(err.contains("d_model") && err.contains("missing"), "{err}");
    let stages = lake.partitions(Table::Stages).unwrap().remove(0).1;
    rewrite(&stages, &|b| replace_column(b, "kl_coef", None));
    let chain = &lake.partitions(Table::Stages).unwrap()[0].0.chain;
    let err = format!("{:#}", lake.read_stages(chain).unwrap_err());
    assert!(err.contains("kl_coef"), "{err}");
}

/// Damaged lake files: bytes overwritten across a features file (page headers, data, footer)
/// and truncations. Reading the SAE, and SQL over it, fail or succeed but never panic.
#[test]
fn damaged_lake_files_never_panic() {
    let (_dir, lake_dir) = imported_lake();
    let lake = Lake::open(&lake_dir).unwrap();
    let (key, _) = lake.partitions(Table::Saes).unwrap().remove(0);
    let file = partition_files(&lake.partition_dir(Table::Features, &key).unwrap())
        .unwrap()
        .remove(0);
    let orig = std::fs::read(&file).unwrap();
    let mut rng = SplitMix64::new(7);
    let mut refused = 0;
    let trials = 60;
    for i in 0..trials {
        let mut b = orig.clone();
        let at = (rng.next_u64() as usize) % b.len();
        match i % 3 {
            0 => b.truncate(at),
            1 => b[at..(at + 16).min(orig.len())].fill(0xFF),
            _ => b[at..(at + 16).min(orig.len())].fill(0),
        }
        std::fs::write(&file, &b).unwrap();
        match catch_unwind(AssertUnwindSafe(|| read_sae(&lake, &key))) {
            Ok(Err(e)) => {
                refused += 1;
                let e = format!("{e:#}");
                assert!(
                    e.contains(&*file.to_string_lossy()) || e.contains("SAE"),
                    "{e}"
                );
            }
            Ok(Ok(_)) => {}
            Err(_) => panic!("reading the SAE panicked on damage {i} at byte {at}"),
        }
        if i % 10 == 0 {
            let o = saerl(
                &lake_dir,
                &["sql", "-c", "SELECT count(*), sum(b_enc) FROM features"],
            );
            assert!(
                matches!(o.status.code(), Some(0) | Some(1)),
                "saerl sql on damage {i}: {:?}\n{}",
                o.status,
                stderr(&o)
            );
        }
    }
    std::fs::write(&file, &orig).unwrap();
    println!("{refused} of {trials} damaged files refused");
    assert!(refused > trials / 3);
}
