//! `feature_drift`: per-feature decoder and encoder cosine across every transition, as a table.
//!
//! In plain SQL this is a self-join of `features`, which makes DataFusion hold one side of
//! every transition's vectors in a hash table (GiBs at the study's shape). Here each
//! (chain, layer, k) chain of SAEs is walked in step order instead, keeping only the two
//! stages being compared in memory and reading each partition once; simple filters on the
//! transition columns prune partitions before they are read.

use std::sync::Arc;

use anyhow::Context;
use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::StreamExt;
use rayon::prelude::*;
use saerl_udfs::{cosine, FloatLists};
use serde::{Deserialize, Serialize};

use crate::lake::{Lake, Table, Transition};

/// Column order of `feature_drift`; the first seven describe the transition.
const TRANSITION_COLS: [&str; 7] = [
    "chain",
    "layer",
    "k",
    "stage_from",
    "stage_to",
    "step_from",
    "step_to",
];

pub fn schema() -> SchemaRef {
    use DataType::*;
    let f = |n: &str, t: DataType| Field::new(n, t, false);
    Arc::new(Schema::new(vec![
        f("chain", Utf8),
        f("layer", Int32),
        f("k", Int32),
        f("stage_from", Utf8),
        f("stage_to", Utf8),
        f("step_from", Int64),
        f("step_to", Int64),
        f("feature", Int32),
        Field::new("dec_cos", Float64, true),
        Field::new("enc_cos", Float64, true),
    ]))
}

#[derive(Debug)]
pub struct FeatureDrift {
    lake: Lake,
    transitions: Vec<Transition>,
    /// One output partition (the shards still run concurrently inside it): for a Ballista
    /// scheduler, which can only split the partitions of the scans it knows among tasks and
    /// would otherwise run every shard in every task.
    merged: bool,
}

impl FeatureDrift {
    pub fn new(lake: Lake, transitions: Vec<Transition>) -> Self {
        Self {
            lake,
            transitions,
            merged: false,
        }
    }

    /// The provider a cluster's scheduler plans with (see `merged`).
    pub fn merged(self) -> Self {
        Self {
            merged: true,
            ..self
        }
    }
}

fn column_value(t: &Transition, col: &str) -> Option<ScalarValue> {
    Some(match col {
        "chain" => ScalarValue::Utf8(Some(t.chain.clone())),
        "layer" => ScalarValue::Int32(Some(t.layer)),
        "k" => ScalarValue::Int32(Some(t.k)),
        "stage_from" => ScalarValue::Utf8(Some(t.stage_from.clone())),
        "stage_to" => ScalarValue::Utf8(Some(t.stage_to.clone())),
        "step_from" => ScalarValue::Int64(Some(t.step_from)),
        "step_to" => ScalarValue::Int64(Some(t.step_to)),
        _ => return None,
    })
}

/// The transition column and literal of `col <op> literal` (either way round).
fn column_literal<'a>(l: &'a Expr, r: &'a Expr) -> Option<(&'a str, &'a ScalarValue, bool)> {
    match (l, r) {
        (Expr::Column(c), Expr::Literal(v, _)) => Some((c.name.as_str(), v, false)),
        (Expr::Literal(v, _), Expr::Column(c)) => Some((c.name.as_str(), v, true)),
        _ => None,
    }
}

