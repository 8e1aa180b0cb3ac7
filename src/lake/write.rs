//! Atomic, durable commits. A transaction stages every partition it writes under
//! `<lake>/.tmp/txn-*/`; `commit` then, holding the lake lock:
//! 1. rewrites the derived `stages` partitions it touches (a read-modify-write, so under the lock),
//! 2. checks no destination appeared meanwhile, fsyncs every staged file and directory,
//! 3. writes the commit record `COMMIT` (temporary file, fsync, rename, fsync): the commit point,
//! 4. publishes: moves each replaced partition aside into the transaction directory and renames
//!    the staged one into place, then fsyncs the parent directories,
//! 5. deletes the record, then the replaced data.
//!
//! A crash before 3 leaves the lake as it was (the staged directory is removed by the next
//! commit, once its owner's lock shows it dead); a crash after 3 is rolled forward by the next
//! reader or writer (`roll_forward`, idempotent) before it looks at any table. Readers hold the
//! lake lock shared for a statement, so SQL sees every transaction whole or not at all.

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
use serde::{Deserialize, Serialize};

use super::handle::Lake;
use super::lock::LockGuard;
use super::partition::{PartitionKey, PART_FILE};
use super::remote::{rel_str, Remote, RemoteRecord};
use super::schema::Table;
use super::stages::StageRow;
use crate::durable::{sync_path, sync_tree, write_atomic};

/// Rows per Parquet row group: bounds reader memory for wide vector columns.
pub const ROW_GROUP_ROWS: usize = 8192;

pub struct Txn {
    lake: Lake,
    dir: PathBuf,
    overwrite: bool,
    staged: Vec<Staged>,
    /// Rows for the `stages` table, merged into it at commit under the lake lock.
    stage_rows: Vec<StageRow>,
    /// Marks the transaction directory as alive (see `roll_forward`).
    _owner: LockGuard,
}

/// The file whose presence in a transaction directory means "committed".
const COMMIT_RECORD: &str = "COMMIT";
const TXN_PREFIX: &str = "txn-";
/// The lock a live transaction holds in its directory.
const OWNER_LOCK: &str = ".lock";

/// What a committed transaction publishes, as paths relative to the lake root.
#[derive(Serialize, Deserialize)]
struct Record {
    moves: Vec<Move>,
}

#[derive(Serialize, Deserialize)]
struct Move {
    staged: PathBuf,
    dest: PathBuf,
    /// Where the partition it replaces is kept until the commit is complete.
    aside: PathBuf,
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
        let dir = lake.tmp_root().join(format!("{TXN_PREFIX}{}", unique_id()));
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
        let _lock = self.lake.lock_exclusive()?;
        self.lake.roll_forward()?;
        if let Some(remote) = self.lake.remote.clone() {
            // The store's commit is the one that counts; the cache then takes the same files.
            self.commit_remote(&remote)?;
        } else {
            let rows = std::mem::take(&mut self.stage_rows);
            if !rows.is_empty() {
                self.stage_merged_stages(&rows)?;
            }
            for s in &self.staged {
                if s.dest.exists() && !(s.replace || self.overwrite) {
                    bail!("{} appeared while this command ran; nothing was written (re-run with --overwrite to replace it)", s.label);
                }
            }
        }
        crate::fault::point("commit.staged");
        let root = self.lake.root().to_path_buf();
        let rel = |p: &Path| p.strip_prefix(&root).map(Path::to_path_buf);
        let mut moves = Vec::new();
        for (i, s) in self.staged.iter().enumerate() {
            sync_tree(&s.tmp)?;
            moves.push(Move {
                staged: rel(&s.tmp)?,
                dest: rel(&s.dest)?,
                aside: rel(&self.dir.join(".replaced").join(i.to_string()))?,
            });
        }
        let record = serde_json::to_vec(&Record { moves })?;
        write_atomic(&self.dir.join(COMMIT_RECORD), &record)?;
        crate::fault::point("commit.recorded");
        self.lake.finish_commit(&self.dir)?;
        Ok(std::mem::take(&mut self.staged).len())
    }
}

impl Txn {
    /// The commit on an object store (see `remote.rs`): upload the staged partitions, then race
    /// for the next commit record; a lost race re-reads the lake, re-merges `stages` and
    /// re-checks the destinations before trying the next number.
    fn commit_remote(&mut self, remote: &Remote) -> Result<()> {
        let txn = self.dir.file_name().unwrap().to_string_lossy().into_owned();
        let result = self.record_remote(remote, &txn);
        if result.is_err() && !remote.has_record_of(&txn)? {
            remote.discard(&txn);
        }
        result
    }

