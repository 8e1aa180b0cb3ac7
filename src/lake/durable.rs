//! Durable file operations: what must survive a power cut is fsynced, files and the directories
//! that name them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

/// fsyncs a file (e.g. one another writer made, before it is renamed) or a directory (after
/// names in it changed).
pub fn sync_path(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

/// fsyncs every file under `dir`, then the directories themselves.
pub fn sync_tree(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            sync_tree(&e.path())?;
        } else {
            sync_path(&e.path())?;
        }
    }
    sync_path(dir)
}

/// A temporary name beside `dest`, unique per call: tasks of one process (an executor's) and
/// processes sharing a directory (the object-store cache) may write the same file at once. Not
/// `*.parquet`, so readers and the cache's clean-up pass over it.
pub fn unique_tmp(dest: &Path) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    dest.with_file_name(format!(".{name}.{}-{seq}.tmp", std::process::id()))
}

/// Replaces `path` with `bytes` all at once: a temporary file beside it, fsynced, renamed over
/// it, and the directory fsynced. A crash leaves the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("a file path has a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = unique_tmp(path);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()
    };
    write().with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    sync_path(dir)
}
