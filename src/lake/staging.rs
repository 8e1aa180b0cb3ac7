//! Work in progress under `<lake>/.tmp/`, kept between runs so an interrupted command resumes:
//! an ingest's finished chunk files and a training run's epoch checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::handle::Lake;
use super::partition::PartitionKey;

/// The chunk files of an interrupted ingest of one (chain, stage).
pub struct IngestStaging {
    dir: PathBuf,
    lock: PathBuf,
}

impl IngestStaging {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the staged chunks were made with (a resumed run must match it).
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }

    /// Chunk `chunk` of block `layer`; it exists only once complete.
    pub fn chunk(&self, layer: usize, chunk: usize) -> PathBuf {
        self.dir
            .join(format!("layer={layer}"))
            .join(format!("part-{chunk:05}.parquet"))
    }

    /// The lock held by the command doing this ingest.
    pub fn lock_file(&self) -> &Path {
        &self.lock
    }

    /// Writes `text` as the manifest atomically and durably.
    pub fn write_manifest(&self, text: &str) -> Result<()> {
        crate::durable::write_atomic(&self.manifest(), text.as_bytes())
    }
}

impl Lake {
    pub fn ingest_staging(&self, chain: &str, stage: &str) -> IngestStaging {
        let name = format!("ingest-{chain}-{stage}");
        IngestStaging {
            dir: self.tmp_root().join(&name),
            lock: self.locks_dir().join(format!("{name}.lock")),
        }
    }

    /// The lock held by the command training a chain's SAEs at one layer and k (they warm-start
    /// one another, so they are one piece of work).
    pub fn train_lock(&self, key: &PartitionKey) -> PathBuf {
        self.locks_dir().join(format!(
            "train-{}-layer{}-k{}.lock",
            key.chain,
            key.layer.unwrap_or(0),
            key.k.unwrap_or(0)
        ))
    }

    /// The epoch checkpoint of the SAE `key` being trained.
    pub fn train_checkpoint(&self, key: &PartitionKey) -> PathBuf {
        self.tmp_root()
            .join(format!(
                "train-{}-{}-layer{}-k{}",
                key.chain,
                key.stage.as_deref().unwrap_or(""),
                key.layer.unwrap_or(0),
                key.k.unwrap_or(0)
            ))
            .join("checkpoint.safetensors")
    }

    /// Removes a finished piece of work in progress, and `.tmp` itself once it is empty.
    pub fn clear_staging(&self, dir: &Path) -> Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let _ = std::fs::remove_dir(self.tmp_root()); // fails while other work is staged there
        Ok(())
    }
}
