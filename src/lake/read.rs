//! Reading partitions back, with errors that name the file and the fix.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::handle::Lake;
use super::partition::PartitionKey;
use super::schema::Table;

pub(super) fn corrupt(path: &Path) -> String {
    format!(
        "corrupt or truncated Parquet file {}; re-run the command that wrote it with --overwrite, or delete its partition directory",
        path.display()
    )
}

/// Opens a Parquet file for page-level reading (the vector columns' fast path).
pub(super) fn open(path: &Path) -> Result<parquet::file::reader::SerializedFileReader<File>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    parquet::file::reader::SerializedFileReader::new(file).with_context(|| corrupt(path))
}

/// `batch` with each column of `table` it holds in the type saerl reads it as. A file another
/// engine wrote may store Utf8View or LargeUtf8 strings, other integer widths or f64 floats:
/// those convert when the values fit (an integer that does not is an error); anything else is
/// an error naming the file, the column and both types, never a panic further on.
pub fn conform(batch: RecordBatch, table: Table, file: &Path) -> Result<RecordBatch> {
    use arrow::compute::{can_cast_types, cast_with_options, CastOptions};
    use arrow::datatypes::{DataType, Field, Schema};
    let expected = table.file_schema(None);
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, col) in schema.fields().iter().zip(batch.columns()) {
        let Ok(want) = expected.field_with_name(field.name()) else {
            fields.push(field.as_ref().clone());
            columns.push(col.clone());
            continue;
        };
        let have = field.data_type();
        let float =
            |t: &DataType| matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64);
        let string =
            |t: &DataType| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
        // Vectors stay lists (fixed or not) but always of f32.
        let target = match (have, want.data_type()) {
            (DataType::FixedSizeList(item, w), DataType::List(_)) if float(item.data_type()) => {
                DataType::FixedSizeList(
                    Arc::new(Field::new("item", DataType::Float32, item.is_nullable())),
                    *w,
                )
            }
            (DataType::List(item) | DataType::LargeList(item), DataType::List(_))
                if float(item.data_type()) =>
            {
                DataType::List(Arc::new(Field::new(
                    "item",
                    DataType::Float32,
                    item.is_nullable(),
                )))
            }
            (h, w) if h.is_integer() && w.is_integer() => w.clone(),
            (h, w) if float(h) && float(w) => w.clone(),
            (h, w) if string(h) && string(w) => w.clone(),
            (h, w) => {
                if h != w {
                    anyhow::bail!(
                        "{}: column {} of table {} is {h}, expected {w}; rewrite the file with that type",
                        file.display(),
                        field.name(),
                        table.name()
                    );
                }
                w.clone()
            }
        };
        let col = match &target == have {
            true => col.clone(),
            false if can_cast_types(have, &target) => {
                let strict = CastOptions {
                    safe: false,
                    ..Default::default()
                };
                cast_with_options(col, &target, &strict).with_context(|| {
                    format!(
                        "{}: column {} is {have}, and its values do not fit {target}",
                        file.display(),
                        field.name()
                    )
                })?
            }
            false => anyhow::bail!(
                "{}: column {} is {have}, which saerl cannot read as {target}",
                file.display(),
                field.name()
            ),
        };
        fields.push(Field::new(field.name(), target, field.is_nullable()));
        columns.push(col);
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Runs `f`, which decodes `path`. The parquet crate asserts on some corrupt encodings (an
/// over-long varint in a level run, ...); such a panic becomes the corrupt-file error too.
pub(super) fn decoding<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(anyhow::anyhow!("{}", panic_text(&*p))).with_context(|| corrupt(path)),
    }
}

/// The message a caught panic carried.
pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| p.downcast_ref::<&str>().copied())
        .unwrap_or("a panic")
}

/// Validates a file's footer and returns its Arrow schema (cheap: reads only metadata).
pub fn check_parquet(path: &Path) -> Result<SchemaRef> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    decoding(path, || {
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).with_context(|| corrupt(path))?;
        Ok(builder.schema().clone())
    })
}

/// Reads a whole Parquet file.
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    decoding(path, || {
        ParquetRecordBatchReaderBuilder::try_new(file)
            .with_context(|| corrupt(path))?
            .build()
            .with_context(|| corrupt(path))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| corrupt(path))
    })
}

