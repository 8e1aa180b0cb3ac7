//! The TopK sparse autoencoder and its file formats.

pub mod pickle;
pub mod pt;
pub mod topk;
pub mod train;
pub mod zip_store;

pub use topk::{Activation, Sae, SaeMeta};
