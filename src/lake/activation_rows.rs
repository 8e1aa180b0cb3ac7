//! One split of an `activations` partition as training rows, streamed from Parquet a row group
//! at a time, so an epoch needs memory for a shuffle buffer, not for the partition.
//!
//! Shuffled order (seeded): the row groups in a random order feed a buffer of `buffer_rows`
//! rows; each time it fills, its rows are permuted and all whole batches leave it, the rest
//! stays to mix with the next row groups. With the buffer at least as large as the split this
//! is a uniform permutation. Reading runs on its own thread, one batch ahead of training.
//!
//! A split that fits the buffer is decoded once and kept for the later passes (the buffer would
//! hold it whole anyway, so memory stays within the same bound): an SAE's 20 epochs and their
//! validations then read Parquet once, and every pass yields exactly the batches it would
//! have streamed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::Float32Type;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use super::handle::Lake;
use super::partition::PartitionKey;
use super::read::{corrupt, partition_files};
use super::schema::Table;
use crate::rng::{permutation, SplitMix64};

/// A row group and how many of its rows belong to the split.
struct Piece {
    file: PathBuf,
    row_group: usize,
    rows: usize,
}

pub struct ActivationRows {
    key: PartitionKey,
    split: String,
    d: usize,
    pieces: Vec<Piece>,
    n: usize,
    buffer_rows: usize,
    /// Whether a split that fits the buffer is kept after its first read.
    keep: bool,
    /// Each piece's rows, once read, when kept.
    kept: OnceLock<Vec<Vec<f32>>>,
}

impl Lake {
    /// The data files of activation partition `key`; a missing partition is an error naming
    /// what exists.
    fn activation_files(&self, key: &PartitionKey) -> Result<Vec<PathBuf>> {
        let dir = self.data_dir(Table::Activations, key)?;
        if !dir.is_dir() {
            return Err(self.missing(Table::Activations, key));
        }
        partition_files(&dir)
    }

    /// The `split` rows ("train" or "val") of activation partition `key`; only the `split`
    /// column is read here.
    pub fn activation_rows(
        &self,
        key: &PartitionKey,
        split: &str,
        buffer_rows: usize,
    ) -> Result<ActivationRows> {
        let (mut pieces, mut n, mut d) = (Vec::new(), 0, 0);
        for file in self.activation_files(key)? {
            let b = builder(&file)?;
            d = x_width(&b, &file)?;
            let groups = b.metadata().num_row_groups();
            for row_group in 0..groups {
                let mut rows = 0;
                for batch in read_group(&file, row_group, &["split"])? {
                    let s = batch.column(0).as_string::<i32>();
                    rows += (0..s.len()).filter(|&i| s.value(i) == split).count();
                }
                if rows > 0 {
                    pieces.push(Piece {
                        file: file.clone(),
                        row_group,
                        rows,
                    });
                    n += rows;
                }
            }
        }
        Ok(ActivationRows {
            key: key.clone(),
            split: split.to_string(),
            d,
            pieces,
            n,
            buffer_rows: buffer_rows.max(1),
            keep: true,
            kept: OnceLock::new(),
        })
    }
}

/// A column by name (projected columns come in file order, not in the order asked for).
fn column<'b>(batch: &'b RecordBatch, name: &str, file: &Path) -> Result<&'b ArrayRef> {
    batch
        .column_by_name(name)
        .with_context(|| format!("{} has no column {name}", file.display()))
}

/// The width of a file's vector column x.
fn x_width(b: &ParquetRecordBatchReaderBuilder<File>, file: &Path) -> Result<usize> {
    let x = b
        .schema()
        .field_with_name("x")
        .with_context(|| format!("{} has no column x", file.display()))?;
    Ok(super::vector_width(x.data_type())
        .with_context(|| format!("{}: column x is not a vector", file.display()))? as usize)
}

fn builder(file: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    ParquetRecordBatchReaderBuilder::try_new(f).with_context(|| corrupt(file))
}

/// Column x of one row group as rows of width d (the page-level fast path, else Arrow) and the
/// other `columns` of that row group as one batch.
fn read_x(
    file: &Path,
    row_group: usize,
    columns: &[&str],
    d: usize,
) -> Result<(Vec<f32>, RecordBatch)> {
    super::read::decoding(file, || read_x_unguarded(file, row_group, columns, d))
}

fn read_x_unguarded(
    file: &Path,
    row_group: usize,
    columns: &[&str],
    d: usize,
) -> Result<(Vec<f32>, RecordBatch)> {
    let batches = read_group(file, row_group, columns)?;
    let others = match batches.len() {
        1 => batches.into_iter().next().unwrap(),
        _ => arrow::compute::concat_batches(&batches[0].schema(), &batches)?,
    };
    let reader = super::read::open(file)?;
    if let Some(x) = super::vectors::read_vectors(&reader, row_group, "x", d)? {
        return Ok((x, others));
    }
    let mut x = Vec::with_capacity(others.num_rows() * d);
    for batch in read_group(file, row_group, &["x"])? {
        let col = column(&batch, "x", file)?.as_fixed_size_list();
        if col.value_length() as usize != d {
            bail!(
                "{}: column x is {} wide, expected {d}",
                file.display(),
                col.value_length()
            );
        }
        let v = col.values().as_primitive::<Float32Type>().values();
        x.extend_from_slice(&v[..batch.num_rows() * d]);
    }
    Ok((x, others))
}

