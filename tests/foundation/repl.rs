//! The REPL driven through stdin: a multi-line statement, `.schema`, an error, then a good
//! query; and a saved query plotted to PNG and SVG; and the demo end to end.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::*;

#[test]
fn repl_runs_multi_line_statements_dot_commands_and_survives_errors() {
    let (dir, lake) = imported_lake();
    let mut child = Command::new(env!("CARGO_BIN_EXE_saerl"))
        .args(["sql", "--lake", lake.to_str().unwrap()])
        .env("SAERL_HISTORY", dir.path().join("history"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let script = "SELECT chain,\n       count(*) AS n_saes\nFROM saes\nGROUP BY chain\nORDER BY chain;\n.schema features\nSELECT * FROM nope;\n.mode csv\nSELECT 40 + 2 AS answer;\n.quit\n";
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(o.status.success(), "REPL exits cleanly:\n{err}");
    for want in [
        "kl0p025",
        "strict",
        "n_saes",
        "w_dec",
        "FixedSizeList",
        "answer\n42",
    ] {
        assert!(
            out.contains(want),
            "REPL output should contain {want:?}:\n{out}"
        );
    }
    assert!(err.contains("nope"), "the error names the table:\n{err}");
}

#[test]
fn saved_queries_plot_to_png_and_svg() {
    let (dir, lake) = imported_lake();
    let queries = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    for (q, title) in [
        ("decoder_drift", "Decoder and encoder drift"),
        ("l18_quadrants", "Layer 18"),
        ("kl_ratio", "KL budget"),
    ] {
        let png = dir.path().join(format!("{q}.png"));
        let svg = dir.path().join(format!("{q}.svg"));
        let file = queries.join(format!("{q}.sql"));
        ok(
            &lake,
            &["plot", file.to_str().unwrap(), "-o", png.to_str().unwrap()],
        );
        ok(
            &lake,
            &["plot", file.to_str().unwrap(), "-o", svg.to_str().unwrap()],
        );
        assert!(
            std::fs::read(&png).unwrap().starts_with(b"\x89PNG"),
            "{q}: a PNG"
        );
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains(title), "{q}: the SVG carries its title");
    }
    // Heatmap and scatter, from ad-hoc headers.
    for (chart, extra) in [("heatmap", "-- value: mean_cos\n"), ("scatter", "")] {
        let sql = format!(
            "-- title: Mean decoder cosine ({chart})\n-- chart: {chart}\n-- x: stage_to\n-- y: layer\n{extra}-- facet: chain\n\
             SELECT chain, stage_to, layer, avg(dec_cos) AS mean_cos FROM feature_drift GROUP BY chain, stage_to, layer"
        );
        let file = dir.path().join(format!("{chart}.sql"));
        std::fs::write(&file, sql).unwrap();
        let png = dir.path().join(format!("{chart}.png"));
        ok(
            &lake,
            &["plot", file.to_str().unwrap(), "-o", png.to_str().unwrap()],
        );
        assert!(
            std::fs::read(&png).unwrap().starts_with(b"\x89PNG"),
            "{chart}: a PNG"
        );
    }
    let bad = dir.path().join("bad.sql");
    std::fs::write(
        &bad,
        "-- chart: line\n-- x: nope\n-- y: layer\nSELECT layer FROM saes",
    )
    .unwrap();
    let o = saerl(
        &lake,
        &[
            "plot",
            bad.to_str().unwrap(),
            "-o",
            dir.path().join("bad.png").to_str().unwrap(),
        ],
    );
    assert!(
        !o.status.success() && stderr(&o).contains("\"nope\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn demo_builds_the_synthetic_study_and_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let o = Command::new(env!("CARGO_BIN_EXE_saerl"))
        .args(["demo", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "demo failed:\n{}", stderr(&o));
    for (q, _) in saerl::sql::saved::QUERIES {
        for ext in ["csv", "svg", "png"] {
            assert!(
                out.join(format!("{q}.{ext}")).is_file(),
                "{q}.{ext} written"
            );
        }
    }
    // The report has every query's section, a figure for each and no failed query.
    let page = std::fs::read_to_string(out.join("report/report.html")).unwrap();
    for (q, _) in saerl::sql::saved::QUERIES {
        assert!(
            page.contains(&format!("<section id=\"{q}\">")),
            "{q} in the report"
        );
    }
    assert_eq!(
        page.matches("<figure><svg").count(),
        saerl::sql::saved::QUERIES.len(),
        "one inline figure per query"
    );
    assert!(!page.contains("class=err"), "no query failed");
    assert!(
        stdout(&o).contains("report.html"),
        "the demo prints the report's path"
    );
    // The planted KL effect: ratios in the study's range, not the KL coefficients' 5×.
    let csv = std::fs::read_to_string(out.join("kl_ratio.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let ratio = header.iter().position(|h| *h == "ratio").unwrap();
    let rows: Vec<f64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(ratio).unwrap().parse().unwrap())
        .collect();
    assert_eq!(rows.len(), 6, "layers 6/12/18 × two transitions");
    assert!(rows.iter().all(|r| (0.3..3.0).contains(r)), "{rows:?}");
}

#[test]
fn demo_needs_nothing_outside_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let missing = dir.path().join("missing");
    let o = Command::new(env!("CARGO_BIN_EXE_saerl"))
        .args(["demo", "--out", out.to_str().unwrap(), "--prompts", "6"])
        .args(["--data", missing.join("train.jsonl").to_str().unwrap()])
        .args([
            "--tokenizer",
            missing.join("tokenizer.json").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "demo failed:\n{}", stderr(&o));
    assert!(stdout(&o).contains("built-in prompts"), "{}", stdout(&o));
    // A BPE tokenizer was trained for the generated model.
    let tok: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("models/instruct_base/tokenizer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(tok["model"]["type"], "BPE");
    assert!(out.join("decoder_drift.png").is_file());
}
