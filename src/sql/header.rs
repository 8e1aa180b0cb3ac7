//! The `-- key: value` header of a saved query, which tells `saerl plot` how to draw it.

use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chart {
    Line,
    Bar,
    Scatter,
    Heatmap,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub title: Option<String>,
    pub chart: Option<Chart>,
    pub x: Option<String>,
    pub y: Option<String>,
    /// Heatmap cell colour.
    pub value: Option<String>,
    pub series: Option<String>,
    pub facet: Option<String>,
    /// `-- param: NAME = DEFAULT` lines: the statement's `$NAME` placeholders.
    pub params: std::collections::BTreeMap<String, String>,
}

/// Reads the leading comment block; lines that are not `-- key: value` with a known key are
/// ordinary comments.
pub fn parse(sql: &str) -> Result<Header> {
    let mut h = Header {
        title: None,
        chart: None,
        x: None,
        y: None,
        value: None,
        series: None,
        facet: None,
        params: Default::default(),
    };
    for line in sql.lines().map(str::trim) {
        if line.is_empty() {
            continue;
        }
        let Some(comment) = line.strip_prefix("--") else {
            break;
        };
        let Some((key, value)) = comment.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim().to_string());
        match key {
            "title" => h.title = Some(value),
            "x" => h.x = Some(value),
            "y" => h.y = Some(value),
            "value" => h.value = Some(value),
            "series" => h.series = Some(value),
            "facet" => h.facet = Some(value),
            "param" => {
                let Some((name, default)) = value.split_once('=') else {
                    bail!("`-- param: {value}` needs a default: `-- param: NAME = VALUE`");
                };
                h.params
                    .insert(name.trim().to_string(), default.trim().to_string());
            }
            "chart" => {
                h.chart = Some(match value.as_str() {
                    "line" => Chart::Line,
                    "bar" => Chart::Bar,
                    "scatter" => Chart::Scatter,
                    "heatmap" => Chart::Heatmap,
                    other => {
                        bail!("unknown chart kind {other:?} (use line, bar, scatter or heatmap)")
                    }
                })
            }
            _ => {}
        }
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_keys_until_the_first_statement_line() {
        let h = super::parse(
            "-- title: T\n-- chart: bar\n-- note: free text\n-- x: a\n-- param: chain = flexible\nSELECT 1\n-- y: late",
        )
        .unwrap();
        assert_eq!(h.title.as_deref(), Some("T"));
        assert_eq!(h.chart, Some(super::Chart::Bar));
        assert_eq!(h.x.as_deref(), Some("a"));
        assert_eq!(h.y, None);
        assert_eq!(h.params["chain"], "flexible");
    }
}
