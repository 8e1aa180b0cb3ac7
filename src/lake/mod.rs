//! The lake: one directory of hive-partitioned Parquet tables. This module is the only place
//! that knows paths, partition levels and schemas; everything else asks it.

mod activation_rows;
mod batches;
mod lock;
mod marker;
mod read;
mod remote;
mod schema;
mod stages;
mod staging;
mod transitions;
mod vectors;
mod write;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub use activation_rows::{ActivationBatch, ActivationRows};
pub use batches::{activation_batch, vocab_batch};
pub use lock::{LockGuard, Snapshot};
pub use marker::{MARKER, RUN_DIR};
pub(crate) use read::panic_text;
pub use read::{check_parquet, partition_files, read_parquet};
pub use remote::{is_remote, rel_str, s3_store, Remote, RemoteFile, CONCURRENCY};
pub use schema::{vector_type, vector_width, PartCol, Table};
pub use stages::{infer_step, StageRow};
pub use staging::IngestStaging;
pub use transitions::{SaeSequences, Transition};
pub use write::{writer_properties, PartitionWriter, Txn};

/// Where a table's partition lives: the values of its partition columns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    pub chain: String,
    pub stage: Option<String>,
    pub layer: Option<i32>,
    pub k: Option<i32>,
}

impl PartitionKey {
    pub fn sae(chain: &str, stage: &str, layer: i32, k: i32) -> Self {
        Self {
            chain: chain.into(),
            stage: Some(stage.into()),
            layer: Some(layer),
            k: Some(k),
        }
    }

    pub fn chain(chain: &str) -> Self {
        Self {
            chain: chain.into(),
            stage: None,
            layer: None,
            k: None,
        }
    }

    pub fn stage(chain: &str, stage: &str) -> Self {
        Self {
            chain: chain.into(),
            stage: Some(stage.into()),
            layer: None,
            k: None,
        }
    }

    pub fn layer(chain: &str, stage: &str, layer: i32) -> Self {
        Self {
            layer: Some(layer),
            ..Self::stage(chain, stage)
        }
    }

    /// The activation partition of an SAE's key: the same chain, stage and layer, without k.
    pub fn activations(&self) -> Self {
        Self {
            k: None,
            ..self.clone()
        }
    }

    fn value(&self, col: PartCol) -> Option<String> {
        match col {
            PartCol::Chain => Some(self.chain.clone()),
            PartCol::Stage => self.stage.clone(),
            PartCol::Layer => self.layer.map(|v| v.to_string()),
            PartCol::K => self.k.map(|v| v.to_string()),
        }
    }

    /// `chain=../stage=../...` for the levels `table` uses; every level must be set.
    pub fn rel_dir(&self, table: Table) -> Result<PathBuf> {
        let mut dir = PathBuf::from(table.name());
        for &col in table.partition_cols() {
            let v = self.value(col).with_context(|| {
                format!(
                    "table {} needs `{}` to name a partition",
                    table.name(),
                    col.name()
                )
            })?;
            check_name(col.name(), &v)?;
            dir.push(format!("{}={v}", col.name()));
        }
        Ok(dir)
    }

    /// Parses the levels below a table directory (`chain=a/stage=b/...`).
    fn parse(table: Table, rel: &Path) -> Option<Self> {
        let mut key = PartitionKey::chain("");
        let parts: Vec<_> = rel
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if parts.len() != table.partition_cols().len() {
            return None;
        }
        for (col, part) in table.partition_cols().iter().zip(parts) {
            let v = part.strip_prefix(&format!("{}=", col.name()))?.to_string();
            match col {
                PartCol::Chain => key.chain = v,
                PartCol::Stage => key.stage = Some(v),
                PartCol::Layer => key.layer = Some(v.parse().ok()?),
                PartCol::K => key.k = Some(v.parse().ok()?),
            }
        }
        Some(key)
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chain={}", self.chain)?;
        if let Some(s) = &self.stage {
            write!(f, " stage={s}")?;
        }
        if let Some(l) = self.layer {
            write!(f, " layer={l}")?;
        }
        if let Some(k) = self.k {
            write!(f, " k={k}")?;
        }
        Ok(())
    }
}

/// Chain and stage names become directory names and SQL literals: keep them plain.
pub fn check_name(what: &str, v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && !v.starts_with(['.', '_'])
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        bail!("invalid {what} name {v:?}: use letters, digits, '_', '-' or '.', not starting with '.' or '_'");
    }
    Ok(())
}

/// A lake: a directory, or an object store with a local cache directory (`remote.rs`).
#[derive(Debug, Clone)]
pub struct Lake {
    /// The directory: the lake itself, or for an object store this machine's cache of it.
    root: PathBuf,
    /// Whether a command queues behind another doing the same work (`--wait`) or fails.
    wait: bool,
    remote: Option<std::sync::Arc<Remote>>,
}

/// The one data file a partition holds.
pub const PART_FILE: &str = "part-0.parquet";

