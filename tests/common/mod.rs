//! Helpers shared by the test binaries: where the fixtures are, and lake snapshots.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// The reference fixtures (`SAERL_FIXTURES`, default `../shared/fixtures`).
pub fn fixtures() -> PathBuf {
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

/// Every file under `dir` with a hash of its bytes: equal snapshots mean an untouched lake.
/// A missing directory has an empty snapshot.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
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
