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

    /// Reads only the named columns of a single-file partition (the SAE tables), as one batch
    /// with the columns in the order asked for.
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
        if columns.iter().any(|c| table.vector_columns().contains(c)) {
            if let Some(batch) = read_columns_fast(&path, table, columns)? {
                return Ok(batch);
            }
        }
        read_columns_arrow(&path, columns)
    }
}

/// `read_columns` with the vector columns read page by page (`vectors::read_vectors`) and the
/// others through Arrow; None when a vector column is not laid out as saerl writes it.
fn read_columns_fast(path: &Path, table: Table, columns: &[&str]) -> Result<Option<RecordBatch>> {
    use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array};
    use parquet::file::reader::FileReader;
    let reader = super::vectors::open(path)?;
    let meta = reader.metadata().file_metadata();
    let schema =
        parquet::arrow::parquet_to_arrow_schema(meta.schema_descr(), meta.key_value_metadata())
            .with_context(|| corrupt(path))?;
    let others: Vec<&str> = columns
        .iter()
        .copied()
        .filter(|c| !table.vector_columns().contains(c))
        .collect();
    let rest = match others.is_empty() {
        true => None,
        false => Some(read_columns_arrow(path, &others)?),
    };
    let mut arrays: Vec<ArrayRef> = Vec::new();
    let mut fields = Vec::new();
    for &c in columns {
        let field = schema
            .field_with_name(c)
            .with_context(|| format!("{} has no column {c}", path.display()))?;
        match &rest {
            Some(b) if others.contains(&c) => arrays.push(b.column_by_name(c).unwrap().clone()),
            _ => {
                let Some(d) = super::vector_width(field.data_type()) else {
                    return Ok(None);
                };
                let mut values = Vec::new();
                for rg in 0..reader.metadata().num_row_groups() {
                    match super::vectors::read_vectors(&reader, rg, c, d as usize)? {
                        Some(v) if values.is_empty() => values = v,
                        Some(v) => values.extend_from_slice(&v),
                        None => return Ok(None),
                    }
                }
                let item = match field.data_type() {
                    arrow::datatypes::DataType::FixedSizeList(item, _)
                        if item.data_type() == &arrow::datatypes::DataType::Float32 =>
                    {
                        item.clone()
                    }
                    _ => return Ok(None),
                };
                arrays.push(std::sync::Arc::new(FixedSizeListArray::try_new(
                    item,
                    d,
                    std::sync::Arc::new(Float32Array::from(values)),
                    None,
                )?));
            }
        }
        fields.push(field.clone());
    }
    Ok(Some(RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
        arrays,
    )?))
}

/// `read_columns` through the Arrow reader.
fn read_columns_arrow(path: &Path, columns: &[&str]) -> Result<RecordBatch> {
    {
        let path = path.to_path_buf();
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
        let batch = match batches.len() {
            1 => batches.pop().unwrap(),
            _ => arrow::compute::concat_batches(
                &std::sync::Arc::new(schema.project(&roots)?),
                &batches,
            )?,
        };
        // Projected columns come in file order; hand them back in the order asked for.
        let order = columns
            .iter()
            .map(|c| batch.schema().index_of(c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(batch.project(&order)?)
    }
}
