//! `saerl sql`: the REPL, or one statement (`-c`) / file (`-f`) run non-interactively.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::lake::Lake;
use crate::sql::exec::run_each_with;
use crate::sql::format::print_batches_at;
use crate::sql::repl::Repl;
use crate::sql::Format;

#[derive(clap::Args, Debug, Clone)]
pub struct SqlArgs {
    /// Run one SQL text (statements, or a dot-command such as `.tables`) and exit. It may start
    /// with `--` comments, as a saved query does.
    #[arg(
        short = 'c',
        long = "command",
        conflicts_with = "file",
        allow_hyphen_values = true
    )]
    pub command: Option<String>,
    /// Run the statements of a file and exit.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// Output format: an aligned table, CSV or JSON.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Significant digits of floats in table output (CSV and JSON keep full precision).
    #[arg(long, default_value_t = crate::sql::format::DEFAULT_PRECISION)]
    pub precision: usize,
    /// A value for a `$NAME` placeholder of the statements (`-- param: NAME = DEFAULT` in the
    /// header declares it); repeatable.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = crate::sql::saved::parse_param)]
    pub params: Vec<(String, String)>,
    /// Run on a Ballista cluster (`df://HOST:PORT`, see `saerl cluster`) instead of in-process.
    #[arg(long)]
    pub cluster: Option<String>,
}

pub async fn run(lake: &Lake, a: &SqlArgs) -> Result<()> {
    let engine = crate::cluster::engine(a.cluster.as_deref());
    let ctx = crate::sql::session::open_with(&lake.existing()?, engine.as_deref()).await?;
    let (sql, source) = match (&a.command, &a.file) {
        (Some(c), _) if c.trim_start().starts_with('.') => {
            return Repl::new(ctx, a.format, a.precision).command(c).await
        }
        (Some(c), _) => (c.clone(), "-c".to_string()),
        (None, Some(f)) => (
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
            f.display().to_string(),
        ),
        (None, None) => return Repl::new(ctx, a.format, a.precision).run().await,
    };
    let query = crate::sql::saved::SavedQuery {
        name: source.clone(),
        sql: sql.clone(),
    };
    let params = query.params(&a.params.iter().cloned().collect())?;
    let mut out = std::io::stdout().lock();
    run_each_with(&ctx, &sql, &source, &params, &mut |_, batches| {
        print_batches_at(&batches, a.format, a.precision, &mut out)
    })
    .await
}