/// False only when `expr` surely rejects every row of transition `t`; unknown shapes keep it.
/// DataFusion re-applies every filter (pushdown is inexact), so this only has to be safe.
fn may_match(expr: &Expr, t: &Transition) -> bool {
    match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => may_match(left, t) && may_match(right, t),
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => may_match(left, t) || may_match(right, t),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let Some((col, lit, flipped)) = column_literal(left, right) else {
                return true;
            };
            let Some(v) = column_value(t, col) else {
                return true;
            };
            let Ok(lit) = lit.cast_to(&v.data_type()) else {
                return true;
            };
            let Some(ord) = v.partial_cmp(&lit) else {
                return true;
            };
            let ord = if flipped { ord.reverse() } else { ord };
            use std::cmp::Ordering::*;
            match op {
                Operator::Eq => ord == Equal,
                Operator::NotEq => ord != Equal,
                Operator::Lt => ord == Less,
                Operator::LtEq => ord != Greater,
                Operator::Gt => ord == Greater,
                Operator::GtEq => ord != Less,
                _ => true,
            }
        }
        Expr::InList(inlist) => {
            let Expr::Column(c) = inlist.expr.as_ref() else {
                return true;
            };
            let Some(v) = column_value(t, &c.name) else {
                return true;
            };
            let mut any_unknown = false;
            let hit = inlist.list.iter().any(|e| match e {
                Expr::Literal(l, _) => {
                    l.cast_to(&v.data_type())
                        .map(|l| l == v)
                        .unwrap_or_else(|_| {
                            any_unknown = true;
                            false
                        })
                }
                _ => {
                    any_unknown = true;
                    false
                }
            });
            any_unknown || hit != inlist.negated
        }
        _ => true,
    }
}

#[async_trait]
impl TableProvider for FeatureDrift {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let wanted: Vec<&Transition> = self
            .transitions
            .iter()
            .filter(|t| filters.iter().all(|f| may_match(f, t)))
            .collect();
        // Whole (chain, layer, k) groups go to one stream, so consecutive stages share a read.
        let mut groups: Vec<Vec<Transition>> = Vec::new();
        for t in wanted {
            match groups.last_mut() {
                Some(g) if g[0].chain == t.chain && g[0].layer == t.layer && g[0].k == t.k => {
                    g.push(t.clone())
                }
                _ => groups.push(vec![t.clone()]),
            }
        }
        let n = state
            .config()
            .target_partitions()
            .max(1)
            .min(groups.len().max(1));
        let mut shards: Vec<Vec<Vec<Transition>>> = vec![Vec::new(); n];
        for (i, g) in groups.into_iter().enumerate() {
            shards[i % n].push(g);
        }
        let needs = |col: &str| {
            let i = schema().index_of(col).unwrap();
            projection.is_none_or(|p| p.contains(&i))
        };
        let (dec, enc) = (needs("dec_cos"), needs("enc_cos"));
        let streams = shards
            .into_iter()
            .map(|groups| DriftStream {
                lake: self.lake.clone(),
                schema: schema(),
                groups,
                dec,
                enc,
            })
            .collect();
        Ok(Arc::new(DriftExec::new(
            streams,
            projection.cloned(),
            self.merged,
        )))
    }
}

/// The scan of `feature_drift`: one stream per shard of transition groups. A plan node of its
/// own (not a generic streaming scan) so a cluster can ship it to executors: `DriftPlan` is all
/// it takes to rebuild it against the executor's view of the lake.
#[derive(Debug)]
pub struct DriftExec {
    streams: Vec<DriftStream>,
    projection: Option<Vec<usize>>,
    merged: bool,
    props: Arc<PlanProperties>,
}

/// What a `DriftExec` is, without the lake (for the cluster codec).
#[derive(Serialize, Deserialize)]
pub struct DriftPlan {
    shards: Vec<Vec<Vec<Transition>>>,
    dec: bool,
    enc: bool,
    projection: Option<Vec<usize>>,
    merged: bool,
}

impl DriftExec {
    fn new(streams: Vec<DriftStream>, projection: Option<Vec<usize>>, merged: bool) -> Self {
        let full = schema();
        let out = match &projection {
            Some(p) => Arc::new(full.project(p).expect("projection of feature_drift")),
            None => full,
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new(out),
            Partitioning::UnknownPartitioning(if merged { 1 } else { streams.len().max(1) }),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            streams,
            projection,
            merged,
            props: Arc::new(props),
        }
    }

    pub fn plan(&self) -> DriftPlan {
        DriftPlan {
            shards: self.streams.iter().map(|s| s.groups.clone()).collect(),
            dec: self.streams.first().is_some_and(|s| s.dec),
            enc: self.streams.first().is_some_and(|s| s.enc),
            projection: self.projection.clone(),
            merged: self.merged,
        }
    }

