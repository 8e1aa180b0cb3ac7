//! saerl: an embedded analytics engine over sparse-autoencoder artifacts of RL fine-tuning.
//! Data flows one way: files → lake (Parquet) → SQL. The modules the tests and the fuzz target
//! use are public; the commands, servers and helpers are the binary's (`cli::main`).

pub mod cli;
pub(crate) mod cluster;
pub(crate) mod commands;
pub(crate) mod data;
pub mod durable;
pub(crate) mod fault;
pub(crate) mod kernels;
pub mod lake;
pub mod model;
pub mod project;
mod report_error;
pub use report_error::error_text;
pub mod rng;
pub mod sae;
pub(crate) mod serve;
pub mod sql;
pub mod study;
pub(crate) mod suggest;
pub(crate) mod synth;
pub mod tables;
