//! A partition's activations are rows an SAE trains on.

use anyhow::Result;

use crate::lake::ActivationRows;
use crate::sae::rows::Rows;

impl Rows for ActivationRows {
    fn d_model(&self) -> usize {
        ActivationRows::d_model(self)
    }

    fn len(&self) -> usize {
        ActivationRows::len(self)
    }

    fn for_each_batch(
        &self,
        batch: usize,
        shuffle: Option<u64>,
        f: &mut dyn FnMut(&[f32]) -> Result<()>,
    ) -> Result<()> {
        ActivationRows::for_each_batch(self, batch, shuffle, f)
    }

    fn gather(&self, idx: &[usize]) -> Result<Vec<f32>> {
        ActivationRows::gather(self, idx)
    }
}
