//! DataFusion's logical optimizer with one rule replaced, for every saerl session (local,
//! cluster client, cluster scheduler).
//!
//! DataFusion 55's `eliminate_duplicated_expr` drops an ORDER BY key when the schema's
//! functional dependencies say earlier keys determine it. After a one-to-many join and a
//! GROUP BY those dependencies are wrong: `aggregate_functional_dependencies` turns a join
//! side's `Multi` dependence (`e.chain → e.*`, a key no longer unique) into one on every output
//! column, so `ORDER BY e.chain, s.step DESC` loses `s.step` and `… LIMIT n` returns the wrong
//! rows. The replacement keeps the rule's other work (duplicate sort keys and GROUP BY
//! expressions removed) and never prunes a sort key by dependencies: sorting by one more key
//! costs little, a wrong answer costs the study.

use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::Result;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, Sort, SortExpr};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{Optimizer, OptimizerConfig, OptimizerRule};

/// The name of the DataFusion rule `DedupKeys` replaces.
const REPLACED: &str = "eliminate_duplicated_expr";

/// DataFusion's default rules, in their order, with `eliminate_duplicated_expr` replaced.
pub fn optimizer_rules() -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    Optimizer::new()
        .rules
        .into_iter()
        .map(|r| {
            if r.name() == REPLACED {
                Arc::new(DedupKeys) as Arc<dyn OptimizerRule + Send + Sync>
            } else {
                r
            }
        })
        .collect()
}

/// Removes repeated ORDER BY keys (the first occurrence wins, as in SQL) and repeated GROUP BY
/// expressions; nothing else.
#[derive(Debug, Default)]
pub struct DedupKeys;

impl OptimizerRule for DedupKeys {
    fn name(&self) -> &str {
        "saerl_dedup_keys"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        match plan {
            LogicalPlan::Sort(sort) => {
                let n = sort.expr.len();
                let mut expr: Vec<SortExpr> = Vec::with_capacity(n);
                for e in sort.expr {
                    // A key equal to an earlier one (whatever its direction) orders nothing.
                    if !expr.iter().any(|k| k.expr == e.expr) {
                        expr.push(e);
                    }
                }
                let changed = expr.len() != n;
                let plan = LogicalPlan::Sort(Sort { expr, ..sort });
                Ok(if changed {
                    Transformed::yes(plan)
                } else {
                    Transformed::no(plan)
                })
            }
            LogicalPlan::Aggregate(agg) if has_repeats(&agg.group_expr) => {
                let mut group: Vec<Expr> = Vec::with_capacity(agg.group_expr.len());
                for e in agg.group_expr {
                    if !group.contains(&e) {
                        group.push(e);
                    }
                }
                Aggregate::try_new(agg.input, group, agg.aggr_expr)
                    .map(|a| Transformed::yes(LogicalPlan::Aggregate(a)))
            }
            _ => Ok(Transformed::no(plan)),
        }
    }
}

fn has_repeats(exprs: &[Expr]) -> bool {
    exprs
        .iter()
        .enumerate()
        .any(|(i, e)| exprs[..i].contains(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::SessionContext;

    /// The minimal reproducer of the upstream bug (no issue found for it in DataFusion's
    /// tracker as of 55.2): a key unique on one side of a one-to-many join still prunes
    /// later ORDER BY keys after a GROUP BY.
    const REPRODUCER: [&str; 2] = [
        "CREATE TABLE s(chain VARCHAR, step INT) AS VALUES ('a', 0), ('a', 10), ('a', 30), ('b', 5)",
        "WITH e AS (SELECT chain, min(step) AS m FROM s GROUP BY chain) \
         SELECT e.chain, s.step, count(*) AS n FROM e JOIN s ON s.chain = e.chain \
         GROUP BY e.chain, s.step ORDER BY e.chain, s.step DESC",
    ];

    async fn create_table(ctx: &SessionContext) {
        ctx.sql(REPRODUCER[0])
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
    }

    async fn steps(ctx: &SessionContext) -> Vec<i32> {
        create_table(ctx).await;
        let batches = ctx
            .sql(REPRODUCER[1])
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        batches
            .iter()
            .flat_map(|b| {
                let c = b
                    .column(1)
                    .as_any()
                    .downcast_ref::<arrow::array::Int32Array>()
                    .unwrap();
                c.values().to_vec()
            })
            .collect()
    }

    #[tokio::test]
    async fn the_sort_keeps_keys_that_datafusions_rule_drops() {
        let ours = SessionContext::new_with_state(
            SessionStateBuilder::new()
                .with_default_features()
                .with_optimizer_rules(optimizer_rules())
                .build(),
        );
        assert_eq!(steps(&ours).await, vec![30, 10, 0, 5]);
        // When this fails, DataFusion fixed its rule: drop `DedupKeys` and use theirs again.
        let stock = SessionContext::new();
        create_table(&stock).await;
        let plan = stock
            .sql(REPRODUCER[1])
            .await
            .unwrap()
            .into_optimized_plan()
            .unwrap();
        let text = plan.display_indent().to_string();
        assert!(
            text.contains("Sort: e.chain") && !text.contains("s.step DESC"),
            "DataFusion's sort-key pruning is fixed upstream:\n{text}"
        );
    }

    #[test]
    fn only_the_faulty_rule_is_replaced() {
        let default: Vec<String> = Optimizer::new()
            .rules
            .iter()
            .map(|r| r.name().to_string())
            .collect();
        let ours: Vec<String> = optimizer_rules()
            .iter()
            .map(|r| r.name().to_string())
            .collect();
        assert!(
            default.iter().any(|n| n == REPLACED),
            "DataFusion no longer has {REPLACED}: check whether its sort-key pruning is fixed upstream"
        );
        assert_eq!(default.len(), ours.len());
        for (d, o) in default.iter().zip(&ours) {
            if d == REPLACED {
                assert_eq!(o, "saerl_dedup_keys");
            } else {
                assert_eq!(d, o);
            }
        }
    }
}
