//! A DataFusion session with every lake table registered (partition columns prunable), the
//! saerl UDFs, and the built-in views the saved queries share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::MemTable;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use saerl_udfs::{Encoder, SaeKey, SaeSource};

use crate::lake::{check_parquet, vector_width, Lake, PartitionKey, Snapshot, Store, Table};
use crate::tables::read_sae;

/// The device the SQL functions compute on: `SAERL_DEVICE` (cpu, the default, or cuda).
fn sql_device() -> Result<candle_core::Device> {
    let name = std::env::var("SAERL_DEVICE").unwrap_or_else(|_| "cpu".into());
    crate::model::device(&name).context("SAERL_DEVICE")
}

/// Where a session's statements run when not in this process: a cluster plugs in here. The
/// session stays this module's either way (its tables, functions, rules and snapshots).
#[async_trait::async_trait]
pub trait Engine: std::fmt::Debug + Send + Sync {
    /// The settings the engine's sessions start from (its plan codecs, say).
    fn config(&self, lake: &Lake) -> SessionConfig;
    /// A context for `state` whose statements run on the engine.
    async fn context(&self, state: datafusion::execution::SessionState) -> Result<SessionContext>;
}

/// A session over `lake`, running in this process.
pub async fn open_session(lake: &Lake) -> Result<SessionContext> {
    open(lake, runtime_env(lake)?, None).await
}

/// A session over `lake` run by `engine` (a cluster), or in this process.
pub async fn open_with(lake: &Lake, engine: Option<&dyn Engine>) -> Result<SessionContext> {
    open(lake, runtime_env(lake)?, engine).await
}

/// A session over `lake` in `runtime` (a server's sessions share one, with its memory pool),
/// its statements run by `engine` when one is given, else here.
pub async fn open(
    lake: &Lake,
    runtime: Arc<RuntimeEnv>,
    engine: Option<&dyn Engine>,
) -> Result<SessionContext> {
    let base = engine.map_or_else(SessionConfig::new, |e| e.config(lake));
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(session_config(base, lake))
        .with_runtime_env(runtime)
        .with_optimizer_rules(super::rules::optimizer_rules())
        .build();
    let ctx = match engine {
        Some(e) => e.context(state).await?,
        None => SessionContext::new_with_state(state),
    };
    register_lake(&ctx, lake).await?;
    Ok(ctx)
}

/// `config` with what every saerl session has: information_schema, and the lake for the
/// statements' snapshots.
pub fn session_config(config: SessionConfig, lake: &Lake) -> SessionConfig {
    config
        .with_information_schema(true)
        .with_extension(Arc::new(SessionLake {
            lake: lake.clone(),
            seen: AtomicU64::new(u64::MAX),
        }))
}

/// A runtime that reaches the lake's object store (if any) through DataFusion's registry.
pub fn runtime_env(lake: &Lake) -> Result<Arc<RuntimeEnv>> {
    limited_runtime_env(lake, None)
}

/// `runtime_env` whose statements together may hold at most `limit` bytes (DataFusion's
/// operators and saerl's own, which account their large buffers in the same pool). A statement
/// past the limit fails alone; nothing spills to disk, so a server's memory is what it says.
pub fn limited_runtime_env(lake: &Lake, limit: Option<usize>) -> Result<Arc<RuntimeEnv>> {
    use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
    use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
    let mut builder = RuntimeEnvBuilder::new();
    if let Some(bytes) = limit {
        let pool = TrackConsumersPool::new(
            GreedyMemoryPool::new(bytes),
            std::num::NonZeroUsize::new(3).unwrap(),
        );
        builder = builder
            .with_memory_pool(Arc::new(pool))
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            );
    }
    let rt = builder.build_arc()?;
    // Listings through the lake's store show the commit each statement pinned.
    let url = match lake.remote() {
        Some(r) => url::Url::parse(&format!("s3://{}", r.bucket()))?,
        None => url::Url::parse("file://")?,
    };
    rt.register_object_store(&url, lake.sql_store()?);
    Ok(rt)
}

