//! Running SQL text: every statement in it, in order.

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::DFParser;

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
    let mut statements = DFParser::parse_sql(sql)?;
    let statement = match (statements.pop_front(), statements.is_empty()) {
        (Some(s), true) => s,
        (None, _) => anyhow::bail!("no SQL statement given"),
        (Some(_), false) => anyhow::bail!("expected one statement"),
    };
    let _snapshot = super::session::statement_guard(ctx)?;
    let run = async {
        let plan = ctx.state().statement_to_plan(statement).await?;
        Ok(ctx.execute_logical_plan(plan).await?.collect().await?)
    };
    // The parquet crate asserts on some corrupt encodings; a damaged lake file must end the
    // statement with an error, not the session.
    match futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run)).await {
        Ok(r) => r,
        Err(p) => {
            let what = crate::lake::panic_text(&*p);
            anyhow::bail!("the statement failed while decoding the lake ({what}): a Parquet file is damaged; `saerl sql -c 'SELECT 1'` names files with damaged footers, otherwise re-run the commands that wrote the tables with --overwrite")
        }
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
    let statements = split_statements(text);
    if statements.is_empty() {
        anyhow::bail!("no SQL statement in {source}");
    }
    for s in &statements {
        let batches = run_statement(ctx, &s.sql)
            .await
            .with_context(|| format!("{source} line {}", s.line))?;
        on_result(s, batches)?;
    }
    Ok(())
}

/// Runs each statement of `sql` and returns the last statement's result.
pub async fn run_sql(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    let mut last = Vec::new();
    run_each(ctx, sql, "input", &mut |_, b| {
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
