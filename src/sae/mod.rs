//! The TopK sparse autoencoder and its file formats.

pub mod batch;
pub mod checkpoint;
pub mod dashboard;
pub mod interop;
pub mod on_device;
pub mod pickle;
pub mod pt;
pub mod quality;
pub mod rows;
pub mod stats;
pub mod step;
pub mod topk;
pub mod train;
pub mod zip_store;

pub use topk::{Activation, Sae, SaeMeta, Tensors};
