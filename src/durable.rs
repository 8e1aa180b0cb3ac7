//! Durable file operations: what must survive a power cut is fsynced, files and the directories
//! that name them. Every file saerl writes for keeps (lake data, checkpoints, exported SAEs,
//! models, reports) goes through `write_atomic` or, when it is produced as a stream,
//! `AtomicFile`: a unique temporary name beside the destination, fsynced, renamed over it, the
//! directory fsynced. A crash leaves the old file or the new one, never a torn one.

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

/// The directory holding `path` (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
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
    let dir = parent(path);
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

/// A file written as a stream under a unique temporary name and put in place by `finish`
/// (fsync, rename, directory fsync). Dropped unfinished, the temporary file is removed.
pub struct AtomicFile {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<Self> {
        let dir = parent(dest);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = unique_tmp(dest);
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Self {
            file: Some(file),
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    /// Where the file will be once finished.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// The temporary file, for writers that take a path (written before `finish`).
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Makes the written bytes durable and puts the file in place.
    pub fn finish(mut self) -> Result<()> {
        let file = self.file.take().context("finished twice")?;
        file.sync_all()
            .with_context(|| format!("syncing {}", self.tmp.display()))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("writing {}", self.dest.display()))?;
        sync_path(parent(&self.dest))
    }
}

impl std::io::Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(std::io::Error::other("the file is finished")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    #[test]
    fn a_streamed_file_appears_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        std::fs::write(&dest, b"old").unwrap();
        let mut f = super::AtomicFile::create(&dest).unwrap();
        f.write_all(b"new contents").unwrap();
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            b"old",
            "not in place before finish"
        );
        f.finish().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new contents");
        // Dropped unfinished: the old file stays and no temporary is left.
        let mut g = super::AtomicFile::create(&dest).unwrap();
        g.write_all(b"torn").unwrap();
        drop(g);
        assert_eq!(std::fs::read(&dest).unwrap(), b"new contents");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
