//! Saved queries: the built-in set (`queries/`, shipped inside the binary) or a directory of a
//! user's own, each with its header's parameters (`-- param: chain = flexible`), which
//! statements use as DataFusion placeholders (`$chain`) and `--param chain=strict` sets.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The built-in saved questions, by file stem, in the order a report shows them.
pub const QUERIES: &[(&str, &str)] = &[
    ("quality", include_str!("../../queries/quality.sql")),
    (
        "decoder_drift",
        include_str!("../../queries/decoder_drift.sql"),
    ),
    (
        "drift_by_step",
        include_str!("../../queries/drift_by_step.sql"),
    ),
    ("kl_ratio", include_str!("../../queries/kl_ratio.sql")),
    (
        "effective_count",
        include_str!("../../queries/effective_count.sql"),
    ),
    ("lifecycle", include_str!("../../queries/lifecycle.sql")),
    (
        "l18_quadrants",
        include_str!("../../queries/l18_quadrants.sql"),
    ),
    ("best_match", include_str!("../../queries/best_match.sql")),
    ("matching", include_str!("../../queries/matching.sql")),
    ("top_drifted", include_str!("../../queries/top_drifted.sql")),
];

/// Values for a statement's placeholders, by name (without the `$`).
pub type Params = BTreeMap<String, String>;

/// One saved query.
#[derive(Debug, Clone)]
pub struct SavedQuery {
    pub name: String,
    pub sql: String,
}

impl SavedQuery {
    /// The parameters its header declares, with their defaults.
    pub fn defaults(&self) -> Result<Params> {
        Ok(super::header::parse(&self.sql)?.params)
    }

    /// Its defaults with `given` applied; a given name the query does not declare is an error
    /// naming those it does.
    pub fn params(&self, given: &Params) -> Result<Params> {
        let mut p = self.defaults()?;
        for (k, v) in given {
            if !p.contains_key(k) {
                bail!(
                    "{} has no parameter {k:?} (its header declares: {})",
                    self.name,
                    if p.is_empty() {
                        "none".to_string()
                    } else {
                        p.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                );
            }
            p.insert(k.clone(), v.clone());
        }
        Ok(p)
    }
}

/// The built-in set.
pub fn builtin() -> Vec<SavedQuery> {
    QUERIES
        .iter()
        .map(|(name, sql)| SavedQuery {
            name: name.to_string(),
            sql: sql.to_string(),
        })
        .collect()
}

/// Every `.sql` file of `dir`, by name.
pub fn load_dir(dir: &Path) -> Result<Vec<SavedQuery>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading the query directory {}", dir.display()))?;
    for e in entries {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "sql") && path.is_file() {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let sql = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            out.push(SavedQuery { name, sql });
        }
    }
    if out.is_empty() {
        bail!("no .sql files in {}", dir.display());
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Parses `--param NAME=VALUE`.
pub fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_list_is_the_queries_directory() {
        // The repository's queries/, from whichever package compiles this (tests/unit too).
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(|d| d.join("queries"))
            .find(|d| d.is_dir())
            .expect("queries/ above the package directory");
        let mut on_disk: Vec<String> = load_dir(&dir)
            .unwrap()
            .into_iter()
            .map(|q| q.name)
            .collect();
        let mut built_in: Vec<String> = QUERIES.iter().map(|(n, _)| n.to_string()).collect();
        on_disk.sort();
        built_in.sort();
        assert_eq!(
            built_in, on_disk,
            "src/sql/saved.rs QUERIES and queries/*.sql differ"
        );
    }

    #[test]
    fn given_parameters_must_be_declared() {
        let q = SavedQuery {
            name: "q".into(),
            sql: "-- param: chain = flexible\nSELECT $chain".into(),
        };
        let mut given = Params::new();
        given.insert("chain".into(), "strict".into());
        assert_eq!(q.params(&given).unwrap()["chain"], "strict");
        assert_eq!(q.defaults().unwrap()["chain"], "flexible");
        given.insert("layer".into(), "6".into());
        let e = q.params(&given).unwrap_err().to_string();
        assert!(
            e.contains("no parameter \"layer\"") && e.contains("chain"),
            "{e}"
        );
    }
}
