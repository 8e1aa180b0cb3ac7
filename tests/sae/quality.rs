//! `saerl eval` against the tiny-qwen2 fixture (PyTorch/transformers numbers), and `saerl stats`
//! against densities, effective counts and lifecycles computed here with plain loops.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use saerl::lake::{activation_batch, Lake, PartitionKey, Table, Txn};
use serde_json::Value;

use super::resume::ok;

/// Writes `x` (rows × d) as an activation partition; `val[i]` marks val rows.
fn write_activations(lake: &Path, key: &PartitionKey, x: Vec<f32>, d: usize, val: &[bool]) {
    let n = val.len();
    let lake = Lake::open(lake).unwrap();
    let batch = activation_batch(
        (0..n as i64).collect(),
        vec![0; n],
        (0..n as i32).collect(),
        val,
        x,
        d,
    )
    .unwrap();
    let mut txn = Txn::begin(&lake, false).unwrap();
    txn.write(Table::Activations, key, &[batch]).unwrap();
    txn.commit().unwrap();
}

/// (chain, stage, layer, k) of an SAE.
type Key = (String, String, i64, i64);

fn sae_key(r: &HashMap<String, String>) -> Key {
    (
        r["chain"].clone(),
        r["stage"].clone(),
        r["layer"].parse().unwrap(),
        r["k"].parse().unwrap(),
    )
}

fn csv_rows(out: &str) -> Vec<HashMap<String, String>> {
    let mut lines = out.lines();
    let head: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    lines
        .map(|l| {
            head.iter()
                .cloned()
                .zip(l.split(',').map(str::to_string))
                .collect()
        })
        .collect()
}

#[test]
fn eval_reproduces_the_reference_nmse_l0_and_ce_loss_recovered() {
    let fx = crate::shared::fixtures().join("tiny-qwen2");
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("sae_eval.json")).unwrap()).unwrap();
    let layer = want["layer"].as_i64().unwrap();
    let n_prompts = want["n_prompts"].as_u64().unwrap();
    let t = candle_core::safetensors::load(fx.join("sae_eval.safetensors"), &Device::Cpu).unwrap();
    let x: &Tensor = &t["sae_val_x"];
    let (rows, d) = x.dims2().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let l = lake.to_str().unwrap();
    let layer_s = layer.to_string();
    ok(&[
        "--lake",
        l,
        "import",
        "pt",
        fx.join(format!("sae_layer{layer}.pt")).to_str().unwrap(),
        "--chain",
        "fx",
        "--stage",
        "instruct_base",
        "--layer",
        &layer_s,
    ]);
    write_activations(
        &lake,
        &PartitionKey::layer("fx", "instruct_base", layer as i32),
        x.flatten_all().unwrap().to_vec1().unwrap(),
        d,
        &vec![true; rows],
    );
    let data = crate::shared::fixtures().join("../data/gsm8k/test.jsonl");
    let n = n_prompts.to_string();
    ok(&[
        "--lake",
        l,
        "eval",
        "--chain",
        "fx",
        "--model",
        fx.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--prompts",
        &n,
    ]);
    let out = ok(&[
        "--lake",
        l,
        "sql",
        "-c",
        "SELECT nmse, mean_l0, l_base, l_sae, l_mean, frac_rec, n_val_rows, n_prompts, ablation, kl_sae, kl_rec FROM evals",
        "--format",
        "csv",
    ]);
    let got = &csv_rows(&out)[0];
    let num = |k: &str| got[k].parse::<f64>().unwrap();
    for (col, key) in [
        ("nmse", "nmse"),
        ("mean_l0", "mean_l0"),
        ("l_base", "L_base"),
        ("l_sae", "L_sae"),
        ("l_mean", "L_mean"),
        ("frac_rec", "frac_rec"),
    ] {
        let w = want[key].as_f64().unwrap();
        let rel = (num(col) - w).abs() / w.abs().max(1e-12);
        assert!(
            rel < 1e-4,
            "{col}: got {} want {w} (rel {rel:.2e})",
            num(col)
        );
    }
    assert_eq!(num("n_val_rows") as usize, rows);
    assert_eq!(num("n_prompts") as u64, n_prompts);
    assert_eq!(got["ablation"], "mean");
    // The spliced SAE moves the output distribution less than the ablation does.
    assert!(num("kl_sae") > 0.0 && num("kl_rec") > 0.0 && num("kl_rec") < 1.0);

    // SAEBench's core metrics, against numpy's over the same rows and the lake's weights.
    let core = [
        "explained_variance",
        "explained_variance_legacy",
        "cossim",
        "l2_ratio",
        "relative_reconstruction_bias",
        "frac_alive",
        "freq_over_1_percent",
        "freq_over_10_percent",
    ];
    let k = &csv_rows(&ok(&[
        "--lake",
        l,
        "sql",
        "--format",
        "csv",
        "-c",
        "SELECT k FROM saes",
    ]))[0]["k"];
    let rows_file = fx.join("sae_eval.safetensors");
    let np = crate::shared::python_json(
        "core_metrics.py",
        &[lake.as_os_str()]
            .into_iter()
            .chain(["fx", "instruct_base", &layer_s, k].map(std::ffi::OsStr::new))
            .chain([rows_file.as_os_str(), std::ffi::OsStr::new("sae_val_x")])
            .collect::<Vec<_>>(),
    );
    let out = ok(&[
        "--lake",
        l,
        "sql",
        "--format",
        "csv",
        "-c",
        &format!("SELECT {} FROM evals", core.join(", ")),
    ]);
    let got = &csv_rows(&out)[0];
    for m in core {
        let (g, w) = (got[m].parse::<f64>().unwrap(), np[m].as_f64().unwrap());
        assert!(
            (g - w).abs() <= 1e-4 * w.abs().max(1e-3),
            "{m}: saerl {g}, numpy {w}"
        );
    }
    assert!(
        np["explained_variance"].as_f64().unwrap() > 0.0,
        "the fixture SAE reconstructs"
    );

    // quality.sql reports the same numbers, with the stage's step.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries/quality.sql");
    let quality = csv_rows(&ok(&[
        "--lake",
        l,
        "sql",
        "-f",
        file.to_str().unwrap(),
        "--format",
        "csv",
    ]));
    assert_eq!(quality.len(), 1);
    let row = &quality[0];
    assert_eq!(
        (
            row["chain"].as_str(),
            row["stage"].as_str(),
            row["step"].as_str()
        ),
        ("fx", "instruct_base", "0")
    );
    assert_eq!(row["layer"], layer_s);
    for (col, key) in [
        ("nmse", "nmse"),
        ("mean_l0", "mean_l0"),
        ("frac_rec", "frac_rec"),
        ("l_base", "L_base"),
        ("l_sae", "L_sae"),
        ("l_mean", "L_mean"),
    ] {
        let w = want[key].as_f64().unwrap();
        let got: f64 = row[col].parse().unwrap();
        assert!(
            (got - w).abs() / w.abs().max(1e-12) < 1e-4,
            "quality.sql {col}: {got} vs {w}"
        );
    }
}