fn read_group(file: &Path, row_group: usize, columns: &[&str]) -> Result<Vec<RecordBatch>> {
    let b = builder(file)?;
    let mask = ProjectionMask::columns(b.parquet_schema(), columns.iter().copied());
    b.with_row_groups(vec![row_group])
        .with_projection(mask)
        .with_batch_size(super::write::ROW_GROUP_ROWS)
        .build()
        .with_context(|| corrupt(file))?
        .map(|b| super::read::conform(b.with_context(|| corrupt(file))?, Table::Activations, file))
        .collect()
}

impl ActivationRows {
    pub fn key(&self) -> &PartitionKey {
        &self.key
    }

    /// The split's rows of one row group, checked to be finite.
    fn read_piece(&self, p: &Piece) -> Result<Vec<f32>> {
        let d = self.d;
        let mut out = Vec::with_capacity(p.rows * d);
        let (x, split) = read_x(&p.file, p.row_group, &["split"], d)?;
        {
            let s = column(&split, "split", &p.file)?.as_string::<i32>();
            let values = &x[..];
            for i in 0..split.num_rows() {
                if s.value(i) != self.split {
                    continue;
                }
                let row = &values[i * d..(i + 1) * d];
                if row.iter().any(|v| !v.is_finite()) {
                    bail!(
                        "non-finite activation in {} ({} row group {}); re-ingest that partition with --overwrite",
                        self.key,
                        p.file.display(),
                        p.row_group
                    );
                }
                out.extend_from_slice(row);
            }
        }
        if out.len() != p.rows * d {
            bail!(
                "{} changed while it was being read; run again",
                p.file.display()
            );
        }
        Ok(out)
    }

    /// Decodes a split that fits the buffer on every pass instead of keeping it (the path of
    /// splits larger than the buffer; tests compare the two).
    pub fn streaming(mut self) -> Self {
        self.keep = false;
        self
    }

    /// Each piece's rows from memory, read on first use, when the split fits the buffer.
    fn kept(&self) -> Result<Option<&[Vec<f32>]>> {
        if !self.keep || self.n > self.buffer_rows {
            return Ok(None);
        }
        if self.kept.get().is_none() {
            let rows = self
                .pieces
                .iter()
                .map(|p| self.read_piece(p))
                .collect::<Result<_>>()?;
            // A pass racing this one may have kept the same rows first; either copy will do.
            let _ = self.kept.set(rows);
        }
        Ok(self.kept.get().map(Vec::as_slice))
    }

    /// The order in which a pass visits the pieces, and the generator of its buffer's
    /// permutations.
    fn pass_order(&self, shuffle: Option<u64>) -> (Vec<usize>, SplitMix64) {
        let order = match shuffle {
            Some(seed) => permutation(self.pieces.len(), seed),
            None => (0..self.pieces.len()).collect(),
        };
        (
            order,
            SplitMix64::new(shuffle.unwrap_or(0) ^ 0x5EED_0FB0_FFE2),
        )
    }

    /// All batches of one pass, sent to `emit` (see the module comment for the order).
    fn produce(
        &self,
        batch: usize,
        shuffle: Option<u64>,
        emit: &mut dyn FnMut(Vec<f32>) -> bool,
    ) -> Result<()> {
        if let Some(kept) = self.kept()? {
            return self.produce_kept(kept, batch, shuffle, emit);
        }
        let d = self.d;
        let (order, mut rng) = self.pass_order(shuffle);
        let cap = if shuffle.is_some() {
            self.buffer_rows.max(batch)
        } else {
            batch
        };
        let mut buf: Vec<f32> = Vec::new();
        for (i, &p) in order.iter().enumerate() {
            buf.extend(self.read_piece(&self.pieces[p])?);
            let last = i + 1 == order.len();
            let rows = buf.len() / d;
            if rows < cap && !last {
                continue;
            }
            if shuffle.is_some() {
                buf = permutation(rows, rng.next_u64())
                    .into_iter()
                    .flat_map(|r| buf[r * d..(r + 1) * d].iter().copied())
                    .collect();
            }
            let out = if last { rows } else { rows / batch * batch };
            for chunk in buf[..out * d].chunks(batch * d) {
                if !emit(chunk.to_vec()) {
                    return Ok(());
                }
            }
            buf.drain(..out * d);
        }
        Ok(())
    }

