//! Running SQL text: every statement in it, in order.

use std::collections::HashMap;

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::DFParser;

use super::saved::Params;

/// One statement of a SQL text and the line (1-based) it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub line: usize,
    pub sql: String,
}

/// Splits SQL text at the `;` that end statements (not those inside quotes or comments);
/// pieces holding only whitespace and comments are dropped.
pub fn split_statements(text: &str) -> Vec<Statement> {
    let (mut out, mut cur, mut start) = (Vec::new(), String::new(), None::<usize>);
    let (mut line, mut chars) = (1, text.chars().peekable());
    let mut push = |cur: &mut String, start: &mut Option<usize>| {
        if let Some(l) = start.take() {
            out.push(Statement {
                line: l,
                sql: std::mem::take(cur).trim().to_string(),
            });
        }
        cur.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                start.get_or_insert(line);
                cur.push(c);
                for q in chars.by_ref() {
                    cur.push(q);
                    if q == '\n' {
                        line += 1;
                    }
                    if q == c {
                        break; // a doubled quote reopens on the next char: same result
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for q in chars.by_ref() {
                    if q == '\n' {
                        line += 1;
                        cur.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for q in chars.by_ref() {
                    if q == '\n' {
                        line += 1;
                        cur.push('\n');
                    }
                    if prev == '*' && q == '/' {
                        break;
                    }
                    prev = q;
                }
                cur.push(' ');
            }
            ';' => push(&mut cur, &mut start),
            c => {
                if c == '\n' {
                    line += 1;
                } else if !c.is_whitespace() {
                    start.get_or_insert(line);
                }
                cur.push(c);
            }
        }
    }
    push(&mut cur, &mut start);
    out
}

/// Runs one statement.
pub async fn run_statement(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    run_statement_with(ctx, sql, &Params::new()).await
}

/// A parameter's value as SQL sees it: an integer, a float, else text.
fn param_value(v: &str) -> ScalarValue {
    if let Ok(i) = v.parse::<i64>() {
        ScalarValue::Int64(Some(i))
    } else if let Ok(f) = v.parse::<f64>() {
        ScalarValue::Float64(Some(f))
    } else {
        ScalarValue::Utf8(Some(v.to_string()))
    }
}

/// Runs one statement with values for its `$name` placeholders.
pub async fn run_statement_with(
    ctx: &SessionContext,
    sql: &str,
    params: &Params,
) -> Result<Vec<RecordBatch>> {
    let mut statements = DFParser::parse_sql(sql)?;
    let statement = match (statements.pop_front(), statements.is_empty()) {
        (Some(s), true) => s,
        (None, _) => anyhow::bail!("no SQL statement given"),
        (Some(_), false) => anyhow::bail!("expected one statement"),
    };
    let _snapshot = super::session::begin_statement(ctx).await?;
    let run = async {
        let mut plan = match ctx.state().statement_to_plan(statement).await {
            Ok(p) => p,
            Err(e) => return Err(with_table_hint(ctx, e)),
        };
        if !params.is_empty() {
            let values: HashMap<String, ScalarValue> = params
                .iter()
                .map(|(k, v)| (k.clone(), param_value(v)))
                .collect();
            plan = plan.with_param_values(values)?;
        }
        Ok(ctx.execute_logical_plan(plan).await?.collect().await?)
    };
    // The parquet crate asserts on some corrupt encodings; a damaged lake file must end the
    // statement with an error, not the session. Any other panic is a bug, reported as one.
    panics::watch();
    match futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run)).await {
        Ok(r) => r,
        Err(p) => {
            let what = crate::lake::panic_text(&*p).to_string();
            match panics::last_location() {
                Some(at) if panics::in_parquet_decoder(&at) => {
                    let file = super::session::damaged_file(ctx)
                        .map(|f| format!("{} is damaged", f.display()))
                        .unwrap_or_else(|| "a Parquet file of the lake is damaged".into());
                    anyhow::bail!("the statement failed while decoding the lake ({what}): {file}; re-run the command that wrote it with --overwrite")
                }
                at => anyhow::bail!(
                    "saerl failed inside the statement: {what} (at {}); this is a bug in saerl, please report it with the statement",
                    at.as_deref().unwrap_or("an unknown place")
                ),
            }
        }
    }
}

