//! The lake handle: where a lake is (a directory, or an object store and its local cache) and
//! which partitions its tables hold.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::partition::PartitionKey;
use super::read;
use super::schema::Table;
use super::store::{is_remote, Store};

/// A lake: a directory, or an object store with a local cache directory (`store.rs`).
#[derive(Debug, Clone)]
pub struct Lake {
    /// The directory: the lake itself, or for an object store this machine's cache of it.
    pub(super) root: PathBuf,
    /// Whether a command queues behind another doing the same work (`--wait`) or fails.
    pub(super) wait: bool,
    /// Where the tables live and commits are recorded: the directory itself, or the store.
    pub(super) store: Arc<Store>,
}

impl Lake {
    /// A lake that commands will write into (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self {
            store: Arc::new(Store::directory(&root)),
            root,
            wait: false,
        }
    }

    /// The lake `--lake` names: a directory (or `file://` URL), or `s3://bucket/prefix`.
    pub fn at(location: &str) -> Result<Self> {
        if is_remote(location) {
            let remote = Store::parse(location)?;
            Ok(Self {
                root: remote.default_cache(),
                wait: false,
                store: Arc::new(remote),
            })
        } else {
            Ok(Self::new(
                location.strip_prefix("file://").unwrap_or(location),
            ))
        }
    }

    /// The object store this lake lives on, if it is not a local directory.
    pub fn remote(&self) -> Option<&Store> {
        Some(self.store.as_ref()).filter(|s| !s.is_local())
    }

    /// An object store for the SQL engine's listing tables, whose listings show the commit
    /// the last statement pinned (`read_guard`).
    pub fn sql_store(&self) -> Result<Arc<dyn object_store::ObjectStore>> {
        self.store.sql_store()
    }

    /// Where the lake is, for messages and for other processes: a path or an `s3://` URL.
    pub fn location(&self) -> String {
        match self.remote() {
            Some(r) => r.url().to_string(),
            None => self.root.display().to_string(),
        }
    }

    /// What names this lake across processes and machines: its `s3://` URL, or the directory's
    /// canonical path (so `lake` and `/work/lake` are one lake).
    pub fn identity(&self) -> String {
        match self.remote() {
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
        if let Some(r) = self.remote() {
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

    /// Where resumable work in progress is kept (`staging.rs`); commits stage elsewhere.
    pub fn tmp_root(&self) -> PathBuf {
        self.root.join(".tmp")
    }

    /// Every complete partition of a table, sorted. A missing table has none. On an object
    /// store the paths are where the cache keeps them (see `data_dir`).
    pub fn partitions(&self, table: Table) -> Result<Vec<(PartitionKey, PathBuf)>> {
        let base = self.table_dir(table);
        let mut out = Vec::new();
        if let Some(r) = self.remote() {
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
        match self.remote() {
            Some(r) => Ok(!r.partition_files(table, key)?.is_empty()),
            None => Ok(self.partition_dir(table, key)?.is_dir()),
        }
    }

    /// The directory holding partition `key`'s data files, for reading: on an object store,
    /// the cache's copy, brought up to date first (a missing partition gives a missing
    /// directory, as locally).
    pub fn data_dir(&self, table: Table, key: &PartitionKey) -> Result<PathBuf> {
        let dir = self.partition_dir(table, key)?;
        if let Some(r) = self.remote() {
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
