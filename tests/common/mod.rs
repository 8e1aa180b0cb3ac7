//! Helpers shared by the test binaries: where the fixtures are, and lake snapshots.
#![allow(dead_code)]

pub mod flight;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// The reference fixtures (`SAERL_FIXTURES`, default `../shared/fixtures`). Each call is noted
/// for CI (`note_fixture_reader`), so call it wherever a test uses anything made from them.
pub fn fixtures() -> PathBuf {
    note_fixture_reader();
    let p = std::env::var_os("SAERL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    assert!(
        p.is_dir(),
        "fixtures not found at {} (set SAERL_FIXTURES)",
        p.display()
    );
    p
}

/// With `SAERL_FIXTURE_READERS` set, appends the running test's name to that file. CI's pass over
/// a second fixture set runs only these tests: the others would repeat the first pass exactly.
/// libtest runs each test on a thread named after it; a call from any other thread cannot say
/// which test it serves and writes `*`, which asks for every test.
fn note_fixture_reader() {
    use std::io::Write;
    let Some(file) = std::env::var_os("SAERL_FIXTURE_READERS") else {
        return;
    };
    let thread = std::thread::current();
    let name = thread.name().filter(|n| *n != "main").unwrap_or("*");
    // One short append per call: lines from concurrent tests do not interleave.
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .unwrap_or_else(|e| panic!("SAERL_FIXTURE_READERS {}: {e}", Path::new(&file).display()));
    f.write_all(format!("{name}\n").as_bytes()).unwrap();
}

/// Every file under `dir` with a hash of its bytes: equal snapshots mean an untouched lake.
/// A missing directory has an empty snapshot. Lock files (`.locks/`) and the marker are not
/// data.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            // Lock files and the lake's marker (its commit count) are not data.
            if p.file_name()
                .is_some_and(|n| n == ".locks" || n == saerl::lake::MARKER)
            {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&p).unwrap().hash(&mut h);
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), h.finish());
            }
        }
    }
    out
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One `.pt` file of the `sae-pt` fixture, as `expected.json` describes it.
#[derive(Debug, Clone)]
pub struct PtFile {
    /// Path relative to `sae-pt/`.
    pub rel: String,
    pub chain: String,
    pub stage: String,
    pub layer: i64,
    pub k: i64,
    /// Features, from the length of the reference cosines of its (chain, layer, k).
    pub d_sae: usize,
}

/// Every file of the `sae-pt` fixture, in `expected.json` order.
pub fn pt_files() -> Vec<PtFile> {
    let e = read_json(&fixtures().join("sae-pt/expected.json"));
    let mut d_sae = std::collections::HashMap::new();
    for t in e["transitions"].as_array().unwrap() {
        let key = (
            t["chain"].as_str().unwrap().to_string(),
            t["layer"].as_i64().unwrap(),
            t["k"].as_i64().unwrap(),
        );
        d_sae.insert(key, t["decoder_cos"].as_array().unwrap().len());
    }
    e["files"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(rel, f)| {
            let (chain, layer, k) = (
                f["chain"].as_str().unwrap().to_string(),
                f["layer"].as_i64().unwrap(),
                f["k"].as_i64().unwrap(),
            );
            PtFile {
                rel: rel.clone(),
                stage: f["stage"].as_str().unwrap().to_string(),
                d_sae: d_sae[&(chain.clone(), layer, k)],
                chain,
                layer,
                k,
            }
        })
        .collect()
}

/// What a lake's tables hold: each partition (`table/chain=../..`) as its columns by name,
/// concatenated over its files, without wall-clock columns (`train_log.seconds`). Unlike
/// `snapshot`, equal for two runs that wrote the same rows (each file's footer carries a unique
/// write id).
pub fn contents(lake: &Path) -> BTreeMap<String, Vec<(String, arrow::array::ArrayRef)>> {
    let lake = saerl::lake::Lake::open(lake).unwrap();
    let mut out = BTreeMap::new();
    for table in saerl::lake::Table::ALL {
        for (key, dir) in lake.partitions(table).unwrap() {
            let mut batches = Vec::new();
            for f in saerl::lake::partition_files(&dir).unwrap() {
                batches.extend(saerl::lake::read_parquet(&f).unwrap());
            }
            let schema = batches[0].schema();
            let all = arrow::compute::concat_batches(&schema, &batches).unwrap();
            let cols = schema
                .fields()
                .iter()
                .zip(all.columns())
                .filter(|(f, _)| f.name() != "seconds")
                .map(|(f, c)| (f.name().clone(), c.clone()))
                .collect();
            out.insert(format!("{}/{key}", table.name()), cols);
        }
    }
    out
}

pub type Contents = BTreeMap<String, Vec<(String, arrow::array::ArrayRef)>>;

/// Runs saerl on `lake`; with `kill_at` (`POINT:N`) it SIGKILLs itself there (src/fault.rs).
pub fn run_saerl(lake: &Path, args: &[&str], kill_at: Option<&str>) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_saerl"));
    cmd.arg("--lake")
        .arg(lake)
        .args(args)
        .env_remove("SAERL_KILL_AT");
    if let Some(k) = kill_at {
        cmd.env("SAERL_KILL_AT", k);
    }
    cmd.output().expect("running saerl")
}