impl Lake {
    /// A lake that commands will write into (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            wait: false,
            remote: None,
        }
    }

    /// The lake `--lake` names: a directory (or `file://` URL), or `s3://bucket/prefix`.
    pub fn at(location: &str) -> Result<Self> {
        if is_remote(location) {
            let remote = Remote::parse(location)?;
            Ok(Self {
                root: remote.default_cache(),
                wait: false,
                remote: Some(std::sync::Arc::new(remote)),
            })
        } else {
            Ok(Self::new(
                location.strip_prefix("file://").unwrap_or(location),
            ))
        }
    }

    /// The object store this lake lives on, if it is not a local directory.
    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_deref()
    }

    /// Where the lake is, for messages and for other processes: a path or an `s3://` URL.
    pub fn location(&self) -> String {
        match &self.remote {
            Some(r) => r.url().to_string(),
            None => self.root.display().to_string(),
        }
    }

    /// What names this lake across processes and machines: its `s3://` URL, or the directory's
    /// canonical path (so `lake` and `/work/lake` are one lake).
    pub fn identity(&self) -> String {
        match &self.remote {
            Some(r) => r.url().to_string(),
            None => std::fs::canonicalize(&self.root)
                .or_else(|_| std::path::absolute(&self.root))
                .unwrap_or_else(|_| self.root.clone())
                .display()
                .to_string(),
        }
    }

    /// Queue behind another command doing the same work instead of failing (`--wait`).
    pub fn waiting(self, wait: bool) -> Self {
        Self { wait, ..self }
    }

    pub fn wait(&self) -> bool {
        self.wait
    }

    /// This lake, which must already exist (for readers).
    pub fn existing(&self) -> Result<Self> {
        if let Some(r) = &self.remote {
            if !r.exists()? {
                bail!(
                    "no lake at {}: create one there with `saerl --lake {0} import ...` or `ingest`",
                    r.url()
                );
            }
            return Ok(self.clone());
        }
        Self::open(self.root.clone()).map(|l| l.waiting(self.wait))
    }

    /// A lake that must already exist (for readers): a directory a writer made a lake, or an
    /// empty one.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let lake = Self::new(root);
        lake.check_readable_dir()?;
        Ok(lake)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn table_dir(&self, table: Table) -> PathBuf {
        self.root.join(table.name())
    }

    pub fn partition_dir(&self, table: Table, key: &PartitionKey) -> Result<PathBuf> {
        Ok(self.root.join(key.rel_dir(table)?))
    }

    /// Where writers stage their output before the rename that publishes it.
    pub fn tmp_root(&self) -> PathBuf {
        self.root.join(".tmp")
    }

    /// Every complete partition of a table, sorted. A missing table has none. On an object
    /// store the paths are where the cache keeps them (see `data_dir`).
    pub fn partitions(&self, table: Table) -> Result<Vec<(PartitionKey, PathBuf)>> {
        let base = self.table_dir(table);
        let mut out = Vec::new();
        if let Some(r) = &self.remote {
            let files = r.table_files(table)?;
            let mut dirs: Vec<&str> = files
                .iter()
                .filter_map(|f| f.rel.rsplit_once('/').map(|(d, _)| d))
                .collect();
            dirs.sort_unstable();
            dirs.dedup();
            for d in dirs {
                let dir = self.root.join(d);
                let rel = Path::new(d)
                    .strip_prefix(table.name())
                    .unwrap_or(Path::new(""));
                match PartitionKey::parse(table, rel) {
                    Some(key) => out.push((key, dir)),
                    None => bail!(
                        "unexpected object {}/{d} in table {}",
                        r.url(),
                        table.name()
                    ),
                }
            }
            out.sort();
            return Ok(out);
        }
        if base.is_dir() {
            walk_partitions(table, &base, &base, 0, &mut out)?;
        }
        out.sort();
        Ok(out)
    }

    /// The Parquet files of a table (on an object store, fetched into the cache).
    pub fn files(&self, table: Table) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for (key, _) in self.partitions(table)? {
            files.extend(read::partition_files(&self.data_dir(table, &key)?)?);
        }
        files.sort();
        Ok(files)
    }

    pub fn has_partition(&self, table: Table, key: &PartitionKey) -> Result<bool> {
        match &self.remote {
            Some(r) => Ok(!r.partition_files(table, key)?.is_empty()),
            None => Ok(self.partition_dir(table, key)?.is_dir()),
        }
    }

    /// The directory holding partition `key`'s data files, for reading: on an object store,
    /// the cache's copy, brought up to date first (a missing partition gives a missing
    /// directory, as locally).
    pub fn data_dir(&self, table: Table, key: &PartitionKey) -> Result<PathBuf> {
        let dir = self.partition_dir(table, key)?;
        if let Some(r) = &self.remote {
            if self.has_partition(table, key)? {
                r.fetch_partition(table, key, &dir)?;
            } else if dir.is_dir() {
                // Gone from the store (a stale cache entry): readers must not see it.
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        Ok(dir)
    }
}

fn walk_partitions(
    table: Table,
    base: &Path,
    dir: &Path,
    depth: usize,
    out: &mut Vec<(PartitionKey, PathBuf)>,
) -> Result<()> {
    if depth == table.partition_cols().len() {
        let rel = dir.strip_prefix(base).unwrap();
        match PartitionKey::parse(table, rel) {
            Some(key) => out.push((key, dir.to_path_buf())),
            None => bail!(
                "unexpected directory {} in table {}",
                dir.display(),
                table.name()
            ),
        }
        return Ok(());
    }
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type()?.is_dir() && !name.starts_with(['.', '_']) {
            walk_partitions(table, base, &e.path(), depth + 1, out)?;
        }
    }
    Ok(())
}
