//! saerl: an embedded analytics engine over sparse-autoencoder artifacts of RL fine-tuning.
//! Data flows one way: files → lake (Parquet) → SQL.

pub mod cli;
pub mod cluster;
pub mod commands;
pub mod data;
pub mod durable;
pub mod fault;
pub mod kernels;
pub mod lake;
pub mod model;
pub mod project;
mod report_error;
pub use report_error::error_text;
pub mod rng;
pub mod sae;
pub mod serve;
pub mod sql;
pub mod study;
pub mod suggest;
pub mod synth;
pub mod tables;