/// Densities, effective counts and lifecycles of the sae-pt fixture on its probe rows: the
/// expected values come from the reference encodings in expected.json, counted with plain loops.
#[test]
fn stats_density_effective_count_and_lifecycle_match_first_principles() {
    let c = StatsCase::build();
    let d_sae = check_feature_stats(&c);
    check_effective_count(&c);
    check_lifecycle(&c, &d_sae);
    let bm = check_best_match_against_the_reference(&c);
    check_best_match_against_brute_force(&c, &bm);
    check_l18_quadrants(&c);
}

/// The sae-pt fixture imported, its probe rows as every partition's val split, `stats` run on
/// every chain; with the reference densities and top-k counts per SAE and feature.
struct StatsCase {
    _dir: tempfile::TempDir,
    lake: String,
    fx: std::path::PathBuf,
    expected: Value,
    rows: usize,
    density: HashMap<Key, Vec<f64>>,
    topk: HashMap<Key, Vec<i64>>,
}

impl StatsCase {
    fn build() -> Self {
        let fx = crate::shared::fixtures().join("sae-pt");
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(fx.join("expected.json")).unwrap())
                .unwrap();
        let probe =
            candle_core::safetensors::load(fx.join("probe.safetensors"), &Device::Cpu).unwrap();
        let x: &Tensor = &probe["x"];
        let (rows, d) = x.dims2().unwrap();
        let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let lake = dir.path().join("lake");
        let l = lake.to_str().unwrap();
        ok(&["--lake", l, "import", "pt", fx.to_str().unwrap()]);