/// saerl's SQL functions, with `topk_encode` loading SAEs from `lake` on the SQL device.
pub fn register_udfs(ctx: &SessionContext, lake: &Lake) -> Result<()> {
    let pool = ctx.runtime_env().memory_pool.clone();
    saerl_udfs::register_all(
        ctx,
        Arc::new(LakeSaes {
            lake: lake.clone(),
            device: sql_device()?,
            cache: Mutex::default(),
            reserved: datafusion::execution::memory_pool::MemoryConsumer::new("topk_encode SAEs")
                .register(&pool),
        }),
    );
    Ok(())
}

/// Registers every lake table, the UDFs, and the Rust providers in `ctx` (a local session or
/// a cluster client), as the lake is now; statements re-register them when the lake changes.
pub async fn register_lake(ctx: &SessionContext, lake: &Lake) -> Result<()> {
    let snapshot = lake.read_guard()?;
    register_contents(ctx, lake).await?;
    if let Some(l) = ctx.state().config().get_extension::<SessionLake>() {
        l.seen.store(snapshot.generation(), Ordering::SeqCst);
    }
    Ok(())
}

/// Everything a session knows of the lake's contents: its tables (footers read), the
/// transitions, the providers, and the UDFs (whose SAE cache starts empty).
async fn register_contents(ctx: &SessionContext, lake: &Lake) -> Result<()> {
    let device = sql_device()?;
    // Listings DataFusion cached belong to the lake as it was.
    if let Some(cache) = ctx.runtime_env().cache_manager.get_list_files_cache() {
        cache.clear();
    }
    for table in Table::ALL {
        ctx.deregister_table(table.name())?;
        register_table(ctx, lake, table).await?;
    }
    register_udfs(ctx, lake)?;
    // Transitions and per-feature drift are computed by Rust providers (see drift.rs).
    let transitions = lake.sae_transitions()?;
    let batch = super::drift::transitions_batch(&transitions)?;
    for name in ["sae_transitions", "feature_drift"] {
        ctx.deregister_table(name)?;
    }
    ctx.register_table(
        "sae_transitions",
        Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?),
    )?;
    ctx.register_table(
        "feature_drift",
        Arc::new(super::drift::FeatureDrift::new(lake.clone(), transitions)),
    )?;
    let pool = ctx.runtime_env().memory_pool.clone();
    ctx.register_udtf(
        "match_features",
        Arc::new(super::matching::MatchFeatures {
            lake: lake.clone(),
            pool: pool.clone(),
        }),
    );
    ctx.register_udtf(
        "best_match",
        Arc::new(super::best_match::BestMatch {
            lake: lake.clone(),
            device,
            pool,
        }),
    );
    Ok(())
}

fn with_partition_cols(table: Table, file_schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = file_schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend(
        table
            .partition_cols()
            .iter()
            .map(|c| Field::new(c.name(), c.data_type(), false)),
    );
    Arc::new(Schema::new(fields))
}

/// The lake a session reads, and the commit its registered tables show.
struct SessionLake {
    lake: Lake,
    seen: AtomicU64,
}

/// One statement's snapshot of the session's lake: no commit publishes meanwhile, one a crashed
/// writer left half-published is completed first, and when the lake changed since the session
/// last looked, its tables and providers are registered again (on an unchanged lake this reads
/// one small file, no footers). `None` for a session without a lake.
pub(crate) async fn begin_statement(ctx: &SessionContext) -> Result<Option<Snapshot>> {
    let Some(l) = ctx.state().config().get_extension::<SessionLake>() else {
        return Ok(None);
    };
    let snapshot = l.lake.read_guard()?;
    if l.seen.load(Ordering::SeqCst) != snapshot.generation() {
        register_contents(ctx, &l.lake).await?;
        l.seen.store(snapshot.generation(), Ordering::SeqCst);
    }
    Ok(Some(snapshot))
}

