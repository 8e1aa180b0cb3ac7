//! `saerl serve`: the feature browser over the lake (see `serve/`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;

use crate::lake::Lake;
use crate::serve::ServeConfig;

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on; anything but loopback needs --token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// A token every request must present (`Authorization: Bearer T`, or `?token=T` once in a
    /// browser, which sets a cookie).
    #[arg(long, env = "SAERL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Rows the SQL box returns at most.
    #[arg(long, default_value_t = 10_000)]
    pub sql_rows: usize,
    /// Seconds a SQL box statement may run.
    #[arg(long, default_value_t = 10.0)]
    pub sql_timeout: f64,
}

pub async fn run(lake: &Lake, a: &ServeArgs) -> Result<()> {
    let cfg = ServeConfig {
        bind: a.bind,
        token: a.token.clone().filter(|t| !t.is_empty()),
        sql_rows: a.sql_rows.max(1),
        sql_timeout: Duration::from_secs_f64(a.sql_timeout.max(0.001)),
    };
    let lake = lake.existing()?;
    let location = lake.location();
    let with_token = cfg.token.is_some();
    crate::serve::serve(&lake, cfg, |addr| {
        println!(
            "serving {location} on http://{addr}/{}",
            if with_token { "?token=…" } else { "" }
        );
    })
    .await
}