        // Every (chain, stage, layer) gets the probe rows as its val split.
        let files = expected["files"].as_object().unwrap();
        let mut partitions = std::collections::BTreeSet::new();
        for f in files.values() {
            partitions.insert((
                f["chain"].as_str().unwrap().to_string(),
                f["stage"].as_str().unwrap().to_string(),
                f["layer"].as_i64().unwrap() as i32,
            ));
        }
        for (c, s, layer) in &partitions {
            write_activations(
                &lake,
                &PartitionKey::layer(c, s, *layer),
                xv.clone(),
                d,
                &vec![true; rows],
            );
        }
        let chains: std::collections::BTreeSet<&str> =
            partitions.iter().map(|p| p.0.as_str()).collect();
        for c in &chains {
            ok(&["--lake", l, "stats", "--chain", c]);
        }

        // Expected density per (chain, stage, layer, k) and feature, from the reference encodings.
        let mut density: HashMap<Key, Vec<f64>> = HashMap::new();
        let mut topk: HashMap<Key, Vec<i64>> = HashMap::new();
        for f in files.values() {
            let key = (
                f["chain"].as_str().unwrap().to_string(),
                f["stage"].as_str().unwrap().to_string(),
                f["layer"].as_i64().unwrap(),
                f["k"].as_i64().unwrap(),
            );
            let n_feat = f["encode_idx"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap())
                .map(|i| i.as_i64().unwrap() as usize + 1)
                .max()
                .unwrap();
            let mut fire = vec![0f64; n_feat.max(1)];
            let mut sel = vec![0i64; n_feat.max(1)];
            for (idx, val) in f["encode_idx"]
                .as_array()
                .unwrap()
                .iter()
                .zip(f["encode_val"].as_array().unwrap())
            {
                for (i, v) in idx.as_array().unwrap().iter().zip(val.as_array().unwrap()) {
                    let (i, v) = (i.as_u64().unwrap() as usize, v.as_f64().unwrap());
                    if v > 0.0 {
                        fire[i] += 1.0;
                    }
                    if v != 0.0 {
                        sel[i] += 1;
                    }
                }
            }
            density.insert(key.clone(), fire.iter().map(|c| c / rows as f64).collect());
            topk.insert(key, sel);
        }
        StatsCase {
            _dir: dir,
            lake: l.to_string(),
            fx,
            expected,
            rows,
            density,
            topk,
        }
    }

    fn files(&self) -> &serde_json::Map<String, Value> {
        self.expected["files"].as_object().unwrap()
    }

    fn transitions(&self) -> &Vec<Value> {
        self.expected["transitions"].as_array().unwrap()
    }

    /// A saved query's rows.
    fn saved(&self, name: &str) -> Vec<HashMap<String, String>> {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("queries/{name}.sql"));
        csv_rows(&ok(&[
            "--lake",
            &self.lake,
            "sql",
            "-f",
            file.to_str().unwrap(),
            "--format",
            "csv",
        ]))
    }
}

/// feature_stats: one row per feature of every SAE, densities and top-k counts as counted.
/// Returns each SAE's d_sae.
fn check_feature_stats(c: &StatsCase) -> HashMap<Key, usize> {
    let (l, files, density, topk, rows) = (c.lake.as_str(), c.files(), &c.density, &c.topk, c.rows);
    // feature_stats against the loops (features beyond the largest fired index have density 0).
    let out = ok(&[
        "--lake",
        l,
        "sql",
        "-c",
        "SELECT chain, stage, layer, k, feature, density, topk_count, n_tokens FROM feature_stats WHERE split = 'val'",
        "--format",
        "csv",
    ]);
    let got = csv_rows(&out);
    // One row per feature of every SAE: features 0..d_sae, each once.
    let mut per_key: HashMap<Key, Vec<usize>> = HashMap::new();
    for r in &got {
        let key = sae_key(r);
        per_key
            .entry(key)
            .or_default()
            .push(r["feature"].parse().unwrap());
    }
    assert_eq!(per_key.len(), files.len(), "every SAE has statistics");
    let d_sae: HashMap<Key, usize> = per_key.iter().map(|(k, f)| (k.clone(), f.len())).collect();
    for (key, mut f) in per_key {
        f.sort();
        assert!(
            f.iter().enumerate().all(|(i, &x)| i == x),
            "{key:?}: features 0..n once"
        );
        assert!(f.len() >= density[&key].len());
    }
    let mut seen = 0;
    for r in &got {
        let key = sae_key(r);
        let f: usize = r["feature"].parse().unwrap();
        let want = density[&key].get(f).copied().unwrap_or(0.0);
        let have: f64 = r["density"].parse().unwrap();
        assert!(
            (have - want).abs() < 1e-12,
            "{key:?} feature {f}: density {have} want {want}"
        );
        assert_eq!(
            r["topk_count"].parse::<i64>().unwrap(),
            topk[&key].get(f).copied().unwrap_or(0)
        );
        assert_eq!(r["n_tokens"].parse::<usize>().unwrap(), rows);
        seen += 1;
    }
    assert!(seen > 0);
    d_sae
}

