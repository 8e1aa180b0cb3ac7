//! Atomic, durable commits, one protocol for a lake directory and an object store
//! (`store.rs`). A transaction stages every partition it writes under
//! `<lake>/_saerl/staging/<txn>/` (for an object store, in the local cache, then uploaded);
//! `commit` then:
//! 1. on a lake directory, takes the lake lock exclusively (`lock.rs`), so statements and other
//!    commits wait for the moment it takes to publish;
//! 2. rolls the lake forward, rewrites the derived `stages` partitions it touches (a
//!    read-modify-write of the last commit) and checks no destination appeared meanwhile;
//! 3. creates the next commit record: the commit point. Another writer that took the number
//!    first (only possible on an object store) sends it back to 2 with the next number;
//! 4. publishes the record's files into their partitions, marks it done, and deletes what it
//!    replaced (on an object store, once it is no longer read).
//!
//! A crash before 3 leaves the lake as it was (the staged directory is removed by the next
//! commit, once its owner's lock shows it dead); a crash after 3 is rolled forward by the next
//! reader or writer before it looks at any table.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::handle::Lake;
use super::lock::LockGuard;
use super::partition::{PartitionKey, PART_FILE};
use super::schema::Table;
use super::stages::StageRow;
use super::store::{rel_str, Record, Store, STAGING};

/// Rows per Parquet row group: bounds reader memory for wide vector columns.
pub const ROW_GROUP_ROWS: usize = 8192;

pub struct Txn {
    lake: Lake,
    dir: PathBuf,
    overwrite: bool,
    staged: Vec<Staged>,
    /// Rows for the `stages` table, merged into it at commit under the lake lock.
    stage_rows: Vec<StageRow>,
    /// Whether its commit record exists but is not yet published: then its staged files are
    /// the record's, and stay for whoever rolls it forward.
    recorded: bool,
    /// Marks the transaction directory as alive (see `roll_forward`).
    _owner: LockGuard,
}

const TXN_PREFIX: &str = "txn-";
/// The lock a live transaction holds in its directory.
const OWNER_LOCK: &str = ".lock";

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

/// How every lake file is written. Each file gets a unique `saerl.write_id` in its footer, so a
/// fingerprint of the footers changes whenever data is rewritten, even with the same shape.
pub fn writer_properties(table: Table) -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "saerl.write_id".to_string(),
            unique_id(),
        )]))
        .set_compression(Compression::SNAPPY)
        // Float vectors do not repeat; trying a dictionary first only costs time.
        .set_dictionary_enabled(false)
        .set_max_row_group_row_count(Some(match table {
            // A feature page reads one feature's rows: small row groups, pruned by `feature`.
            Table::FeatureExamples => ROW_GROUP_ROWS / 8,
            _ => ROW_GROUP_ROWS,
        }));
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

/// `pid-nanoseconds-sequence`: unique across the processes writing one lake.
fn unique_id() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

