//! The interactive SQL shell: read lines until a statement ends with `;`, run it, print it.
//! Dot-commands are parsed in one place (`dot_command`). Ctrl-C cancels the statement being
//! typed or run, not the session; Ctrl-D leaves.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use datafusion::prelude::SessionContext;
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use super::exec::run_each;
use super::format::{print_batches_at, Format};

const HELP: &str = "\
Statements end with `;` and may span lines. Dot-commands:
  .tables            list tables and views
  .schema TABLE      columns and types of a table
  .mode table|csv|json   output format
  .timing [on|off]   print how long each statement took
  .precision N       significant digits of floats in table mode (default 6)
  .read FILE         run the statements in a file
  .help              this text
  .quit              leave (or Ctrl-D)
saerl's functions and tables (beside DataFusion's and the lake's tables):";

/// `.help`: the commands, then every saerl function from the one list of them.
fn help_text() -> String {
    let mut text = HELP.to_string();
    for (_, signature) in super::FUNCTIONS {
        text.push_str("\n  ");
        text.push_str(signature);
    }
    text
}

pub struct Repl {
    ctx: SessionContext,
    format: Format,
    precision: usize,
    timing: bool,
}

enum Flow {
    Continue,
    Quit,
}

impl Repl {
    pub fn new(ctx: SessionContext, format: Format, precision: usize) -> Self {
        Self {
            ctx,
            format,
            precision,
            timing: false,
        }
    }

    /// Runs one dot-command non-interactively (`saerl sql -c ".tables"`).
    pub async fn command(&mut self, line: &str) -> Result<()> {
        self.dot_command(line.trim()).await.map(|_| ())
    }

    pub async fn run(&mut self) -> Result<()> {
        let mut rl = DefaultEditor::new()?;
        let history = history_path();
        if let Some(h) = &history {
            let _ = rl.load_history(h);
        }
        println!("saerl SQL — statements end with `;`, `.help` for commands, Ctrl-D to quit.");
        let mut buf = String::new();
        loop {
            let prompt = if buf.is_empty() { "saerl> " } else { "  ...> " };
            match rl.readline(prompt) {
                Ok(line) => {
                    let trimmed = line.trim();
                    if buf.is_empty() && trimmed.starts_with('.') {
                        let _ = rl.add_history_entry(trimmed);
                        match self.dot_command(trimmed).await {
                            Ok(Flow::Quit) => break,
                            Ok(Flow::Continue) => {}
                            Err(e) => eprintln!("Error: {}", crate::error_text(&e)),
                        }
                        continue;
                    }
                    if trimmed.is_empty() && buf.is_empty() {
                        continue;
                    }
                    buf.push_str(&line);
                    buf.push('\n');
                    if trimmed.ends_with(';') {
                        let sql = std::mem::take(&mut buf);
                        let _ = rl.add_history_entry(sql.trim());
                        if let Err(e) = self.execute(&sql, "input").await {
                            eprintln!("Error: {}", crate::error_text(&e));
                        }
                    }
                }
                Err(ReadlineError::Interrupted) => {
                    buf.clear();
                    println!("^C (statement discarded)");
                }
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(h) = &history {
            let _ = rl.save_history(h);
        }
        Ok(())
    }

    /// Runs every statement of `sql`, printing each result in order; the first error stops
    /// (naming the statement's line in `source`). Ctrl-C cancels.
    async fn execute(&self, sql: &str, source: &str) -> Result<()> {
        let mut start = Instant::now();
        let (format, precision, timing) = (self.format, self.precision, self.timing);
        let mut print = |_: &super::exec::Statement, batches: Vec<arrow::array::RecordBatch>| {
            let mut out = std::io::stdout().lock();
            print_batches_at(&batches, format, precision, &mut out)?;
            if timing {
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                writeln!(out, "{rows} rows in {:.3} s", start.elapsed().as_secs_f64())?;
            }
            start = Instant::now();
            Ok(())
        };
        tokio::select! {
            r = run_each(&self.ctx, sql, source, &mut print) => r,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("cancelled");
                Ok(())
            }
        }
    }

    async fn dot_command(&mut self, line: &str) -> Result<Flow> {
        let mut parts = line.split_whitespace();
        let cmd = parts.next().unwrap_or("");
        let arg = parts.next();
        match (cmd, arg) {
            (".help", _) => println!("{}", help_text()),
            (".quit" | ".exit", _) => return Ok(Flow::Quit),
            (".tables", _) => {
                self.execute("SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name;", ".tables").await?
            }
            (".schema", Some(t)) => {
                let t = t.trim_end_matches(';').replace('\'', "''");
                self.execute(&format!(
                    "SELECT column_name, data_type, is_nullable FROM information_schema.columns \
                     WHERE table_schema = 'public' AND table_name = '{t}' ORDER BY ordinal_position;"
                ), ".schema")
                .await?;
                if self.ctx.table_exist(t.as_str())? {
                    return Ok(Flow::Continue);
                }
                bail!("no table or view named {t:?} (see .tables)");
            }
            (".schema", None) => bail!("usage: .schema TABLE"),
            (".mode", Some(m)) => self.format = m.parse()?,
            (".mode", None) => println!("{:?}", self.format),
            (".precision", Some(n)) => {
                self.precision = n
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| anyhow::anyhow!("usage: .precision N (N ≥ 1), not {n:?}"))?;
            }
            (".precision", None) => println!("{}", self.precision),
            (".timing", a) => {
                self.timing = match a {
                    Some("on") => true,
                    Some("off") => false,
                    None => !self.timing,
                    Some(other) => bail!("usage: .timing [on|off], not {other:?}"),
                };
                println!("timing {}", if self.timing { "on" } else { "off" });
            }
            (".read", Some(path)) => {
                let sql = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {path}: {e}"))?;
                self.execute(&sql, path).await?;
            }
            (".read", None) => bail!("usage: .read FILE"),
            _ => bail!("unknown command {cmd} (see .help)"),
        }
        Ok(Flow::Continue)
    }
}

fn history_path() -> Option<PathBuf> {
    std::env::var_os("SAERL_HISTORY")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".saerl_history")))
}