fn check_effective_count(c: &StatsCase) {
    let density = &c.density;
    // Effective count: exp(H) of density / Σ density, zero entries dropped.
    let eff = c.saved("effective_count");
    assert_eq!(eff.len(), density.len());
    for r in &eff {
        let key = sae_key(r);
        let dens = &density[&key];
        let total: f64 = dens.iter().sum();
        let mut h = 0.0;
        for &p in dens {
            if p > 0.0 {
                h -= p / total * (p / total).ln();
            }
        }
        let have: f64 = r["effective_count"].parse().unwrap();
        assert!(
            (have - h.exp()).abs() < 1e-9,
            "{key:?}: {have} vs {}",
            h.exp()
        );
        let alive = dens.iter().filter(|&&p| p > 1e-4).count();
        assert_eq!(r["n_alive"].parse::<usize>().unwrap(), alive);
    }
}

fn check_lifecycle(c: &StatsCase, d_sae: &HashMap<Key, usize>) {
    let density = &c.density;
    // Lifecycle across every consecutive-stage transition of the fixture.
    let life = c.saved("lifecycle");
    let transitions = c.transitions();
    assert_eq!(life.len(), transitions.len());
    for t in transitions {
        let (c, layer, k) = (
            t["chain"].as_str().unwrap(),
            t["layer"].as_i64().unwrap(),
            t["k"].as_i64().unwrap(),
        );
        let (from, to) = (t["from"].as_str().unwrap(), t["to"].as_str().unwrap());
        let a = &density[&(c.into(), from.into(), layer, k)];
        let b = &density[&(c.into(), to.into(), layer, k)];
        let n = d_sae[&(c.into(), from.into(), layer, k)];
        let at = |v: &Vec<f64>, i: usize| v.get(i).copied().unwrap_or(0.0) > 1e-4;
        let (mut died, mut born, mut stayed) = (0, 0, 0);
        for i in 0..n {
            match (at(a, i), at(b, i)) {
                (true, false) => died += 1,
                (false, true) => born += 1,
                (true, true) => stayed += 1,
                _ => {}
            }
        }
        let row = life
            .iter()
            .find(|r| {
                r["chain"] == c
                    && r["layer"] == layer.to_string()
                    && r["k"] == k.to_string()
                    && r["stage_from"] == from
                    && r["stage_to"] == to
            })
            .unwrap_or_else(|| panic!("no lifecycle row for {c} {layer} {from}->{to}"));
        let num = |k: &str| row[k].parse::<i64>().unwrap();
        assert_eq!(
            (num("died"), num("born"), num("stayed")),
            (died, born, stayed),
            "{c} layer {layer} {from} -> {to}"
        );
    }
}

