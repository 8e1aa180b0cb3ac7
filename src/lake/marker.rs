//! What makes a directory a lake, and the lake's commit count.
//!
//! The first commit into a directory writes the marker `.saerl-lake`; every commit rewrites it
//! (atomically, under the exclusive lake lock) with one more commit counted, so a long-lived
//! session sees that the lake changed by reading one small file per statement and re-reads
//! table footers only then. A directory is a lake when it holds the marker, or tables written
//! by a saerl from before the marker; an empty or missing one becomes a lake when a writer
//! first commits to it. Anything else is refused, so a `--lake` one level too high is an error,
//! not an empty lake with `.locks/` left in the user's directory.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::handle::Lake;
use super::schema::Table;
use crate::durable::write_atomic;

/// The marker file at the lake's root.
pub const MARKER: &str = ".saerl-lake";
/// The directories saerl itself keeps in a lake (locks, staging, `saerl run`'s measured rates).
const SAERL_DIRS: &[&str] = &[".locks", ".tmp", RUN_DIR];
/// Where `saerl run` keeps what it measured of this machine (step rates for its estimates).
pub const RUN_DIR: &str = ".run";

#[derive(Serialize, Deserialize, Default)]
struct Marker {
    /// The layout's version.
    format: u32,
    /// Commits published so far (rolled-forward ones included).
    commits: u64,
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

    fn read_marker(&self) -> Result<Option<Marker>> {
        let path = self.root().join(MARKER);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
                format!(
                    "{} is damaged: write `{{\"format\": 1, \"commits\": 0}}` into it",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn write_marker(&self, m: &Marker) -> Result<()> {
        write_atomic(&self.root().join(MARKER), &serde_json::to_vec(m)?)
    }

    /// Counts one more commit; the caller holds the lake lock exclusively.
    pub(super) fn count_commit(&self) -> Result<()> {
        let mut m = self.read_marker()?.unwrap_or(Marker {
            format: 1,
            commits: 0,
        });
        m.commits += 1;
        self.write_marker(&m)
    }

    /// How many commits this local lake has seen (0 for a lake without a marker).
    pub(super) fn local_generation(&self) -> Result<u64> {
        Ok(self.read_marker()?.map_or(0, |m| m.commits))
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