/// What a read-only server (the SQL box, Flight SQL) runs, and nothing else.
pub const READ_ONLY: &str = "read-only: only SELECT, WITH and EXPLAIN (no DDL, DML, COPY or SET)";

/// The one statement of `sql`, refused (with [`READ_ONLY`] in the message) unless it only
/// reads the lake.
pub fn read_only_statement(sql: &str) -> Result<datafusion::sql::parser::Statement> {
    use datafusion::sql::parser::Statement as S;
    use datafusion::sql::sqlparser::ast::Statement as A;
    let mut statements = DFParser::parse_sql(sql.trim().trim_end_matches(';'))?;
    let statement = match (statements.pop_front(), statements.is_empty()) {
        (Some(s), true) => s,
        (None, _) => anyhow::bail!("no SQL statement given"),
        (Some(_), false) => anyhow::bail!("one statement at a time"),
    };
    let reads = match &statement {
        S::Statement(s) => matches!(**s, A::Query(_) | A::Explain { .. }),
        S::Explain(_) => true,
        _ => false,
    };
    anyhow::ensure!(reads, "{READ_ONLY}");
    Ok(statement)
}

/// A statement under way: its batches as they are computed, and the lake's shared lock, held
/// until the stream is dropped (the statement sees one commit of the lake throughout).
pub struct Running {
    pub stream: datafusion::execution::SendableRecordBatchStream,
    pub snapshot: Option<crate::lake::Snapshot>,
}

/// Plans `statement` on the lake as last committed, with `params` for its placeholders
/// (`$name` or `$1`, keyed without the `$`).
pub async fn plan_statement(
    ctx: &SessionContext,
    statement: datafusion::sql::parser::Statement,
    params: Option<HashMap<String, ScalarValue>>,
) -> Result<(
    datafusion::logical_expr::LogicalPlan,
    Option<crate::lake::Snapshot>,
)> {
    let snapshot = super::session::begin_statement(ctx).await?;
    let mut plan = match ctx.state().statement_to_plan(statement).await {
        Ok(p) => p,
        Err(e) => return Err(with_table_hint(ctx, e)),
    };
    if let Some(values) = params {
        plan = plan.with_param_values(values)?;
    }
    Ok((plan, snapshot))
}

/// Runs `statement` as a stream of record batches (nothing is gathered in memory).
pub async fn stream_statement(
    ctx: &SessionContext,
    statement: datafusion::sql::parser::Statement,
    params: Option<HashMap<String, ScalarValue>>,
) -> Result<Running> {
    let (plan, snapshot) = plan_statement(ctx, statement, params).await?;
    let stream = ctx
        .execute_logical_plan(plan)
        .await?
        .execute_stream()
        .await?;
    Ok(Running { stream, snapshot })
}

/// DataFusion's "table 'x' not found", with the session's tables and the nearest name.
fn with_table_hint(ctx: &SessionContext, e: datafusion::error::DataFusionError) -> anyhow::Error {
    let text = e.to_string();
    let missing = text
        .split_once("table '")
        .and_then(|(_, rest)| rest.split_once("' not found"))
        .map(|(name, _)| name.rsplit('.').next().unwrap_or(name).to_string());
    let Some(name) = missing else {
        return e.into();
    };
    let mut tables: Vec<String> = ctx
        .catalog_names()
        .iter()
        .filter_map(|c| ctx.catalog(c))
        .flat_map(|c| {
            c.schema_names()
                .into_iter()
                .filter(|s| s != "information_schema")
                .filter_map(move |s| c.schema(&s))
                .flat_map(|s| s.table_names())
        })
        .collect();
    tables.sort();
    anyhow::anyhow!(crate::suggest::unknown(
        "table",
        &name,
        "this session",
        &tables
    ))
}

