//! What makes a directory a lake.
//!
//! The first commit into a directory writes the marker `.saerl-lake`. A directory is a lake
//! when it holds the marker, or tables written by a saerl from before the marker; an empty or
//! missing one becomes a lake when a writer first commits to it. Anything else is refused, so
//! a `--lake` one level too high is an error, not an empty lake with `.locks/` left in the
//! user's directory.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::handle::Lake;
use super::schema::Table;
use crate::durable::write_atomic;

/// The marker file at the lake's root.
pub const MARKER: &str = ".saerl-lake";
/// The directories saerl itself keeps in a lake (locks, staging, `saerl run`'s measured rates).
const SAERL_DIRS: &[&str] = &[".locks", ".tmp", "_saerl", RUN_DIR];
/// Where `saerl run` keeps what it measured of this machine (step rates for its estimates).
pub const RUN_DIR: &str = ".run";

#[derive(Serialize)]
struct Marker {
    /// The layout's version: 2 since commits are numbered records (`store.rs`); a lake of
    /// version 1 reads the same, its unnumbered files counting as older than any record.
    format: u32,
}

/// What a local directory is, as a lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirKind {
    Missing,
    Empty,
    /// Has the marker.
    Lake,
    /// Has lake tables but no marker: written by a saerl from before the marker.
    Unmarked,
    /// Anything else: not a lake.
    Other,
}

/// Classifies `dir` (without creating anything).
pub fn dir_kind(dir: &Path) -> Result<DirKind> {
    if dir.join(MARKER).is_file() {
        return Ok(DirKind::Lake);
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DirKind::Missing),
        Err(_) if dir.exists() && !dir.is_dir() => return Ok(DirKind::Other),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut empty = true;
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        // What a writer leaves before its first commit (locks, staging) is not content, nor is
        // the marker's temporary file while another writer puts it in place.
        if SAERL_DIRS.contains(&name.as_str()) || name.contains(MARKER) {
            continue;
        }
        if e.file_type()?.is_dir() && Table::ALL.iter().any(|t| t.name() == name) {
            return Ok(DirKind::Unmarked);
        }
        empty = false;
    }
    Ok(if empty {
        DirKind::Empty
    } else {
        DirKind::Other
    })
}

/// The error for a directory that is not a lake, with the nearest lake below it if any.
fn not_a_lake(dir: &Path) -> anyhow::Error {
    let below = std::fs::read_dir(dir).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path())
            .find(|p| matches!(dir_kind(p), Ok(DirKind::Lake | DirKind::Unmarked)))
    });
    match below {
        Some(p) => anyhow::anyhow!(
            "{} is not a saerl lake (no {MARKER} and no lake tables in it); the lake is {}: pass --lake {1}",
            dir.display(),
            p.display()
        ),
        None => anyhow::anyhow!(
            "{} is not a saerl lake (no {MARKER} and no lake tables in it): point --lake / SAERL_LAKE at a lake, or at a new or empty directory for a writer to create one",
            dir.display()
        ),
    }
}

impl Lake {
    /// Checks that a reader may read this local directory as a lake: a lake, or an empty one.
    pub(super) fn check_readable_dir(&self) -> Result<()> {
        match dir_kind(self.root())? {
            DirKind::Lake | DirKind::Unmarked | DirKind::Empty => Ok(()),
            DirKind::Missing => bail!(
                "no lake at {}: create one with `saerl import pt ROOT --lake {0}` or `saerl demo`, or point --lake / SAERL_LAKE at an existing lake",
                self.root().display()
            ),
            DirKind::Other => Err(not_a_lake(self.root())),
        }
    }

    /// Checks that a writer may make this local directory a lake (its first commit writes the
    /// marker): a lake, or a new or empty directory. Writes nothing.
    pub(super) fn check_writable_dir(&self) -> Result<()> {
        if self.remote().is_some() {
            return Ok(());
        }
        match dir_kind(self.root())? {
            DirKind::Other => Err(not_a_lake(self.root())),
            _ => Ok(()),
        }
    }

    /// Writes the marker if this lake directory has none (a writer, before its commit record).
    pub(super) fn mark_lake(&self) -> Result<()> {
        let path = self.root().join(MARKER);
        if self.remote().is_some() || path.is_file() {
            return Ok(());
        }
        write_atomic(&path, &serde_json::to_vec(&Marker { format: 2 })?)
    }

    /// Whether this directory is a lake, or an empty one a writer may make one (so a reader
    /// may create the lock file that keeps it from seeing half of the first commit).
    pub(super) fn is_claimed(&self) -> bool {
        matches!(
            dir_kind(self.root()),
            Ok(DirKind::Lake | DirKind::Unmarked | DirKind::Empty)
        )
    }
}
