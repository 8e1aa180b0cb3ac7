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