/// Where caught panics came from: the Parquet decoder's asserts mean a damaged file, anything
/// else a bug. A process-wide hook records each panic's location (and stays quiet for the
/// decoder's, which become an error naming the file).
mod panics {
    use std::sync::{Mutex, Once};

    static LAST: Mutex<Option<String>> = Mutex::new(None);

    pub fn watch() {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()));
                let quiet = at.as_deref().is_some_and(in_parquet_decoder);
                *LAST.lock().unwrap_or_else(|e| e.into_inner()) = at;
                if !quiet {
                    previous(info);
                }
            }));
        });
    }

    pub fn last_location() -> Option<String> {
        LAST.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Whether a panic location lies in the parquet crate's sources.
    pub fn in_parquet_decoder(at: &str) -> bool {
        at.split(['/', '\\']).any(|part| {
            part.strip_prefix("parquet-")
                .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        })
    }

    #[cfg(test)]
    #[test]
    fn only_the_parquet_crate_means_a_damaged_file() {
        assert!(in_parquet_decoder(
            "/root/.cargo/registry/src/index.crates.io-1/parquet-59.3.2/src/encodings/rle.rs:12"
        ));
        assert!(!in_parquet_decoder("src/sql/session.rs:300"));
        assert!(!in_parquet_decoder(
            "/x/datafusion-datasource-parquet-55.2.0/src/a.rs:1"
        ));
    }
}

/// Runs every statement of `text` in order, handing each result to `on_result`; the first
/// error stops, naming the line its statement starts on in `source` (a file name, or "input").
pub async fn run_each(
    ctx: &SessionContext,
    text: &str,
    source: &str,
    on_result: &mut dyn FnMut(&Statement, Vec<RecordBatch>) -> Result<()>,
) -> Result<()> {
    run_each_with(ctx, text, source, &Params::new(), on_result).await
}

/// `run_each` with values for the statements' `$name` placeholders.
pub async fn run_each_with(
    ctx: &SessionContext,
    text: &str,
    source: &str,
    params: &Params,
    on_result: &mut dyn FnMut(&Statement, Vec<RecordBatch>) -> Result<()>,
) -> Result<()> {
    let statements = split_statements(text);
    if statements.is_empty() {
        anyhow::bail!("no SQL statement in {source}");
    }
    for s in &statements {
        let batches = run_statement_with(ctx, &s.sql, params)
            .await
            .with_context(|| format!("{source} line {}", s.line))?;
        on_result(s, batches)?;
    }
    Ok(())
}

/// Runs each statement of `sql` and returns the last statement's result.
pub async fn run_sql(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    run_sql_with(ctx, sql, &Params::new()).await
}

/// `run_sql` with values for the statements' `$name` placeholders.
pub async fn run_sql_with(
    ctx: &SessionContext,
    sql: &str,
    params: &Params,
) -> Result<Vec<RecordBatch>> {
    let mut last = Vec::new();
    run_each_with(ctx, sql, "input", params, &mut |_, b| {
        last = b;
        Ok(())
    })
    .await?;
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::split_statements;

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        let text =
            "-- a; comment\nSELECT 'a;b' AS x;\n\n/* c;\n */ SELECT \"q;\"\n  FROM t; -- end;\n";
        let s = split_statements(text);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!((s[0].line, s[0].sql.as_str()), (2, "SELECT 'a;b' AS x"));
        assert_eq!(s[1].line, 5);
        assert!(s[1].sql.starts_with("SELECT \"q;\"") && s[1].sql.ends_with("FROM t"));
        assert!(split_statements("  -- nothing\n").is_empty());
    }
}