/// The paths in `dir` (none when it does not exist: a lake before its first commit).
pub(super) fn dir_entries(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    entries
        .map(|e| {
            Ok(e.with_context(|| format!("listing {}", dir.display()))?
                .path())
        })
        .collect()
}

/// The data files of a partition directory, in name order (`part-00000.parquet`, ...): those
/// of its newest commit, should a crash have left an older one's beside them (`pinned.rs`).
pub fn partition_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "parquet") {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            files.push((name, p));
        }
    }
    files.sort();
    Ok(
        super::pinned::visible(files, None, |(name, _)| name.as_str())
            .into_iter()
            .map(|(_, p)| p)
            .collect(),
    )
}

impl Lake {
    /// Reads one partition; a missing partition is an error naming what exists instead.
    pub fn read_partition(&self, table: Table, key: &PartitionKey) -> Result<Vec<RecordBatch>> {
        let dir = self.data_dir(table, key)?;
        if !dir.is_dir() {
            return Err(self.missing(table, key));
        }
        let mut out = Vec::new();
        for f in partition_files(&dir)? {
            for b in read_parquet(&f)? {
                out.push(conform(b, table, &f)?);
            }
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
            self.location(),
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
        // The partition's one file: `part-0.parquet`, or on an object store the copy published
        // by the commit this process reads (the cache holds only that one; see `pinned.rs`).
        let dir = self.data_dir(table, key)?;
        if !dir.is_dir() {
            return Err(self.missing(table, key));
        }
        let Some(path) = partition_files(&dir)?.pop() else {
            return Err(self.missing(table, key));
        };
        decoding(&path, || {
            if columns.iter().any(|c| table.vector_columns().contains(c)) {
                if let Some(batch) = read_columns_fast(&path, table, columns)? {
                    return Ok(batch);
                }
            }
            conform(read_columns_arrow(&path, columns)?, table, &path)
        })
    }
}

/// `read_columns` with the vector columns read page by page (`vectors::read_vectors`) and the
/// others through Arrow; None when a vector column is not laid out as saerl writes it.
fn read_columns_fast(path: &Path, table: Table, columns: &[&str]) -> Result<Option<RecordBatch>> {
    use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array};
    use parquet::file::reader::FileReader;
    let reader = open(path)?;
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
        false => Some(conform(read_columns_arrow(path, &others)?, table, path)?),
    };
    let mut arrays: Vec<ArrayRef> = Vec::new();
    let mut fields = Vec::new();
    for &c in columns {
        let field = schema
            .field_with_name(c)
            .with_context(|| format!("{} has no column {c}", path.display()))?;
        match &rest {
            Some(b) if others.contains(&c) => {
                // Conformed: its type may differ from the file's.
                let i = b.schema().index_of(c)?;
                arrays.push(b.column(i).clone());
                fields.push(b.schema().field(i).clone());
                continue;
            }
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

impl Lake {
    /// A content fingerprint of a partition, cheap to compute: each file's name, length and
    /// footer (which holds every column chunk's offsets and sizes, the statistics, and the
    /// `saerl.write_id` that makes each written file distinct). Rewritten data — even with the
    /// same row count — gives another fingerprint.
    pub fn partition_fingerprint(&self, table: Table, key: &PartitionKey) -> Result<String> {
        use std::hash::Hasher;
        use std::io::{Read, Seek, SeekFrom};
        let dir = self.data_dir(table, key)?;
        let mut h = twox_hash::XxHash64::with_seed(0);
        for path in partition_files(&dir)? {
            let mut f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            let len = f.metadata()?.len();
            // The last 8 bytes: the footer's length, then "PAR1".
            let mut tail = [0u8; 8];
            if len < 12 {
                anyhow::bail!(corrupt(&path));
            }
            f.seek(SeekFrom::Start(len - 8))?;
            f.read_exact(&mut tail)?;
            let footer = u32::from_le_bytes(tail[..4].try_into().unwrap()) as u64;
            if &tail[4..] != b"PAR1" || footer + 12 > len {
                anyhow::bail!(corrupt(&path));
            }
            let mut buf = vec![0u8; footer as usize];
            f.seek(SeekFrom::Start(len - 8 - footer))?;
            f.read_exact(&mut buf).with_context(|| corrupt(&path))?;
            h.write(path.file_name().unwrap().as_encoded_bytes());
            h.write_u64(len);
            h.write(&buf);
        }
        Ok(format!("{:016x}", h.finish()))
    }
}
