//! Advisory locks (the standard library's `flock`), so that writers never lose each other's
//! rows and readers never see half a commit:
//! - the lake lock `<lake>/.locks/lake.lock` (a lake directory's; an object store has none): a
//!   commit holds it exclusively while it publishes (and while it rewrites the derived `stages`
//!   table, a read-modify-write), so what it replaces can go at once; a reader holds it shared
//!   for one statement. Both holds are short, so neither side waits for the other's run.
//! - a work lock per piece of resumable work (an ingest of one stage, the training of one chain's
//!   layer and k), also under `.locks/`: held for the whole run, so a second command doing the
//!   same work fails clearly, or waits with `--wait`. Lock files stay, so waiters always lock the
//!   same file.
//!
//! A process killed while holding a lock releases it with its file descriptors.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::handle::Lake;

/// One statement's view of the lake: the shared lake lock (when the lake has one) and the
/// commit the lake was at when it was taken.
#[derive(Debug)]
pub struct Snapshot {
    _lock: Option<LockGuard>,
    generation: u64,
}

impl Snapshot {
    /// The lake's last commit record's number when the view was taken.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

fn open_lock_file(path: &Path, writable: bool) -> Result<Option<File>> {
    if writable {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    match OpenOptions::new()
        .read(true)
        .write(writable)
        .create(writable)
        .truncate(false)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        // A reader of a lake it may not write to, or one no writer has touched yet: nothing to
        // coordinate with.
        Err(e) if !writable && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("opening the lock file {}", path.display())),
    }
}

/// Takes `file`'s lock, saying what it waits for when the lock is busy for more than a moment.
fn acquire(file: File, shared: bool, what: &str) -> Result<LockGuard> {
    let try_it = |f: &File| {
        if shared {
            f.try_lock_shared()
        } else {
            f.try_lock()
        }
    };
    for _ in 0..20 {
        match try_it(&file) {
            Ok(()) => return Ok(LockGuard { _file: file }),
            Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(50)),
            Err(TryLockError::Error(e)) => return Err(e).context(format!("locking {what}")),
        }
    }
    eprintln!("waiting for {what} ...");
    if shared {
        file.lock_shared()
    } else {
        file.lock()
    }
    .with_context(|| format!("locking {what}"))?;
    Ok(LockGuard { _file: file })
}

impl Lake {
    fn lock_path(&self) -> PathBuf {
        self.locks_dir().join("lake.lock")
    }

    /// Where lock files live (they stay: waiters must always lock the same file).
    pub(super) fn locks_dir(&self) -> PathBuf {
        self.root().join(".locks")
    }

    /// The lake lock, exclusively: for publishing a commit or rolling one forward.
    pub(super) fn lock_exclusive(&self) -> Result<LockGuard> {
        let file = open_lock_file(&self.lock_path(), true)?.expect("created");
        acquire(
            file,
            false,
            &format!(
                "the lake lock {} (another saerl is committing, or a query is reading)",
                self.lock_path().display()
            ),
        )
    }

    /// The lake lock for a commit: exclusive on a lake directory; none on an object store,
    /// whose commit records order writers and whose readers pin a commit (`store.rs`).
    pub(super) fn lock_commit(&self) -> Result<Option<LockGuard>> {
        match self.remote() {
            Some(_) => Ok(None),
            None => self.lock_exclusive().map(Some),
        }
    }

    /// A consistent view of the lake for one read, pinned to its last commit after rolling
    /// forward any a crashed writer left half-published. On a lake directory it holds the lake
    /// lock shared, so no commit is published meanwhile. A reader creates nothing outside a
    /// lake: only in a lake, or an empty directory a writer may make one, does it create the
    /// lock file; elsewhere (or where it may not write) it reads without a lock, as no saerl
    /// writer can be there, and without completing what it may not.
    pub fn read_guard(&self) -> Result<Snapshot> {
        if let Some(r) = self.remote() {
            return Ok(Snapshot {
                _lock: None,
                generation: r.snapshot()?,
            });
        }
        loop {
            let writable = self.is_claimed()
                && std::fs::metadata(self.root())
                    .map(|m| !m.permissions().readonly())
                    .unwrap_or(false);
            let Some(file) = open_lock_file(&self.lock_path(), writable)? else {
                return Ok(Snapshot {
                    _lock: None,
                    generation: self.store.pin_published()?,
                });
            };
            let guard = acquire(
                file,
                true,
                &format!(
                    "the lake lock {} (another saerl is publishing a commit)",
                    self.lock_path().display()
                ),
            )?;
            if let Some(generation) = self.store.pin_if_complete()? {
                return Ok(Snapshot {
                    _lock: Some(guard),
                    generation,
                });
            }
            drop(guard);
            self.recover()?;
        }
    }

    /// Which commit the lake is at (changes with every commit; the pinned one while a
    /// statement reads), without taking a lock.
    pub fn generation(&self) -> Result<u64> {
        self.store.generation()
    }

    /// Completes any commit a crashed writer left half-published, so that a command sees the
    /// lake as it was committed before it plans its work. Writers call it first; it refuses a
    /// directory that is neither a lake nor new or empty.
    pub fn recover(&self) -> Result<()> {
        self.check_writable_dir()?;
        if let Some(r) = self.remote() {
            r.snapshot()?;
        } else if self.root().is_dir() && self.store.pin_if_complete()?.is_none() {
            let _x = self.lock_exclusive()?;
            self.roll_forward()?;
        }
        Ok(())
    }

    /// The lock of one piece of resumable work (lock file `path`), held for a whole run.
    /// Busy: an error naming the work, or with `wait` a message and a wait.
    pub fn lock_work(&self, path: &Path, what: &str) -> Result<LockGuard> {
        let file = open_lock_file(path, true)?.expect("created");
        match file.try_lock() {
            Ok(()) => Ok(LockGuard { _file: file }),
            Err(TryLockError::WouldBlock) if self.wait() => {
                eprintln!("another saerl is {what} in this lake; waiting for it (--wait) ...");
                file.lock().with_context(|| format!("locking {}", path.display()))?;
                Ok(LockGuard { _file: file })
            }
            Err(TryLockError::WouldBlock) => bail!(
                "another saerl is {what} in {} (lock {}); wait for it to finish, or pass --wait to queue behind it",
                self.root().display(),
                path.display()
            ),
            Err(TryLockError::Error(e)) => Err(e).context(format!("locking {}", path.display())),
        }
    }
}