/// best_match against the reference cosines; returns its rows.
fn check_best_match_against_the_reference(c: &StatsCase) -> Vec<HashMap<String, String>> {
    let (l, transitions) = (c.lake.as_str(), c.transitions());
    // best_match: the aligned cosine is the reference's per-feature decoder cosine, and no
    // column of the next stage matches better than the best.
    let bm = csv_rows(&ok(&[
        "--lake",
        l,
        "sql",
        "-c",
        "SELECT chain, layer, k, stage_from, stage_to, feature, best_feature, best_cos, aligned_cos, renaming_gap FROM best_match()",
        "--format",
        "csv",
    ]));
    let mut checked = 0;
    for t in transitions {
        let cos = t["decoder_cos"].as_array().unwrap();
        for r in bm.iter().filter(|r| {
            r["chain"] == t["chain"].as_str().unwrap()
                && r["layer"].parse::<i64>().ok() == t["layer"].as_i64()
                && r["k"].parse::<i64>().ok() == t["k"].as_i64()
                && r["stage_from"] == t["from"].as_str().unwrap()
                && r["stage_to"] == t["to"].as_str().unwrap()
        }) {
            let f: usize = r["feature"].parse().unwrap();
            let num = |k: &str| r[k].parse::<f64>().unwrap();
            let want = cos[f].as_f64().unwrap();
            assert!(
                (num("aligned_cos") - want).abs() < 1e-5,
                "{t:?} feature {f}"
            );
            assert!(num("best_cos") >= num("aligned_cos") - 1e-6);
            assert!((num("renaming_gap") - (num("best_cos") - num("aligned_cos"))).abs() < 1e-9);
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        bm.len(),
        "every best_match row belongs to a reference transition"
    );
    assert_eq!(
        checked,
        transitions
            .iter()
            .map(|t| t["decoder_cos"].as_array().unwrap().len())
            .sum::<usize>()
    );
    bm
}

fn check_best_match_against_brute_force(c: &StatsCase, bm: &[HashMap<String, String>]) {
    let (fx, transitions) = (&c.fx, c.transitions());
    // best_match's best feature and cosine against a brute-force argmax over all decoder
    // columns of the next stage, with the weights read from the fixture's .pt files.
    let files = crate::shared::pt_files();
    let w_dec = |chain: &str, stage: &str, layer: i64, k: i64| -> Vec<Vec<f64>> {
        let f = files
            .iter()
            .find(|f| f.chain == chain && f.stage == stage && f.layer == layer && f.k == k)
            .unwrap();
        let sae = saerl::sae::pt::read(&fx.join(&f.rel)).unwrap().sae;
        (0..sae.d_sae)
            .map(|i| sae.dec_col(i).iter().map(|&v| v as f64).collect())
            .collect()
    };
    let cosine = |a: &[f64], b: &[f64]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        dot / (n(a) * n(b))
    };
    for t in transitions {
        let (c, layer, k) = (
            t["chain"].as_str().unwrap(),
            t["layer"].as_i64().unwrap(),
            t["k"].as_i64().unwrap(),
        );
        let (from, to) = (t["from"].as_str().unwrap(), t["to"].as_str().unwrap());
        let (a, b) = (w_dec(c, from, layer, k), w_dec(c, to, layer, k));
        for r in bm.iter().filter(|r| {
            r["chain"] == c
                && r["layer"] == layer.to_string()
                && r["k"] == k.to_string()
                && r["stage_from"] == from
                && r["stage_to"] == to
        }) {
            let f: usize = r["feature"].parse().unwrap();
            let all: Vec<f64> = b.iter().map(|col| cosine(&a[f], col)).collect();
            let best = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let picked: usize = r["best_feature"].parse().unwrap();
            let best_cos = r["best_cos"].parse::<f64>().unwrap();
            assert!(
                (best_cos - best).abs() < 1e-5,
                "{c} {from}->{to} feature {f}: best cosine {best_cos} vs {best}"
            );
            assert!(
                (all[picked] - best).abs() < 1e-5,
                "{c} {from}->{to} feature {f}: best_feature {picked} has cosine {} but the best is {best}",
                all[picked]
            );
        }
    }
}

fn check_l18_quadrants(case: &StatsCase) {
    // L18 quadrants at each chain's first layer-18 transition: median splits of the reference
    // cosines, with the densities counted above.
    let quad = case.saved("l18_quadrants");
    let transitions = case.transitions();
    let firsts = transitions.iter().filter(|t| {
        t["layer"] == 18
            && !transitions.iter().any(|u| {
                u["chain"] == t["chain"]
                    && u["layer"] == 18
                    && u["k"] == t["k"]
                    && step(u["from"].as_str().unwrap()) < step(t["from"].as_str().unwrap())
            })
    });
    let want_rows: usize = firsts.map(|t| check_quadrants_of(case, t, &quad)).sum();
    assert_eq!(
        quad.len(),
        want_rows,
        "no l18_quadrants row beyond the expected ones"
    );
}

