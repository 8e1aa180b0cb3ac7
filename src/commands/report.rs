//! `saerl report DIR`: runs every saved query and writes one self-contained HTML page
//! (`DIR/report.html`: figures as inline SVG, result tables) plus each query's full CSV.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::util::display::array_value_to_string;

use crate::lake::Lake;
use crate::sql::saved::{self, Params, SavedQuery};
use crate::sql::{header, plot, print_batches, run_sql_with, Format};

/// Rows shown per table in the page (the CSV beside it has them all).
const TABLE_ROWS: usize = 100;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The comment lines of a query's header that are not `key: value` settings.
fn description(sql: &str) -> String {
    let keys = [
        "title", "chart", "x", "y", "value", "series", "facet", "param",
    ];
    sql.lines()
        .map_while(|l| l.trim().strip_prefix("--"))
        .map(str::trim)
        .filter(|l| {
            !l.split_once(':')
                .is_some_and(|(k, _)| keys.contains(&k.trim()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn table_html(batch: &RecordBatch, csv: &str) -> Result<String> {
    let mut h = String::from("<table><tr>");
    for f in batch.schema().fields() {
        write!(h, "<th>{}</th>", escape(f.name()))?;
    }
    h.push_str("</tr>\n");
    for r in 0..batch.num_rows().min(TABLE_ROWS) {
        h.push_str("<tr>");
        for c in batch.columns() {
            write!(h, "<td>{}</td>", escape(&array_value_to_string(c, r)?))?;
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
    if batch.num_rows() > TABLE_ROWS {
        writeln!(
            h,
            "<p class=note>First {TABLE_ROWS} of {} rows; all of them are in <a href=\"{csv}\">{csv}</a>.</p>",
            batch.num_rows(),
            csv = escape(csv)
        )?;
    }
    Ok(h)
}

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "report")]
pub struct ReportArgs {
    /// Output directory (report.html and one CSV per query).
    #[arg(default_value = "report")]
    pub dir: PathBuf,
    /// Run every `.sql` file of this directory instead of the built-in saved queries.
    #[arg(long)]
    pub queries: Option<PathBuf>,
    /// A value for a parameter the queries declare (`-- param: NAME = DEFAULT`); repeatable.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = crate::sql::saved::parse_param)]
    pub params: Vec<(String, String)>,
    /// Run the queries on a Ballista cluster (`df://HOST:PORT`, see `saerl cluster`).
    #[arg(long)]
    pub cluster: Option<String>,
}

pub async fn run(lake: &Lake, a: &ReportArgs) -> Result<()> {
    let queries = match &a.queries {
        Some(dir) => saved::load_dir(dir)?,
        None => saved::builtin(),
    };
    let given: Params = a.params.iter().cloned().collect();
    // A parameter no query declares is a typo, not something to ignore.
    let mut declared: Vec<String> = Vec::new();
    for q in &queries {
        declared.extend(q.defaults()?.into_keys());
    }
    declared.sort();
    declared.dedup();
    for k in given.keys() {
        if !declared.contains(k) {
            anyhow::bail!(
                "no query declares the parameter {k:?} (declared: {})",
                if declared.is_empty() {
                    "none".into()
                } else {
                    declared.join(", ")
                }
            );
        }
    }
    let page = write_report(lake, &a.dir, &queries, &given, a.cluster.as_deref()).await?;
    super::say!("wrote {}", page.display());
    Ok(())
}

/// One query's result: its CSV beside the page, and in the page its figure and table (or a
/// note that there are no rows yet).
fn write_result(
    body: &mut String,
    dir: &Path,
    name: &str,
    batches: &[RecordBatch],
    h: &header::Header,
) -> Result<()> {
    let csv = format!("{name}.csv");
    let mut file = crate::durable::AtomicFile::create(&dir.join(&csv))?;
    print_batches(batches, Format::Csv, &mut file)?;
    file.finish()?;
    let batch = match batches.first() {
        Some(b) => concat_batches(&b.schema(), batches)?,
        None => RecordBatch::new_empty(std::sync::Arc::new(arrow::datatypes::Schema::empty())),
    };
    if batch.num_rows() == 0 {
        body.push_str("<p class=note>No rows: the lake has nothing for this question yet (see the commands in the README).</p>");
        return Ok(());
    }
    match plot::draw_svg(&batch, h) {
        Ok(svg) => write!(body, "<figure>{svg}</figure>")?,
        Err(e) => write!(
            body,
            "<p class=err>No figure: {}</p>",
            escape(&format!("{e:#}"))
        )?,
    }
    body.push_str(&table_html(&batch, &csv)?);
    Ok(())
}

/// Writes the report of `queries` (each with its defaults, overridden by `given` where it
/// declares them); returns the page's path.
pub async fn write_report(
    lake: &Lake,
    dir: &Path,
    queries: &[SavedQuery],
    given: &Params,
    cluster: Option<&str>,
) -> Result<PathBuf> {
    let lake = lake.existing()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let engine = crate::cluster::engine(cluster);
    let ctx = crate::sql::session::open_with(&lake, engine.as_deref()).await?;
    let mut body = String::new();
    let mut toc = String::new();
    let bar = super::progress(queries.len() as u64, "report");
    for q in queries {
        let (name, sql) = (escape(&q.name), q.sql.as_str());
        let mut params = q.defaults()?;
        for (k, v) in given {
            if params.contains_key(k) {
                params.insert(k.clone(), v.clone());
            }
        }
        bar.set_message(q.name.clone());
        let h = header::parse(sql)?;
        let title = h.title.clone().unwrap_or_else(|| name.to_string());
        write!(toc, "<li><a href=\"#{name}\">{}</a></li>", escape(&title))?;
        writeln!(
            body,
            "<section id=\"{name}\"><h2>{}</h2><p>{}</p><p class=note>{name}.sql</p>",
            escape(&title),
            escape(&description(sql))
        )?;
        match run_sql_with(&ctx, sql, &params).await {
            Err(e) => write!(
                body,
                "<p class=err>The query failed: {}</p>",
                escape(&format!("{e:#}"))
            )?,
            Ok(batches) => write_result(&mut body, dir, &q.name, &batches, &h)?,
        }
        body.push_str("</section>\n");
        bar.inc(1);
    }
    bar.finish_and_clear();
    let page = format!(
        r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>saerl report</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }}
table {{ border-collapse: collapse; font-size: 12px; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
th {{ background: #f0f0f0; }}
figure {{ margin: 1em 0; overflow-x: auto; }}
.note {{ color: #666; font-size: 13px; }} .err {{ color: #a00; }}
section {{ border-top: 1px solid #ddd; padding-top: 1em; }}
</style></head><body>
<h1>saerl report</h1>
<p class=note>Lake {lake}; every saved query, run now.</p>
<ul>{toc}</ul>
{body}
</body></html>
"#,
        lake = escape(&lake.location())
    );
    let path = dir.join("report.html");
    crate::durable::write_atomic(&path, page.as_bytes())?;
    Ok(path)
}
