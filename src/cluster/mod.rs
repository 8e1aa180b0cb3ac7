//! Beyond one machine: saerl's SQL on a Ballista cluster. The scheduler and the executors are
//! saerl processes, so they carry saerl's UDFs (resolved by name from each executor's
//! registry), its plan codecs (`codec.rs`) and the lake's object store; each is started with the
//! same `--lake` as the clients.

pub mod codec;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use ballista::prelude::SessionContextExt;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::lake::Lake;
use crate::sql::rules::optimizer_rules;
use crate::sql::session::{register_udfs, runtime_env, Engine};

/// Ballista's session settings for saerl: its plan codecs, and the adaptive planner off (in
/// Ballista 55 it never finishes a join one side of which is empty, e.g. `feature_stats` before
/// `saerl stats` has run).
fn ballista_config(config: SessionConfig, lake: &Lake) -> SessionConfig {
    config
        .with_ballista_logical_extension_codec(Arc::new(codec::LogicalCodec::new(lake)))
        .with_ballista_physical_extension_codec(Arc::new(codec::PhysicalCodec::new(lake)))
        .set_str("ballista.planner.adaptive.enabled", "false")
}

/// The Ballista cluster behind a scheduler's `df://host:port`, as the engine of a SQL session:
/// the session's statements are planned here and run on the cluster, with the same tables and
/// functions as a local one.
#[derive(Debug, Clone)]
pub struct Ballista {
    url: String,
}

impl Ballista {
    pub fn new(url: &str) -> Self {
        Self { url: url.into() }
    }
}

/// The engine `--cluster` names, if any (None: statements run in this process).
pub fn engine(url: Option<&str>) -> Option<std::sync::Arc<dyn Engine>> {
    url.map(|u| std::sync::Arc::new(Ballista::new(u)) as std::sync::Arc<dyn Engine>)
}

#[async_trait::async_trait]
impl Engine for Ballista {
    fn config(&self, lake: &Lake) -> SessionConfig {
        ballista_config(SessionConfig::new_with_ballista(), lake)
    }

    async fn context(&self, state: datafusion::execution::SessionState) -> Result<SessionContext> {
        let url = &self.url;
        SessionContext::remote_with_state(url, state)
            .await
            .with_context(|| format!("connecting to the Ballista scheduler at {url} (start one with `saerl cluster scheduler`)"))
    }
}

/// Ballista's session state for a job, plus saerl's functions and the lake's object store.
fn job_state(
    lake: &Lake,
    config: SessionConfig,
) -> datafusion::common::Result<datafusion::execution::SessionState> {
    let base = ballista_core::utils::default_session_builder(config)?;
    let runtime =
        runtime_env(lake).map_err(|e| datafusion::common::DataFusionError::External(e.into()))?;
    let state = SessionStateBuilder::new_from_existing(base)
        .with_runtime_env(runtime)
        .with_optimizer_rules(optimizer_rules())
        .build();
    let ctx = SessionContext::new_with_state(state);
    register_udfs(&ctx, lake)
        .map_err(|e| datafusion::common::DataFusionError::External(e.into()))?;
    Ok(ctx.state())
}

/// Runs a scheduler until the process is stopped.
pub async fn scheduler(lake: &Lake, bind: SocketAddr) -> Result<()> {
    let (l1, l2) = (lake.clone(), lake.clone());
    let config = SchedulerConfig {
        bind_host: bind.ip().to_string(),
        bind_port: bind.port(),
        external_host: bind.ip().to_string(),
        override_session_builder: Some(Arc::new(move |c| job_state(&l1, c))),
        override_config_producer: Some(Arc::new(move || {
            ballista_config(SessionConfig::new_with_ballista(), &l2)
        })),
        override_logical_codec: Some(Arc::new(codec::LogicalCodec::new(lake))),
        override_physical_codec: Some(Arc::new(codec::PhysicalCodec::new(lake))),
        ..Default::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .context("creating the scheduler's state")?;
    eprintln!("saerl scheduler on {bind} (lake {})", lake.location());
    start_server(cluster, bind, Arc::new(config))
        .await
        .with_context(|| format!("running the Ballista scheduler on {bind}"))
}

/// Runs an executor that serves `scheduler` until the process is stopped. `bind` is its Flight
/// (data) port; its gRPC port is the next one.
pub async fn executor(
    lake: &Lake,
    scheduler: SocketAddr,
    bind: SocketAddr,
    work_dir: &std::path::Path,
    vcores: Option<usize>,
) -> Result<()> {
    let ctx = SessionContext::new();
    register_udfs(&ctx, lake)?;
    let registry = BallistaFunctionRegistry::from(&ctx.state());
    let (l1, l2) = (lake.clone(), lake.clone());
    std::fs::create_dir_all(work_dir)
        .with_context(|| format!("creating the work directory {}", work_dir.display()))?;
    let mut config = ExecutorProcessConfig {
        bind_host: bind.ip().to_string(),
        external_host: Some(bind.ip().to_string()),
        port: bind.port(),
        grpc_port: bind.port() + 1,
        scheduler_host: scheduler.ip().to_string(),
        scheduler_port: scheduler.port(),
        scheduler_connect_timeout_seconds: 30,
        work_dir: Some(work_dir.display().to_string()),
        override_function_registry: Some(Arc::new(registry)),
        override_runtime_producer: Some(Arc::new(move |_| {
            runtime_env(&l1).map_err(|e| datafusion::common::DataFusionError::External(e.into()))
        })),
        override_config_producer: Some(Arc::new(move || {
            ballista_config(SessionConfig::new_with_ballista(), &l2)
        })),
        override_logical_codec: Some(Arc::new(codec::LogicalCodec::new(lake))),
        override_physical_codec: Some(Arc::new(codec::PhysicalCodec::new(lake))),
        ..Default::default()
    };
    if let Some(v) = vcores {
        config.vcores = v;
    }
    eprintln!(
        "saerl executor on {bind} for scheduler {scheduler} (lake {})",
        lake.location()
    );
    start_executor_process(Arc::new(config))
        .await
        .with_context(|| format!("running the Ballista executor on {bind}"))
}
