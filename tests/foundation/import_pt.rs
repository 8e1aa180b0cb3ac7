//! `saerl import pt` on the published layout, checked against PyTorch's numbers in
//! `sae-pt/expected.json`: TopK encodings via `topk_encode`, and every per-transition decoder
//! and encoder cosine statistic via `decoder_drift.sql`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type};
use saerl::lake::{Lake, PartitionKey};
use saerl::sql::blocking::run_sql;
use saerl::sql::saved::QUERIES;
use saerl::tables::read_sae;

use crate::common::*;

fn step_of(stage: &str) -> i64 {
    if stage == "instruct_base" {
        0
    } else {
        stage.strip_prefix("ppo_step").unwrap().parse().unwrap()
    }
}

#[test]
fn topk_encode_matches_pytorch_for_every_file() {
    let (_dir, lake) = imported_lake();
    let expected = json(&fixtures().join("sae-pt/expected.json"));
    let files = expected["files"].as_object().unwrap();
    let ctx = session(&lake);
    let (probe, p, _, _) = probe_table(&fixtures().join("sae-pt/probe.safetensors"), "x");
    ctx.register_table("probe", Arc::new(probe)).unwrap();
    let n_saes: i64 = run_sql(&ctx, "SELECT count(*) FROM saes").unwrap()[0]
        .column(0)
        .as_primitive::<Int64Type>()
        .value(0);
    assert_eq!(n_saes as usize, files.len(), "every file becomes one SAE");
    for (name, f) in files {
        let (chain, stage) = (f["chain"].as_str().unwrap(), f["stage"].as_str().unwrap());
        let (layer, k) = (f["layer"].as_i64().unwrap(), f["k"].as_i64().unwrap());
        let rows = encode_probe(&ctx, chain, stage, layer, k);
        assert_eq!(rows.len(), p, "{name}: one encoding per probe row");
        for (r, (feats, vals)) in rows.iter().enumerate() {
            let want_idx: Vec<i32> = f["encode_idx"][r]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap() as i32)
                .collect();
            assert_eq!(feats, &want_idx, "{name} row {r}: indices");
            for (j, v) in vals.iter().enumerate() {
                assert_close(
                    &format!("{name} row {r} value {j}"),
                    *v as f64,
                    f["encode_val"][r][j].as_f64().unwrap(),
                    1e-5,
                );
            }
        }
        // decode: the SAE read back from the lake reconstructs every probe row as PyTorch does.
        let sae = read_sae(
            &Lake::open(&lake).unwrap(),
            &PartitionKey::sae(chain, stage, layer as i32, k as i32),
        )
        .unwrap();
        for (r, (feats, vals)) in rows.iter().enumerate() {
            let latents: Vec<(u32, f32)> = feats
                .iter()
                .zip(vals)
                .map(|(&i, &v)| (i as u32, v))
                .collect();
            let x_hat = sae.decode(&latents);
            assert_eq!(x_hat.len(), f["x_hat"][r].as_array().unwrap().len());
            for (j, v) in x_hat.iter().enumerate() {
                assert_close(
                    &format!("{name} x_hat[{r}][{j}]"),
                    *v as f64,
                    f["x_hat"][r][j].as_f64().unwrap(),
                    1e-4,
                );
            }
        }
    }
}

