//! Atomic writes. A transaction stages every partition it writes under `<lake>/.tmp/`, and
//! `commit` renames them into place; dropping an uncommitted transaction leaves the lake as it
//! was. A partition directory therefore exists only when complete, and existing complete
//! partitions are never clobbered unless the transaction was opened with `overwrite`.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::{Lake, PartitionKey, Table, PART_FILE};

/// Rows per Parquet row group: bounds reader memory for wide vector columns.
pub const ROW_GROUP_ROWS: usize = 8192;

pub struct Txn {
    lake: Lake,
    dir: PathBuf,
    overwrite: bool,
    staged: Vec<Staged>,
}

struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    /// Derived tables (e.g. `stages`) may always be replaced.
    replace: bool,
    label: String,
}

/// Streams record batches into one staged partition file.
pub struct PartitionWriter {
    writer: ArrowWriter<File>,
    staged: Staged,
    rows: usize,
}

impl PartitionWriter {
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows();
        self.writer
            .write(batch)
            .with_context(|| format!("writing {}", self.staged.label))
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

pub fn writer_properties(table: Table) -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        // Float vectors do not repeat; trying a dictionary first only costs time.
        .set_dictionary_enabled(false)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
    // Trained weights and activations barely compress: store them plain and skip the codec
    // on every read (the drift scan is bound by decoding these columns).
    for col in table.vector_columns() {
        let path = ColumnPath::new(vec![col.to_string(), "list".into(), "item".into()]);
        props = props
            .set_column_compression(path.clone(), Compression::UNCOMPRESSED)
            .set_column_statistics_enabled(path, EnabledStatistics::None);
    }
    props.build()
}

impl Txn {
    pub fn begin(lake: &Lake, overwrite: bool) -> Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = lake.tmp_root().join(format!(
            "txn-{}-{nanos}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "creating {} (is the lake directory writable?)",
                dir.display()
            )
        })?;
        Ok(Self {
            lake: lake.clone(),
            dir,
            overwrite,
            staged: Vec::new(),
        })
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// Fails when the partition is complete and this transaction may not replace it.
    pub fn check_free(&self, table: Table, key: &PartitionKey) -> Result<()> {
        if !self.overwrite && self.lake.has_partition(table, key)? {
            bail!(
                "{} partition {key} already exists in {}; pass --overwrite to replace it",
                table.name(),
                self.lake.root().display()
            );
        }
        if self
            .staged
            .iter()
            .any(|s| s.dest == self.lake.partition_dir(table, key).unwrap())
        {
            bail!(
                "{} partition {key} is written twice by this command",
                table.name()
            );
        }
        Ok(())
    }

    /// Opens a staged partition for streaming writes.
    pub fn partition(
        &mut self,
        table: Table,
        key: &PartitionKey,
        schema: SchemaRef,
    ) -> Result<PartitionWriter> {
        self.check_free(table, key)?;
        self.open(table, key, schema, false)
    }

    fn open(
        &mut self,
        table: Table,
        key: &PartitionKey,
        schema: SchemaRef,
        replace: bool,
    ) -> Result<PartitionWriter> {
        let rel = key.rel_dir(table)?;
        let tmp = self.dir.join(&rel);
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let path = tmp.join(PART_FILE);
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let writer = ArrowWriter::try_new(file, schema, Some(writer_properties(table)))?;
        let staged = Staged {
            tmp,
            dest: self.lake.root().join(rel),
            replace,
            label: format!("{} {key}", table.name()),
        };
        Ok(PartitionWriter {
            writer,
            staged,
            rows: 0,
        })
    }

    /// Closes a partition's file and schedules it for publication at commit.
    pub fn finish(&mut self, w: PartitionWriter) -> Result<usize> {
        let label = w.staged.label.clone();
        w.writer
            .close()
            .with_context(|| format!("finishing {label}"))?;
        self.staged.push(w.staged);
        Ok(w.rows)
    }

    /// Writes a whole partition from batches.
    pub fn write(
        &mut self,
        table: Table,
        key: &PartitionKey,
        batches: &[RecordBatch],
    ) -> Result<usize> {
        let schema = batches
            .first()
            .map(|b| b.schema())
            .context("no batches to write")?;
        let mut w = self.partition(table, key, schema)?;
        for b in batches {
            w.write(b)?;
        }
        self.finish(w)
    }

    /// Stages a partition made of files written elsewhere (e.g. a resumable run's chunks);
    /// the files are moved, in order, and named `part-NNNNN.parquet`.
    pub fn adopt(&mut self, table: Table, key: &PartitionKey, files: &[PathBuf]) -> Result<()> {
        self.check_free(table, key)?;
        let rel = key.rel_dir(table)?;
        let tmp = self.dir.join(&rel);
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for (i, f) in files.iter().enumerate() {
            let dest = tmp.join(format!("part-{i:05}.parquet"));
            std::fs::rename(f, &dest)
                .with_context(|| format!("moving {} into the lake", f.display()))?;
        }
        self.staged.push(Staged {
            tmp,
            dest: self.lake.root().join(rel),
            replace: false,
            label: format!("{} {key}", table.name()),
        });
        Ok(())
    }

    /// Writes a partition that replaces the existing one even without `overwrite`
    /// (for tables derived from the others, such as `stages`).
    pub(super) fn write_replacing(
        &mut self,
        table: Table,
        key: &PartitionKey,
        batch: &RecordBatch,
    ) -> Result<()> {
        let mut w = self.open(table, key, batch.schema(), true)?;
        w.write(batch)?;
        self.finish(w).map(|_| ())
    }

    /// Publishes every staged partition. Checks all destinations before moving any.
    pub fn commit(mut self) -> Result<usize> {
        for s in &self.staged {
            if s.dest.exists() && !(s.replace || self.overwrite) {
                bail!("{} appeared while this command ran; nothing was written (re-run with --overwrite to replace it)", s.label);
            }
        }
        let trash = self.dir.join(".replaced");
        for (i, s) in self.staged.iter().enumerate() {
            if s.dest.exists() {
                std::fs::create_dir_all(&trash)?;
                std::fs::rename(&s.dest, trash.join(i.to_string()))
                    .with_context(|| format!("moving aside {}", s.dest.display()))?;
            }
            std::fs::create_dir_all(s.dest.parent().unwrap())?;
            std::fs::rename(&s.tmp, &s.dest)
                .with_context(|| format!("publishing {}", s.dest.display()))?;
        }
        Ok(std::mem::take(&mut self.staged).len())
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // Leave no empty .tmp behind; ignore failure when another writer is using it.
        let _ = std::fs::remove_dir(self.lake.tmp_root());
    }
}
