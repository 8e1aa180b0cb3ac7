//! The domain as lake tables: SAEs (`saes` + `features`), prompts, training logs, evaluations
//! and statistics as record batches, and activation partitions as rows to train on. The lake
//! below stores and reads tables without knowing what an SAE is; this layer knows both.

mod activations;
mod records;
mod saes;

pub use records::{
    docs_batch, evals_batch, feature_stats_batch, top_examples_batch, train_log_batch,
};
pub use saes::{read_sae, sae_batches, write_sae};
