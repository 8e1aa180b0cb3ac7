//! How saerl's Rust providers travel in a Ballista plan. Ballista ships logical plans to the
//! scheduler and physical plans to executors as protobuf; the lake's Parquet tables are plain
//! listing scans it knows, but saerl's own providers are not. These codecs wrap Ballista's
//! (which keep handling its shuffle nodes and file formats) and add:
//! - `feature_drift` (logical): rebuilt from the receiving process's `--lake`;
//! - small in-memory tables (`sae_transitions`, `best_match(...)`, `match_features(...)`,
//!   evaluated where the statement is planned): their batches, as Arrow IPC;
//! - `DriftExec` (physical): its transition shards, rebuilt on the executor against its lake.

use std::sync::Arc;

use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result, TableReference};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

use crate::lake::Lake;
use crate::sql::drift::{DriftExec, FeatureDrift};

const MAGIC: &[u8] = b"saerl/1:";
const DRIFT_TABLE: u8 = b'D';
const MEM_TABLE: u8 = b'M';
const DRIFT_EXEC: u8 = b'X';

fn ours(buf: &[u8]) -> Option<(u8, &[u8])> {
    let rest = buf.strip_prefix(MAGIC)?;
    Some((*rest.first()?, &rest[1..]))
}

fn header(buf: &mut Vec<u8>, tag: u8) {
    buf.extend_from_slice(MAGIC);
    buf.push(tag);
}

/// The lake a plan was made for travels with saerl's nodes: a process serving another lake
/// would answer from the wrong tables (an empty drift, say), so it refuses instead.
fn put_lake(buf: &mut Vec<u8>, lake: &Lake) {
    buf.extend_from_slice(lake.identity().as_bytes());
    buf.push(b'\n');
}

fn take_lake<'a>(ours: &Lake, payload: &'a [u8]) -> Result<&'a [u8]> {
    let nl = payload
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| err("a plan node without its lake (a saerl of another version?)"))?;
    let theirs = String::from_utf8_lossy(&payload[..nl]);
    let mine = ours.identity();
    if theirs != mine {
        return Err(DataFusionError::Plan(format!(
            "this cluster serves the lake {mine}, but the statement was planned for the lake {theirs}: start the scheduler and executors with --lake {theirs}, or run the client with --lake {mine}"
        )));
    }
    Ok(&payload[nl + 1..])
}

fn err(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!("saerl cluster codec: {e:#}"))
}

#[derive(Debug)]
pub struct LogicalCodec {
    lake: Lake,
    inner: BallistaLogicalExtensionCodec,
}

impl LogicalCodec {
    pub fn new(lake: &Lake) -> Self {
        Self {
            lake: lake.clone(),
            inner: BallistaLogicalExtensionCodec::default(),
        }
    }
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        match ours(buf) {
            Some((DRIFT_TABLE, payload)) => {
                take_lake(&self.lake, payload)?;
                let transitions = self.lake.sae_transitions().map_err(err)?;
                Ok(Arc::new(
                    FeatureDrift::new(self.lake.clone(), transitions).merged(),
                ))
            }
            Some((MEM_TABLE, ipc)) => {
                let reader = StreamReader::try_new(ipc, None)?;
                let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(Arc::new(MemTable::try_new(schema, vec![batches])?))
            }
            _ => self
                .inner
                .try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        if node.is::<FeatureDrift>() {
            header(buf, DRIFT_TABLE);
            put_lake(buf, &self.lake);
            return Ok(());
        }
        if let Some(mem) = node.downcast_ref::<MemTable>() {
            header(buf, MEM_TABLE);
            let mut w = StreamWriter::try_new(&mut *buf, &mem.schema())?;
            for part in &mem.batches {
                let part = part
                    .try_read()
                    .map_err(|_| err("an in-memory table is being written"))?;
                for b in part.iter() {
                    w.write(b)?;
                }
            }
            w.finish()?;
            return Ok(());
        }
        self.inner.try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }
}

#[derive(Debug)]
pub struct PhysicalCodec {
    lake: Lake,
    inner: BallistaPhysicalExtensionCodec,
}

impl PhysicalCodec {
    pub fn new(lake: &Lake) -> Self {
        Self {
            lake: lake.clone(),
            inner: BallistaPhysicalExtensionCodec::default(),
        }
    }
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match ours(buf) {
            Some((DRIFT_EXEC, payload)) => {
                let json = take_lake(&self.lake, payload)?;
                let plan = serde_json::from_slice(json).map_err(err)?;
                Ok(Arc::new(DriftExec::from_plan(&self.lake, plan)))
            }
            _ => self.inner.try_decode(buf, inputs, ctx, proto_converter),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(d) = node.downcast_ref::<DriftExec>() {
            header(buf, DRIFT_EXEC);
            put_lake(buf, &self.lake);
            serde_json::to_writer(&mut *buf, &d.plan()).map_err(err)?;
            return Ok(());
        }
        self.inner.try_encode(node, buf, proto_converter)
    }
}
