//! One file per subcommand; each reads like the paragraph of DESIGN.md it implements.

pub mod bench;
pub mod demo;
pub mod export;
pub mod import;
pub mod ingest;
pub mod init;
pub mod plot;
pub mod sql;
pub mod train;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar with rate and ETA (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} ETA {{eta}} {{msg}}"
        ))
        .unwrap()
        .progress_chars("=> "),
    );
    bar
}
