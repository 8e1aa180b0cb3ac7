//! Work in progress under `<lake>/.tmp/`, kept between runs so an interrupted command resumes:
//! an ingest's finished chunk files and a training run's epoch checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{Lake, PartitionKey};

/// The chunk files of an interrupted ingest of one (chain, stage).
pub struct IngestStaging {
    dir: PathBuf,
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

    /// Writes `text` as the manifest atomically (temporary file, then rename).
    pub fn write_manifest(&self, text: &str) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let tmp = self.dir.join("manifest.json.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.manifest())
            .with_context(|| format!("writing {}", self.manifest().display()))
    }
}

impl Lake {
    pub fn ingest_staging(&self, chain: &str, stage: &str) -> IngestStaging {
        IngestStaging {
            dir: self.tmp_root().join(format!("ingest-{chain}-{stage}")),
        }
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
