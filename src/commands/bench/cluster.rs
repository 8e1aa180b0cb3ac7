//! `saerl bench cluster`: every saved query on the in-process engine and on a Ballista cluster,
//! over the same lake (`--lake`): best-of-N times, the cluster's overhead per query, and whether
//! the rows agree.

use std::time::Instant;

use anyhow::Result;
use arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;

use crate::lake::Lake;
use crate::sql::run_sql;
use crate::sql::saved::QUERIES;

/// Best-of-`runs` seconds of `sql`, and its last answer.
async fn time(ctx: &SessionContext, sql: &str, runs: usize) -> Result<(f64, Vec<RecordBatch>)> {
    let mut best = f64::INFINITY;
    let mut out = Vec::new();
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        out = run_sql(ctx, sql).await?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok((best, out))
}

fn csv(batches: &[RecordBatch]) -> Result<String> {
    let mut buf = Vec::new();
    crate::sql::print_batches(batches, crate::sql::Format::Csv, &mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

pub async fn run(lake: &Lake, cluster: &str, runs: usize) -> Result<()> {
    let lake = lake.existing()?;
    let local = crate::sql::open_session(&lake).await?;
    let engine = crate::cluster::engine(Some(cluster));
    let remote = crate::sql::session::open_with(&lake, engine.as_deref()).await?;
    println!(
        "saved queries over {} — in-process vs cluster {cluster} (best of {runs})",
        lake.location()
    );
    println!(
        "  {:<16} {:>10} {:>10} {:>10} {:>7}  rows",
        "query", "local s", "cluster s", "overhead", "ratio"
    );
    let (mut sum_l, mut sum_c) = (0.0, 0.0);
    for (name, sql) in QUERIES {
        let (tl, a) = time(&local, sql, runs).await?;
        let (tc, b) = time(&remote, sql, runs).await?;
        let same = match crate::sql::first_csv_difference(&csv(&a)?, &csv(&b)?) {
            None => "same".to_string(),
            Some(line) => format!("DIFFER from line {line}"),
        };
        let rows: usize = a.iter().map(|b| b.num_rows()).sum();
        println!(
            "  {name:<16} {tl:>10.3} {tc:>10.3} {:>+10.3} {:>6.1}×  {rows} {same}",
            tc - tl,
            tc / tl.max(1e-9)
        );
        sum_l += tl;
        sum_c += tc;
    }
    println!(
        "  {:<16} {sum_l:>10.3} {sum_c:>10.3} {:>+10.3} {:>6.1}×",
        "all",
        sum_c - sum_l,
        sum_c / sum_l.max(1e-9)
    );
    Ok(())
}