    /// `produce` from the kept rows: the split fits the buffer, so the streamed pass would
    /// gather every piece (in the pass's order), permute all rows once when shuffled, and emit
    /// them in batches; this does the same through row references instead of a second copy.
    fn produce_kept(
        &self,
        kept: &[Vec<f32>],
        batch: usize,
        shuffle: Option<u64>,
        emit: &mut dyn FnMut(Vec<f32>) -> bool,
    ) -> Result<()> {
        let (order, mut rng) = self.pass_order(shuffle);
        let mut rows: Vec<&[f32]> = order
            .iter()
            .flat_map(|&p| kept[p].chunks_exact(self.d))
            .collect();
        if shuffle.is_some() {
            let perm = permutation(rows.len(), rng.next_u64());
            rows = perm.into_iter().map(|r| rows[r]).collect();
        }
        for chunk in rows.chunks(batch) {
            if !emit(chunk.concat()) {
                break;
            }
        }
        Ok(())
    }
}

/// What training reads of a partition (the SAE side sees these through its `Rows` trait).
impl ActivationRows {
    /// The rows' width.
    pub fn d_model(&self) -> usize {
        self.d
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Feeds all rows to `f` in batches of `batch` rows (only the last may be short), in stored
    /// order or, with `shuffle = Some(seed)`, in an order drawn from the seed; a thread reads
    /// ahead while `f` works.
    pub fn for_each_batch(
        &self,
        batch: usize,
        shuffle: Option<u64>,
        f: &mut dyn FnMut(&[f32]) -> Result<()>,
    ) -> Result<()> {
        std::thread::scope(|scope| {
            let (tx, rx) = sync_channel::<Result<Vec<f32>>>(1);
            scope.spawn(move || {
                let mut send = |b: Vec<f32>| tx.send(Ok(b)).is_ok();
                if let Err(e) = self.produce(batch, shuffle, &mut send) {
                    let _ = tx.send(Err(e));
                }
            });
            // Returning early drops the receiver, which stops the reader at its next send.
            for b in rx {
                f(&b?)?;
            }
            Ok(())
        })
    }

    /// Every row, in stored order, in one row-major vector.
    pub fn read_all(&self) -> Result<Vec<f32>> {
        let mut all = Vec::with_capacity(self.n * self.d);
        self.for_each_batch(8192, None, &mut |b| {
            all.extend_from_slice(b);
            Ok(())
        })?;
        Ok(all)
    }

    /// The rows at ascending indices `idx`, in that order.
    pub fn gather(&self, idx: &[usize]) -> Result<Vec<f32>> {
        let d = self.d;
        let kept = self.kept()?;
        let mut out = Vec::with_capacity(idx.len() * d);
        let (mut start, mut next) = (0, 0);
        for (i, p) in self.pieces.iter().enumerate() {
            let end = start + p.rows;
            if next < idx.len() && idx[next] < end {
                let rows = match kept {
                    Some(k) => std::borrow::Cow::Borrowed(&k[i][..]),
                    None => std::borrow::Cow::Owned(self.read_piece(p)?),
                };
                while next < idx.len() && idx[next] < end {
                    let r = idx[next] - start;
                    out.extend_from_slice(&rows[r * d..(r + 1) * d]);
                    next += 1;
                }
            }
            start = end;
        }
        if next < idx.len() {
            bail!(
                "row {} is beyond the {} rows of {}",
                idx[next],
                self.n,
                self.key
            );
        }
        Ok(out)
    }
}

/// A batch of activation rows with their provenance.
pub struct ActivationBatch<'a> {
    pub doc_id: &'a [i64],
    pub pos: &'a [i32],
    pub token_id: &'a [i32],
    /// True for the `val` split.
    pub val: Vec<bool>,
    /// Rows of width d_model.
    pub x: &'a [f32],
}

impl Lake {
    /// The number of rows of an activation partition (from the Parquet footers).
    pub fn activation_count(&self, key: &PartitionKey) -> Result<usize> {
        let mut n = 0;
        for file in self.activation_files(key)? {
            n += builder(&file)?.metadata().file_metadata().num_rows() as usize;
        }
        Ok(n)
    }

    /// Every row of an activation partition, in stored order, a batch at a time (all columns,
    /// rows checked to be finite).
    pub fn scan_activations(
        &self,
        key: &PartitionKey,
        f: &mut dyn FnMut(&ActivationBatch) -> Result<()>,
    ) -> Result<()> {
        use arrow::datatypes::{Int32Type, Int64Type};
        for file in self.activation_files(key)? {
            let b = builder(&file)?;
            let d = x_width(&b, &file)?;
            for row_group in 0..b.metadata().num_row_groups() {
                let (values, batch) =
                    read_x(&file, row_group, &["doc_id", "pos", "token_id", "split"], d)?;
                let col = |name: &str| column(&batch, name, &file);
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    bail!(
                        "non-finite activation in {key} ({} row {}); re-ingest that partition with --overwrite",
                        file.display(),
                        i / d
                    );
                }
                let split = col("split")?.as_string::<i32>();
                f(&ActivationBatch {
                    doc_id: col("doc_id")?.as_primitive::<Int64Type>().values(),
                    pos: col("pos")?.as_primitive::<Int32Type>().values(),
                    token_id: col("token_id")?.as_primitive::<Int32Type>().values(),
                    val: (0..batch.num_rows())
                        .map(|i| split.value(i) == "val")
                        .collect(),
                    x: &values,
                })?;
            }
        }
        Ok(())
    }
}
