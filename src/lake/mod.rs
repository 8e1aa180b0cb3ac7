//! The lake: hive-partitioned Parquet tables in a directory or on an object store. This module
//! is the only place that knows paths, partition levels and schemas; everything else asks it.
//! This file only names the parts and what the rest of saerl may use.

mod activation_rows;
mod batches;
mod handle;
mod lock;
mod marker;
mod partition;
mod pinned;
mod read;
mod schema;
mod stages;
mod staging;
mod store;
mod transitions;
mod vectors;
mod write;

pub use activation_rows::{ActivationBatch, ActivationRows};
pub use batches::{activation_batch, vocab_batch};
pub use handle::Lake;
pub use lock::{LockGuard, Snapshot};
pub use marker::{MARKER, RUN_DIR};
pub use partition::{check_name, PartitionKey, PART_FILE};
pub(crate) use read::panic_text;
pub use read::{check_parquet, partition_files, read_parquet};
pub use schema::{vector_type, vector_width, PartCol, Table};
pub use stages::{infer_step, StageRow};
pub use staging::IngestStaging;
pub use store::{is_remote, rel_str, s3_store, Store, StoredFile, CONCURRENCY};
pub use transitions::{SaeSequences, Transition};
pub use write::{writer_properties, PartitionWriter, Txn};
