//! `saerl sql`: the REPL, or one statement (`-c`) / file (`-f`) run non-interactively.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::lake::Lake;
use crate::sql::format::print_batches;
use crate::sql::repl::Repl;
use crate::sql::{open_session, run_sql, Format};

pub struct SqlArgs {
    pub command: Option<String>,
    pub file: Option<PathBuf>,
    pub format: Format,
}

pub async fn run(lake: &Lake, a: SqlArgs) -> Result<()> {
    let ctx = open_session(&Lake::open(lake.root())?).await?;
    let sql = match (&a.command, &a.file) {
        (Some(c), _) => c.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => return Repl::new(ctx, a.format).run().await,
    };
    let batches = run_sql(&ctx, &sql).await?;
    print_batches(&batches, a.format, &mut std::io::stdout().lock())
}
