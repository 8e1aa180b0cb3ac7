//! `saerl bench flight`: the drift query over a study-sized chain through Flight SQL (a server
//! and arrow-flight's client in this process, over loopback gRPC) against the same statement in
//! process (what `saerl sql -f` runs), and the rows per second a large `SELECT` of `features`
//! streams to the client.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::StreamExt;

use super::{sql::chain_lake, ChainShape};
use crate::serve::flight::{self, FlightSql};
use crate::sql::saved::QUERIES;
use crate::sql::{open_session, run_sql};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchFlight {
    #[command(flatten)]
    pub shape: ChainShape,
    /// Runs of each statement (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Keep (and reuse) the generated lake in this directory.
    #[arg(long)]
    pub keep: Option<PathBuf>,
}

/// Rows and seconds of one statement through the client, every batch received.
async fn through_flight(
    client: &mut FlightSqlServiceClient<tonic::transport::Channel>,
    sql: &str,
) -> Result<(usize, f64)> {
    let t = Instant::now();
    let info = client.execute(sql.to_string(), None).await?;
    let mut rows = 0;
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.context("an endpoint without a ticket")?;
        let mut stream = client.do_get(ticket).await?;
        while let Some(batch) = stream.next().await {
            rows += batch?.num_rows();
        }
    }
    Ok((rows, t.elapsed().as_secs_f64()))
}

pub async fn run(a: &BenchFlight) -> Result<()> {
    let (_tmp, root, lake, plan) = chain_lake(&a.shape, &a.keep)?;
    let drift = QUERIES
        .iter()
        .find(|(n, _)| *n == "decoder_drift")
        .unwrap()
        .1;
    let ctx = open_session(&lake).await?;
    let mut local = f64::INFINITY;
    for _ in 0..a.runs {
        let t = Instant::now();
        run_sql(&ctx, drift).await?;
        local = local.min(t.elapsed().as_secs_f64());
    }
    drop(ctx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let runtime = crate::sql::session::limited_runtime_env(&lake, None)?;
    let service = FlightSql::new(lake.clone(), None, runtime)?;
    tokio::spawn(flight::serve(listener, service, None));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .context("connecting to the in-process Flight SQL server")?;
    let mut client = FlightSqlServiceClient::new(channel);
    let mut remote = f64::INFINITY;
    let mut rows = 0;
    for _ in 0..a.runs {
        let (r, s) = through_flight(&mut client, drift).await?;
        (rows, remote) = (r, remote.min(s));
    }
    println!(
        "lake {}: {} SAEs of {} features",
        root.display(),
        plan.saes.len() * plan.steps.len(),
        a.shape.d_sae
    );
    println!(
        "decoder_drift.sql: in process (saerl sql -f) best {local:.3} s; through Flight SQL best {remote:.3} s, {rows} rows → {:.2}× (target ≤ 1.2)",
        remote / local
    );
    // A large SELECT streamed: every feature row with its two vectors.
    let mut best = (0usize, f64::INFINITY);
    for _ in 0..a.runs {
        let (r, s) = through_flight(&mut client, "SELECT * FROM features").await?;
        if s < best.1 {
            best = (r, s);
        }
    }
    let bytes = best.0 as f64 * (2 * a.shape.d_model * 4) as f64;
    println!(
        "SELECT * FROM features through Flight SQL: {} rows in {:.3} s = {:.0} rows/s ({:.0} MB/s of vectors)",
        best.0,
        best.1,
        best.0 as f64 / best.1,
        bytes / best.1 / 1e6
    );
    Ok(())
}