/// The first file of the session's (local) lake whose data does not decode, for naming it
/// after the decoder gave up inside a statement. Reads every file: only for that error.
pub(super) fn damaged_file(ctx: &SessionContext) -> Option<std::path::PathBuf> {
    let l = ctx.state().config().get_extension::<SessionLake>()?;
    if l.lake.remote().is_some() {
        return None;
    }
    Table::ALL
        .iter()
        .filter_map(|&t| l.lake.files(t).ok())
        .flatten()
        .find(|f| crate::lake::read_parquet(f).is_err())
}

/// Registers a table over its Parquet files, after checking every file's footer so a corrupt
/// file is reported by name up front. An empty table is registered with its schema.
async fn register_table(ctx: &SessionContext, lake: &Lake, table: Table) -> Result<()> {
    let schemas = match lake.remote() {
        None => lake
            .files(table)?
            .iter()
            .map(|f| check_parquet(f))
            .collect::<Result<Vec<_>>>()?,
        Some(r) => remote_schemas(ctx, r, table).await?,
    };
    let mut widths = Vec::new();
    if let Some(col) = table.vector_columns().first() {
        for schema in &schemas {
            widths.push(
                schema
                    .field_with_name(col)
                    .ok()
                    .and_then(|f| vector_width(f.data_type())),
            );
        }
    }
    widths.dedup();
    // One width across the table keeps FixedSizeList; mixed widths are read as List<Float32>.
    let width = if widths.len() == 1 { widths[0] } else { None };
    let file_schema = table.file_schema(width);
    if schemas.is_empty() {
        let schema = with_partition_cols(table, &file_schema);
        ctx.register_table(
            table.name(),
            Arc::new(MemTable::try_new(schema, vec![vec![]])?),
        )?;
        return Ok(());
    }
    let url = match lake.remote() {
        Some(r) => ListingTableUrl::parse(format!("{}/{}/", r.url(), table.name()))?,
        None => {
            let dir = std::path::absolute(lake.table_dir(table))?;
            ListingTableUrl::parse(format!("{}/", dir.display()))?
        }
    };
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(
            table
                .partition_cols()
                .iter()
                .map(|c| (c.name().to_string(), c.data_type()))
                .collect(),
        );
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(file_schema);
    ctx.register_table(table.name(), Arc::new(ListingTable::try_new(config)?))?;
    Ok(())
}

/// The Arrow schemas of a table's files on the object store, from their footers (a corrupt
/// file is named up front, as for a local lake).
// The footer is all this reads; ParquetObjectReader's deprecation asks for a hand-written
// AsyncFileReader, which would do exactly what it does.
#[allow(deprecated)]
async fn remote_schemas(ctx: &SessionContext, r: &Store, table: Table) -> Result<Vec<SchemaRef>> {
    use futures::{StreamExt, TryStreamExt};
    use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
    let url =
        datafusion::execution::object_store::ObjectStoreUrl::parse(format!("s3://{}", r.bucket()))?;
    let store = ctx.runtime_env().object_store(url)?;
    // Two small requests per file: issued concurrently, as a table holds one file per SAE.
    let files = r.table_files(table)?;
    // The futures are made up front (owning what they read), so the stream holds no closure
    // over borrowed files: a session's futures stay Send for the web server.
    let reads: Vec<_> = files
        .iter()
        .map(|f| {
            let path = object_store::path::Path::from(
                format!("{}/{}", r.prefix_str(), f.rel).trim_start_matches('/'),
            );
            let reader = ParquetObjectReader::new(store.clone(), path).with_file_size(f.size);
            let what = format!("{}/{}: not a readable Parquet file", r.url(), f.rel);
            async move {
                let builder = ParquetRecordBatchStreamBuilder::new(reader)
                    .await
                    .context(what)?;
                anyhow::Ok(builder.schema().clone())
            }
        })
        .collect();
    futures::stream::iter(reads)
        .buffered(crate::lake::CONCURRENCY)
        .try_collect()
        .await
}

type EncoderCache = HashMap<SaeKey, Arc<dyn Encoder>>;

/// `topk_encode`'s SAEs, loaded from the lake once per commit of it (an executor's registry
/// lives as long as the executor, so the cache notes the commit it belongs to).
struct LakeSaes {
    lake: Lake,
    device: candle_core::Device,
    /// The lake commit the cached SAEs were read at, and the SAEs.
    cache: Mutex<(u64, EncoderCache)>,
    /// The cached SAEs' bytes, held in the session's memory pool.
    reserved: datafusion::execution::memory_pool::MemoryReservation,
}

