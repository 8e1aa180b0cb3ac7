//! `saerl cluster scheduler|executor`: the two processes of a Ballista cluster that runs saerl's
//! SQL (`saerl sql --cluster df://HOST:PORT`). Start them with the same `--lake` as the clients.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::lake::Lake;

#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub role: Role,
    /// Exit after this many seconds (for tests and scripted runs); default: run until stopped.
    #[arg(long, global = true)]
    pub stop_after: Option<u64>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Role {
    /// Plan statements and hand their stages to executors.
    Scheduler {
        /// Address to listen on (clients and executors connect here).
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: String,
    },
    /// Run the stages a scheduler hands out.
    Executor {
        /// The scheduler's address.
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
        /// Address of this executor's data (Flight) service; its gRPC service takes the next
        /// port. Other executors and clients must reach it.
        #[arg(long, default_value = "127.0.0.1:50051")]
        bind: String,
        /// Where shuffle files go (default: a directory under the system's temp directory).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// How many tasks it runs at once (default: the machine's cores).
        #[arg(long)]
        concurrency: Option<usize>,
    },
}

fn addr(what: &str, s: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .with_context(|| format!("{what} {s}: expected HOST:PORT"))?
        .next()
        .with_context(|| format!("{what} {s}: no address"))
}

pub async fn run(lake: &Lake, a: &ClusterArgs) -> Result<()> {
    let serve = serve(lake, &a.role);
    match a.stop_after {
        None => serve.await,
        Some(s) => tokio::select! {
            r = serve => r,
            _ = tokio::time::sleep(std::time::Duration::from_secs(s)) => Ok(()),
        },
    }
}

async fn serve(lake: &Lake, role: &Role) -> Result<()> {
    match role {
        Role::Scheduler { bind } => crate::cluster::scheduler(lake, addr("--bind", bind)?).await,
        Role::Executor {
            scheduler,
            bind,
            work_dir,
            concurrency,
        } => {
            let bind = addr("--bind", bind)?;
            let work_dir = work_dir.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("saerl-executor-{}", bind.port()))
            });
            crate::cluster::executor(
                lake,
                addr("--scheduler", scheduler)?,
                bind,
                &work_dir,
                *concurrency,
            )
            .await
        }
    }
}