    pub fn from_plan(lake: &Lake, plan: DriftPlan) -> Self {
        let streams = plan
            .shards
            .into_iter()
            .map(|groups| DriftStream {
                lake: lake.clone(),
                schema: schema(),
                groups,
                dec: plan.dec,
                enc: plan.enc,
            })
            .collect();
        Self::new(streams, plan.projection, plan.merged)
    }
}

impl DisplayAs for DriftExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "DriftExec: shards={}, merged={}",
            self.streams.len(),
            self.merged
        )
    }
}

impl ExecutionPlan for DriftExec {
    fn name(&self) -> &str {
        "DriftExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let out = self.props.eq_properties.schema().clone();
        let shards: Vec<&DriftStream> = match self.merged {
            true => self.streams.iter().collect(),
            false => self.streams.get(partition).into_iter().collect(),
        };
        // No shard (no transition matched): an empty partition.
        let pool = ctx.memory_pool();
        let merged =
            futures::stream::select_all(shards.into_iter().map(|s| Box::pin(s.execute(pool))));
        let projection = self.projection.clone();
        let stream = merged.map(move |b| match &projection {
            Some(p) => b.and_then(|b| Ok(b.project(p)?)),
            None => b,
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(out, stream)))
    }
}

#[derive(Debug, Clone)]
struct DriftStream {
    lake: Lake,
    schema: SchemaRef,
    groups: Vec<Vec<Transition>>,
    dec: bool,
    enc: bool,
}

/// One stage's feature vectors.
struct Stage {
    name: String,
    features: ArrayRef,
    w_dec: Option<ArrayRef>,
    w_enc: Option<ArrayRef>,
}

impl Stage {
    fn bytes(&self) -> usize {
        [
            Some(&self.features),
            self.w_dec.as_ref(),
            self.w_enc.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|a| a.get_array_memory_size())
        .sum()
    }
}

impl DriftStream {
    fn read(&self, t: &Transition, to: bool) -> anyhow::Result<Stage> {
        let key = if to { t.to_key() } else { t.from_key() };
        let mut cols = vec!["feature"];
        if self.dec {
            cols.push("w_dec");
        }
        if self.enc {
            cols.push("w_enc");
        }
        let b = self.lake.read_columns(Table::Features, &key, &cols)?;
        Ok(Stage {
            name: key.stage.clone().unwrap(),
            features: b.column(0).clone(),
            w_dec: b.column_by_name("w_dec").cloned(),
            w_enc: b.column_by_name("w_enc").cloned(),
        })
    }