#[test]
fn decoder_drift_reproduces_every_transition_statistic() {
    let (_dir, lake) = imported_lake();
    let expected = json(&fixtures().join("sae-pt/expected.json"));
    let transitions = expected["transitions"].as_array().unwrap();
    let ctx = session(&lake);
    let sql = QUERIES
        .iter()
        .find(|(n, _)| *n == "decoder_drift")
        .unwrap()
        .1;
    let batches = run_sql(&ctx, sql).unwrap();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let names: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let study_cols = [
        "chain",
        "layer",
        "stage_from",
        "stage_to",
        "step_from",
        "step_to",
        "d_step",
        "n_features",
        "dec_cos_mean",
        "dec_cos_median",
        "dec_cos_q25",
        "dec_cos_q75",
        "dec_cos_min",
        "dec_drift_per_step",
        "enc_cos_mean",
        "enc_cos_median",
        "enc_drift_per_step",
        "enc_dec_corr",
    ];
    let mut without_k = names.clone();
    without_k.retain(|n| n != "k");
    assert_eq!(without_k, study_cols, "decoder_drift.csv columns (plus k)");
    assert_eq!(
        batch.num_rows(),
        transitions.len(),
        "one row per transition"
    );

    let col = |n: &str| batch.column_by_name(n).unwrap().clone();
    let f64s = |n: &str| -> Vec<f64> {
        let c = arrow::compute::cast(&col(n), &DataType::Float64).unwrap();
        c.as_primitive::<Float64Type>().values().to_vec()
    };
    let strs = |n: &str| -> Vec<String> {
        let c = arrow::compute::cast(&col(n), &DataType::Utf8).unwrap();
        (0..c.len())
            .map(|i| c.as_string::<i32>().value(i).to_string())
            .collect()
    };
    let (chain, stage_from, stage_to) = (strs("chain"), strs("stage_from"), strs("stage_to"));
    let (layer, k) = (f64s("layer"), f64s("k"));
    let index: HashMap<(String, i64, i64, String, String), usize> = (0..batch.num_rows())
        .map(|i| {
            (
                (
                    chain[i].clone(),
                    layer[i] as i64,
                    k[i] as i64,
                    stage_from[i].clone(),
                    stage_to[i].clone(),
                ),
                i,
            )
        })
        .collect();
    let stat_cols: HashMap<&str, Vec<f64>> = [
        "dec_cos_mean",
        "dec_cos_median",
        "dec_cos_q25",
        "dec_cos_q75",
        "dec_cos_min",
        "dec_drift_per_step",
        "enc_cos_mean",
        "enc_cos_median",
        "enc_drift_per_step",
        "enc_dec_corr",
        "n_features",
        "d_step",
    ]
    .into_iter()
    .map(|n| (n, f64s(n)))
    .collect();
    // Our per-feature cosines, by transition.
    let fd = run_sql(&ctx, "SELECT chain, layer, k, stage_from, stage_to, feature, dec_cos, enc_cos FROM feature_drift ORDER BY feature").unwrap();
    // Per (chain, layer, k, stage_from, stage_to): the decoder and encoder cosines.
    type Transition = (String, i64, i64, String, String);
    let mut drift: HashMap<Transition, (Vec<f64>, Vec<f64>)> = HashMap::new();
    for b in &fd {
        let s = |c: usize, i: usize| {
            arrow::compute::cast(b.column(c), &DataType::Utf8)
                .unwrap()
                .as_string::<i32>()
                .value(i)
                .to_string()
        };
        let f = |c: usize, i: usize| b.column(c).as_primitive::<Float64Type>().value(i);
        for i in 0..b.num_rows() {
            let key = (
                s(0, i),
                s(1, i).parse().unwrap(),
                s(2, i).parse().unwrap(),
                s(3, i),
                s(4, i),
            );
            let e = drift.entry(key).or_default();
            e.0.push(f(6, i));
            e.1.push(f(7, i));
        }
    }
    for t in transitions {
        let key = (
            t["chain"].as_str().unwrap().to_string(),
            t["layer"].as_i64().unwrap(),
            t["k"].as_i64().unwrap(),
            t["from"].as_str().unwrap().to_string(),
            t["to"].as_str().unwrap().to_string(),
        );
        let i = *index
            .get(&key)
            .unwrap_or_else(|| panic!("no decoder_drift row for {key:?}"));
        let dec: Vec<f64> = t["decoder_cos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let enc: Vec<f64> = t["encoder_cos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let d_step = (step_of(&key.4) - step_of(&key.3)).max(1) as f64;
        let want = [
            ("dec_cos_mean", mean(&dec)),
            ("dec_cos_median", quantile(&dec, 0.5)),
            ("dec_cos_q25", quantile(&dec, 0.25)),
            ("dec_cos_q75", quantile(&dec, 0.75)),
            (
                "dec_cos_min",
                dec.iter().copied().fold(f64::INFINITY, f64::min),
            ),
            ("dec_drift_per_step", (1.0 - mean(&dec)) / d_step),
            ("enc_cos_mean", mean(&enc)),
            ("enc_cos_median", quantile(&enc, 0.5)),
            ("enc_drift_per_step", (1.0 - mean(&enc)) / d_step),
            ("n_features", dec.len() as f64),
            ("d_step", (step_of(&key.4) - step_of(&key.3)) as f64),
        ];
        for (name, w) in want {
            assert_close(&format!("{key:?} {name}"), stat_cols[name][i], w, 1e-5);
        }
        // The reference cosines are float32 (error ε ≈ 2e-7); Pearson's r of values spread by σ
        // inherits an error of about ε/σ, so r is checked to that precision here, and exactly
        // against our own per-feature cosines below.
        let ours = &drift[&key];
        let eps = ours
            .0
            .iter()
            .zip(&dec)
            .chain(ours.1.iter().zip(&enc))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            eps < 1e-6,
            "{key:?}: per-feature cosines differ from PyTorch's by {eps}"
        );
        let sd = |v: &[f64]| {
            (v.iter().map(|x| (x - mean(v)).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        let tol = 1e-5 + 2.0 * eps * (1.0 / sd(&dec) + 1.0 / sd(&enc));
        assert_close(
            &format!("{key:?} enc_dec_corr vs reference"),
            stat_cols["enc_dec_corr"][i],
            pearson(&dec, &enc),
            tol,
        );
        assert_close(
            &format!("{key:?} enc_dec_corr vs own cosines"),
            stat_cols["enc_dec_corr"][i],
            pearson(&ours.0, &ours.1),
            1e-9,
        );
        // The fixture's own summaries agree with ours (a check on the test itself).
        assert_close(
            "fixture mean",
            mean(&dec),
            t["decoder_cos_mean"].as_f64().unwrap(),
            1e-6,
        );
        assert_close(
            "fixture corr",
            pearson(&dec, &enc),
            t["corr_enc_dec_drift"].as_f64().unwrap(),
            1e-5,
        );
    }
}

/// How far a mean of our f64 cosines may lie from the mean of the fixture's float32 ones.
const COS_TOL: f64 = 2e-6;

/// Per-step drift rates and the KL ratio, recomputed here from the reference cosines with plain
/// loops: `drift_by_step.sql` and `kl_ratio.sql` must give the same numbers.
#[test]
fn drift_rates_and_kl_ratio_match_the_reference_cosines() {
    let (_dir, lake) = imported_lake();
    let ctx = session(&lake);
    let cos = reference_cosines();
    // (chain, k, layer, step_from, step_to) → (decoder rate, encoder rate)
    let mut rate = std::collections::BTreeMap::new();
    for ((chain, layer, k, from, to), (dec, enc)) in &cos {
        let (a, b) = (step_of(from), step_of(to));
        let d = (b - a).max(1) as f64;
        rate.insert(
            (chain.clone(), *k, *layer, a, b),
            ((1.0 - mean(dec)) / d, (1.0 - mean(enc)) / d, d),
        );
    }
    let got = rows(&ctx, saved_query("drift_by_step"));
    assert_eq!(got.len(), rate.len(), "one row per transition");
    for r in &got {
        let (sae, k) = r["sae"].rsplit_once(" k").unwrap();
        let key = (
            sae.to_string(),
            k.parse::<i64>().unwrap(),
            r["layer"].parse::<i64>().unwrap(),
            r["step_from"].parse::<i64>().unwrap(),
            r["step_to"].parse::<i64>().unwrap(),
        );
        let (dec, enc, d) = rate[&key];
        let num = |c: &str| r[c].parse::<f64>().unwrap();
        // Our cosines come from the weights in f64, the reference's are float32: means agree to
        // ~1e-6 (checked per feature in decoder_drift_reproduces_every_transition_statistic).
        let tol = COS_TOL / d;
        assert_close(
            &format!("{key:?} dec rate"),
            num("dec_drift_per_step"),
            dec,
            tol,
        );
        assert_close(
            &format!("{key:?} enc rate"),
            num("enc_drift_per_step"),
            enc,
            tol,
        );
    }
    // kl0p025 over flexible, same layer, k and steps, for layers 6/12/18 and 0→10, 10→30.
    let mut want = Vec::new();
    for ((chain, k, layer, a, b), (dec, enc, d)) in &rate {
        let wanted = [6, 12, 18].contains(layer) && [(0, 10), (10, 30)].contains(&(*a, *b));
        if chain != "flexible" || !wanted {
            continue;
        }
        if let Some((qd, qe, _)) = rate.get(&("kl0p025".to_string(), *k, *layer, *a, *b)) {
            // Relative error of a ratio: the sum of its parts' relative errors.
            let rel = |x: f64, y: f64| COS_TOL / d * (1.0 / x.abs() + 1.0 / y.abs());
            want.push((
                (*layer, *k, format!("{a}→{b}")),
                (qd / dec, rel(*qd, *dec)),
                (qe / enc, rel(*qe, *enc)),
            ));
        }
    }
    assert!(
        !want.is_empty(),
        "the fixture has both chains' early transitions"
    );
    let got = rows(&ctx, saved_query("kl_ratio"));
    assert_eq!(got.len(), want.len());
    for ((layer, k, transition), (ratio, rel), (enc_ratio, enc_rel)) in want {
        let r = got
            .iter()
            .find(|r| {
                r["layer"] == layer.to_string()
                    && r["k"] == k.to_string()
                    && r["transition"] == transition
            })
            .unwrap_or_else(|| panic!("no kl_ratio row for layer {layer} k {k} {transition}"));
        let num = |c: &str| r[c].parse::<f64>().unwrap();
        let what = format!("layer {layer} k {k} {transition}");
        assert_close(
            &format!("{what} ratio"),
            num("ratio"),
            ratio,
            rel * ratio.abs(),
        );
        assert_close(
            &format!("{what} enc_ratio"),
            num("enc_ratio"),
            enc_ratio,
            enc_rel * enc_ratio.abs(),
        );
    }
}

#[test]
fn stages_get_steps_parents_and_study_defaults() {
    let (_dir, lake) = imported_lake();
    let ctx = session(&lake);
    let files = pt_files();
    let mut chains: Vec<&str> = files.iter().map(|f| f.chain.as_str()).collect();
    chains.sort();
    chains.dedup();
    for chain in chains {
        let b = run_sql(
            &ctx,
            &format!("SELECT stage, CAST(step AS VARCHAR) AS s, parent_stage, reward, CAST(kl_coef AS VARCHAR) AS kl FROM stages WHERE chain = '{chain}' ORDER BY step"),
        )
        .unwrap();
        let b = arrow::compute::concat_batches(&b[0].schema(), &b).unwrap();
        let s = |c: usize, i: usize| {
            let a = arrow::compute::cast(b.column(c), &DataType::Utf8).unwrap();
            a.is_valid(i)
                .then(|| a.as_string::<i32>().value(i).to_string())
        };
        // The fixture's stages of this chain, by step, each with the previous one as parent.
        let mut stages: Vec<(i64, String)> = files
            .iter()
            .filter(|f| f.chain == chain)
            .map(|f| (step_of(&f.stage), f.stage.clone()))
            .collect();
        stages.sort();
        stages.dedup();
        assert_eq!(b.num_rows(), stages.len(), "{chain}: one row per stage");
        let (reward, kl) = saerl::study::chain_defaults(chain);
        for (i, (step, stage)) in stages.iter().enumerate() {
            assert_eq!(s(0, i).as_deref(), Some(stage.as_str()));
            assert_eq!(s(1, i), Some(step.to_string()));
            assert_eq!(s(2, i), i.checked_sub(1).map(|p| stages[p].1.clone()));
            assert_eq!(s(3, i), reward);
            assert_eq!(s(4, i), kl.map(|k| k.to_string()));
        }
    }
    // A chain's subfolders (e.g. strict's k64/ and l23_k256/) are one chain: its layers' k.
    let ks = run_sql(
        &ctx,
        "SELECT chain, layer, count(DISTINCT k) AS n FROM saes GROUP BY chain, layer",
    )
    .unwrap();
    for b in &ks {
        for i in 0..b.num_rows() {
            let chain = b.column(0).as_string::<i32>().value(i);
            let layer = b.column(1).as_primitive::<Int32Type>().value(i) as i64;
            let n = b.column(2).as_primitive::<Int64Type>().value(i) as usize;
            let mut want: Vec<i64> = files
                .iter()
                .filter(|f| f.chain == chain && f.layer == layer)
                .map(|f| f.k)
                .collect();
            want.sort();
            want.dedup();
            assert_eq!(n, want.len(), "{chain} layer {layer}: k values");
        }
    }
}

#[test]
fn pt_written_by_saerl_reads_back_identically() {
    let (_dir, lake) = imported_lake();
    let lake = Lake::open(&lake).unwrap();
    let key = lake.partitions(saerl::lake::Table::Saes).unwrap()[0]
        .0
        .clone();
    let sae = read_sae(&lake, &key).unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("sae_x_layer1.pt");
    saerl::sae::pt::write(&path, &sae, &[]).unwrap();
    let back = saerl::sae::pt::read(&path).unwrap();
    assert_eq!(back.sae, sae);
    let keys: Vec<&str> = back.config.iter().map(|(k, _)| k.as_str()).collect();
    for k in [
        "d_model",
        "d_sae",
        "k",
        "source",
        "init_from_stage",
        "best_epoch",
    ] {
        assert!(keys.contains(&k), "config key {k} written");
    }
}

#[test]
fn export_then_import_gives_identical_saes() {
    let (dir, lake) = imported_lake();
    let tree = dir.path().join("exported");
    ok(&lake, &["export", "pt", tree.to_str().unwrap()]);
    // A chain where one layer has SAEs of several k gets k-subfolders, as the published tree does.
    let files = pt_files();
    let several_k = |chain: &str| {
        files.iter().any(|a| {
            files
                .iter()
                .any(|b| a.chain == chain && b.chain == chain && a.layer == b.layer && a.k != b.k)
        })
    };
    assert!(
        files.iter().any(|f| several_k(&f.chain)),
        "the fixture has a chain with two k at one layer"
    );
    for f in &files {
        let mut path = tree.join(format!("sae_{}", f.chain));
        if several_k(&f.chain) {
            path.push(format!("k{}", f.k));
        }
        path.push(format!("sae_{}_layer{}.pt", f.stage, f.layer));
        assert!(path.is_file(), "{} exported", path.display());
    }
    let again = dir.path().join("again");
    ok(&again, &["import", "pt", tree.to_str().unwrap()]);
    let (a, b) = (Lake::open(&lake).unwrap(), Lake::open(&again).unwrap());
    let keys: Vec<_> = a
        .partitions(saerl::lake::Table::Saes)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        b.partitions(saerl::lake::Table::Saes)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    );
    for k in keys {
        assert_eq!(read_sae(&a, &k).unwrap(), read_sae(&b, &k).unwrap(), "{k}");
    }
}
