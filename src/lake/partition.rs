//! Partition keys: the values of a table's partition columns, and the directory they name.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::schema::{PartCol, Table};

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
    pub(super) fn parse(table: Table, rel: &Path) -> Option<Self> {
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

/// The one data file a partition holds.
pub const PART_FILE: &str = "part-0.parquet";