/// SQL's answer to `query` as CSV (the command must succeed).
pub fn sql_csv(lake: &Path, query: &str) -> String {
    let o = run_saerl(lake, &["sql", "--format", "csv", "-c", query], None);
    assert!(
        o.status.success(),
        "saerl sql -c {query:?}:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The crash test of one command. For each point and n = 1, 2, ...: a lake prepared by
/// `fresh`, the command killed (SIGKILL) at the n-th pass of the point, `check` on what a
/// reader then sees, the command rerun to completion, and its tables compared with an
/// uninterrupted run's. n stops at the first run that completes without reaching the point.
/// Returns the kills per point; every point must be reached at least once.
pub fn crash_matrix(
    points: &[&str],
    args: &[&str],
    fresh: &dyn Fn(&Path),
    check: &dyn Fn(&Path),
) -> Vec<(String, usize)> {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    fresh(&reference);
    let o = run_saerl(&reference, args, None);
    assert!(
        o.status.success(),
        "saerl {args:?}:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let want = contents(&reference);
    let mut kills = Vec::new();
    for point in points {
        let mut n = 1;
        loop {
            assert!(
                n <= 64,
                "{point} is passed more than 64 times: choose a smaller case"
            );
            let lake = dir.path().join(format!("{point}-{n}"));
            fresh(&lake);
            let o = run_saerl(&lake, args, Some(&format!("{point}:{n}")));
            if o.status.success() {
                break;
            }
            assert_eq!(
                o.status.signal(),
                Some(9),
                "{point}:{n}: expected a SIGKILL, got {:?}:\n{}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
            // The reader looks at a copy: the rerun must cope with the crash on its own.
            let seen = dir.path().join("seen");
            copy_dir(&lake, &seen);
            check(&seen);
            std::fs::remove_dir_all(&seen).unwrap();
            let o = run_saerl(&lake, args, None);
            assert!(
                o.status.success(),
                "rerun after a kill at {point}:{n}:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            let got = contents(&lake);
            let differ: Vec<String> = want
                .iter()
                .flat_map(|(part, cols)| {
                    let got = got.get(part);
                    cols.iter()
                        .filter(move |(name, c)| {
                            got.and_then(|g| g.iter().find(|(n, _)| n == name))
                                .is_none_or(|(_, g)| g != c)
                        })
                        .map(move |(name, _)| format!("{part} {name}"))
                })
                .collect();
            assert!(
                differ.is_empty() && got.len() == want.len(),
                "after a kill at {point}:{n} and a rerun, the tables differ from an uninterrupted run's: {differ:?}"
            );
            std::fs::remove_dir_all(&lake).unwrap();
            n += 1;
        }
        assert!(n > 1, "the command never reached {point}");
        kills.push((point.to_string(), n - 1));
    }
    kills
}

/// `crash_matrix` for a command that makes one commit into a new lake: after any kill a
/// reader sees, by `visible`, either none of it or all of it.
pub fn crash_matrix_one_commit(
    points: &[&str],
    args: &[&str],
    what: &str,
    visible: &dyn Fn(&Path) -> String,
) -> Vec<(String, usize)> {
    let dir = tempfile::tempdir().unwrap();
    let (empty, full) = (dir.path().join("empty"), dir.path().join("full"));
    std::fs::create_dir_all(&empty).unwrap();
    let o = run_saerl(&full, args, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (none, all) = (visible(&empty), visible(&full));
    assert_ne!(none, all, "{what} must show in what a reader sees");
    crash_matrix(points, args, &|_| {}, &|lake| {
        let v = visible(lake);
        assert!(v == none || v == all, "a reader saw part of {what}:\n{v}");
    })
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// `saerl ingest` of chain `tiny` at `stage` with the fixture model `model`.
pub fn ingest_args(
    model: &Path,
    data: &Path,
    stage: &str,
    layers: &str,
    max_len: usize,
    batch: usize,
) -> Vec<String> {
    let (model, data) = (model.to_str().unwrap(), data.to_str().unwrap());
    let (max_len, batch) = (max_len.to_string(), batch.to_string());
    [
        "ingest",
        "--chain",
        "tiny",
        "--stage",
        stage,
        "--model",
        model,
        "--layers",
        layers,
        "--data",
        data,
        "--max-len",
        &max_len,
        "--batch",
        &batch,
    ]
    .map(String::from)
    .to_vec()
}

/// The project's Python test environment: `SAERL_TEST_PYTHON` (.ci/run sets it), else the one
/// tests/python/setup.sh makes or reuses.
pub fn test_python() -> PathBuf {
    if let Some(p) = std::env::var_os("SAERL_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/setup.sh");
    let o = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .expect("running bash");
    assert!(
        o.status.success(),
        "making the Python test environment ({}) failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}

/// Runs `tests/python/SCRIPT` with `args` in the test environment; its stdout as JSON.
pub fn python_json(script: &str, args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let o = std::process::Command::new(test_python())
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}