/// The l18_quadrants rows of transition `t` against its reference cosines; returns how many
/// quadrants it has rows for.
fn check_quadrants_of(case: &StatsCase, t: &Value, quad: &[HashMap<String, String>]) -> usize {
    let (l, density) = (case.lake.as_str(), &case.density);
    let (c, layer, k, from, to) = (
        t["chain"].as_str().unwrap().to_string(),
        t["layer"].as_i64().unwrap(),
        t["k"].as_i64().unwrap(),
        t["from"].as_str().unwrap().to_string(),
        t["to"].as_str().unwrap().to_string(),
    );
    let mut want_rows = 0;
    let floats = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let (dec, enc) = (floats(&t["decoder_cos"]), floats(&t["encoder_cos"]));
    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        }
    };
    let (dm, em) = (median(&dec), median(&enc));
    // Our cosines differ from the float32 reference by < 1e-6: a feature that close to a
    // median may fall on either side, so such features are classified with ours.
    let ours = csv_rows(&ok(&[
        "--lake",
        l,
        "sql",
        "-c",
        &format!("SELECT feature, dec_cos, enc_cos FROM feature_drift WHERE chain = '{c}' AND layer = 18 AND k = {k} AND stage_from = '{from}' ORDER BY feature"),
        "--format",
        "csv",
    ]));
    let our = |col: &str| -> Vec<f64> { ours.iter().map(|r| r[col].parse().unwrap()).collect() };
    let (our_dec, our_enc) = (our("dec_cos"), our("enc_cos"));
    let (odm, oem) = (median(&our_dec), median(&our_enc));
    let near = |v: &[f64], m: f64| v.iter().any(|x| (x - m).abs() < 1e-6);
    let ambiguous = near(&dec, dm) || near(&enc, em);
    let (cd, ce, cdm, cem) = if ambiguous {
        (&our_dec, &our_enc, odm, oem)
    } else {
        (&dec, &enc, dm, em)
    };
    let da = &density[&(c.clone(), from.clone(), layer, k)];
    let db = &density[&(c.clone(), to.clone(), layer, k)];
    let dens = |v: &Vec<f64>, i: usize| v.get(i).copied().unwrap_or(0.0);
    for name in ["stable", "reweighted", "redirected", "rotated"] {
        let members: Vec<usize> = (0..dec.len())
            .filter(|&i| {
                let q = match (cd[i] >= cdm, ce[i] >= cem) {
                    (true, true) => "stable",
                    (true, false) => "reweighted",
                    (false, true) => "redirected",
                    (false, false) => "rotated",
                };
                q == name
            })
            .collect();
        let row = quad
            .iter()
            .find(|r| r["chain"] == *c && r["k"] == k.to_string() && r["quadrant"] == name);
        let Some(row) = row else {
            assert!(
                members.is_empty(),
                "{c} k {k}: no {name} row but {} features",
                members.len()
            );
            continue;
        };
        want_rows += 1;
        let num = |col: &str| row[col].parse::<f64>().unwrap();
        let n = members.len() as f64;
        let avg = |f: &dyn Fn(usize) -> f64| members.iter().map(|&i| f(i)).sum::<f64>() / n;
        assert_eq!(
            num("n_features") as usize,
            members.len(),
            "{c} k {k} {name}"
        );
        assert!(
            (num("dec_cos_mean") - avg(&|i| dec[i])).abs() < 1e-5,
            "{c} {name} dec mean"
        );
        assert!(
            (num("enc_cos_mean") - avg(&|i| enc[i])).abs() < 1e-5,
            "{c} {name} enc mean"
        );
        assert!(
            (num("density_from_mean") - avg(&|i| dens(da, i))).abs() < 1e-12,
            "{c} {name} density from"
        );
        assert!(
            (num("density_to_mean") - avg(&|i| dens(db, i))).abs() < 1e-12,
            "{c} {name} density to"
        );
        let born = members
            .iter()
            .filter(|&&i| dens(da, i) <= 1e-4 && dens(db, i) > 1e-4)
            .count();
        let died = members
            .iter()
            .filter(|&&i| dens(da, i) > 1e-4 && dens(db, i) <= 1e-4)
            .count();
        assert_eq!(
            (num("born") as usize, num("died") as usize),
            (born, died),
            "{c} {name} born/died"
        );
    }
    want_rows
}

/// The step a stage name encodes.
fn step(stage: &str) -> i64 {
    saerl::lake::infer_step(stage).unwrap()
}

#[test]
fn stats_and_eval_name_what_is_missing_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lake = super::resume::demo_lake(dir.path());
    let l = lake.to_str().unwrap();
    let before = crate::shared::snapshot(&lake);
    for (args, want) in [
        (
            vec!["stats", "--chain", "nope"],
            "no chain \"nope\" in the SAEs of",
        ),
        (
            vec!["stats", "--chain", "tiny", "--layers", "9"],
            "no SAE at layer 9",
        ),
        (
            vec!["eval", "--chain", "tiny", "--stage", "ppo_step99"],
            "no SAE at stage ppo_step99",
        ),
        (
            vec![
                "eval",
                "--chain",
                "tiny",
                "--model",
                "/nonexistent",
                "--overwrite",
            ],
            "/nonexistent",
        ),
    ] {
        let mut full = vec!["--lake", l];
        full.extend(args.iter().copied());
        let o = super::resume::saerl(&full);
        assert!(!o.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(crate::shared::snapshot(&lake), before, "nothing written");
}
