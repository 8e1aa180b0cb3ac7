//! Reading partitions back, with errors that name the file and the fix.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{Lake, PartitionKey, Table, PART_FILE};

pub(super) fn corrupt(path: &Path) -> String {
    format!(
        "corrupt or truncated Parquet file {}; re-run the command that wrote it with --overwrite, or delete its partition directory",
        path.display()
    )
}

/// Validates a file's footer and returns its Arrow schema (cheap: reads only metadata).
pub fn check_parquet(path: &Path) -> Result<SchemaRef> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).with_context(|| corrupt(path))?;
    Ok(builder.schema().clone())
}

/// Reads a whole Parquet file.
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| corrupt(path))?
        .build()
        .with_context(|| corrupt(path))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| corrupt(path))
}

/// The data files of a partition directory, in name order (`part-00000.parquet`, ...).
pub fn partition_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "parquet") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

impl Lake {
    /// Reads one partition; a missing partition is an error naming what exists instead.
    pub fn read_partition(&self, table: Table, key: &PartitionKey) -> Result<Vec<RecordBatch>> {
        let dir = self.partition_dir(table, key)?;
        if !dir.is_dir() {
            return Err(self.missing(table, key));
        }
        let mut out = Vec::new();
        for f in partition_files(&dir)? {
            out.extend(read_parquet(&f)?);
        }
        Ok(out)
    }
}

impl Lake {
    /// The error for a missing partition, naming what exists instead.
    pub fn missing(&self, table: Table, key: &PartitionKey) -> anyhow::Error {
        let all = self.partitions(table).unwrap_or_default();
        let mut have: Vec<String> = all.iter().take(12).map(|(k, _)| k.to_string()).collect();
        if all.len() > have.len() {
            have.push(format!("… ({} in all)", all.len()));
        }
        anyhow::anyhow!(
            "no {} partition {key} in lake {}{}",
            table.name(),
            self.root().display(),
            if have.is_empty() {
                " (the table is empty)".to_string()
            } else {
                format!("; it has: {}", have.join(", "))
            }
        )
    }

    /// Reads only the named columns of a single-file partition (the SAE tables), as one batch.
    pub fn read_columns(
        &self,
        table: Table,
        key: &PartitionKey,
        columns: &[&str],
    ) -> Result<RecordBatch> {
        let path = self.partition_dir(table, key)?.join(PART_FILE);
        if !path.is_file() {
            anyhow::bail!(
                "no {} partition {key} in lake {}",
                table.name(),
                self.root().display()
            );
        }
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).with_context(|| corrupt(&path))?;
        let schema = builder.schema().clone();
        let roots = columns
            .iter()
            .map(|c| {
                schema
                    .index_of(c)
                    .with_context(|| format!("{} has no column {c}", path.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), roots.clone());
        // One batch for the whole file: no concatenation copy afterwards.
        let rows = builder.metadata().file_metadata().num_rows().max(1) as usize;
        let reader = builder
            .with_projection(mask)
            .with_batch_size(rows)
            .build()
            .with_context(|| corrupt(&path))?;
        let mut batches = reader
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| corrupt(&path))?;
        match batches.len() {
            1 => Ok(batches.pop().unwrap()),
            _ => Ok(arrow::compute::concat_batches(
                &std::sync::Arc::new(schema.project(&roots)?),
                &batches,
            )?),
        }
    }
}