impl std::fmt::Debug for LakeSaes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LakeSaes({}, {:?})", self.lake.location(), self.device)
    }
}

/// An SAE whose encoder runs on a device.
struct DeviceEncoder {
    d_model: usize,
    sae: crate::sae::on_device::DeviceSae,
    device: candle_core::Device,
}

impl Encoder for DeviceEncoder {
    fn d_model(&self) -> usize {
        self.d_model
    }

    fn encode(&self, x: &[f32]) -> Result<Vec<(u32, f32)>, String> {
        Ok(self.encode_rows(x)?.pop().unwrap_or_default())
    }

    fn encode_rows(&self, x: &[f32]) -> Result<Vec<Vec<(u32, f32)>>, String> {
        let run = || -> candle_core::Result<Vec<Vec<(u32, f32)>>> {
            let t = candle_core::Tensor::from_slice(
                x,
                (x.len() / self.d_model, self.d_model),
                &self.device,
            )?;
            let (idx, val) = self.sae.encode(&t)?;
            Ok(idx
                .to_vec2::<u32>()?
                .into_iter()
                .zip(val.to_vec2::<f32>()?)
                .map(|(i, v)| i.into_iter().zip(v).collect())
                .collect())
        };
        run().map_err(|e| format!("encoding on {:?}: {e}", self.device))
    }
}

impl LakeSaes {
    fn resolve(&self, key: &SaeKey) -> Result<PartitionKey> {
        if let Some(k) = key.k {
            return Ok(PartitionKey::sae(&key.chain, &key.stage, key.layer, k));
        }
        let ks: Vec<i32> = self
            .lake
            .partitions(Table::Saes)?
            .into_iter()
            .filter(|(p, _)| {
                p.chain == key.chain
                    && p.stage.as_deref() == Some(&key.stage)
                    && p.layer == Some(key.layer)
            })
            .filter_map(|(p, _)| p.k)
            .collect();
        match ks.as_slice() {
            [k] => Ok(PartitionKey::sae(&key.chain, &key.stage, key.layer, *k)),
            [] => {
                crate::sql::check_sae_names(&self.lake, &key.chain, Some(&key.stage))?;
                anyhow::bail!(
                "no SAE for chain {} stage {} layer {} in lake {} (see `SELECT chain, stage, layer, k FROM saes`)",
                key.chain,
                key.stage,
                key.layer,
                self.lake.location()
            )
            }
            _ => anyhow::bail!(
                "chain {} stage {} layer {} has SAEs for k = {ks:?}: pass k as the fifth argument",
                key.chain,
                key.stage,
                key.layer
            ),
        }
    }
}

impl SaeSource for LakeSaes {
    fn encoder(&self, key: &SaeKey) -> std::result::Result<Arc<dyn Encoder>, String> {
        let generation = self.lake.generation().map_err(|e| format!("{e:#}"))?;
        {
            let mut cache = self.cache.lock().unwrap();
            if cache.0 != generation {
                *cache = (generation, HashMap::new());
                self.reserved.free();
            }
            if let Some(sae) = cache.1.get(key) {
                return Ok(sae.clone());
            }
        }
        let load = || -> Result<Arc<dyn Encoder>> {
            let sae = read_sae(&self.lake, &self.resolve(key)?)?;
            self.reserved.try_grow(super::sae_bytes(&sae))?;
            Ok(match &self.device {
                candle_core::Device::Cpu => Arc::new(sae),
                dev => Arc::new(DeviceEncoder {
                    d_model: sae.d_model,
                    sae: crate::sae::on_device::DeviceSae::new(&sae, dev)?,
                    device: dev.clone(),
                }),
            })
        };
        let sae = load().map_err(|e| format!("{e:#}"))?;
        self.cache
            .lock()
            .unwrap()
            .1
            .insert(key.clone(), sae.clone());
        Ok(sae)
    }
}