    fn compare(&self, t: &Transition, a: &Stage, b: &Stage) -> anyhow::Result<RecordBatch> {
        let (fa, fb) = (
            a.features.as_primitive::<Int32Type>(),
            b.features.as_primitive::<Int32Type>(),
        );
        if fa != fb {
            anyhow::bail!(
                "features of {} and {} differ (d_sae {} vs {}): drift compares feature i with feature i",
                t.from_key(),
                t.to_key(),
                fa.len(),
                fb.len()
            );
        }
        let n = fa.len();
        let cosines = |x: &Option<ArrayRef>, y: &Option<ArrayRef>| -> anyhow::Result<ArrayRef> {
            let (Some(x), Some(y)) = (x, y) else {
                return Ok(Arc::new(Float64Array::new_null(n)));
            };
            if let (Some(p), Some(q)) = (f32_vectors(x), f32_vectors(y)) {
                if p.len() != q.len() {
                    anyhow::bail!(
                        "{}: d_model changes from {} to {}",
                        t.to_key(),
                        p.len() / n.max(1),
                        q.len() / n.max(1)
                    );
                }
                let d = p.len() / n.max(1);
                let out: Vec<Option<f64>> = p
                    .par_chunks(d.max(1))
                    .zip(q.par_chunks(d.max(1)))
                    .map(|(p, q)| crate::kernels::cosine(p, q))
                    .collect();
                return Ok(Arc::new(Float64Array::from(out)));
            }
            let (x, y) = (
                FloatLists::new("feature_drift", x)?,
                FloatLists::new("feature_drift", y)?,
            );
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                out.push(match (x.row(i), y.row(i)) {
                    (Some(p), Some(q)) if p.len() == q.len() => cosine(p, q),
                    (Some(p), Some(q)) => anyhow::bail!(
                        "{}: d_model changes from {} to {}",
                        t.to_key(),
                        p.len(),
                        q.len()
                    ),
                    _ => None,
                });
            }
            Ok(Arc::new(Float64Array::from(out)))
        };
        let text = |s: &str| Arc::new(StringArray::from(vec![s; n])) as ArrayRef;
        Ok(RecordBatch::try_new(
            self.schema.clone(),
            vec![
                text(&t.chain),
                Arc::new(Int32Array::from(vec![t.layer; n])),
                Arc::new(Int32Array::from(vec![t.k; n])),
                text(&t.stage_from),
                text(&t.stage_to),
                Arc::new(Int64Array::from(vec![t.step_from; n])),
                Arc::new(Int64Array::from(vec![t.step_to; n])),
                a.features.clone(),
                cosines(&a.w_dec, &b.w_dec)?,
                cosines(&a.w_enc, &b.w_enc)?,
            ],
        )?)
    }

    /// Walks one group in step order, reusing the previous `to` stage as the next `from`; the
    /// two stages held are reserved in the statement's memory pool.
    fn run(
        &self,
        tx: &tokio::sync::mpsc::Sender<Result<RecordBatch>>,
        reserved: &datafusion::execution::memory_pool::MemoryReservation,
    ) -> anyhow::Result<()> {
        for group in &self.groups {
            let mut prev: Option<Stage> = None;
            for t in group {
                let from = match prev.take() {
                    Some(s) if s.name == t.stage_from => s,
                    _ => self.read(t, false)?,
                };
                let to = self.read(t, true)?;
                reserved.try_resize(from.bytes() + to.bytes())?;
                let batch = self
                    .compare(t, &from, &to)
                    .with_context(|| format!("feature_drift {} → {}", t.from_key(), t.stage_to))?;
                if tx.blocking_send(Ok(batch)).is_err() {
                    return Ok(()); // the consumer is gone (LIMIT reached or cancelled)
                }
                prev = Some(to);
            }
        }
        Ok(())
    }
}

impl DriftStream {
    fn execute(
        &self,
        pool: &Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
    ) -> impl futures::Stream<Item = Result<RecordBatch>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let this = self.clone();
        let reserved =
            datafusion::execution::memory_pool::MemoryConsumer::new("feature_drift").register(pool);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = this.run(&tx, &reserved) {
                let _ = tx.blocking_send(Err(DataFusionError::Execution(format!("{e:#}"))));
            }
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) })
    }
}

/// The values of a non-null `FixedSizeList<Float32>` column as one slice (the lake's vectors).
fn f32_vectors(a: &ArrayRef) -> Option<&[f32]> {
    let l = a.as_fixed_size_list_opt()?;
    if l.null_count() > 0 || l.values().null_count() > 0 {
        return None;
    }
    let v = l
        .values()
        .as_primitive_opt::<arrow::datatypes::Float32Type>()?;
    let (start, len) = (
        l.offset() * l.value_length() as usize,
        l.len() * l.value_length() as usize,
    );
    Some(&v.values()[start..start + len])
}

/// `sae_transitions` as a small in-memory table.
pub fn transitions_batch(transitions: &[Transition]) -> Result<RecordBatch> {
    let s = schema();
    let fields: Vec<Field> = TRANSITION_COLS
        .iter()
        .map(|c| s.field_with_name(c).unwrap().clone())
        .collect();
    let strs = |f: fn(&Transition) -> &str| {
        Arc::new(StringArray::from_iter_values(transitions.iter().map(f))) as ArrayRef
    };
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        vec![
            strs(|t| &t.chain),
            Arc::new(Int32Array::from_iter_values(
                transitions.iter().map(|t| t.layer),
            )),
            Arc::new(Int32Array::from_iter_values(
                transitions.iter().map(|t| t.k),
            )),
            strs(|t| &t.stage_from),
            strs(|t| &t.stage_to),
            Arc::new(Int64Array::from_iter_values(
                transitions.iter().map(|t| t.step_from),
            )),
            Arc::new(Int64Array::from_iter_values(
                transitions.iter().map(|t| t.step_to),
            )),
        ],
    )?)
}
