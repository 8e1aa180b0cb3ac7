//! `saerl sql`: the REPL, or one statement (`-c`) / file (`-f`) run non-interactively.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::lake::Lake;
use crate::sql::exec::run_each;
use crate::sql::format::print_batches;
use crate::sql::repl::Repl;
use crate::sql::Format;

#[derive(clap::Args, Debug, Clone)]
pub struct SqlArgs {
    /// Run one SQL text and exit.
    #[arg(short = 'c', long = "command", conflicts_with = "file")]
    pub command: Option<String>,
    /// Run the statements of a file and exit.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Run on a Ballista cluster (`df://HOST:PORT`, see `saerl cluster`) instead of in-process.
    #[arg(long)]
    pub cluster: Option<String>,
}

pub async fn run(lake: &Lake, a: &SqlArgs) -> Result<()> {
    let ctx = crate::cluster::session(&lake.existing()?, a.cluster.as_deref()).await?;
    let (sql, source) = match (&a.command, &a.file) {
        (Some(c), _) => (c.clone(), "-c".to_string()),
        (None, Some(f)) => (
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
            f.display().to_string(),
        ),
        (None, None) => return Repl::new(ctx, a.format).run().await,
    };
    let mut out = std::io::stdout().lock();
    run_each(&ctx, &sql, &source, &mut |_, batches| {
        print_batches(&batches, a.format, &mut out)
    })
    .await
}