impl Txn {
    pub fn begin(lake: &Lake, overwrite: bool) -> Result<Self> {
        lake.check_writable_dir()?;
        let dir = lake
            .root()
            .join(STAGING)
            .join(format!("{TXN_PREFIX}{}", unique_id()));
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "creating {} (is the lake directory writable?)",
                dir.display()
            )
        })?;
        let owner = lake.lock_work(&dir.join(OWNER_LOCK), "staging this transaction")?;
        Ok(Self {
            lake: lake.clone(),
            dir,
            overwrite,
            staged: Vec::new(),
            stage_rows: Vec::new(),
            recorded: false,
            _owner: owner,
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
                self.lake.location()
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

    /// Stages a partition made of files written elsewhere (e.g. a resumable run's chunks),
    /// in order, named `part-NNNNN.parquet`. They are hard-linked, so the originals stay
    /// resumable work until the commit is done.
    pub fn adopt(&mut self, table: Table, key: &PartitionKey, files: &[PathBuf]) -> Result<()> {
        self.check_free(table, key)?;
        let rel = key.rel_dir(table)?;
        let tmp = self.dir.join(&rel);
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for (i, f) in files.iter().enumerate() {
            let dest = tmp.join(format!("part-{i:05}.parquet"));
            std::fs::hard_link(f, &dest)
                .with_context(|| format!("staging {} for the lake", f.display()))?;
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

    /// Adds or updates rows of the `stages` table when the transaction commits (the merge,
    /// and its checks, happen then, under the lake lock).
    pub fn upsert_stages(&mut self, rows: &[StageRow]) {
        self.stage_rows.extend_from_slice(rows);
    }

    /// Publishes every staged partition at once (see the module comment); returns how many.
    pub fn commit(mut self) -> Result<usize> {
        let _lock = self.lake.lock_commit()?;
        self.lake.roll_forward()?;
        let store = self.lake.store.clone();
        let txn = self.dir.file_name().unwrap().to_string_lossy().into_owned();
        self.lake.mark_lake()?;
        let result = self.record(&store, &txn);
        if result.is_err() && !self.recorded && !store.has_record_of(&txn)? {
            store.discard(&txn);
        }
        result?;
        // Deletes what this commit replaced, where that may happen at once.
        self.lake.roll_forward()?;
        Ok(self.staged.len())
    }

    /// Steps 2 to 4: stages the partitions on the store, then takes the next commit record;
    /// a lost race re-reads the lake, re-merges `stages` and re-checks the destinations
    /// before trying the number after.
    fn record(&mut self, store: &Store, txn: &str) -> Result<()> {
        let root = self.lake.root().to_path_buf();
        let rel = |p: &Path| -> Result<String> { Ok(rel_str(p.strip_prefix(&root)?)) };
        let rows = std::mem::take(&mut self.stage_rows);
        let mut moves = Vec::new();
        for s in &self.staged {
            moves.push(store.stage_partition(txn, &s.tmp, &rel(&s.dest)?)?);
        }
        let data = self.staged.len();
        loop {
            let head = store.snapshot()?;
            self.staged.truncate(data);
            moves.truncate(data);
            if !rows.is_empty() {
                self.stage_merged_stages(&rows)?;
                for s in &self.staged[data..] {
                    moves.push(store.stage_partition(txn, &s.tmp, &rel(&s.dest)?)?);
                }
            }
            let fresh: Vec<_> = self
                .staged
                .iter()
                .filter(|s| !(s.replace || self.overwrite))
                .collect();
            let dests = fresh
                .iter()
                .map(|s| rel(&s.dest))
                .collect::<Result<Vec<_>>>()?;
            if let Some(i) = store.first_occupied(&dests)? {
                bail!("{} appeared in {} while this command ran; nothing was written (re-run with --overwrite to replace it)", fresh[i].label, store.url());
            }
            crate::fault::point("commit.staged");
            let record = Record {
                txn: txn.to_string(),
                moves,
            };
            if store.try_record(head + 1, &record)? {
                self.recorded = true;
                crate::fault::point("commit.recorded");
                store.publish(head + 1, &record)?;
                self.recorded = false;
                return Ok(());
            }
            moves = record.moves;
        }
    }
}

impl Lake {
    /// Completes every commit a crashed writer left half-published (on a lake directory the
    /// caller holds the lake lock exclusively), and removes the staged data of transactions
    /// whose writer died before committing.
    pub(super) fn roll_forward(&self) -> Result<()> {
        self.store.roll_forward()?;
        for dir in super::read::dir_entries(&self.root().join(STAGING))? {
            let Ok(owner) = File::open(dir.join(OWNER_LOCK)) else {
                continue;
            };
            // A live writer holds its transaction's lock; a dead one's was released.
            if owner.try_lock().is_ok() {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        Ok(())
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        // A recorded transaction whose publication failed midway keeps its staged files for
        // whoever rolls it forward (on an object store they were uploaded: the cache's copy
        // may go); anything else is discarded.
        if self.recorded && self.lake.remote().is_none() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // Leave no empty staging directory behind; fails while another writer stages there.
        let _ = std::fs::remove_dir(self.lake.root().join(STAGING));
    }
}
