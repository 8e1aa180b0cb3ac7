//! Where training rows come from: a slice in memory, or (in `lake`) an activation partition
//! streamed from Parquet. Training only ever sees batches and a few sampled rows.

use std::borrow::Cow;

use anyhow::Result;

pub trait Rows: Sync {
    fn d_model(&self) -> usize;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Feeds all rows to `f` in batches of `batch` rows (only the last may be short), in stored
    /// order or, with `shuffle = Some(seed)`, in an order drawn from the seed.
    fn for_each_batch(
        &self,
        batch: usize,
        shuffle: Option<u64>,
        f: &mut dyn FnMut(&[f32]) -> Result<()>,
    ) -> Result<()>;
    /// The rows at ascending indices `idx`, in that order.
    fn gather(&self, idx: &[usize]) -> Result<Vec<f32>>;
}

/// Rows held in memory; shuffling is one uniform permutation per seed.
pub struct MemRows<'a> {
    pub d: usize,
    pub rows: Cow<'a, [f32]>,
}

impl<'a> MemRows<'a> {
    pub fn new(d: usize, rows: impl Into<Cow<'a, [f32]>>) -> Self {
        Self {
            d,
            rows: rows.into(),
        }
    }
}

impl Rows for MemRows<'_> {
    fn d_model(&self) -> usize {
        self.d
    }

    fn len(&self) -> usize {
        self.rows.len() / self.d
    }

    fn for_each_batch(
        &self,
        batch: usize,
        shuffle: Option<u64>,
        f: &mut dyn FnMut(&[f32]) -> Result<()>,
    ) -> Result<()> {
        match shuffle {
            None => self.rows.chunks(batch * self.d).try_for_each(f),
            Some(seed) => {
                let perm = crate::rng::permutation(self.len(), seed);
                perm.chunks(batch)
                    .try_for_each(|idx| f(&self.gather_unsorted(idx)))
            }
        }
    }

    fn gather(&self, idx: &[usize]) -> Result<Vec<f32>> {
        Ok(self.gather_unsorted(idx))
    }
}

impl MemRows<'_> {
    fn gather_unsorted(&self, idx: &[usize]) -> Vec<f32> {
        let d = self.d;
        let mut out = Vec::with_capacity(idx.len() * d);
        for &r in idx {
            out.extend_from_slice(&self.rows[r * d..(r + 1) * d]);
        }
        out
    }
}

/// The mean row (b_pre of a cold start), accumulated in f64.
pub fn mean_row(rows: &dyn Rows) -> Result<Vec<f32>> {
    let d = rows.d_model();
    let mut sum = vec![0f64; d];
    rows.for_each_batch(4096, None, &mut |b| {
        for x in b.chunks_exact(d) {
            sum.iter_mut().zip(x).for_each(|(m, v)| *m += *v as f64);
        }
        Ok(())
    })?;
    let n = rows.len().max(1) as f64;
    Ok(sum.iter().map(|m| (m / n) as f32).collect())
}
