//! `saerl serve`: the feature browser over the lake (see `serve/`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;

use crate::lake::Lake;
use crate::serve::ServeConfig;

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address of the web pages; anything but loopback needs --token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Also serve Arrow Flight SQL (ADBC, JDBC, notebooks) on this address, e.g.
    /// 127.0.0.1:50051; anything but loopback needs --token.
    #[arg(long)]
    pub flight: Option<SocketAddr>,
    /// Serve Flight SQL alone, no web pages (needs --flight).
    #[arg(long)]
    pub no_web: bool,
    /// A token every request must present (`Authorization: Bearer T`; in a browser `?token=T`
    /// once, which sets a cookie).
    #[arg(long, env = "SAERL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Memory every statement of the server together may hold (e.g. 4GB, 512MiB); a statement
    /// past it fails alone, with an error saying so (default: half of this machine's memory).
    #[arg(long, value_parser = parse_bytes)]
    pub memory_limit: Option<usize>,
    /// Run statements on this Ballista cluster (`df://HOST:PORT`, see `saerl cluster`).
    #[arg(long)]
    pub cluster: Option<String>,
    /// Rows the SQL box returns at most.
    #[arg(long, default_value_t = 10_000)]
    pub sql_rows: usize,
    /// Seconds a SQL box statement may run.
    #[arg(long, default_value_t = 10.0)]
    pub sql_timeout: f64,
    /// Exit after this many seconds (for tests and scripted runs); default: run until stopped.
    #[arg(long)]
    pub stop_after: Option<u64>,
}

/// `4GB`, `512MiB`, `1.5G`, `1000000` (bytes).
fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size: write e.g. 4GB or 512MiB"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "unknown unit {u:?} in {s:?}: use B, KB, MB, GB, KiB, MiB or GiB"
            ))
        }
    };
    Ok((n * scale) as usize)
}

/// Half of this machine's memory (MemTotal), or 4 GB when it cannot be read.
fn half_the_memory() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .map_or(4_000_000_000, |kb| kb * 1024 / 2)
}

pub async fn run(lake: &Lake, a: &ServeArgs) -> Result<()> {
    let cfg = ServeConfig {
        bind: (!a.no_web).then_some(a.bind),
        flight: a.flight,
        engine: crate::cluster::engine(a.cluster.as_deref()),
        memory_limit: Some(a.memory_limit.unwrap_or_else(half_the_memory)),
        token: a.token.clone().filter(|t| !t.is_empty()),
        sql_rows: a.sql_rows.max(1),
        sql_timeout: Duration::from_secs_f64(a.sql_timeout.max(0.001)),
    };
    let lake = lake.existing()?;
    let location = lake.location();
    let with_token = cfg.token.is_some();
    let serve = crate::serve::serve(&lake, cfg, |web, flight| {
        if let Some(addr) = web {
            println!(
                "serving {location} on http://{addr}/{}",
                if with_token { "?token=…" } else { "" }
            );
        }
        if let Some(addr) = flight {
            println!("serving {location} over Flight SQL on grpc://{addr}");
        }
    });
    match a.stop_after {
        None => serve.await,
        Some(s) => tokio::select! {
            r = serve => r,
            _ = tokio::time::sleep(Duration::from_secs(s)) => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_with_their_units() {
        assert_eq!(super::parse_bytes("4GB"), Ok(4_000_000_000));
        assert_eq!(super::parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(super::parse_bytes("1000"), Ok(1000));
        assert!(super::parse_bytes("lots").is_err());
        assert!(super::parse_bytes("3 parsecs").is_err());
    }
}
