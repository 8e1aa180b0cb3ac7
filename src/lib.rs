//! saerl: an embedded analytics engine over sparse-autoencoder artifacts of RL fine-tuning.
//! Data flows one way: files → lake (Parquet) → SQL.

pub mod cluster;
pub mod commands;
pub mod data;
pub mod fault;
pub mod kernels;
pub mod lake;
pub mod model;
pub mod project;
pub mod rng;
pub mod sae;
pub mod sql;
pub mod study;
pub mod synth;