    fn record_remote(&mut self, remote: &Remote, txn: &str) -> Result<()> {
        let root = self.lake.root().to_path_buf();
        let rel = |p: &Path| -> Result<String> { Ok(rel_str(p.strip_prefix(&root)?)) };
        let rows = std::mem::take(&mut self.stage_rows);
        let mut moves = Vec::new();
        for s in &self.staged {
            moves.push(remote.stage_partition(txn, &s.tmp, &rel(&s.dest)?)?);
        }
        crate::fault::point("remote.staged");
        let data = self.staged.len();
        loop {
            let head = remote.snapshot()?;
            self.staged.truncate(data);
            moves.truncate(data);
            if !rows.is_empty() {
                self.stage_merged_stages(&rows)?;
                for s in &self.staged[data..] {
                    moves.push(remote.stage_partition(txn, &s.tmp, &rel(&s.dest)?)?);
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
            if let Some(i) = remote.first_occupied(&dests)? {
                bail!("{} appeared in {} while this command ran; nothing was written (re-run with --overwrite to replace it)", fresh[i].label, remote.url());
            }
            let record = RemoteRecord {
                txn: txn.to_string(),
                moves,
            };
            if remote.try_record(head + 1, &record)? {
                crate::fault::point("remote.recorded");
                return remote.publish(head + 1, &record);
            }
            moves = record.moves;
        }
    }
}

impl Lake {
    /// Whether a crashed writer left a committed transaction half-published.
    pub(super) fn has_pending_commits(&self) -> Result<bool> {
        Ok(self
            .txn_dirs()?
            .iter()
            .any(|d| d.join(COMMIT_RECORD).exists()))
    }

    fn txn_dirs(&self) -> Result<Vec<PathBuf>> {
        let tmp = self.tmp_root();
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&tmp) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("listing {}", tmp.display())),
        };
        for e in entries {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with(TXN_PREFIX) {
                out.push(e.path());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Completes every committed transaction a crashed writer left half-published, and removes
    /// the staged data of transactions whose writer died before committing. The caller holds
    /// the lake lock exclusively.
    pub(super) fn roll_forward(&self) -> Result<()> {
        for dir in self.txn_dirs()? {
            if dir.join(COMMIT_RECORD).exists() {
                eprintln!(
                    "completing a commit interrupted by a crash ({})",
                    dir.display()
                );
                self.finish_commit(&dir)?;
            } else if let Ok(owner) = std::fs::File::open(dir.join(OWNER_LOCK)) {
                // A live writer holds its transaction's lock; a dead one's was released.
                if owner.try_lock().is_ok() {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        Ok(())
    }

    /// Step 4 and 5 of a commit whose record is written; safe to repeat after a crash.
    fn finish_commit(&self, dir: &Path) -> Result<()> {
        let path = dir.join(COMMIT_RECORD);
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let record: Record = serde_json::from_slice(&text).with_context(|| {
            format!(
                "{} is not a commit record; move it away to discard that commit",
                path.display()
            )
        })?;
        // Counted before publishing, under the exclusive lock: a session sees the new count only
        // with the whole commit, and a crash here is counted again when rolled forward.
        self.count_commit()?;
        let root = self.root();
        let mut parents = Vec::new();
        for m in &record.moves {
            let (staged, dest, aside) = (
                root.join(&m.staged),
                root.join(&m.dest),
                root.join(&m.aside),
            );
            if !staged.exists() {
                continue; // published before the crash
            }
            if dest.exists() {
                if aside.exists() {
                    bail!(
                        "cannot complete the commit {}: {} and {} both exist; move one away",
                        path.display(),
                        dest.display(),
                        aside.display()
                    );
                }
                std::fs::create_dir_all(aside.parent().unwrap())?;
                std::fs::rename(&dest, &aside)
                    .with_context(|| format!("moving aside {}", dest.display()))?;
            }
            let parent = dest.parent().unwrap().to_path_buf();
            std::fs::create_dir_all(&parent)?;
            std::fs::rename(&staged, &dest)
                .with_context(|| format!("publishing {}", dest.display()))?;
            crate::fault::point("commit.publish");
            parents.push(parent);
        }
        parents.sort();
        parents.dedup();
        for p in &parents {
            sync_path(p)?;
        }
        // Durable: now the record and the replaced partitions may go.
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        sync_path(dir)?;
        crate::fault::point("commit.published");
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        // A committed transaction whose publication failed midway keeps its directory (the
        // staged and the replaced partitions) for `roll_forward`; anything else is discarded.
        if self.dir.join(COMMIT_RECORD).exists() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // Leave no empty .tmp behind; ignore failure when another writer is using it.
        let _ = std::fs::remove_dir(self.lake.tmp_root());
    }
}
