//! `saerl plot FILE.sql -o OUT.svg|png`: run a saved query and draw it from its header.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use arrow::compute::concat_batches;
use datafusion::prelude::SessionContext;

use crate::lake::Lake;
use crate::sql::saved::{Params, SavedQuery};
use crate::sql::{header, open_session, plot, run_sql_with};

/// Runs `sql` (with `params` for its placeholders) and draws the result to `out`; returns the
/// number of rows drawn.
pub async fn plot_query(
    ctx: &SessionContext,
    sql: &str,
    params: &Params,
    out: &Path,
) -> Result<usize> {
    let h = header::parse(sql)?;
    let batches = run_sql_with(ctx, sql, params).await?;
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
    /// A value for one of the query's parameters (`-- param: NAME = DEFAULT`); repeatable.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = crate::sql::saved::parse_param)]
    pub params: Vec<(String, String)>,
}

pub async fn run(lake: &Lake, a: &PlotArgs) -> Result<()> {
    let (file, out) = (&a.file, &a.out);
    let sql =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let query = SavedQuery {
        name: file.display().to_string(),
        sql: sql.clone(),
    };
    let params = query.params(&a.params.iter().cloned().collect())?;
    let ctx = open_session(&lake.existing()?).await?;
    let rows = plot_query(&ctx, &sql, &params, out)
        .await
        .with_context(|| format!("plotting {}", file.display()))?;
    println!("wrote {} ({rows} rows)", out.display());
    Ok(())
}
