//! `saerl plot FILE.sql -o OUT.svg|png`: run a saved query and draw it from its header.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use arrow::compute::concat_batches;
use datafusion::prelude::SessionContext;

use crate::lake::Lake;
use crate::sql::{header, open_session, plot, run_sql};

/// Runs `sql` and draws the result to `out`; returns the number of rows drawn.
pub async fn plot_query(ctx: &SessionContext, sql: &str, out: &Path) -> Result<usize> {
    let h = header::parse(sql)?;
    let batches = run_sql(ctx, sql).await?;
    let schema = batches
        .first()
        .map(|b| b.schema())
        .context("the query returned no result")?;
    let batch = concat_batches(&schema, &batches)?;
    plot::draw(&batch, &h, out)?;
    Ok(batch.num_rows())
}

#[derive(clap::Args, Debug, Clone)]
pub struct PlotArgs {
    /// A saved query (`queries/*.sql`) or any SQL file with a plot header.
    pub file: PathBuf,
    /// Output figure: .svg or .png.
    #[arg(short, long)]
    pub out: PathBuf,
}

pub async fn run(lake: &Lake, a: &PlotArgs) -> Result<()> {
    let (file, out) = (&a.file, &a.out);
    let sql =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let ctx = open_session(&lake.existing()?).await?;
    let rows = plot_query(&ctx, &sql, out)
        .await
        .with_context(|| format!("plotting {}", file.display()))?;
    println!("wrote {} ({rows} rows)", out.display());
    Ok(())
}
