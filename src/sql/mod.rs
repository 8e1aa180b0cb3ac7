//! SQL over the lake: session setup, execution, output formats, the REPL and plots.

pub mod best_match;
pub mod drift;
pub mod exec;
pub mod format;
pub mod header;
pub mod matching;
pub mod plot;
pub mod repl;
pub mod saved;
pub mod session;

pub use exec::run_sql;
pub use format::{first_csv_difference, print_batches, Format};
pub use session::open_session;
