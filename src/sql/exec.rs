//! Running SQL text: every statement in it, in order.

use anyhow::Result;
use arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::DFParser;

/// Runs each statement of `sql` and returns the last statement's result.
pub async fn run_sql(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    let statements = DFParser::parse_sql(sql)?;
    if statements.is_empty() {
        anyhow::bail!("no SQL statement given");
    }
    let mut last = Vec::new();
    for statement in statements {
        let plan = ctx.state().statement_to_plan(statement).await?;
        last = ctx.execute_logical_plan(plan).await?.collect().await?;
    }
    Ok(last)
}
