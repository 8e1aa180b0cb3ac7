//! `saerl report DIR`: runs every saved query and writes one self-contained HTML page
//! (`DIR/report.html`: figures as inline SVG, result tables) plus each query's full CSV.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::util::display::array_value_to_string;

use crate::lake::Lake;
use crate::sql::saved::QUERIES;
use crate::sql::{header, plot, print_batches, run_sql, Format};

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
    let keys = ["title", "chart", "x", "y", "value", "series", "facet"];
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
            batch.num_rows()
        )?;
    }
    Ok(h)
}

#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// Output directory (report.html and one CSV per query).
    #[arg(default_value = "report")]
    pub dir: PathBuf,
    /// Run the queries on a Ballista cluster (`df://HOST:PORT`, see `saerl cluster`).
    #[arg(long)]
    pub cluster: Option<String>,
}

pub async fn run(lake: &Lake, a: &ReportArgs) -> Result<()> {
    let page = write_report(lake, &a.dir, a.cluster.as_deref()).await?;
    println!("wrote {}", page.display());
    Ok(())
}

/// Writes the report; returns the page's path.
pub async fn write_report(lake: &Lake, dir: &Path, cluster: Option<&str>) -> Result<PathBuf> {
    let lake = lake.existing()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ctx = crate::cluster::session(&lake, cluster).await?;
    let mut body = String::new();
    let mut toc = String::new();
    let bar = super::progress(QUERIES.len() as u64, "report");
    for (name, sql) in QUERIES {
        bar.set_message(name.to_string());
        let h = header::parse(sql)?;
        let title = h.title.clone().unwrap_or_else(|| name.to_string());
        write!(toc, "<li><a href=\"#{name}\">{}</a></li>", escape(&title))?;
        writeln!(
            body,
            "<section id=\"{name}\"><h2>{}</h2><p>{}</p><p class=note>queries/{name}.sql</p>",
            escape(&title),
            escape(&description(sql))
        )?;
        match run_sql(&ctx, sql).await {
            Err(e) => write!(
                body,
                "<p class=err>The query failed: {}</p>",
                escape(&format!("{e:#}"))
            )?,
            Ok(batches) => {
                let csv = format!("{name}.csv");
                print_batches(
                    &batches,
                    Format::Csv,
                    &mut std::fs::File::create(dir.join(&csv))
                        .with_context(|| format!("writing {}", dir.join(&csv).display()))?,
                )?;
                let batch = match batches.first() {
                    Some(b) => concat_batches(&b.schema(), &batches)?,
                    None => RecordBatch::new_empty(std::sync::Arc::new(
                        arrow::datatypes::Schema::empty(),
                    )),
                };
                if batch.num_rows() == 0 {
                    body.push_str("<p class=note>No rows: the lake has nothing for this question yet (see the commands in the README).</p>");
                } else {
                    match plot::draw_svg(&batch, &h) {
                        Ok(svg) => write!(body, "<figure>{svg}</figure>")?,
                        Err(e) => write!(
                            body,
                            "<p class=err>No figure: {}</p>",
                            escape(&format!("{e:#}"))
                        )?,
                    }
                    body.push_str(&table_html(&batch, &csv)?);
                }
            }
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
<p class=note>Lake {lake}; every saved query of queries/, run now.</p>
<ul>{toc}</ul>
{body}
</body></html>
"#,
        lake = escape(&lake.location())
    );
    let path = dir.join("report.html");
    let tmp = dir.join("report.html.tmp");
    std::fs::write(&tmp, page).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}
