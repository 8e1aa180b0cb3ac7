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
fn sql_files_print_every_statement_and_stop_at_the_first_error_naming_its_line() {
    let (dir, lake) = imported_lake();
    let file = dir.path().join("three.sql");
    std::fs::write(
        &file,
        "-- two results, then an error on line 6\nSELECT 1 AS one;\nSELECT 'a;b' AS two\n  ;\n\nSELECT * FROM no_such_table;\nSELECT 3 AS three;\n",
    )
    .unwrap();
    let o = saerl(
        &lake,
        &["sql", "-f", file.to_str().unwrap(), "--format", "csv"],
    );
    assert!(!o.status.success());
    assert_eq!(stdout(&o), "one\n1\ntwo\na;b\n", "both results, in order");
    let err = stderr(&o);
    assert!(
        err.contains("three.sql line 6") && err.contains("no_such_table"),
        "{err}"
    );
    // .read in the REPL prints every statement too.
    let good = dir.path().join("good.sql");
    std::fs::write(&good, "SELECT 1 AS one;\nSELECT 2 AS two;\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_saerl"))
        .args(["sql", "--lake", lake.to_str().unwrap()])
        .env("SAERL_HISTORY", dir.path().join("history"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let script = format!(".mode csv\n.read {}\n.quit\n", good.display());
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = stdout(&child.wait_with_output().unwrap());
    assert!(out.contains("one\n1\ntwo\n2\n"), "{out}");
}

/// The demo's `quality.csv` as (stage, layer, nmse, frac_rec) rows.
fn demo_quality(out: &std::path::Path) -> Vec<(String, String, f64, f64)> {
    let csv = std::fs::read_to_string(out.join("quality.csv")).unwrap();
    let mut lines = csv.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |n: &str| head.iter().position(|h| *h == n).unwrap();
    lines
        .map(|l| {
            let v: Vec<&str> = l.split(',').collect();
            (
                v[col("stage")].to_string(),
                v[col("layer")].to_string(),
                v[col("nmse")].parse().unwrap(),
                v[col("frac_rec")].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn demo_runs_from_anywhere_and_its_saes_are_good() {
    // An empty working directory: the demo needs nothing beside the binary.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let o = Command::new(env!("CARGO_BIN_EXE_saerl"))
        .current_dir(dir.path())
        .args(["demo", "--out", "demo"])
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
    // The tiny model learned something and its SAEs are good: every SAE of both stages and
    // three layers reconstructs well and recovers most of the CE loss that ablation loses.
    let q = demo_quality(&out);
    assert_eq!(q.len(), 6, "{q:?}");
    for (stage, layer, nmse, frac_rec) in &q {
        assert!(*nmse < 0.2, "{stage} layer {layer}: NMSE {nmse}");
        assert!(
            *frac_rec > 0.5 && *frac_rec <= 1.0,
            "{stage} layer {layer}: frac_rec {frac_rec}"
        );
    }
    // A BPE tokenizer was trained for the model, from the built-in GSM8k sample.
    let tok = json(&out.join("models/instruct_base/tokenizer.json"));
    assert_eq!(tok["model"]["type"], "BPE");
    // The planted KL effect: kl0p025 drifts at 0.8 of flexible's rate (synth.rs), so every
    // ratio lies below 1 (an inverted ratio would be 1.25) and well above the KL coefficients'
    // 1/5.
    let csv = std::fs::read_to_string(out.join("kl_ratio.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let ratio = header.iter().position(|h| *h == "ratio").unwrap();
    let rows: Vec<f64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(ratio).unwrap().parse().unwrap())
        .collect();
    assert_eq!(rows.len(), 6, "layers 6/12/18 × two transitions");
    assert!(rows.iter().all(|r| (0.6..1.0).contains(r)), "{rows:?}");
}

#[test]
fn demo_names_a_missing_prompt_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing/train.jsonl");
    let o = Command::new(env!("CARGO_BIN_EXE_saerl"))
        .args(["demo", "--out", dir.path().join("demo").to_str().unwrap()])
        .args(["--data", missing.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(missing.to_str().unwrap()),
        "{}",
        stderr(&o)
    );
}
